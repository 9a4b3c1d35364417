package ratelimit

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// BenchmarkLocalAllow measures one decision on the real clock: one hot key,
// many keys (10k, all resident), and parallel callers on many keys.
func BenchmarkLocalAllow(b *testing.B) {
	r := apikey.Rate{N: 1 << 30, Per: time.Second} // mostly allowed: the write path
	ctx := context.Background()
	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("key_%08d", i)
	}
	newLocal := func(b *testing.B) *Local {
		l, err := NewLocal(100_000)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = l.Close() })
		for _, k := range keys {
			_, _ = l.Allow(ctx, k, r)
		}
		return l
	}

	b.Run("one-key", func(b *testing.B) {
		l := newLocal(b)
		b.ReportAllocs()
		for b.Loop() {
			_, _ = l.Allow(ctx, keys[0], r)
		}
	})
	b.Run("many-keys", func(b *testing.B) {
		l := newLocal(b)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_, _ = l.Allow(ctx, keys[i%len(keys)], r)
			i++
		}
	})
	b.Run("parallel-many-keys", func(b *testing.B) {
		l := newLocal(b)
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 7919
			for pb.Next() {
				_, _ = l.Allow(ctx, keys[i%len(keys)], r)
				i++
			}
		})
	})
	b.Run("parallel-one-key", func(b *testing.B) {
		l := newLocal(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = l.Allow(ctx, keys[0], r)
			}
		})
	})
	b.Run("denied", func(b *testing.B) {
		l := newLocal(b)
		slow := apikey.Rate{N: 1, Per: time.Hour}
		_, _ = l.Allow(ctx, "over", slow)
		b.ReportAllocs()
		for b.Loop() {
			_, _ = l.Allow(ctx, "over", slow)
		}
	})
}
