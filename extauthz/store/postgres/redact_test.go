package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSecretsScrub(t *testing.T) {
	for _, c := range []struct{ url, secret string }{
		{"postgres://u:p%40ss@db/k", "p@ss"},
		{"postgres://u:p%40ss@db/k", "p%40ss"},
		{"host=db password='s3 cret'", "s3 cret"},
		{"postgres://db/k?password=hunter2", "hunter2"},
		{"postgres://db/k?sslpassword=hunter%33", "hunter3"},
	} {
		secrets, ok := config.URLSecrets(c.url)
		if !ok {
			t.Fatalf("URLSecrets(%q): not parsable", c.url)
		}
		msg := scrub("failed: "+c.secret+" here", secrets...)
		if strings.Contains(msg, c.secret) {
			t.Errorf("scrub with URLSecrets(%q) left %q in %q", c.url, c.secret, msg)
		}
	}
}

// Errors from Open never carry the URL's password, whatever went wrong.
func TestOpenErrorsHidePassword(t *testing.T) {
	const pw = "Sup3rS3cret"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, url := range map[string]string{
		"bad port":       "postgres://u:" + pw + "@127.0.0.1:notaport/k",
		"bad escape":     "postgres://u:" + pw + "%zz@127.0.0.1/k",
		"bad dsn":        "host=127.0.0.1 password=" + pw + " sslmode=bogus",
		"bad option":     "postgres://u:" + pw + "@127.0.0.1:1/k?pool_max_conns=x",
		"refused":        "postgres://u:" + pw + "@127.0.0.1:1/k?sslmode=disable&connect_timeout=2",
		"refused in dsn": "host=127.0.0.1 port=1 user=u password=" + pw + " sslmode=disable",
		"query password": "postgres://u@127.0.0.1:1/k?sslmode=disable&password=" + pw,
		"query bad port": "postgres://u@127.0.0.1:x/k?password=" + pw,
		"slash in pw":    "postgres://u:ab/" + pw + "@127.0.0.1/k",
		"hash in pw":     "postgres://u:" + pw + "#x@127.0.0.1/k",
		"at in pw":       "postgres://u:x@" + pw + "@127.0.0.1:1/k?sslmode=disable",
		"at in query":    "postgres://127.0.0.1:1?sslmode=disable&password=x@" + pw,
		"unterminated":   "host=127.0.0.1 password='" + pw,
	} {
		t.Run(name, func(t *testing.T) {
			s, err := Open(ctx, url, zap.NewNop(), Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if strings.Contains(err.Error(), pw) {
				t.Fatalf("error shows the password: %v", err)
			}
			t.Log(err)
		})
	}
}

func TestOpenRejectsNegativeOptions(t *testing.T) {
	for _, o := range []Options{{MaxConns: -1}, {StatementTimeout: -time.Second}} {
		if s, err := Open(context.Background(), "postgres://u@127.0.0.1:1/k", zap.NewNop(), o); err == nil {
			s.Close()
			t.Errorf("Open(%+v) succeeded, want an error", o)
		}
	}
}

func TestOpenErrorUnwraps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, err := Open(ctx, "postgres://u:pw1234@127.0.0.1:1/k?sslmode=disable", zap.NewNop(), Options{})
	if err == nil {
		s.Close()
		t.Fatal("Open with a cancelled context succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Open error %v does not unwrap to context.Canceled", err)
	}
	if strings.Contains(err.Error(), "pw1234") {
		t.Errorf("error shows the password: %v", err)
	}
}
