//go:build integration

package load

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/store/postgres"
	"github.com/keyauthz/keyauthz/test/testenv"
)

func TestPGSeedIsReadableByTheStore(t *testing.T) {
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	url := pg.URL()
	st, err := postgres.Open(ctx, url, zap.NewNop(), postgres.Options{}) // the migrations make the schema
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	g := keyGen{prefix: "kz", seed: 1}
	pepper := Pepper(1)
	n := SmallStore + 500
	if _, err := seedPG(ctx, url, n, g, pepper); err != nil {
		t.Fatal(err)
	}
	if err := checkSeededPG(ctx, url, n, g, pepper); err != nil {
		t.Fatal(err)
	}
	if err := checkSeededPG(ctx, url, n+1, g, pepper); err == nil {
		t.Fatal("checkSeededPG accepted a wrong key count")
	}
	// Every index the migrations made is back.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var indexes int
	if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM pg_indexes WHERE tablename IN ('keys', 'digests')
		AND indexname IN ('keys_pkey', 'keys_live_workspace', 'keys_live_name', 'digests_pkey', 'digests_key', 'digests_grace')`).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if indexes != 6 {
		t.Fatalf("%d of the 6 indexes of keys and digests after seeding", indexes)
	}
	wantSeeded(ctx, t, st, n, g, pepper)
}
