package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, path string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) apikey.Store {
		return open(t, filepath.Join(t.TempDir(), "keys.db"))
	})
}

func TestReopenKeepsDataAndSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s := open(t, path)
	nk := storetest.NewKey(t, "acme", "ci")
	if _, err := s.Create(context.Background(), nk); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open(t, path) // migrations already applied: a no-op
	defer s.Close()
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if _, err := s.Lookup(context.Background(), nk.Digest); err != nil {
		t.Fatalf("Lookup after reopen: %v", err)
	}
	var v int
	if err := s.r.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil || v != len(migrations) {
		t.Errorf("schema version = %d, %v; want %d", v, err, len(migrations))
	}
	var mode string
	if err := s.r.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s := open(t, path)
	if _, err := s.w.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, len(migrations)+1); err != nil {
		t.Fatalf("insert: %v", err)
	}
	s.Close()
	if s, err := Open(context.Background(), path, zap.NewNop()); err == nil {
		s.Close()
		t.Fatal("Open of a database from a newer binary succeeded, want an error")
	}
}

func TestBadPath(t *testing.T) {
	for _, p := range []string{"", ":memory:", "a?b", filepath.Join(t.TempDir(), "missing", "dir", "keys.db")} {
		if s, err := Open(context.Background(), p, zap.NewNop()); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded, want an error", p)
		}
	}
}

// Two Stores on one file stand in for serve and the CLI: the limit holds across them.
func TestTwoProcessesShareLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	a, b := open(t, path), open(t, path)
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	errs := make(chan error, 10)
	for i := range 10 {
		s := a
		if i%2 == 1 {
			s = b
		}
		nk := storetest.NewKey(t, "acme", string(rune('a'+i)))
		nk.Max = 5
		go func() { _, err := s.Create(ctx, nk); errs <- err }()
	}
	ok := 0
	for range 10 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case !errors.Is(err, apikey.ErrLimit):
			t.Errorf("Create: %v", err)
		}
	}
	if ok != 5 {
		t.Errorf("%d creates succeeded across two stores, want 5", ok)
	}
	// A change made by one is visible to the other's feed.
	last, err := b.LastSeq(ctx)
	if err != nil || last == 0 {
		t.Errorf("LastSeq from the other store = %d, %v", last, err)
	}
}

// The secret never reaches the database: only the digest bytes do.
func TestStoresOnlyDigest(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "keys.db"))
	defer s.Close()
	f, _ := apikey.NewFormat("kz", 0, false)
	secret, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h, err := apikey.NewHasher(map[int][]byte{1: make([]byte, 32)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	nk := storetest.NewKey(t, "acme", "ci")
	nk.Digest = h.Sum(secret)
	nk.Key.Display = f.Display(secret)
	if _, err := s.Create(context.Background(), nk); err != nil {
		t.Fatal(err)
	}
	var n int
	err = s.r.QueryRow(`SELECT COUNT(*) FROM keys k JOIN digests d ON d.key_id = k.id
		WHERE instr(k.id||k.name||k.display||k.metadata, ?) > 0 OR instr(d.digest, ?) > 0`,
		secret, []byte(secret)).Scan(&n)
	if err != nil || n != 0 {
		t.Errorf("secret found in %d rows (%v)", n, err)
	}
	if _, err := s.Lookup(context.Background(), h.Sum(secret)); err != nil {
		t.Errorf("Lookup(hash of secret): %v", err)
	}
}

func BenchmarkLookup(b *testing.B) {
	s := open(b, filepath.Join(b.TempDir(), "keys.db"))
	defer s.Close()
	ctx := context.Background()
	const n = 1000
	ds := make([]apikey.Digest, n)
	for i := range n {
		nk := storetest.NewKey(b, "ws"+string(rune('a'+i%20)), "k"+string(rune(i)))
		nk.Key.Grants = []string{"org1"}
		nk.Key.RateLimit = apikey.Rate{N: 600, Per: time.Minute}
		if _, err := s.Create(ctx, nk); err != nil {
			b.Fatal(err)
		}
		ds[i] = nk.Digest
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := s.Lookup(ctx, ds[i%n]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("check", func(b *testing.B) {
		r := s.CheckReader()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := r.Lookup(ctx, ds[i%n]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		d := storetest.NewDigest(b, 1)
		for b.Loop() {
			if _, err := s.Lookup(ctx, d); !errors.Is(err, apikey.ErrNotFound) {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := s.Lookup(ctx, ds[i%n]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkCacheMiss is scenario (b)'s store side: the key cache in front of
// this store, every Lookup a miss (the entry is evicted first), the caller's
// context carrying a deadline as a gRPC call's does.
func BenchmarkCacheMiss(b *testing.B) {
	s := open(b, filepath.Join(b.TempDir(), "keys.db"))
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	const n = 1000
	ds := make([]apikey.Digest, n)
	for i := range n {
		nk := storetest.NewKey(b, "ws"+string(rune('a'+i%20)), "k"+string(rune(i)))
		nk.Key.RateLimit = apikey.Rate{N: 600, Per: time.Minute}
		if _, err := s.Create(ctx, nk); err != nil {
			b.Fatal(err)
		}
		ds[i] = nk.Digest
	}
	c, err := keycache.New(s.CheckReader(), keycache.Options{Size: 100_000, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d := ds[i%n]
		c.Evict(d.Sum)
		if _, err := c.Lookup(ctx, d); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
