// Package keycache is the key cache of the Check path: a Lookuper decorator
// that keeps positive entries (keys found) and negative entries (unknown
// digests) in bounded LRUs with TTLs, collapses concurrent misses for one
// digest into one store read, serves stale entries for a bounded time while
// the store is failing, and drops entries when the store's change feed says
// a key changed (Follower).
package keycache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// ErrClosed is returned by Lookup on a miss after Close.
var ErrClosed = errors.New("keycache: closed")

var _ apikey.Lookuper = (*Cache)(nil)

// Options sizes the cache.
type Options struct {
	Size         int           // positive entries
	TTL          time.Duration // positive entry freshness; after it the entry is re-read from the store
	NegativeSize int           // negative entries (0 with NegativeTTL 0 disables negative caching)
	NegativeTTL  time.Duration // unknown digests are remembered this long (0 = not remembered)
	MaxStaleness time.Duration // store outage: a positive entry older than TTL is still served up to TTL+MaxStaleness when the store errors (0 = never serve stale)
	ReadTimeout  time.Duration // bounds each store read (besides the starting caller's deadline); 0 = no bound of its own
	// Now, when set, is the cache's clock, read on every lookup, instead of its
	// own coarse ticking one (tests that move time).
	Now func() time.Time
	// ObserveRead, when set, is called after every store read with how long it
	// took and its error (nil, apikey.ErrNotFound or a failure), on the reading
	// goroutine (metrics: keyauthz_store_read_duration_seconds).
	ObserveRead func(took time.Duration, err error)
	// Metadata names the key metadata fields the cache keeps (the ones the
	// Check path forwards, config headers.metadata); a cached key's Metadata
	// holds only these, and is nil when it has none of them.
	Metadata []string
}

// Stats are the cache's counters since New; Hits+NegativeHits+Misses is the number of Lookups.
type Stats struct {
	Hits         uint64 // answered from a fresh positive entry
	NegativeHits uint64 // answered ErrNotFound from a fresh negative entry
	Misses       uint64 // not answered from a fresh entry: waited for a store read, or served stale
	StoreReads   uint64 // store Lookup calls made
	StoreErrors  uint64 // store Lookup calls that failed with an error other than ErrNotFound
	StaleServes  uint64 // answers from a positive entry older than TTL because the store was failing
}

const (
	// minShardSize is the fewest positive entries a shard holds; small caches get one shard (exact LRU).
	minShardSize = 1024
	// maxShards bounds the number of shards (a power of two).
	maxShards = 32
	// maxStaleRetry bounds how long a stale entry is served without asking the failing store again.
	maxStaleRetry = time.Second
	// sweepPerInsert is how many expired LRU-tail entries an insert drops.
	sweepPerInsert = 2
	// minTick and maxTick bound the cache clock's resolution (a hundredth of the shortest TTL).
	minTick, maxTick = time.Millisecond, 100 * time.Millisecond
	// maxIdleReaders bounds the reader goroutines kept waiting for the next miss.
	maxIdleReaders = 8
	// readerIdle is how long an idle reader goroutine waits for a miss before it exits.
	readerIdle = 10 * time.Second
)

// entry is one positive cache entry; key is never written after insertion,
// retry only under the shard lock.
type entry struct {
	key   compact
	at    time.Duration // fetch time on the cache clock
	retry time.Duration // while stale: do not ask the store again before this time
}

// compact is the part of a Key the Check path reads, kept small so a cached key
// costs a few hundred bytes: times as a stamp, no name, display, creation or
// last-use time, and only the configured metadata fields (the admin API reads
// the rest from the store). What most keys lack (grants, a workspace record,
// forwarded metadata) sits behind one pointer, nil for most keys, so that such
// a key costs no more than before those existed.
type compact struct {
	id, workspace            string
	x                        *extra // nil without grants, workspace policy or kept metadata
	expires, notBefore, revd stamp
	rate                     apikey.Rate
	version                  int
	disabled                 bool
}

