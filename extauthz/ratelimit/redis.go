package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Defaults of the RedisOptions that are not configuration (Prefix, DenyCacheSize).
const (
	DefaultRedisPrefix   = "keyauthz"
	DefaultDenyCacheSize = 10_000
)

// gcraScript is one GCRA decision, atomic in Redis, on Redis server time in
// microseconds. KEYS[1] holds the TAT; ARGV[1] is the emission interval and
// ARGV[2] the burst tolerance (N intervals), both in microseconds; ARGV[3] is
// the decision's deadline in Redis server time (µs; 0 for none). It returns
// {1, ttl, 0, now} when allowed (ttl: µs until the new TAT), {0, wait, ttl,
// now} when denied (wait: µs until one request would pass) and {-1, 0, 0, now}
// when the deadline has passed: its caller has answered by the on-error policy,
// so the script changes nothing (a command queued behind a stalled Redis must
// not spend a token nobody was told about). A denied request writes nothing; an
// allowed one stores the new TAT with a PX expiry at the TAT, when the state
// becomes equivalent to no state. now lets the client follow Redis's clock.
//
// Lua numbers are doubles, exact for integers up to 2^53 µs (285 years);
// Allow caps the interval and tolerance (maxSpan) so that now + TAT lead +
// interval stays far below that, and a stored value that is not a number is
// treated as no state. Numbers are formatted with %.0f because Lua's default
// number format would round them.
const gcraScript = `
if redis.replicate_commands ~= nil then
  pcall(redis.replicate_commands)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local dl = tonumber(ARGV[3])
if dl ~= nil and dl > 0 and now > dl then
  return {-1, 0, 0, now}
end
local iv = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat ~= tat or tat < now then
  tat = now
elseif tat > now + tau then
  tat = now + tau
end
local nxt = tat + iv
local wait = nxt - tau - now
if wait > 0 then
  return {0, wait, tat - now, now}
end
local ttl = nxt - now
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', string.format('%.0f', math.ceil(ttl / 1000)))
return {1, ttl, 0, now}
`

// maxSpan caps the emission interval and the burst tolerance sent to the
// script, in microseconds (2^48 µs, about 8.9 years): with Redis time near 2^51
// µs, every sum the script forms stays below 2^53, where doubles are exact.
// Rates the admin API accepts (periods up to a year) never reach it.
const maxSpan = 1 << 48

// RedisOptions configures a Redis limiter. Timeout and OnError are taken as
// given (their defaults are config.Default's): NewRedis refuses them missing.
type RedisOptions struct {
	Timeout       time.Duration  // per decision, from the call (or the caller's deadline if sooner); must be positive
	OnError       config.OnError // the decision when Redis fails or times out
	Prefix        string         // key prefix; a key is stored as "<prefix>:{<key>}"; default "keyauthz"
	DenyCacheSize int            // keys remembered as over their limit; 0 means 10000, negative turns the cache off
}

// Redis is a GCRA limiter whose state lives in Redis, shared by every
// replica: one atomic Lua script (one command) per decision, on Redis
// server time, with hash-tagged keys so it works on Redis Cluster. The
// decisions in flight at the same time are sent together as one pipeline
// per node (see batch.go), so a loaded server pays one write and one read
// for many decisions; a lone decision is sent at once. Close stops it.
//
// When Redis fails or does not answer within the timeout, Allow returns a
// Decision that follows OnError together with an error wrapping
// ErrUnavailable; callers must use that Decision and treat the error as
// information (log, count). Any other error (an invalid rate) comes with a
// zero Decision. A decision answered by OnError spends no quota, even when a
// stalled Redis runs its command later: the command carries the decision's
// deadline in Redis time and the script does nothing once it has passed.
//
// A denial from Redis is remembered locally until its RetryAfter passes, so
// a client hammering a key that is over its limit is denied without a Redis
// round trip (bounded by DenyCacheSize; when full, only expired entries
// make room).
//
// The script works in microseconds of Redis server time, so one key can
// pass at most one request per microsecond (a finer rate is capped there).
type Redis struct {
	log   *zap.Logger
	opt   RedisOptions
	allow bool // on-error policy
	batch *batcher

	calls atomic.Uint64 // commands sent to Redis
	hits  atomic.Uint64 // decisions answered by the deny cache
	down  atomic.Bool   // last decision failed (logged once per outage)

	now  func() time.Time // deny-cache clock; nil is the real one, tests set it
	base time.Time
	mu   sync.Mutex
	over map[string]overEntry
}

// overEntry is a key known to be over its limit until until (ns on r's clock).
type overEntry struct {
	rate  apikey.Rate
	until int64
	reset int64
}

