// Package usage counts key uses without a store write per request: the Check
// path notes each decision about a known key in memory (Used), summed per key
// and UTC hour by outcome, and the sums are written to the store once per
// interval (Run) and at shutdown (Flush): one Touch with the keys' latest
// allowed use and one AddUsage with at most one row per key and hour.
package usage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Store is what the recorder writes to (apikey.Store implements it).
type Store interface {
	// Touch records last-used times for many keys in one call.
	Touch(ctx context.Context, used map[string]time.Time) error
	// AddUsage adds each row's counts to its key's bucket for row.Hour; each
	// (key, hour) appears at most once in rows.
	AddUsage(ctx context.Context, rows []apikey.Usage) error
	// PruneUsage drops buckets with Hour before before and returns how many.
	PruneUsage(ctx context.Context, before time.Time) (int64, error)
}

var _ Store = (apikey.Store)(nil)

const (
	// shardCount is the number of independently locked parts of the pending map (a power of two).
	shardCount = 64
	// maxPending bounds the (key, hour) buckets held between flushes; uses
	// that would need a further bucket are dropped (and counted) until the
	// next flush, so a store outage cannot grow memory without bound.
	maxPending = 1 << 20
	// flushTimeout bounds one flush (Touch and AddUsage) made by Run.
	flushTimeout = 10 * time.Second
	// pruneEvery is the least time between two PruneUsage calls of Run.
	pruneEvery = time.Hour
	// pruneTimeout bounds one PruneUsage call.
	pruneTimeout = time.Minute
)

// bucket is one key's counts in one hour, kept small (32 bytes) because
// every key used between two flushes has one: the allowed count inline, the
// rarer denials behind a pointer made at the first one. Counts are uint32:
// one replica counts one key for at most an hour per bucket, far below 2^32
// (they saturate rather than wrap).
type bucket struct {
	next    *bucket                         // the key's bucket of another hour (an hour rollover, or counts put back), newest first
	denied  *[apikey.NumOutcomes - 1]uint32 // denials by outcome (index o-1); nil until the first
	last    int64                           // latest allowed use not yet touched, Unix nanoseconds; 0 = none
	hour    int32                           // hours since the Unix epoch (UTC)
	allowed uint32
}

// add counts n decisions of outcome o.
func (b *bucket) add(o apikey.Outcome, n int64) {
	if o == apikey.OutcomeAllowed {
		b.allowed = sat(b.allowed, n)
		return
	}
	if b.denied == nil {
		b.denied = new([apikey.NumOutcomes - 1]uint32)
	}
	b.denied[o-1] = sat(b.denied[o-1], n)
}

// counts returns the bucket's counts by outcome.
func (b *bucket) counts() [apikey.NumOutcomes]int64 {
	var c [apikey.NumOutcomes]int64
	c[apikey.OutcomeAllowed] = int64(b.allowed)
	if b.denied != nil {
		for i, n := range b.denied {
			c[i+1] = int64(n)
		}
	}
	return c
}

// sat returns c+n, saturated at the largest uint32.
func sat(c uint32, n int64) uint32 {
	return uint32(min(int64(c)+max(n, 0), 1<<32-1))
}

// shard is one locked part of the pending buckets: key id -> its buckets.
type shard struct {
	mu sync.Mutex
	m  map[string]*bucket
	_  [48]byte // keep shards on separate cache lines
}

// Recorder sums key uses in memory and writes them to the store in batches.
type Recorder struct {
	store     Store
	interval  time.Duration
	retention time.Duration
	log       *zap.Logger
	now       func() time.Time // time.Now; replaced in tests
	seed      maphash.Seed     // picks a key's shard
	shards    [shardCount]shard
	pending   atomic.Int64 // buckets held across all shards
	max       int64        // maxPending; smaller in tests
	dropped   atomic.Uint64
	flushMu   sync.Mutex // one flush at a time
	lastPrune time.Time  // Run's last PruneUsage (Run's goroutine only)

	dropsLogged                       uint64 // dropped at the last warning (under flushMu)
	flushes, failures                 atomic.Uint64
	touches, touched, rowsAdded, adds atomic.Uint64
	lastRows, lastTouched             atomic.Int64
	prunes, pruned                    atomic.Uint64
}