// extra is the rarer part of a cached key.
type extra struct {
	grants []string
	space  apikey.Policy     // the workspace record's policy (zero when none)
	meta   map[string]string // the configured metadata fields the key has; read-only
}

// stamp is a time as microseconds since time.Time's zero instant, January 1
// of year 1 UTC; 0 is the zero Time (unset). One int64 of microseconds is exact
// for every microsecond of years 1 to 9999 and far beyond (to year 292,277),
// and microseconds are what the SQL stores keep. Unix nanoseconds in an int64
// would wrap after 2262-04-11. A sub-microsecond part (only a file store can
// carry one) is rounded toward a deny: expiry and revocation down, not-before up.
type stamp int64

// zeroUnix is the Unix time, in seconds, of time.Time's zero instant.
const zeroUnix = -62135596800

// maxStampSec bounds the seconds a stamp holds (years past 292,277 saturate there).
const maxStampSec = (1<<63 - 1) / 1_000_000

// toStamp keeps t to the microsecond, rounding a finer part up when up is set.
func toStamp(t time.Time, up bool) stamp {
	if t.IsZero() {
		return 0
	}
	sec, ns := t.Unix()-zeroUnix, int64(t.Nanosecond())
	switch {
	case sec < 0: // before year 1: the earliest stamp
		return 1
	case sec >= maxStampSec:
		return stamp(maxStampSec * 1e6)
	}
	us := sec*1e6 + ns/1e3
	if up && ns%1e3 != 0 {
		us++
	}
	return stamp(max(us, 1))
}

func (s stamp) time() time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(int64(s)/1e6+zeroUnix, int64(s)%1e6*1e3)
}

// pack keeps what the Check path reads of k; of its metadata, only the fields
// in keep.
func pack(k apikey.Key, keep []string) compact {
	c := compact{id: k.ID, workspace: k.Workspace, expires: toStamp(k.ExpiresAt, false),
		notBefore: toStamp(k.NotBefore, true), revd: toStamp(k.RevokedAt, false), rate: k.RateLimit,
		version: k.PepperVersion, disabled: k.Disabled}
	var meta map[string]string
	if len(k.Metadata) > 0 {
		for _, f := range keep {
			if v, ok := k.Metadata[f]; ok {
				if meta == nil {
					meta = make(map[string]string, len(keep))
				}
				meta[f] = v
			}
		}
	}
	if len(k.Grants) > 0 || !zeroPolicy(&k.Space) || meta != nil {
		c.x = &extra{grants: k.Grants, space: k.Space, meta: meta}
	}
	return c
}

// zeroPolicy reports whether p adds nothing to a key's checks.
func zeroPolicy(p *apikey.Policy) bool {
	return p.RateLimit.IsZero() && len(p.Grants) == 0 && !p.Disabled
}

func (c *compact) unpack() apikey.Key {
	if x := c.x; x != nil {
		return apikey.Key{ID: c.id, Workspace: c.workspace, Grants: x.grants, ExpiresAt: c.expires.time(),
			NotBefore: c.notBefore.time(), RevokedAt: c.revd.time(), RateLimit: c.rate, PepperVersion: c.version,
			Disabled: c.disabled, Space: x.space, Metadata: x.meta}
	}
	return apikey.Key{ID: c.id, Workspace: c.workspace, ExpiresAt: c.expires.time(),
		NotBefore: c.notBefore.time(), RevokedAt: c.revd.time(), RateLimit: c.rate, PepperVersion: c.version,
		Disabled: c.disabled}
}

// read is one store read in flight; waiters read its result after done is closed.
type read struct {
	done    chan struct{}
	key     apikey.Key
	err     error
	stale   bool // key is a stale entry served because the store failed
	evicted bool // Evict or Purge ran while in flight: do not insert the result (shard lock)
	// wsEvicted are the workspaces EvictWorkspace dropped while the read was in
	// flight: a key of one of them is not inserted (shard lock).
	wsEvicted []string

	s        *shard
	d        apikey.Digest
	ctx      readCtx   // the read's context, before its deadline
	deadline time.Time // zero: none
}