// NewRedis returns a limiter on client, which may be a single-node client or
// a cluster client. The client must honour context deadlines
// (ContextTimeoutEnabled), or the timeout could not bound a stalled call;
// NewRedisClient builds one that does.
func NewRedis(client redis.UniversalClient, log *zap.Logger, opt RedisOptions) (*Redis, error) {
	if client == nil || log == nil {
		return nil, errors.New("ratelimit: redis client and logger are required")
	}
	if !contextTimeouts(client) {
		return nil, errors.New("ratelimit: redis client must set ContextTimeoutEnabled so the limiter timeout applies")
	}
	if opt.Timeout <= 0 {
		return nil, errors.New("ratelimit: redis timeout must be positive")
	}
	if err := opt.OnError.Check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultRedisPrefix
	}
	if opt.DenyCacheSize == 0 {
		opt.DenyCacheSize = DefaultDenyCacheSize
	}
	r := &Redis{
		log:   log,
		opt:   opt,
		allow: opt.OnError == config.OnErrorAllow,
		base:  time.Now(),
	}
	r.batch = newBatcher(client, gcraScript, &r.calls)
	if opt.DenyCacheSize > 0 {
		r.over = make(map[string]overEntry)
	}
	return r, nil
}

// NewRedisClient returns a go-redis client suited to the limiter: a cluster
// client when cluster is set (addrs are seed nodes), else a single-node
// client on addrs[0], honouring context deadlines. A failed command is retried
// once, after at most a few milliseconds (a pooled connection Redis closed
// gets one more try on a new one), so a Redis that refuses connections costs a
// decision ~milliseconds before on_error applies, not its whole timeout.
//
// Every decision that needs a connection dials (bounded by its own deadline),
// so the first decision after Redis is back reaches it: go-redis's own dial
// retries (5, 100 ms apart) and its dial circuit breaker (after PoolSize
// failed dials it stops dialing and probes once a second, which held Checks on
// on_error for up to a second after a restart) are bypassed, see dialer.
func NewRedisClient(addrs []string, cluster bool, password string) (redis.UniversalClient, error) {
	if len(addrs) == 0 {
		return nil, errors.New("ratelimit: no redis address")
	}
	dial := dialer(redis.NewDialer(&redis.Options{DialTimeout: dialTimeout}))
	if cluster {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: addrs, Password: password, ContextTimeoutEnabled: true,
			MaxRetries: retries, MinRetryBackoff: minBackoff, MaxRetryBackoff: maxBackoff,
			Dialer: dial, DialTimeout: dialTimeout,
		}), nil
	}
	if len(addrs) > 1 {
		return nil, errors.New("ratelimit: several redis addresses need cluster mode")
	}
	return redis.NewClient(&redis.Options{
		Addr: addrs[0], Password: password, ContextTimeoutEnabled: true,
		MaxRetries: retries, MinRetryBackoff: minBackoff, MaxRetryBackoff: maxBackoff,
		Dialer: dial, DialTimeout: dialTimeout,
	}), nil
}

// dialTimeout bounds a dial without a sooner deadline (the warm-up PING);
// a decision's dial is bounded by the decision's deadline.
const dialTimeout = time.Second

// dialer wraps go-redis's dialer so that a failed dial is not reported to the
// pool as one: it returns a connection that fails every read and write with
// the dial's error instead. The command that needed the connection fails just
// the same (initializing the connection fails; it is then discarded), but the
// pool does not count it, so it never opens its dial circuit breaker, which
// would refuse to dial for up to a second after Redis is back.
func dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			// Not a *net.OpError: go-redis would retry a dial error, with its
			// default backoff, inside the decision's budget.
			return failedConn{err: errors.New(err.Error())}, nil
		}
		return c, nil
	}
}

// failedConn is a connection whose dial failed: every read and write returns
// the dial error.
type failedConn struct{ err error }

func (c failedConn) Read([]byte) (int, error)         { return 0, c.err }
func (c failedConn) Write([]byte) (int, error)        { return 0, c.err }
func (c failedConn) Close() error                     { return nil }
func (c failedConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c failedConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c failedConn) SetDeadline(time.Time) error      { return nil }
func (c failedConn) SetReadDeadline(time.Time) error  { return nil }
func (c failedConn) SetWriteDeadline(time.Time) error { return nil }

// Retries of the limiter's client: one, soon (go-redis's defaults are three,
// backing off from 8 ms, which spends a 20 ms decision budget on a dead server).
const (
	retries    = 1
	minBackoff = time.Millisecond
	maxBackoff = 2 * time.Millisecond
)

// contextTimeouts reports whether a known client type honours context
// deadlines; other implementations are trusted.
func contextTimeouts(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return c.Options().ContextTimeoutEnabled
	}
	return true
}

