//go:build integration

package app

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// store.password supplies the PostgreSQL password of a URL that holds none;
// a wrong one fails to open without being shown.
func TestStorePasswordOpensPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	u, err := url.Parse(pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(testenv.PGUser)
	cfg := config.Default()
	cfg.Store.URL = u.String()
	cfg.Store.Password = config.Secret{Env: "KEYAUTHZ_TEST_PG_PASSWORD"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Setenv("KEYAUTHZ_TEST_PG_PASSWORD", testenv.PGPassword)
	s, err := OpenStore(ctx, cfg, zap.NewNop())
	if err != nil {
		t.Fatalf("open with store.password: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("ping: %v", err)
	}
	s.Close()
	const wrong = "wrong-Sup3rS3cret"
	t.Setenv("KEYAUTHZ_TEST_PG_PASSWORD", wrong)
	s, err = OpenStore(ctx, cfg, zap.NewNop())
	if err == nil {
		s.Close()
		t.Fatal("open with a wrong store.password succeeded")
	}
	if strings.Contains(err.Error(), "Sup3rS3cret") {
		t.Fatalf("open error shows the password: %v", err)
	}
}
