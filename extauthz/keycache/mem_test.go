package keycache

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// memStore answers every digest with a key of its own strings, as a store
// does: a typical key (no grants) with two metadata fields, of which the cache
// may keep one, and, when space is set, a workspace record's rate.
type memStore struct{ space bool }

func (s memStore) Lookup(_ context.Context, d apikey.Digest) (apikey.Key, error) {
	k := apikey.Key{ID: fmt.Sprintf("key_%020x", d.Sum[:10]), Workspace: fmt.Sprintf("ws_%d", d.Sum[0]%50),
		RateLimit: apikey.Rate{N: 600, Per: time.Minute}, PepperVersion: 1,
		Metadata: map[string]string{"team": "ml", "owner": "alice@example.com"}}
	if s.space {
		k.Space.RateLimit = apikey.Rate{N: 1000, Per: time.Minute}
	}
	return k, nil
}

// BenchmarkMemoryPerKey fills a 100,000-key cache and reports the heap it
// holds per cached key (bytes/key), strings included: keys whose metadata the
// cache does not keep (headers.metadata unset: the default), keys of a
// workspace with a record, and keys of which it keeps one metadata field.
func BenchmarkMemoryPerKey(b *testing.B) {
	b.Run("plain", func(b *testing.B) { memoryPerKey(b, memStore{}, nil) })
	b.Run("workspace_record", func(b *testing.B) { memoryPerKey(b, memStore{space: true}, nil) })
	b.Run("one_metadata_field", func(b *testing.B) { memoryPerKey(b, memStore{}, []string{"team"}) })
}

func memoryPerKey(b *testing.B, store memStore, meta []string) {
	const n = 100_000
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c, err := New(store, Options{Size: n, TTL: time.Hour, NegativeSize: n, NegativeTTL: time.Minute, Metadata: meta}, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		var d apikey.Digest
		d.Version = 1
		for i := range uint64(n) {
			binary.LittleEndian.PutUint64(d.Sum[:], i*0x9E3779B97F4A7C15)
			if _, err := c.Lookup(context.Background(), d); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
		runtime.KeepAlive(c)
		_ = c.Close()
	}
}