// Allow decides one request for key under rate.
func (r *Redis) Allow(ctx context.Context, key string, rate apikey.Rate) (Decision, error) {
	iv, tau, err := params(rate, time.Microsecond)
	if err != nil {
		return Decision{}, err
	}
	iv, tau = min(iv, maxSpan), min(tau, maxSpan)
	if d, ok := r.cached(key, rate); ok {
		r.hits.Add(1)
		return d, nil
	}
	if err := ctx.Err(); err != nil {
		return r.fail(ctx, rate, iv, err)
	}
	res, err := r.eval(ctx, r.opt.Prefix+":{"+key+"}", iv, tau)
	if err == nil && res[0] == -1 {
		err = errLate
	}
	if err != nil {
		return r.fail(ctx, rate, iv, err)
	}
	if r.down.Load() && r.down.CompareAndSwap(true, false) {
		r.log.Info("redis limiter recovered")
	}
	d := Decision{Limit: rate.N, Window: rate.Per}
	if res[0] == 1 {
		return allowed(d, res[1], iv, tau, time.Microsecond), nil
	}
	d.RetryAfter = time.Duration(res[1]) * time.Microsecond
	d.Reset = time.Duration(res[2]) * time.Microsecond
	r.remember(key, rate, d)
	return d, nil
}

// Calls returns the number of commands sent to Redis so far: one per
// decision that reached Redis, two when Redis had to load the script.
func (r *Redis) Calls() uint64 { return r.calls.Load() }

// CacheHits returns the number of decisions the deny cache answered without Redis.
func (r *Redis) CacheHits() uint64 { return r.hits.Load() }

// Close stops sending decisions to Redis: it waits until every decision
// already queued has its answer (or has failed), and later decisions answer
// by the on-error policy. It does not close the client.
func (r *Redis) Close() error {
	r.batch.close()
	return nil
}

// eval queues one decision (EVALSHA, or EVAL when Redis does not have the
// script) and waits for its reply until the decision's deadline: Timeout
// from now, or ctx's deadline when that is sooner.
func (r *Redis) eval(ctx context.Context, key string, iv, tau int64) ([4]int64, error) {
	deadline := time.Now().Add(r.opt.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	q, err := r.batch.queueFor(key, deadline)
	if err != nil {
		return [4]int64{}, err
	}
	c := newQuery(key, iv, tau, deadline)
	c.timer.Reset(time.Until(deadline))
	if !q.add(c) {
		c.timer.Stop()
		c.release()
		return [4]int64{}, errClosed
	}
	var stop error
	select {
	case <-c.done:
	case <-c.timer.C:
		stop = context.DeadlineExceeded
	case <-ctx.Done():
		stop = ctx.Err()
	}
	c.timer.Stop()
	if stop != nil && !c.state.CompareAndSwap(queryPending, queryAbandoned) {
		// The reply came in as the caller gave up: use it.
		<-c.done
		stop = nil
	}
	if stop != nil {
		return [4]int64{}, stop // the executor may still hold c: not reused
	}
	res, err := c.res, c.err
	c.release()
	return res, err
}

// fail answers by the on-error policy; the first failure of an outage is logged.
func (r *Redis) fail(ctx context.Context, rate apikey.Rate, iv int64, err error) (Decision, error) {
	if ctx.Err() == nil && !r.down.Load() && r.down.CompareAndSwap(false, true) {
		r.log.Warn("redis limiter unavailable, applying on_error policy",
			zap.Stringer("on_error", r.opt.OnError), zap.Error(err))
	}
	d := Decision{Allowed: r.allow, Limit: rate.N, Window: rate.Per}
	if !r.allow {
		d.RetryAfter = time.Duration(iv) * time.Microsecond
		d.Reset = d.RetryAfter
	}
	return d, fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (r *Redis) nanos() int64 {
	if r.now == nil {
		return int64(time.Since(r.base))
	}
	return int64(r.now().Sub(r.base))
}

// cached answers from the deny cache when key is known to be over its
// limit under the same rate.
func (r *Redis) cached(key string, rate apikey.Rate) (Decision, bool) {
	if r.over == nil {
		return Decision{}, false
	}
	r.mu.Lock()
	e, ok := r.over[key]
	if !ok {
		r.mu.Unlock()
		return Decision{}, false
	}
	now := r.nanos()
	if e.until <= now || e.rate != rate {
		delete(r.over, key)
		r.mu.Unlock()
		return Decision{}, false
	}
	r.mu.Unlock()
	return Decision{
		Limit:      rate.N,
		Window:     rate.Per,
		RetryAfter: time.Duration(e.until - now),
		Reset:      time.Duration(max(e.reset-now, e.until-now)),
	}, true
}

// remember records a Redis denial. When the cache is full it first drops
// expired entries; if none has expired the denial is not cached.
func (r *Redis) remember(key string, rate apikey.Rate, d Decision) {
	if r.over == nil {
		return
	}
	now := r.nanos()
	e := overEntry{rate: rate, until: now + int64(d.RetryAfter), reset: now + int64(d.Reset)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.over[key]; !ok && len(r.over) >= r.opt.DenyCacheSize {
		for k, v := range r.over {
			if v.until <= now {
				delete(r.over, k)
			}
		}
		if len(r.over) >= r.opt.DenyCacheSize {
			return
		}
	}
	r.over[strings.Clone(key)] = e
}
