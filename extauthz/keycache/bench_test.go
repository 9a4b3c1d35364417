package keycache

import (
	"context"
	"errors"
	"fmt"
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
		if _, err := c.Lookup(ctx, unknown[i&(benchKeys-1)]); err != apikey.ErrNotFound {
			b.Fatal(err)
		}
		i++
	}
}