// New returns a Recorder writing to s every interval and keeping usage
// buckets for retention; call Run, and Flush at shutdown.
func New(s Store, interval, retention time.Duration, log *zap.Logger) (*Recorder, error) {
	switch {
	case s == nil:
		return nil, errors.New("usage: nil store")
	case log == nil:
		return nil, errors.New("usage: nil logger")
	case interval <= 0:
		return nil, fmt.Errorf("usage: interval %v: must be positive", interval)
	case retention < time.Hour:
		return nil, fmt.Errorf("usage: retention %v: must be at least an hour", retention)
	}
	r := &Recorder{store: s, interval: interval, retention: retention, log: log, now: time.Now, seed: maphash.MakeSeed(), max: maxPending}
	for i := range r.shards {
		r.shards[i].m = make(map[string]*bucket)
	}
	return r, nil
}

// hourOf returns t's UTC hour as hours since the Unix epoch.
func hourOf(t time.Time) int32 {
	s := t.Unix()
	h := s / 3600
	if s%3600 < 0 {
		h--
	}
	return int32(h)
}

// Used counts one decision o about keyID made at at. It never blocks on the
// store and does not allocate for a key already pending in at's hour; safe
// for concurrent use. Outcomes out of range are ignored.
func (r *Recorder) Used(keyID string, at time.Time, o apikey.Outcome) {
	if o >= apikey.NumOutcomes {
		return
	}
	s := r.shard(keyID)
	s.mu.Lock()
	if b := r.bucket(s, keyID, hourOf(at), 1); b != nil {
		b.add(o, 1)
		if o == apikey.OutcomeAllowed {
			b.last = max(b.last, at.UnixNano())
		}
	}
	s.mu.Unlock()
}

// shard returns the shard holding id's buckets.
func (r *Recorder) shard(id string) *shard {
	return &r.shards[maphash.String(r.seed, id)&(shardCount-1)]
}

// bucket returns id's bucket of hour, making it when there is room, or nil
// (counting uses as dropped) when there is none; called with s.mu held.
func (r *Recorder) bucket(s *shard, id string, hour int32, uses uint64) *bucket {
	first := s.m[id]
	for b := first; b != nil; b = b.next {
		if b.hour == hour {
			return b
		}
	}
	if r.pending.Load() >= r.max {
		r.dropped.Add(uses)
		return nil
	}
	b := &bucket{hour: hour, next: first}
	s.m[id] = b
	r.pending.Add(1)
	return b
}

// Run flushes every interval, and prunes buckets older than the retention at
// most once an hour (first at the first tick), until ctx is done; it does not
// flush on return (call Flush with a fresh deadline after Run returns).
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			_ = r.Flush(fctx)
			cancel()
			r.prune(ctx)
		}
	}
}

// prune drops buckets older than the retention when the last prune is an hour old.
func (r *Recorder) prune(ctx context.Context) {
	now := r.now()
	if !r.lastPrune.IsZero() && now.Sub(r.lastPrune) < pruneEvery {
		return
	}
	r.lastPrune = now
	pctx, cancel := context.WithTimeout(ctx, pruneTimeout)
	defer cancel()
	n, err := r.store.PruneUsage(pctx, now.Add(-r.retention))
	if err != nil {
		r.log.Warn("pruning usage buckets failed; will retry in an hour", zap.Error(err))
		return
	}
	r.prunes.Add(1)
	r.pruned.Add(uint64(n))
	r.log.Debug("pruned usage buckets", zap.Int64("rows", n))
}

// take moves every pending bucket out of the shards: the usage rows (sorted
// by key and hour, so that concurrent writers upsert rows in one order) and
// each key's latest allowed use.
func (r *Recorder) take() ([]apikey.Usage, map[string]time.Time) {
	var (
		rows []apikey.Usage
		last map[string]int64
	)
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		if len(s.m) > 0 {
			if rows == nil {
				rows = make([]apikey.Usage, 0, r.pending.Load())
			}
			n := 0
			for id, b := range s.m {
				for ; b != nil; b = b.next {
					n++
					if b.allowed != 0 || b.denied != nil {
						rows = append(rows, apikey.Usage{KeyID: id, Hour: time.Unix(int64(b.hour)*3600, 0).UTC(), Counts: b.counts()})
					}
					if b.last != 0 {
						if last == nil {
							last = make(map[string]int64)
						}
						last[id] = max(last[id], b.last)
					}
				}
			}
			r.pending.Add(-int64(n))
			clear(s.m)
		}
		s.mu.Unlock()
	}
	slices.SortFunc(rows, func(a, b apikey.Usage) int {
		return cmp.Or(cmp.Compare(a.KeyID, b.KeyID), a.Hour.Compare(b.Hour))
	})
	var used map[string]time.Time
	if len(last) > 0 {
		used = make(map[string]time.Time, len(last))
		for id, ns := range last {
			used[id] = time.Unix(0, ns).UTC()
		}
	}
	return rows, used
}

