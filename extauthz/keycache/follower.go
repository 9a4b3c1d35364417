package keycache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Feed is what the follower needs from a store.
type Feed interface {
	// Changes returns feed entries with Seq > after, oldest first, at most limit.
	Changes(ctx context.Context, after int64, limit int) ([]apikey.Change, error)
	// LastSeq returns the newest change Seq (0 when empty).
	LastSeq(ctx context.Context) (int64, error)
}

var _ Feed = (apikey.Store)(nil)

const (
	// feedBatch is the most changes asked for in one Changes call.
	feedBatch = 512
	// maxBatches bounds the Changes calls of one Poll; the rest waits for the next.
	maxBatches = 64
	// gapGrace is how long a hole in the feed's sequence may stay open (a writer
	// that took a Seq but has not committed yet) before it counts as changes missed.
	gapGrace = time.Second
	// FastInterval is Run's poll period while push notifications are down (see
	// SetPushed): short enough that a change reaches this replica well within
	// 250 ms even then, at one cheap indexed query per replica every 100 ms.
	FastInterval = 100 * time.Millisecond
)

// Follower reads a store's change feed and evicts the cache entries of changed
// keys (and of every key of a changed workspace record), so that a rotation,
// deletion, key update or workspace change on any replica takes effect on this one.
type Follower struct {
	feed     Feed
	cache    *Cache
	interval time.Duration
	log      *zap.Logger
	grace    time.Duration
	now      func() time.Time // replaced in tests

	mu      sync.Mutex // serializes polls; guards the fields below
	started bool       // seq was read from LastSeq
	failing bool       // the last poll failed (for logging transitions)
	gap     bool       // a hole after seq is open since gapAt
	gapSeq  int64
	gapAt   time.Time

	seq       atomic.Int64
	polled    atomic.Int64 // f.now() in Unix nanoseconds at the last successful poll (at NewFollower before the first)
	healthy   atomic.Bool
	failSince atomic.Pointer[time.Time] // first failure of the polls failing now; nil while healthy

	pushDown atomic.Bool   // push notifications are not being delivered: poll fast
	wake     chan struct{} // wakes Run when pushDown changes
}

// NewFollower returns a follower that evicts from cache what feed reports, polling every interval.
func NewFollower(feed Feed, cache *Cache, interval time.Duration, log *zap.Logger) (*Follower, error) {
	switch {
	case feed == nil:
		return nil, errors.New("keycache: nil feed")
	case cache == nil:
		return nil, errors.New("keycache: nil cache")
	case log == nil:
		return nil, errors.New("keycache: nil logger")
	case interval <= 0:
		return nil, fmt.Errorf("keycache: follow interval %v: must be positive", interval)
	}
	f := &Follower{
		feed:     feed,
		cache:    cache,
		interval: interval,
		log:      log,
		grace:    gapGrace,
		now:      time.Now,
		wake:     make(chan struct{}, 1),
	}
	f.polled.Store(f.now().UnixNano())
	return f, nil
}