// readCtx is the context of a shared store read: the starting caller's values,
// but the cache's cancellation (Close) instead of the caller's, since other
// callers wait for the read too.
type readCtx struct {
	context.Context                 // the cache's: canceled by Close
	values          context.Context // the starting caller's
}

// Value answers from the cache's context first, so that context.WithDeadline
// finds the cache's cancelation (the only thing it holds) and links to it
// without a goroutine; any other key is the caller's.
func (r *readCtx) Value(key any) any {
	if v := r.Context.Value(key); v != nil {
		return v
	}
	return r.values.Value(key)
}

// shard is one independently locked part of the cache, chosen by the digest's first byte.
type shard struct {
	mu       sync.Mutex
	pos      *simplelru.LRU[[32]byte, *entry]
	neg      *simplelru.LRU[[32]byte, time.Duration] // value: expiry on the cache clock; nil when disabled
	inflight map[[32]byte]*read                      // store reads in flight, by digest

	hits, negHits, misses, stale atomic.Uint64

	_ [64]byte // keep shards on separate cache lines
}

// Cache is a Lookuper over a store with positive and negative LRU+TTL entries,
// one store read per digest at a time, stale serving during store outages, and eviction.
type Cache struct {
	store    apikey.Lookuper
	log      *zap.Logger
	shards   []shard
	mask     int
	ttl      time.Duration
	negTTL   time.Duration
	maxStale time.Duration
	retry    time.Duration
	readTO   time.Duration
	meta     []string // Options.Metadata: the metadata fields kept

	// Store reads run on reader goroutines that wait a while for the next
	// miss instead of exiting: a read through a store driver grows a
	// goroutine's stack, and a fresh goroutine per miss paid that every time.
	jobs chan *read   // hands a read to an idle reader
	idle atomic.Int32 // readers waiting on jobs

	base  time.Time
	now   atomic.Int64     // coarse clock: monotonic nanoseconds since base, advanced by tick (by tests when not ticking)
	nowFn func() time.Time // Options.Now: the clock instead of now when set

	reads, storeErrs atomic.Uint64
	observeRead      func(time.Duration, error) // Options.ObserveRead

	closeMu sync.RWMutex
	closed  bool
	wg      sync.WaitGroup
	done    context.Context // canceled by Close: stops store reads in flight
	stop    context.CancelFunc
}

// New returns a cache in front of store. Its clock ticks at a hundredth of the
// shortest TTL (between 1ms and 100ms), so a TTL may last up to one tick longer.
// Close stops the clock and must be called.
func New(store apikey.Lookuper, opt Options, log *zap.Logger) (*Cache, error) {
	return newCache(store, opt, log, true)
}

