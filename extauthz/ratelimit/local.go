package ratelimit

import (
	"context"
	"errors"
	"hash/maphash"
	"sync"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// maxShards bounds the number of lock shards of a Local limiter, and
// minPerShard keeps small limiters on few shards so eviction stays rare.
const (
	maxShards   = 64
	minPerShard = 16
)

// DefaultSweepInterval is how often a Local limiter drops idle keys.
const DefaultSweepInterval = time.Minute

// Local is an in-memory GCRA limiter for one replica.
//
// State is a map from key to TAT split over up to 64 shards (a power of two,
// with room for at least 16 keys each), each behind its own mutex, so
// decisions are exact under concurrency. Memory is bounded: the limiter
// holds at most maxKeys keys, each shard at most maxKeys/shards.
// When a new key lands in a full shard, the shard first drops every entry
// whose TAT has passed (those are equivalent to no state); if none has, it
// evicts the entry with the oldest TAT — the key closest to a full budget —
// which then starts again from a full burst. A sweeper goroutine also drops
// passed entries every sweep interval; Close stops it.
type Local struct {
	now    func() time.Time // injected clock; nil means the real one
	base   time.Time
	seed   maphash.Seed
	mask   uint64
	shards []shard
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

type shard struct {
	mu  sync.Mutex
	m   map[string]uint64 // key → TAT (nanoseconds on the limiter's clock; unsigned: see gcra)
	max int
	_   [40]byte // keep neighbouring shards' locks off one cache line
}

// LocalOption configures a Local limiter.
type LocalOption func(*localConfig)

type localConfig struct {
	now   func() time.Time
	sweep time.Duration
}

// withClock makes the limiter read time from now instead of the real clock
// (deterministic tests); nil means the real clock.
func withClock(now func() time.Time) LocalOption {
	return func(c *localConfig) { c.now = now }
}

// WithSweepInterval sets how often idle keys are dropped in the background;
// zero or less turns the sweeper goroutine off (full shards still reclaim on insert).
func WithSweepInterval(d time.Duration) LocalOption {
	return func(c *localConfig) { c.sweep = d }
}

// NewLocal returns an in-memory GCRA limiter that keeps at most maxKeys keys.
func NewLocal(maxKeys int, opts ...LocalOption) (*Local, error) {
	if maxKeys < 1 {
		return nil, errors.New("ratelimit: max keys must be at least 1")
	}
	cfg := localConfig{sweep: DefaultSweepInterval}
	for _, o := range opts {
		o(&cfg)
	}
	n := 1
	for n*2 <= maxShards && n*2*minPerShard <= maxKeys {
		n *= 2
	}
	l := &Local{
		now:    cfg.now,
		base:   time.Now(),
		seed:   maphash.MakeSeed(),
		mask:   uint64(n - 1),
		shards: make([]shard, n),
	}
	if l.now != nil {
		l.base = l.now()
	}
	for i := range l.shards {
		l.shards[i].m = make(map[string]uint64)
		l.shards[i].max = maxKeys / n
	}
	if cfg.sweep > 0 {
		l.stop, l.done = make(chan struct{}), make(chan struct{})
		go l.sweeper(cfg.sweep)
	}
	return l, nil
}

// Allow decides one request for key under r.
func (l *Local) Allow(_ context.Context, key string, r apikey.Rate) (Decision, error) {
	if r.N <= 0 || r.Per <= 0 {
		return Decision{}, invalidRate(r)
	}
	// params(r, time.Nanosecond), spelled out: one division on the hot path.
	iv := int64(r.Per) / int64(r.N)
	if iv < 1 {
		iv = 1
	}
	tau := iv * int64(r.N)
	now := l.nanos()
	s := &l.shards[maphash.String(l.seed, key)&l.mask]
	s.mu.Lock()
	tat, ok := s.m[key]
	next, d := gcra(now, tat, iv, tau, r, time.Nanosecond)
	if d.Allowed {
		if ok {
			s.m[key] = next
		} else {
			s.insert(key, next, uint64(max(now, 0)))
		}
	}
	s.mu.Unlock()
	return d, nil
}

// Len returns the number of keys the limiter currently holds.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Close stops the sweeper goroutine; the limiter stays usable.
func (l *Local) Close() error {
	if l.stop != nil {
		l.once.Do(func() { close(l.stop) })
		<-l.done
	}
	return nil
}

// nanos is the clock as nanoseconds since the limiter started. The real
// clock goes through time.Since, which reads only the monotonic clock.
func (l *Local) nanos() int64 {
	if l.now == nil {
		return int64(time.Since(l.base))
	}
	return int64(l.now().Sub(l.base))
}

// insert adds a new key, making room first when the shard is full. The map
// keeps key itself (the Check path passes the cached key id, which outlives
// the request), so a limited key costs no copy of its id.
func (s *shard) insert(key string, tat, now uint64) {
	if len(s.m) >= s.max {
		s.sweep(now)
	}
	if len(s.m) >= s.max {
		var oldest string
		low, first := uint64(0), true
		for k, t := range s.m {
			if first || t < low {
				oldest, low, first = k, t, false
			}
		}
		delete(s.m, oldest)
	}
	s.m[key] = tat
}

// sweep drops the entries whose TAT has passed; the caller holds s.mu.
func (s *shard) sweep(now uint64) {
	for k, t := range s.m {
		if t <= now {
			delete(s.m, k)
		}
	}
}

// sweepAll drops passed entries from every shard.
func (l *Local) sweepAll() {
	now := uint64(max(l.nanos(), 0))
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.sweep(now)
		s.mu.Unlock()
	}
}

func (l *Local) sweeper(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.sweepAll()
		}
	}
}
