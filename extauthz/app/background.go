package app

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// background runs the Check path's deferred store writes: re-hashing keys found
// under an old pepper and auditing uses of revoked keys. Hooks never block the
// Check: when the queue is full the work is dropped (it is retried on a later use).
type background struct {
	store  apikey.Store
	cache  *keycache.Cache
	hasher *apikey.Hasher
	log    *zap.Logger
	jobs   chan func(context.Context)

	mu      sync.Mutex
	pending map[[32]byte]bool    // rehashes queued
	audited map[string]time.Time // revoked key id -> last audit
}

func newBackground(s apikey.Store, c *keycache.Cache, h *apikey.Hasher, log *zap.Logger) *background {
	return &background{store: s, cache: c, hasher: h, log: log, jobs: make(chan func(context.Context), 1024),
		pending: map[[32]byte]bool{}, audited: map[string]time.Time{}}
}

func (b *background) submit(f func(context.Context)) bool {
	select {
	case b.jobs <- f:
		return true
	default:
		return false
	}
}

// rehash queues moving a key from an old pepper version to the current one.
func (b *background) rehash(old apikey.Digest, key string) {
	next := b.hasher.Sum(key) // computed now: the raw key never leaves this call
	b.mu.Lock()
	if b.pending[old.Sum] || len(b.pending) > 10_000 {
		b.mu.Unlock()
		return
	}
	b.pending[old.Sum] = true
	b.mu.Unlock()
	if !b.submit(func(ctx context.Context) {
		err := b.store.Rehash(ctx, old, next)
		if err != nil {
			b.log.Warn("rehash failed", zap.Int("from_version", old.Version), zap.Error(err))
		} else {
			// The new digest first: its negative entry, written when this key's
			// first Check under the new pepper missed, would otherwise deny the key
			// for the negative TTL once the old digest is gone. (Other replicas
			// evict both from the Rehashed change.)
			b.cache.Evict(next.Sum, old.Sum)
		}
		b.mu.Lock()
		delete(b.pending, old.Sum)
		b.mu.Unlock()
	}) {
		b.mu.Lock()
		delete(b.pending, old.Sum)
		b.mu.Unlock()
	}
}

// revokedUse audits a revoked key being presented, at most once a minute per key.
func (b *background) revokedUse(k *apikey.Key) {
	now := time.Now()
	b.mu.Lock()
	if t, ok := b.audited[k.ID]; ok && now.Sub(t) < time.Minute {
		b.mu.Unlock()
		return
	}
	if len(b.audited) > 10_000 {
		clear(b.audited)
	}
	b.audited[k.ID] = now
	b.mu.Unlock()
	e := apikey.Event{At: now.UTC(), Kind: "denied_after_revoke", Workspace: k.Workspace, KeyID: k.ID, Actor: "check"}
	b.submit(func(ctx context.Context) {
		if err := b.store.Audit(ctx, e); err != nil {
			b.log.Warn("audit failed", zap.String("key_id", e.KeyID), zap.Error(err))
		}
	})
}

// run executes queued jobs until ctx is done.
func (b *background) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-b.jobs:
			jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			f(jctx)
			cancel()
		}
	}
}

// flush runs what is still queued, with a short deadline, at shutdown.
func (b *background) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for {
		select {
		case f := <-b.jobs:
			f(ctx)
		default:
			return
		}
	}
}