// newCache is New; tests pass tick false and advance c.now themselves.
func newCache(store apikey.Lookuper, opt Options, log *zap.Logger, tick bool) (*Cache, error) {
	switch {
	case store == nil:
		return nil, errors.New("keycache: nil store")
	case log == nil:
		return nil, errors.New("keycache: nil logger")
	case opt.Size <= 0:
		return nil, fmt.Errorf("keycache: size %d: must be positive", opt.Size)
	case opt.TTL <= 0:
		return nil, fmt.Errorf("keycache: ttl %v: must be positive", opt.TTL)
	case opt.NegativeSize < 0:
		return nil, fmt.Errorf("keycache: negative size %d: must not be negative", opt.NegativeSize)
	case opt.NegativeTTL < 0:
		return nil, fmt.Errorf("keycache: negative ttl %v: must not be negative", opt.NegativeTTL)
	case opt.MaxStaleness < 0:
		return nil, fmt.Errorf("keycache: max staleness %v: must not be negative", opt.MaxStaleness)
	case opt.ReadTimeout < 0:
		return nil, fmt.Errorf("keycache: read timeout %v: must not be negative", opt.ReadTimeout)
	case (opt.NegativeSize == 0) != (opt.NegativeTTL == 0):
		return nil, errors.New("keycache: negative size and negative ttl must both be set or both be 0")
	}
	n := 1
	for n < maxShards && opt.Size/(2*n) >= minShardSize {
		n *= 2
	}
	c := &Cache{
		store:    store,
		log:      log,
		shards:   make([]shard, n),
		mask:     n - 1,
		ttl:      opt.TTL,
		negTTL:   opt.NegativeTTL,
		maxStale: opt.MaxStaleness,
		retry:    min(opt.TTL, maxStaleRetry),
		readTO:   opt.ReadTimeout,
		meta:     slices.Clone(opt.Metadata),
		jobs:     make(chan *read),
		base:     time.Now(),
		nowFn:    opt.Now,

		observeRead: opt.ObserveRead,
	}
	if opt.Now != nil {
		c.base, tick = opt.Now(), false
	}
	c.done, c.stop = context.WithCancel(context.Background())
	for i := range c.shards {
		s := &c.shards[i]
		var err error
		if s.pos, err = simplelru.NewLRU[[32]byte, *entry](ceilDiv(opt.Size, n), nil); err != nil {
			return nil, fmt.Errorf("keycache: %w", err)
		}
		if opt.NegativeSize > 0 {
			if s.neg, err = simplelru.NewLRU[[32]byte, time.Duration](ceilDiv(opt.NegativeSize, n), nil); err != nil {
				return nil, fmt.Errorf("keycache: %w", err)
			}
		}
		s.inflight = make(map[[32]byte]*read)
	}
	if tick {
		res := opt.TTL
		if opt.NegativeTTL > 0 {
			res = min(res, opt.NegativeTTL)
		}
		c.wg.Add(1)
		go c.tick(min(max(res/100, minTick), maxTick))
	}
	return c, nil
}

// tick advances the coarse clock every res until Close: reading a clock on
// every hit would cost more than the rest of the hit.
func (c *Cache) tick(res time.Duration) {
	defer c.wg.Done()
	t := time.NewTicker(res)
	defer t.Stop()
	for {
		select {
		case <-c.done.Done():
			return
		case <-t.C:
			c.now.Store(int64(time.Since(c.base)))
		}
	}
}

// clock returns the coarse time since base.
func (c *Cache) clock() time.Duration {
	if c.nowFn != nil {
		return c.nowFn().Sub(c.base)
	}
	return time.Duration(c.now.Load())
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func (c *Cache) shard(sum *[32]byte) *shard { return &c.shards[int(sum[0])&c.mask] }

// Lookup returns the key for d from the cache or, on a miss, from the store.
// Unknown digests return apikey.ErrNotFound, or apikey.ErrNotFoundCached when
// answered from a negative entry (errors.Is(err, apikey.ErrNotFound) holds for
// both); other store errors are returned wrapped and not cached. A Key
// answered from a cache entry carries only what the Check path reads (ID,
// Workspace, Grants, ExpiresAt, NotBefore, RevokedAt, RateLimit,
// PepperVersion, Disabled, Space, and of Metadata only the fields of
// Options.Metadata, nil when it has none of them); read the store for the
// rest. The returned Key shares Grants, Space.Grants and Metadata with the
// cache: treat them as read-only.
func (c *Cache) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	s := c.shard(&d.Sum)
	now := c.clock()
	s.mu.Lock()
	if e, ok := s.pos.Get(d.Sum); ok {
		if now-e.at <= c.ttl {
			s.mu.Unlock()
			s.hits.Add(1)
			return e.key.unpack(), nil
		}
		return c.refresh(ctx, s, d, e, now)
	}
	if s.neg != nil {
		if exp, ok := s.neg.Get(d.Sum); ok {
			if now < exp {
				s.mu.Unlock()
				s.negHits.Add(1)
				return apikey.Key{}, apikey.ErrNotFoundCached
			}
			s.neg.Remove(d.Sum)
		}
	}
	return c.wait(ctx, s, d)
}

