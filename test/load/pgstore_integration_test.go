//go:build integration

package load

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
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
	h, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []uint64{0, 1, HitKeys - 1, HitKeys, SmallStore - 1, SmallStore, uint64(n - 1)} {
		k, err := st.Lookup(ctx, h.Sum(g.key(streamStored, i)))
		if err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		if err := k.Valid(time.Now()); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		limited := i >= HitKeys && i < HitKeys+LimitedKeys
		if limited != (k.RateLimit.String() == LimitedRate) {
			t.Fatalf("key %d: rate %q, limited %v", i, k.RateLimit.String(), limited)
		}
		if k.Workspace != "ws_"+pad7(i/10) || k.ID != keyID(i) {
			t.Fatalf("key %d: id %q, workspace %q", i, k.ID, k.Workspace)
		}
	}
	if _, err := st.Lookup(ctx, h.Sum(g.key(streamUnknown, 0))); !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("unknown key: %v, want ErrNotFound", err)
	}
	// The store can still write: the seeded schema is the store's own.
	if _, err := st.Create(ctx, apikey.NewKey{Key: apikey.Key{Workspace: "ws_x", Name: "n"}, Digest: h.Sum("kz_extra")}); err != nil {
		t.Fatal(err)
	}
}
