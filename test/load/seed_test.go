package load

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

func TestKeysAreWellFormedAndDistinct(t *testing.T) {
	f, err := apikey.NewFormat("kz", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	g := keyGen{prefix: "kz", seed: 7}
	seen := map[string]bool{}
	for _, s := range []uint64{streamStored, streamUnknown} {
		for i := uint64(0); i < 2000; i++ {
			k := g.key(s, i)
			if err := f.Check(k); err != nil {
				t.Fatalf("stream %d key %d: %v", s, i, err)
			}
			if err := f.Check(malformed(k)); !errors.Is(err, apikey.ErrChecksum) {
				t.Fatalf("malformed key %d: %v, want checksum error", i, err)
			}
			if seen[k] {
				t.Fatalf("stream %d key %d repeats", s, i)
			}
			seen[k] = true
		}
	}
	if g.key(streamStored, 5) != (keyGen{prefix: g.prefix, seed: g.seed}).key(streamStored, 5) {
		t.Fatal("key generation is not reproducible")
	}
	if g.key(streamStored, 5) == (keyGen{prefix: "kz", seed: 8}).key(streamStored, 5) {
		t.Fatal("seed does not change the keys")
	}
}

func TestSeedIsReadableByTheStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	g := keyGen{prefix: "kz", seed: 1}
	pepper := Pepper(1)
	n := SmallStore + 500
	if err := seed(ctx, path, n, g, pepper); err != nil {
		t.Fatal(err)
	}
	if err := checkSeeded(ctx, path, n, g, pepper); err != nil {
		t.Fatal(err)
	}
	if err := checkSeeded(ctx, path, n+1, g, pepper); err == nil {
		t.Fatal("CheckSeeded accepted a wrong key count")
	}
	st, err := sqlite.Open(ctx, path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	wantSeeded(ctx, t, st, n, g, pepper)
}

func pad7(i uint64) string {
	s := strconv.FormatUint(i, 10)
	for len(s) < 7 {
		s = "0" + s
	}
	return s
}

// wantSeeded checks through the store's own Lookup a seeded store of n keys
// made by g under pepper: stored keys found, valid, with their id, workspace
// and rate; an unknown key not found; and the store can still write.
func wantSeeded(ctx context.Context, t *testing.T, st apikey.Store, n int, g keyGen, pepper []byte) {
	t.Helper()
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
