package keycache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

const benchKeys = 1024

// benchCache returns a default-sized cache holding benchKeys keys, and their digests.
func benchCache(b *testing.B) (*Cache, []apikey.Digest) {
	b.Helper()
	s := newStore()
	ds := make([]apikey.Digest, benchKeys)
	for i := range ds {
		ds[i] = digest(i)
		s.keys[ds[i].Sum] = apikey.Key{
			ID: fmt.Sprintf("key_%024d", i), Workspace: "ws_bench", Name: "bench", Display: "kz_4fA9",
			CreatedAt: time.Now(), RateLimit: apikey.Rate{N: 240, Per: time.Minute},
			Grants: []string{"org1", "org2"}, PepperVersion: 1,
		}
	}
	c, err := New(s, Options{Size: 100_000, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	for _, d := range ds {
		if _, err := c.Lookup(context.Background(), d); err != nil {
			b.Fatal(err)
		}
	}
	return c, ds
}

func BenchmarkHit(b *testing.B) {
	c, ds := benchCache(b)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := c.Lookup(ctx, ds[i&(benchKeys-1)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkHitParallel(b *testing.B) {
	c, ds := benchCache(b)
	ctx := context.Background()
	var seed atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			if _, err := c.Lookup(ctx, ds[i&(benchKeys-1)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func BenchmarkNegativeHit(b *testing.B) {
	c, _ := benchCache(b)
	ctx := context.Background()
	unknown := make([]apikey.Digest, benchKeys)
	for i := range unknown {
		unknown[i] = digest(i)
		unknown[i].Sum[2] = 0xFF
		if _, err := c.Lookup(ctx, unknown[i]); !errors.Is(err, apikey.ErrNotFound) {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := c.Lookup(ctx, unknown[i&(benchKeys-1)]); err != apikey.ErrNotFoundCached {
			b.Fatal(err)
		}
		i++
	}
}

// anyStore answers every digest with the same key, as a store holding every key would.
type anyStore struct{ k apikey.Key }

func (s anyStore) Lookup(context.Context, apikey.Digest) (apikey.Key, error) { return s.k, nil }

// BenchmarkMiss is the cache's own cost of a miss: every Lookup asks for a
// digest not cached yet, the store answers at once, and the entry is inserted
// (evicting the oldest once the cache is full). The caller's context carries a
// deadline, as a gRPC call's does.
func BenchmarkMiss(b *testing.B) {
	s := anyStore{apikey.Key{ID: "key_000000000000000000000001", Workspace: "ws_bench", RateLimit: apikey.Rate{N: 240, Per: time.Minute}, PepperVersion: 1}}
	c, err := New(s, Options{Size: 100_000, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	var d apikey.Digest
	d.Version = 1
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		i++
		binary.LittleEndian.PutUint64(d.Sum[:], i*0x9E3779B97F4A7C15) // spread over the shards
		if _, err := c.Lookup(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}

// idStore answers every digest with a key of its own id and workspace strings,
// as a store does.
type idStore struct{}

func (idStore) Lookup(_ context.Context, d apikey.Digest) (apikey.Key, error) {
	return apikey.Key{ID: fmt.Sprintf("key_%020x", d.Sum[:10]), Workspace: fmt.Sprintf("ws_%d", d.Sum[0]%50),
		RateLimit: apikey.Rate{N: 600, Per: time.Minute}, PepperVersion: 1}, nil
}

// BenchmarkGCFullCache is a whole garbage collection with the default-sized
// cache full (100,000 keys): what every collection of a busy server pays to
// trace the cache.
func BenchmarkGCFullCache(b *testing.B) {
	c, err := New(idStore{}, Options{Size: 100_000, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	var d apikey.Digest
	d.Version = 1
	for i := range uint64(100_000) {
		binary.LittleEndian.PutUint64(d.Sum[:], i*0x9E3779B97F4A7C15)
		if _, err := c.Lookup(context.Background(), d); err != nil {
			b.Fatal(err)
		}
	}
	if n := c.Len(); n != 100_000 {
		b.Fatalf("%d keys cached", n)
	}
	runtime.GC()
	for b.Loop() {
		runtime.GC()
	}
}
