// Package usage records when keys were last used without a store write per
// request: the Check path notes each use in memory (Used), and the uses are
// written to the store in one batch per interval (Run) and at shutdown (Flush).
package usage

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Toucher is the one store method the recorder needs.
type Toucher interface {
	// Touch records last-used times for many keys in one write.
	Touch(ctx context.Context, used map[string]time.Time) error
}

const (
	// shardCount is the number of independently locked parts of the pending map (a power of two).
	shardCount = 64
	// maxPending bounds the keys held between flushes; uses of further keys are dropped
	// (and counted) until the next flush, so a store outage cannot grow memory without bound.
	maxPending = 1 << 20
	// touchTimeout bounds one Touch call.
	touchTimeout = 10 * time.Second
)

// shard is one locked part of the pending uses: key id -> latest use (Unix nanoseconds).
type shard struct {
	mu sync.Mutex
	m  map[string]int64
	_  [48]byte // keep shards on separate cache lines
}

// Recorder coalesces key uses in memory and writes them to the store in batches.
type Recorder struct {
	store    Toucher
	interval time.Duration
	log      *zap.Logger
	seed     maphash.Seed // picks a key's shard
	shards   [shardCount]shard
	pending  atomic.Int64 // keys held across all shards (approximate upper bound)
	dropped  atomic.Uint64
	flushes  atomic.Uint64
	failures atomic.Uint64
	flushMu  sync.Mutex // one Touch at a time
}

// New returns a Recorder writing to s every interval; call Run, and Flush at shutdown.
func New(s Toucher, interval time.Duration, log *zap.Logger) (*Recorder, error) {
	switch {
	case s == nil:
		return nil, errors.New("usage: nil store")
	case log == nil:
		return nil, errors.New("usage: nil logger")
	case interval <= 0:
		return nil, fmt.Errorf("usage: interval %v: must be positive", interval)
	}
	r := &Recorder{store: s, interval: interval, log: log, seed: maphash.MakeSeed()}
	for i := range r.shards {
		r.shards[i].m = make(map[string]int64)
	}
	return r, nil
}

// Used notes that keyID was used at at. It never blocks on the store and does not
// allocate for a key already pending; safe for concurrent use.
func (r *Recorder) Used(keyID string, at time.Time) {
	ns := at.UnixNano()
	s := &r.shards[maphash.String(r.seed, keyID)&(shardCount-1)]
	s.mu.Lock()
	prev, ok := s.m[keyID]
	switch {
	case ok:
		if ns > prev {
			s.m[keyID] = ns
		}
	case r.pending.Load() >= maxPending:
		r.dropped.Add(1)
	default:
		s.m[keyID] = ns
		r.pending.Add(1)
	}
	s.mu.Unlock()
}

// Run flushes every interval until ctx is done; it does not flush on return
// (call Flush with a fresh deadline after Run returns).
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			tctx, cancel := context.WithTimeout(ctx, touchTimeout)
			_ = r.Flush(tctx)
			cancel()
		}
	}
}

// take moves every pending use out of the shards.
func (r *Recorder) take() map[string]time.Time {
	var out map[string]time.Time
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		if len(s.m) > 0 {
			if out == nil {
				out = make(map[string]time.Time, int(r.pending.Load()))
			}
			for id, ns := range s.m {
				out[id] = time.Unix(0, ns).UTC()
			}
			r.pending.Add(-int64(len(s.m)))
			clear(s.m)
		}
		s.mu.Unlock()
	}
	return out
}

// putBack returns uses a failed Touch did not record, keeping the later time per key.
func (r *Recorder) putBack(used map[string]time.Time) {
	for id, at := range used {
		r.Used(id, at)
	}
}

// Flush writes every pending use to the store in one Touch call (none when nothing
// is pending). On failure the uses are kept for the next flush and the error returned.
func (r *Recorder) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	used := r.take()
	if len(used) == 0 {
		return nil
	}
	if n := r.dropped.Swap(0); n > 0 {
		r.log.Warn("too many keys pending; some uses were not recorded", zap.Uint64("dropped", n))
	}
	if err := r.store.Touch(ctx, used); err != nil {
		r.failures.Add(1)
		r.putBack(used)
		r.log.Warn("recording key use failed; will retry", zap.Int("keys", len(used)), zap.Error(err))
		return fmt.Errorf("usage: touch %d keys: %w", len(used), err)
	}
	r.flushes.Add(1)
	r.log.Debug("recorded key use", zap.Int("keys", len(used)))
	return nil
}

// Stats are the recorder's counters.
type Stats struct {
	Pending  int    // keys waiting for the next flush
	Flushes  uint64 // successful Touch calls
	Failures uint64 // failed Touch calls
}

// Stats returns the recorder's counters.
func (r *Recorder) Stats() Stats {
	return Stats{Pending: int(r.pending.Load()), Flushes: r.flushes.Load(), Failures: r.failures.Load()}
}
