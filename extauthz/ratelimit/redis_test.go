package ratelimit

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/test/testenv"
)

var rate240 = apikey.Rate{N: 240, Per: time.Minute}

// newRedis returns a limiter that is closed when the test ends (before its
// client, which was made first).
// newRedis is NewRedis, with a Timeout and OnError left at zero taken from
// config.Default (ratelimit.timeout, ratelimit.on_error).
func newRedis(t testing.TB, c redis.UniversalClient, log *zap.Logger, opt RedisOptions) *Redis {
	t.Helper()
	def := config.Default().RateLimit
	if opt.Timeout == 0 {
		opt.Timeout = def.Timeout
	}
	if opt.OnError == 0 {
		opt.OnError = def.OnError
	}
	r, err := NewRedis(c, log, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func newClient(t testing.TB, addr string) redis.UniversalClient {
	t.Helper()
	c, err := NewRedisClient([]string{addr}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// blackhole accepts connections and never answers, like a hung server.
func blackhole(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestNewRedisValidates(t *testing.T) {
	good := newClient(t, testenv.FreeAddr(t))
	noCtx := redis.NewClient(&redis.Options{Addr: testenv.FreeAddr(t)})
	defer noCtx.Close()
	log := zap.NewNop()
	ok := RedisOptions{Timeout: time.Second, OnError: config.OnErrorAllow}
	for name, tc := range map[string]struct {
		c   redis.UniversalClient
		log *zap.Logger
		opt RedisOptions
	}{
		"nil client":              {nil, log, ok},
		"nil logger":              {good, nil, ok},
		"no context timeouts":     {noCtx, log, ok},
		"negative timeout":        {good, log, RedisOptions{Timeout: -time.Second, OnError: config.OnErrorDeny}},
		"no timeout":              {good, log, RedisOptions{OnError: config.OnErrorDeny}},
		"no on_error policy":      {good, log, RedisOptions{Timeout: time.Second}},
		"unknown on_error policy": {good, log, RedisOptions{Timeout: time.Second, OnError: 9}},
	} {
		if _, err := NewRedis(tc.c, tc.log, tc.opt); err == nil {
			t.Errorf("%s: NewRedis succeeded", name)
		}
	}
	r, err := NewRedis(good, log, ok)
	if err != nil {
		t.Fatal(err)
	}
	if r.opt != (RedisOptions{Timeout: ok.Timeout, OnError: ok.OnError, Prefix: DefaultRedisPrefix, DenyCacheSize: DefaultDenyCacheSize}) {
		t.Fatalf("options: %+v", r.opt)
	}
}

func TestNewRedisClient(t *testing.T) {
	if _, err := NewRedisClient(nil, false, ""); err == nil {
		t.Error("no address accepted")
	}
	if _, err := NewRedisClient([]string{"a:1", "b:1"}, false, ""); err == nil {
		t.Error("several addresses without cluster accepted")
	}
	c, err := NewRedisClient([]string{"127.0.0.1:1", "127.0.0.1:2"}, true, "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cc, ok := c.(*redis.ClusterClient)
	if !ok || !cc.Options().ContextTimeoutEnabled || cc.Options().Password != "pw" {
		t.Fatalf("cluster client: %T %+v", c, c)
	}
}

// TestRedisUnavailablePolicy checks both policies against a refused and a
// hung server: every call answers by the policy within Timeout+10ms, with an
// error wrapping ErrUnavailable.
func TestRedisUnavailablePolicy(t *testing.T) {
	const timeout = 20 * time.Millisecond
	servers := map[string]string{"refused": testenv.FreeAddr(t), "hung": blackhole(t)}
	for srv, addr := range servers {
		for _, policy := range []config.OnError{config.OnErrorAllow, config.OnErrorDeny} {
			t.Run(srv+"/"+policy.String(), func(t *testing.T) {
				core, logs := observer.New(zap.InfoLevel)
				r := newRedis(t, newClient(t, addr), zap.New(core), RedisOptions{Timeout: timeout, OnError: policy})
				for i := 0; i < 5; i++ {
					start := time.Now()
					d, err := r.Allow(context.Background(), "key_secretish", rate240)
					took := time.Since(start)
					if !errors.Is(err, ErrUnavailable) {
						t.Fatalf("call %d: err %v, want ErrUnavailable", i, err)
					}
					if took > timeout+10*time.Millisecond {
						t.Fatalf("call %d took %v, want <= %v", i, took, timeout+10*time.Millisecond)
					}
					want := Decision{Allowed: policy == config.OnErrorAllow, Limit: 240, Window: time.Minute}
					if policy == config.OnErrorDeny {
						want.RetryAfter, want.Reset = 250*time.Millisecond, 250*time.Millisecond
					}
					if d != want {
						t.Fatalf("call %d: %+v, want %+v", i, d, want)
					}
					if strings.Contains(err.Error(), "key_secretish") {
						t.Fatalf("error names the key: %v", err)
					}
				}
				if n := logs.FilterMessage("redis limiter unavailable, applying on_error policy").Len(); n != 1 {
					t.Fatalf("outage logged %d times, want once", n)
				}
				for _, e := range logs.All() {
					for _, f := range e.Context {
						if strings.Contains(f.String, "key_secretish") || (f.Interface != nil && strings.Contains(fmtAny(f.Interface), "key_secretish")) {
							t.Fatalf("log line names the key: %+v", e)
						}
					}
				}
			})
		}
	}
}

func fmtAny(v any) string {
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}

func TestRedisInvalidRateIsNotUnavailable(t *testing.T) {
	r := newRedis(t, newClient(t, testenv.FreeAddr(t)), zap.NewNop(), RedisOptions{OnError: config.OnErrorAllow})
	_, err := r.Allow(context.Background(), "k", apikey.Rate{})
	if !errors.Is(err, ErrInvalidRate) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("err %v, want ErrInvalidRate only", err)
	}
	if r.Calls() != 0 {
		t.Fatalf("an invalid rate reached Redis (%d calls)", r.Calls())
	}
}

func TestRedisDenyCache(t *testing.T) {
	clk := newFakeClock()
	r := newRedis(t, newClient(t, testenv.FreeAddr(t)), zap.NewNop(), RedisOptions{DenyCacheSize: 2})
	r.now, r.base = clk.Now, clk.Now()
	rate := apikey.Rate{N: 4, Per: time.Second}
	r.remember("k", rate, Decision{RetryAfter: 100 * time.Millisecond, Reset: time.Second})

	d, ok := r.cached("k", rate)
	want := Decision{Limit: 4, Window: time.Second, RetryAfter: 100 * time.Millisecond, Reset: time.Second}
	if !ok || d != want {
		t.Fatalf("cached: %+v %v, want %+v", d, ok, want)
	}
	if _, ok := r.cached("k", apikey.Rate{N: 8, Per: time.Second}); ok {
		t.Fatal("a denial under another rate answered from the cache")
	}
	r.remember("k", rate, Decision{RetryAfter: 100 * time.Millisecond, Reset: time.Second})
	clk.Add(99 * time.Millisecond)
	if d, ok := r.cached("k", rate); !ok || d.RetryAfter != time.Millisecond || d.Reset != 901*time.Millisecond {
		t.Fatalf("1ms before expiry: %+v %v", d, ok)
	}
	clk.Add(time.Millisecond)
	if _, ok := r.cached("k", rate); ok {
		t.Fatal("expired denial still cached")
	}

	// Bounded: a full cache makes room only from expired entries.
	r.remember("a", rate, Decision{RetryAfter: time.Second})
	r.remember("b", rate, Decision{RetryAfter: 10 * time.Millisecond})
	r.remember("c", rate, Decision{RetryAfter: time.Second})
	if _, ok := r.cached("c", rate); ok || len(r.over) != 2 {
		t.Fatalf("full cache took a third key: %d entries", len(r.over))
	}
	clk.Add(10 * time.Millisecond)
	r.remember("c", rate, Decision{RetryAfter: time.Second})
	if _, ok := r.cached("c", rate); !ok {
		t.Fatal("expired entry not reclaimed for a new denial")
	}
	if _, ok := r.cached("a", rate); !ok {
		t.Fatal("live entry dropped")
	}
}

func TestRedisDenyCacheOff(t *testing.T) {
	r := newRedis(t, newClient(t, testenv.FreeAddr(t)), zap.NewNop(), RedisOptions{DenyCacheSize: -1})
	r.remember("k", rate240, Decision{RetryAfter: time.Second})
	if _, ok := r.cached("k", rate240); ok {
		t.Fatal("disabled cache answered")
	}
}

// TestRedisRefusedDialsEveryTime makes 100 decisions against a port that
// refuses connections, with a generous timeout: each answers by the on-error
// policy at once (no dial retries with backoff inside its budget), and the
// client keeps dialing (no dial circuit breaker): the moment a server listens
// there, the next decision reaches it.
func TestRedisRefusedDialsEveryTime(t *testing.T) {
	addr := testenv.FreeAddr(t)
	c := newClient(t, addr)
	r := newRedis(t, c, zap.NewNop(), RedisOptions{Timeout: time.Second, OnError: config.OnErrorDeny})
	var slowest time.Duration
	for i := range 100 {
		start := time.Now()
		if _, err := r.Allow(context.Background(), "k", rate240); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call %d: %v, want ErrUnavailable", i, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	if slowest > 50*time.Millisecond {
		t.Fatalf("a refused decision took %v with a 1s budget, want an immediate on_error answer", slowest)
	}
	// A server comes up on the address: the next dial reaches it (its reply is
	// not Redis's, so the decision still fails, but over a connection).
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s again: %v", addr, err)
	}
	defer l.Close()
	accepted := make(chan struct{})
	go func() {
		if conn, err := l.Accept(); err == nil {
			close(accepted)
			conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, _ = r.Allow(ctx, "k", rate240)
	select {
	case <-accepted:
	case <-time.After(time.Second):
		t.Fatal("no dial after 100 refused ones: the client stopped dialing")
	}
}