// putBackRows returns counts a failed AddUsage did not record, summed into
// what is pending now.
func (r *Recorder) putBackRows(rows []apikey.Usage) {
	for i := range rows {
		u := &rows[i]
		s := r.shard(u.KeyID)
		s.mu.Lock()
		if b := r.bucket(s, u.KeyID, hourOf(u.Hour), uint64(u.Total())); b != nil {
			for o, n := range u.Counts {
				if n > 0 {
					b.add(apikey.Outcome(o), n)
				}
			}
		}
		s.mu.Unlock()
	}
}

// putBackUsed returns last-use times a failed Touch did not record, keeping
// the later time per key.
func (r *Recorder) putBackUsed(used map[string]time.Time) {
	for id, at := range used {
		s := r.shard(id)
		s.mu.Lock()
		if b := r.bucket(s, id, hourOf(at), 0); b != nil {
			b.last = max(b.last, at.UnixNano())
		}
		s.mu.Unlock()
	}
}

// Flush writes everything pending to the store: one Touch with the latest
// allowed use of each key that has one, and one AddUsage with one row per key
// and hour (none when nothing is pending). What a failed call did not record
// is kept, summed with later uses, for the next flush, and the error returned.
func (r *Recorder) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	rows, used := r.take()
	if d := r.dropped.Load(); d > r.dropsLogged {
		r.log.Warn("too many keys pending; some uses were not counted", zap.Uint64("dropped", d-r.dropsLogged))
		r.dropsLogged = d
	}
	if len(rows) == 0 && len(used) == 0 {
		return nil
	}
	var errs []error
	if len(used) > 0 {
		if err := r.store.Touch(ctx, used); err != nil {
			r.putBackUsed(used)
			errs = append(errs, fmt.Errorf("usage: touch %d keys: %w", len(used), err))
		} else {
			r.touches.Add(1)
			r.touched.Add(uint64(len(used)))
			r.lastTouched.Store(int64(len(used)))
		}
	}
	if len(rows) > 0 {
		if err := r.store.AddUsage(ctx, rows); err != nil {
			r.putBackRows(rows)
			errs = append(errs, fmt.Errorf("usage: add %d usage rows: %w", len(rows), err))
		} else {
			r.adds.Add(1)
			r.rowsAdded.Add(uint64(len(rows)))
			r.lastRows.Store(int64(len(rows)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.failures.Add(1)
		r.log.Warn("recording key usage failed; will retry", zap.Int("keys", len(used)), zap.Int("rows", len(rows)), zap.Error(err))
		return err
	}
	r.flushes.Add(1)
	r.log.Debug("recorded key usage", zap.Int("keys", len(used)), zap.Int("rows", len(rows)))
	return nil
}

// Stats are the recorder's counters since New.
type Stats struct {
	Pending     int    // (key, hour) buckets waiting for the next flush
	Flushes     uint64 // flushes that wrote everything they took
	Failures    uint64 // flushes with a failed Touch or AddUsage
	Dropped     uint64 // uses not counted because maxPending buckets were pending
	Touches     uint64 // successful Touch calls
	Touched     uint64 // keys written by successful Touch calls
	Adds        uint64 // successful AddUsage calls
	RowsWritten uint64 // rows written by successful AddUsage calls
	LastRows    int    // rows of the last successful AddUsage
	LastTouched int    // keys of the last successful Touch
	Prunes      uint64 // successful PruneUsage calls
	Pruned      uint64 // buckets they dropped
}

// Stats returns the recorder's counters.
func (r *Recorder) Stats() Stats {
	return Stats{
		Pending: int(r.pending.Load()), Flushes: r.flushes.Load(), Failures: r.failures.Load(), Dropped: r.dropped.Load(),
		Touches: r.touches.Load(), Touched: r.touched.Load(), Adds: r.adds.Load(), RowsWritten: r.rowsAdded.Load(),
		LastRows: int(r.lastRows.Load()), LastTouched: int(r.lastTouched.Load()), Prunes: r.prunes.Load(), Pruned: r.pruned.Load(),
	}
}