// refresh handles a positive entry older than TTL; called with s.mu held, returns with it released.
func (c *Cache) refresh(ctx context.Context, s *shard, d apikey.Digest, e *entry, now time.Duration) (apikey.Key, error) {
	switch age := now - e.at; {
	case age > c.ttl+c.maxStale:
		s.pos.Remove(d.Sum)
	case c.maxStale > 0 && now < e.retry:
		// The store failed moments ago for this entry: serve it without asking again.
		s.mu.Unlock()
		s.misses.Add(1)
		s.stale.Add(1)
		return e.key.unpack(), nil
	}
	return c.wait(ctx, s, d)
}

// wait joins or starts the store read for d; called with s.mu held, returns with it released.
func (c *Cache) wait(ctx context.Context, s *shard, d apikey.Digest) (apikey.Key, error) {
	rd := s.inflight[d.Sum]
	if rd == nil {
		c.closeMu.RLock()
		if c.closed {
			c.closeMu.RUnlock()
			s.mu.Unlock()
			return apikey.Key{}, ErrClosed
		}
		rd = &read{done: make(chan struct{}), s: s, d: d, ctx: readCtx{c.done, ctx}}
		rd.deadline, _ = ctx.Deadline()
		if c.readTO > 0 {
			if dl := time.Now().Add(c.readTO); rd.deadline.IsZero() || dl.Before(rd.deadline) {
				rd.deadline = dl
			}
		}
		s.inflight[d.Sum] = rd
		c.startRead(rd)
		c.closeMu.RUnlock()
	}
	s.mu.Unlock()
	s.misses.Add(1)
	select {
	case <-rd.done:
	case <-ctx.Done():
		return apikey.Key{}, fmt.Errorf("keycache: lookup: %w", ctx.Err())
	}
	if rd.stale {
		s.stale.Add(1)
	}
	return rd.key, rd.err
}

// startRead hands rd to an idle reader goroutine or starts one; called with
// c.closeMu read-locked and the cache open.
func (c *Cache) startRead(rd *read) {
	select {
	case c.jobs <- rd:
	default:
		c.wg.Add(1)
		go c.reader(rd)
	}
}

// reader runs rd's read, then waits up to readerIdle for another (when fewer
// than maxIdleReaders already wait) until Close.
func (c *Cache) reader(rd *read) {
	defer c.wg.Done()
	var idle *time.Timer
	for {
		c.fetch(rd)
		if c.idle.Add(1) > maxIdleReaders {
			c.idle.Add(-1)
			return
		}
		if idle == nil {
			idle = time.NewTimer(readerIdle)
			defer idle.Stop()
		} else {
			idle.Reset(readerIdle)
		}
		select {
		case rd = <-c.jobs:
			c.idle.Add(-1)
		case <-idle.C:
			c.idle.Add(-1)
			return
		case <-c.done.Done():
			c.idle.Add(-1)
			return
		}
	}
}

// fetch reads rd's digest from the store for every waiter of rd and records
// the result. The read keeps the starting caller's deadline (bounded by the
// read timeout) and values but not its cancellation (other callers wait for it
// too); Close cancels it.
func (c *Cache) fetch(rd *read) {
	s, d := rd.s, rd.d
	var (
		rctx   context.Context = &rd.ctx
		cancel context.CancelFunc
	)
	if !rd.deadline.IsZero() {
		rctx, cancel = context.WithDeadline(rctx, rd.deadline)
	}
	start := time.Now()
	key, err := c.store.Lookup(rctx, d)
	if c.observeRead != nil {
		c.observeRead(time.Since(start), err)
	}
	if cancel != nil {
		cancel()
	}
	c.reads.Add(1)

	now := c.clock()
	s.mu.Lock()
	if s.inflight[d.Sum] == rd {
		delete(s.inflight, d.Sum)
	}
	switch {
	case err == nil:
		rd.key = key
		if !rd.evicted && !slices.Contains(rd.wsEvicted, key.Workspace) {
			s.sweep(now, c)
			s.pos.Add(d.Sum, &entry{key: pack(key, c.meta), at: now})
			if s.neg != nil {
				s.neg.Remove(d.Sum)
			}
		}
	case errors.Is(err, apikey.ErrNotFound):
		rd.err = apikey.ErrNotFound
		if !rd.evicted {
			s.pos.Remove(d.Sum)
			if s.neg != nil {
				s.sweep(now, c)
				s.neg.Add(d.Sum, now+c.negTTL)
			}
		}
	default:
		c.storeErrs.Add(1)
		e, ok := s.pos.Peek(d.Sum)
		if ok && !rd.evicted && c.maxStale > 0 && now-e.at <= c.ttl+c.maxStale {
			e.retry = now + c.retry
			rd.key, rd.stale = e.key.unpack(), true
		} else {
			rd.err = fmt.Errorf("keycache: store lookup: %w", err)
		}
	}
	s.mu.Unlock()
	close(rd.done)
	if rd.stale {
		c.log.Debug("serving stale key after store error", zap.String("key_id", rd.key.ID), zap.Error(err))
	}
}

