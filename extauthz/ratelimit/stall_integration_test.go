//go:build integration

package ratelimit

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// TestRedisStallDoesNotCharge pauses Redis (SIGSTOP) for 150 ms in the middle
// of a burst at 240 per hour shared by four limiters (replicas): the decisions
// that time out answer by the on-error policy (deny), and when Redis resumes
// and runs the commands still queued on its sockets (each limiter's first
// pipeline of the stall went out on a live connection), the script sees their
// deadline has passed and spends nothing. So exactly the burst of 240 is
// allowed, not 240 minus the stalled ones. (The burst pauses for the moment
// Redis is stopped: a command Redis ran just before it stopped, with its reply
// still unsent, would be spent and answered by on_error, a race no deadline
// can close.)
func TestRedisStallDoesNotCharge(t *testing.T) {
	p, c := singleClient(t)
	loadScript(t, c)
	var rs [4]*Redis
	for i := range rs {
		rs[i] = newTestRedis(t, newClient(t, p.Addr()), RedisOptions{Timeout: 20 * time.Millisecond, OnError: config.OnErrorDeny, DenyCacheSize: -1})
	}
	rate := apikey.Rate{N: 240, Per: time.Hour} // no refill within the test
	ctx := context.Background()
	var allowed, failed, decided atomic.Int64
	// burst runs 16 workers over the limiters until done says so.
	burst := func(done func() bool) {
		t.Helper()
		var g errgroup.Group
		for w := range 16 {
			r := rs[w%len(rs)]
			g.Go(func() error {
				for !done() {
					d, err := r.Allow(ctx, "burst", rate)
					switch {
					case errors.Is(err, ErrUnavailable):
						if d.Allowed {
							return errors.New("on_error deny answered an allow")
						}
						failed.Add(1)
					case err != nil:
						return err
					case d.Allowed:
						allowed.Add(1)
					}
					decided.Add(1)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	burst(func() bool { return decided.Load() >= 100 })
	p.Pause()
	var stalled atomic.Bool
	time.AfterFunc(150*time.Millisecond, func() {
		p.Resume()
		stalled.Store(true)
	})
	burst(stalled.Load)
	if failed.Load() == 0 {
		t.Fatal("no decision timed out during the stall: the test stalled nothing")
	}
	// Spend the rest of the burst, one decision at a time, with a generous
	// budget, until Redis denies.
	slow, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i := 0; ; i++ {
		d, err := rs[0].Allow(slow, "burst", rate)
		if err != nil {
			t.Fatalf("after the stall: %v", err)
		}
		if !d.Allowed {
			break
		}
		allowed.Add(1)
		if i > 300 {
			t.Fatal("never denied")
		}
	}
	t.Logf("150 ms stall mid-burst: %d allowed, %d answered by on_error", allowed.Load(), failed.Load())
	if n := allowed.Load(); n < 239 || n > 241 {
		t.Fatalf("allowed %d, want 240 ± 1: decisions answered by on_error spent tokens", n)
	}
}

// TestRedisScriptLateIsNoop runs the script with a deadline already past in
// Redis time: it answers -1 and leaves the key as it was.
func TestRedisScriptLateIsNoop(t *testing.T) {
	_, c := singleClient(t)
	ctx := context.Background()
	now := serverTime(t, c).UnixMicro()
	res, err := c.Eval(ctx, gcraScript, []string{"late"}, 250_000, 60_000_000, now-1000).Int64Slice()
	if err != nil {
		t.Fatal(err)
	}
	if res[0] != -1 {
		t.Fatalf("late decision: reply %v, want -1 first", res)
	}
	if n, _ := c.Exists(ctx, "late").Result(); n != 0 {
		t.Fatal("a late decision wrote the key")
	}
	res, err = c.Eval(ctx, gcraScript, []string{"late"}, 250_000, 60_000_000, now+int64(time.Minute/time.Microsecond)).Int64Slice()
	if err != nil || res[0] != 1 {
		t.Fatalf("decision before its deadline: %v, %v", res, err)
	}
	res, err = c.Eval(ctx, gcraScript, []string{"late"}, 250_000, 60_000_000, 0).Int64Slice()
	if err != nil || res[0] != 1 {
		t.Fatalf("decision without a deadline: %v, %v", res, err)
	}
}

// TestRedisExtremeRates decides under the widest rates: every value the
// script stores and returns is an exact integer, a one-per-forever key is
// denied after its first request, and a billion per second passes a burst.
func TestRedisExtremeRates(t *testing.T) {
	_, c := singleClient(t)
	r := newTestRedis(t, c, RedisOptions{Timeout: 5 * time.Second, DenyCacheSize: -1})
	ctx := context.Background()
	for _, rate := range []apikey.Rate{
		{N: 1, Per: time.Duration(math.MaxInt64)},
		{N: 1, Per: 2562047 * time.Hour},
		{N: 1, Per: 365 * 24 * time.Hour},
		{N: 1_000_000_000, Per: 365 * 24 * time.Hour},
		{N: math.MaxInt32, Per: time.Duration(math.MaxInt64)},
	} {
		key := "x" + strconv.Itoa(rate.N) + "-" + strconv.FormatInt(int64(rate.Per), 10)
		d, err := r.Allow(ctx, key, rate)
		if err != nil || !d.Allowed {
			t.Fatalf("%v: first request %+v, %v", rate, d, err)
		}
		v, err := c.Get(ctx, r.opt.Prefix+":{"+key+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		tat, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%v: stored TAT %q is not an integer", rate, v)
		}
		now := serverTime(t, c).UnixMicro()
		if lead := tat - now; lead <= 0 || lead > maxSpan {
			t.Fatalf("%v: TAT leads Redis time by %d µs, want (0, %d]", rate, lead, int64(maxSpan))
		}
		if d.Reset <= 0 || d.Remaining < 0 {
			t.Fatalf("%v: first request %+v", rate, d)
		}
		if rate.N == 1 {
			d, err = r.Allow(ctx, key, rate)
			if err != nil || d.Allowed || d.RetryAfter <= 0 {
				t.Fatalf("%v: second request %+v, %v; want a deny", rate, d, err)
			}
		}
	}
	// A billion per second: every request of a burst passes (one per µs at most
	// in steady state, the script's resolution).
	rate := apikey.Rate{N: 1_000_000_000, Per: time.Second}
	for i := range 100 {
		if d, err := r.Allow(ctx, "fast", rate); err != nil || !d.Allowed {
			t.Fatalf("request %d at 1e9/s: %+v, %v", i, d, err)
		}
	}
}

// TestRedisRestartRecovery stops Redis for a second while decisions keep
// coming (each answers by on_error; go-redis's dial circuit breaker, were it
// in the way, would open after PoolSize failed dials and then dial only once a
// second), starts it again and measures, five times, from Redis answering PING
// to the first decision Redis makes: at most 250 ms.
func TestRedisRestartRecovery(t *testing.T) {
	p, c := singleClient(t)
	r := newTestRedis(t, c, RedisOptions{Timeout: 20 * time.Millisecond, OnError: config.OnErrorDeny})
	ctx := context.Background()
	rate := apikey.Rate{N: 1_000_000, Per: time.Second}
	var worst time.Duration
	var took []time.Duration
	for i := range 5 {
		p.Stop()
		for end := time.Now().Add(time.Second); time.Now().Before(end); {
			if _, err := r.Allow(ctx, "restart", rate); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("restart %d: redis down, decision error %v, want ErrUnavailable", i, err)
			}
		}
		p.Start() // returns once Redis answers PING
		up := time.Now()
		for {
			if _, err := r.Allow(ctx, "restart", rate); err == nil {
				break
			}
			if time.Since(up) > 5*time.Second {
				t.Fatalf("restart %d: no decision from redis within 5s", i)
			}
			time.Sleep(time.Millisecond)
		}
		d := time.Since(up)
		took = append(took, d)
		worst = max(worst, d)
	}
	t.Logf("redis restart: first decision from redis %v after PING answered (max %v)", took, worst)
	if worst > 250*time.Millisecond {
		t.Fatalf("recovery took %v, want <= 250ms", worst)
	}
}