// SetPushed tells the follower whether push notifications (PostgreSQL
// LISTEN, which calls Poll on every change) are being delivered. While they are
// not, Run polls every FastInterval (or interval, if shorter) instead of every
// interval, so that a change still reaches this replica within a fraction of a
// second; a change of state polls at once. Followers start as pushed. Safe for
// concurrent use; it does not block.
func (f *Follower) SetPushed(ok bool) {
	if f.pushDown.Swap(!ok) == !ok {
		return // no change
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// period returns Run's current poll period.
func (f *Follower) period() time.Duration {
	if f.pushDown.Load() {
		return min(f.interval, FastInterval)
	}
	return f.interval
}

// Run polls at once and then every interval (FastInterval while push
// notifications are down, see SetPushed) until ctx is done, and returns nil
// then. Poll errors are logged and retried on the next tick; see Healthy and
// FailingSince.
func (f *Follower) Run(ctx context.Context) error {
	t := time.NewTimer(f.period())
	defer t.Stop()
	for {
		_ = f.Poll(ctx)
		t.Reset(f.period())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-f.wake:
		}
	}
}

// Poll reads the feed up to its end once and evicts the digests of every change,
// and every cached key of the workspace of a WorkspaceChanged change.
// The first successful Poll starts at the feed's LastSeq and purges the cache,
// since entries cached before then may predate changes it will not see. Changes
// missed for good (a hole in the sequence that stays open, or a feed that went
// backwards) purge the whole cache. Safe for concurrent use (e.g. Run and a
// push notification).
func (f *Follower) Poll(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.poll(ctx)
	if err != nil && ctx.Err() != nil {
		return err // shutting down: not a feed failure
	}
	f.healthy.Store(err == nil)
	switch {
	case err == nil:
		f.failSince.Store(nil)
		f.polled.Store(f.now().UnixNano())
	case !f.failing:
		now := f.now()
		f.failSince.Store(&now)
	}
	switch {
	case err != nil && !f.failing:
		f.log.Warn("change feed poll failed; retrying", zap.Error(err))
	case err != nil:
		f.log.Debug("change feed poll failed again", zap.Error(err))
	case f.failing:
		f.log.Info("change feed recovered", zap.Int64("seq", f.seq.Load()))
	}
	f.failing = err != nil
	return err
}

func (f *Follower) poll(ctx context.Context) error {
	if !f.started {
		last, err := f.feed.LastSeq(ctx)
		if err != nil {
			return fmt.Errorf("keycache: change feed last seq: %w", err)
		}
		f.cache.Purge()
		f.seq.Store(last)
		f.started = true
		return nil
	}
	for range maxBatches {
		after := f.seq.Load()
		chs, err := f.feed.Changes(ctx, after, feedBatch)
		if err != nil {
			return fmt.Errorf("keycache: change feed: %w", err)
		}
		if len(chs) == 0 {
			return f.checkBackwards(ctx, after)
		}
		next, last := after, after
		for _, ch := range chs {
			if ch.Seq <= after {
				continue // not newer than asked for: nothing to do
			}
			f.cache.Evict(ch.Digests...)
			switch {
			case ch.Kind != apikey.WorkspaceChanged:
			case ch.Workspace != "":
				f.cache.EvictWorkspace(ch.Workspace)
			default: // a workspace change that does not say which: every entry may be stale
				f.cache.Purge()
			}
			if ch.Seq == next+1 && next == last {
				next = ch.Seq
			}
			last = max(last, ch.Seq)
			f.log.Debug("key changed", zap.Int64("seq", ch.Seq), zap.String("key_id", ch.KeyID),
				zap.String("workspace", ch.Workspace), zap.String("kind", string(ch.Kind)))
		}
		if next < last {
			now := f.now()
			if !f.gap || f.gapSeq != next {
				f.gap, f.gapSeq, f.gapAt = true, next, now
			}
			if now.Sub(f.gapAt) < f.grace {
				f.seq.Store(next) // read the changes after the hole again next time
				return nil
			}
			f.cache.Purge()
			f.log.Warn("change feed skipped changes; purged cache", zap.Int64("after", next), zap.Int64("next", last))
			next = last
		}
		f.gap = false
		f.seq.Store(next)
		if len(chs) < feedBatch {
			return nil
		}
	}
	return nil
}

// checkBackwards purges the cache when the feed's newest Seq is below ours (the
// store was replaced or restored), and follows the feed from there.
func (f *Follower) checkBackwards(ctx context.Context, after int64) error {
	last, err := f.feed.LastSeq(ctx)
	if err != nil {
		return fmt.Errorf("keycache: change feed last seq: %w", err)
	}
	if last < after {
		f.cache.Purge()
		f.seq.Store(last)
		f.gap = false
		f.log.Warn("change feed went backwards; purged cache", zap.Int64("seq", after), zap.Int64("last_seq", last))
	}
	return nil
}

// Seq returns the Seq of the last change applied.
func (f *Follower) Seq() int64 { return f.seq.Load() }

// LastPolled returns when a poll last read the change feed successfully, or
// when the follower was made if none has yet (the change-feed lag metric).
func (f *Follower) LastPolled() time.Time { return time.Unix(0, f.polled.Load()) }

// Healthy reports whether the last poll succeeded (false before the first).
func (f *Follower) Healthy() bool { return f.healthy.Load() }

// FailingSince returns when the polls began to fail, if the last one failed:
// the time of the first failure since the last success (or since the start).
// It is the zero time while the last poll succeeded or before any poll ends.
func (f *Follower) FailingSince() time.Time {
	if t := f.failSince.Load(); t != nil {
		return *t
	}
	return time.Time{}
}