// sweep drops a few expired entries from the LRU tails; called with s.mu held.
func (s *shard) sweep(now time.Duration, c *Cache) {
	for range sweepPerInsert {
		if _, e, ok := s.pos.GetOldest(); !ok || now-e.at <= c.ttl+c.maxStale {
			break
		}
		s.pos.RemoveOldest()
	}
	if s.neg == nil {
		return
	}
	for range sweepPerInsert {
		if _, exp, ok := s.neg.GetOldest(); !ok || now < exp {
			break
		}
		s.neg.RemoveOldest()
	}
}

// Evict drops the positive and negative entries for these digest sums; a store
// read in flight for one of them will not be cached, and later lookups start a new read.
func (c *Cache) Evict(sums ...[32]byte) {
	for i := range sums {
		sum := &sums[i]
		s := c.shard(sum)
		s.mu.Lock()
		s.pos.Remove(*sum)
		if s.neg != nil {
			s.neg.Remove(*sum)
		}
		if rd := s.inflight[*sum]; rd != nil {
			rd.evicted = true
			delete(s.inflight, *sum)
		}
		s.mu.Unlock()
	}
}

// EvictWorkspace drops the positive entries of every key of workspace ws (a
// workspace record changed: its policy rides in each of its keys' entries).
// A store read in flight when it runs does not cache a key of ws, and later
// lookups of its digest start a new read. Negative entries are kept.
func (c *Cache) EvictWorkspace(ws string) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, sum := range s.pos.Keys() {
			if e, ok := s.pos.Peek(sum); ok && e.key.workspace == ws {
				s.pos.Remove(sum)
			}
		}
		for sum, rd := range s.inflight {
			// The read's workspace is unknown until it ends: its result is not
			// cached if it is ws, and lookups from now on read the store again.
			rd.wsEvicted = append(rd.wsEvicted, ws)
			delete(s.inflight, sum)
		}
		s.mu.Unlock()
	}
}

// Purge drops every entry; store reads in flight will not be cached.
func (c *Cache) Purge() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.pos.Purge()
		if s.neg != nil {
			s.neg.Purge()
		}
		for sum, rd := range s.inflight {
			rd.evicted = true
			delete(s.inflight, sum)
		}
		s.mu.Unlock()
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	st := Stats{StoreReads: c.reads.Load(), StoreErrors: c.storeErrs.Load()}
	for i := range c.shards {
		s := &c.shards[i]
		st.Hits += s.hits.Load()
		st.NegativeHits += s.negHits.Load()
		st.Misses += s.misses.Load()
		st.StaleServes += s.stale.Load()
	}
	return st
}

// Len returns the number of positive entries held (including entries past TTL
// kept for stale serving or not yet dropped).
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.pos.Len()
		s.mu.Unlock()
	}
	return n
}

// NegativeLen returns the number of negative entries held (including expired ones not yet dropped).
func (c *Cache) NegativeLen() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		if s.neg != nil {
			n += s.neg.Len()
		}
		s.mu.Unlock()
	}
	return n
}

// Close stops the clock, cancels store reads in flight and waits for them; later misses return ErrClosed.
func (c *Cache) Close() error {
	c.closeMu.Lock()
	c.closed = true
	c.closeMu.Unlock()
	c.stop()
	c.wg.Wait()
	return nil
}
