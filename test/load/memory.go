package load

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"runtime"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// MemoryResult is the live heap the key cache holds per cached key.
type MemoryResult struct {
	Keys   int
	Bytes  uint64  // live heap growth after caching Keys keys
	PerKey float64 // Bytes / Keys
}

// synthStore answers every digest with a fresh Key shaped like the SQLite
// store's (each string its own allocation, as database/sql scanning makes
// them), and keeps nothing itself, so the heap growth is the cache's alone.
type synthStore struct{ created time.Time }

// Lookup returns a fresh key for digest d, shaped like the SQLite store's.
func (s synthStore) Lookup(_ context.Context, d apikey.Digest) (apikey.Key, error) {
	i := binary.BigEndian.Uint32(d.Sum[28:])
	return apikey.Key{
		ID:            "key_" + hex.EncodeToString(d.Sum[:10]),
		Workspace:     "ws_" + strconv.FormatUint(uint64(i/10), 10),
		Name:          "k" + strconv.FormatUint(uint64(i%10), 10),
		Display:       "kz_" + hex.EncodeToString(d.Sum[10:12]),
		CreatedAt:     s.created,
		PepperVersion: d.Version,
	}, nil
}

func digestOf(i int) apikey.Digest {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	sum := sha256.Sum256(b[:])
	binary.BigEndian.PutUint32(sum[28:], uint32(i))
	return apikey.Digest{Sum: sum, Version: 1}
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// CacheBytesPerKey fills a keycache (keyauthz's default TTLs and negative
// cache; sized 2n so no shard of the sharded LRU evicts) with n keys through Lookup, as the Check path does, and
// returns the live heap growth per key.
func CacheBytesPerKey(n int) (MemoryResult, error) {
	c, err := keycache.New(synthStore{created: time.Now().UTC()}, keycache.Options{
		Size: 2 * n, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second, MaxStaleness: 5 * time.Minute,
	}, zap.NewNop())
	if err != nil {
		return MemoryResult{}, err
	}
	defer c.Close()
	ctx := context.Background()
	before := liveHeap()
	for i := range n {
		if _, err := c.Lookup(ctx, digestOf(i)); err != nil {
			return MemoryResult{}, err
		}
	}
	after := liveHeap()
	if got := c.Len(); got != n {
		return MemoryResult{}, fmt.Errorf("cache holds %d keys, want %d", got, n)
	}
	runtime.KeepAlive(c)
	grown := uint64(0)
	if after > before {
		grown = after - before
	}
	return MemoryResult{Keys: n, Bytes: grown, PerKey: float64(grown) / float64(n)}, nil
}

func (r *runner) memory(context.Context) error {
	for _, n := range []int{100_000, 1_000_000} {
		m, err := CacheBytesPerKey(n)
		if err != nil {
			return err
		}
		r.logf("  %d cached keys: %.0f bytes/key (%s live heap)", n, m.PerKey, mib(float64(m.Bytes)))
		r.res.Memory = append(r.res.Memory, m)
	}
	return nil
}
