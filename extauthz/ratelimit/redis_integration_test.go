//go:build integration

package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// queued returns the number of queries waiting in q (not yet taken into a pipeline).
func (q *queue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// nodes returns one client per master (the client itself for a single node).
func nodes(t testing.TB, c redis.UniversalClient) []*redis.Client {
	t.Helper()
	switch c := c.(type) {
	case *redis.Client:
		return []*redis.Client{c}
	case *redis.ClusterClient:
		var mu sync.Mutex
		var out []*redis.Client
		err := c.ForEachMaster(context.Background(), func(_ context.Context, n *redis.Client) error {
			mu.Lock()
			out = append(out, n)
			mu.Unlock()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	t.Fatalf("unexpected client %T", c)
	return nil
}

// loadScript puts the GCRA script into every master's script cache so that
// each decision is exactly one EVALSHA.
func loadScript(t testing.TB, c redis.UniversalClient) {
	t.Helper()
	for _, n := range nodes(t, c) {
		if err := n.ScriptLoad(context.Background(), gcraScript).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// scriptCalls sums the EVALSHA and EVAL commands every master has executed.
func scriptCalls(t testing.TB, c redis.UniversalClient) (evalsha, eval int) {
	t.Helper()
	for _, n := range nodes(t, c) {
		info, err := n.Info(context.Background(), "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
			if !ok {
				continue
			}
			v, _, _ := strings.Cut(rest, ",")
			calls, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("commandstats line %q: %v", line, err)
			}
			switch name {
			case "cmdstat_evalsha":
				evalsha += calls
			case "cmdstat_eval":
				eval += calls
			}
		}
	}
	return evalsha, eval
}

func serverTime(t testing.TB, c redis.UniversalClient) time.Time {
	t.Helper()
	ts, err := nodes(t, c)[0].Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// wantPolicy fails t unless 20 calls of r, with Redis unreachable, each answer
// by policy with ErrUnavailable within timeout+10ms.
func wantPolicy(t testing.TB, ctx context.Context, r *Redis, timeout time.Duration, policy config.OnError, what string) {
	t.Helper()
	for i := range 20 {
		start := time.Now()
		d, err := r.Allow(ctx, fmt.Sprint("k", i), rate240)
		if took := time.Since(start); took > timeout+10*time.Millisecond {
			t.Fatalf("%s: call %d took %v, want <= %v", what, i, took, timeout+10*time.Millisecond)
		}
		if !errors.Is(err, ErrUnavailable) || d.Allowed != (policy == config.OnErrorAllow) {
			t.Fatalf("%s: call %d: %+v, %v; want policy %s and ErrUnavailable", what, i, d, err, policy)
		}
	}
}

// recovered waits until r answers a probe without error, within timeout.
func recovered(t testing.TB, ctx context.Context, r *Redis, timeout time.Duration, what string) {
	t.Helper()
	testenv.Eventually(t, timeout, what, func() error {
		_, err := r.Allow(ctx, "probe", apikey.Rate{N: 1000, Per: time.Second})
		return err
	})
}

func singleClient(t testing.TB) (*testenv.RedisProc, redis.UniversalClient) {
	t.Helper()
	p := testenv.StartRedis(t)
	return p, newClient(t, p.Addr())
}

func clusterClient(t testing.TB) redis.UniversalClient {
	t.Helper()
	addrs := testenv.StartRedisCluster(t, 3)
	c, err := NewRedisClient(addrs, true, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newTestRedis(t testing.TB, c redis.UniversalClient, opt RedisOptions) *Redis {
	t.Helper()
	return newRedis(t, c, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), opt)
}

// TestRedisConcurrentExact fires 1000 concurrent decisions for one key at
// 240/m and expects exactly 240 allowed, each with its own Remaining value,
// and exactly one EVALSHA per decision.
func TestRedisConcurrentExact(t *testing.T) {
	for name, mk := range map[string]func(testing.TB) redis.UniversalClient{
		"single":  func(t testing.TB) redis.UniversalClient { _, c := singleClient(t); return c },
		"cluster": clusterClient,
	} {
		t.Run(name, func(t *testing.T) {
			c := mk(t)
			// The deny cache is off so every decision reaches Redis; the
			// timeout is generous because 1000 calls queue for the pool's
			// connections (timeouts have their own test).
			r := newTestRedis(t, c, RedisOptions{Timeout: 10 * time.Second, DenyCacheSize: -1})
			loadScript(t, c)
			calls0 := r.Calls()
			sha0, eval0 := scriptCalls(t, c)

			const total = 1000
			decisions := make([]Decision, total)
			errs := make([]error, total)
			start := make(chan struct{})
			var wg sync.WaitGroup
			before := serverTime(t, c)
			for i := range total {
				wg.Go(func() {
					<-start
					decisions[i], errs[i] = r.Allow(context.Background(), "burst-key", rate240)
				})
			}
			close(start)
			wg.Wait()
			elapsed := serverTime(t, c).Sub(before)

			var allowed []int
			for i, d := range decisions {
				if errs[i] != nil {
					t.Fatalf("decision %d: %v", i, errs[i])
				}
				if d.Allowed {
					allowed = append(allowed, d.Remaining)
				} else if d.RetryAfter <= 0 || d.RetryAfter > 250*time.Millisecond || d.Remaining != 0 {
					t.Fatalf("denied decision %d: %+v", i, d)
				}
			}
			// GCRA replenishes one request per 250ms of Redis time, so a
			// run longer than one interval may rightly allow a few more.
			extra := int(elapsed / (250 * time.Millisecond))
			t.Logf("%d allowed in %v of Redis time (replenishment allows up to %d extra)", len(allowed), elapsed, extra)
			if len(allowed) < 240 || len(allowed) > 240+extra {
				t.Fatalf("%d of %d allowed, want %d (+ up to %d replenished over %v)", len(allowed), total, 240, extra, elapsed)
			}
			if extra == 0 {
				slices.Sort(allowed)
				for i, rem := range allowed {
					if rem != i {
						t.Fatalf("allowed Remaining values %v, want each of 0..239 once", allowed)
					}
				}
			}

			if got := r.Calls() - calls0; got != total {
				t.Fatalf("Calls() went up by %d for %d decisions, want one each", got, total)
			}
			// Concurrent decisions share pipelines (one write, one read for many).
			pipes := r.batch.pipes.Load()
			t.Logf("%d decisions in %d pipelines", total, pipes)
			if pipes > total/2 {
				t.Fatalf("%d pipelines for %d concurrent decisions: not batched", pipes, total)
			}
			sha1, eval1 := scriptCalls(t, c)
			if sha1-sha0 != total || eval1 != eval0 {
				t.Fatalf("Redis ran EVALSHA %d and EVAL %d times for %d decisions, want %d and 0", sha1-sha0, eval1-eval0, total, total)
			}
		})
	}
}

// TestRedisSequence checks one key's decisions, its storage and expiry.
func TestRedisSequence(t *testing.T) {
	_, c := singleClient(t)
	r := newTestRedis(t, c, RedisOptions{Timeout: time.Second, DenyCacheSize: -1})
	ctx := context.Background()
	rate := apikey.Rate{N: 5, Per: 10 * time.Second} // 2s interval
	for i := 1; i <= 5; i++ {
		d, err := r.Allow(ctx, "seq", rate)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Limit != 5 || d.Remaining != 5-i || d.Window != 10*time.Second ||
			d.Reset > time.Duration(i)*2*time.Second || d.Reset < time.Duration(i)*2*time.Second-time.Second {
			t.Fatalf("request %d: %+v", i, d)
		}
	}
	stored, err := c.Get(ctx, "keyauthz:{seq}").Result()
	if err != nil {
		t.Fatalf("TAT not stored under the hash-tagged key: %v", err)
	}
	ttl, err := c.PTTL(ctx, "keyauthz:{seq}").Result()
	if err != nil || ttl <= 9*time.Second || ttl > 10*time.Second {
		t.Fatalf("PTTL = %v, %v; want the key to expire at its TAT, ~10s away", ttl, err)
	}
	for range 3 {
		d, err := r.Allow(ctx, "seq", rate)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed || d.RetryAfter <= time.Second || d.RetryAfter > 2*time.Second || d.Remaining != 0 {
			t.Fatalf("over the limit: %+v", d)
		}
	}
	if again, _ := c.Get(ctx, "keyauthz:{seq}").Result(); again != stored {
		t.Fatalf("a denied request wrote the TAT: %s -> %s", stored, again)
	}
}

// TestRedisNoScriptFallback flushes the script cache: the next decision
// falls back from EVALSHA to EVAL (two round trips), later ones are one.
func TestRedisNoScriptFallback(t *testing.T) {
	_, c := singleClient(t)
	r := newTestRedis(t, c, RedisOptions{Timeout: time.Second})
	ctx := context.Background()
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint64{2, 1, 1} {
		before := r.Calls()
		if d, err := r.Allow(ctx, "ns", rate240); err != nil || !d.Allowed {
			t.Fatalf("call %d: %+v, %v", i, d, err)
		}
		if got := r.Calls() - before; got != want {
			t.Fatalf("call %d made %d round trips, want %d", i, got, want)
		}
	}
}

// TestRedisDenyCacheSkipsRedis: after Redis denies, the key is denied
// locally (no round trip) until RetryAfter has passed.
func TestRedisDenyCacheSkipsRedis(t *testing.T) {
	_, c := singleClient(t)
	r := newTestRedis(t, c, RedisOptions{Timeout: time.Second})
	clk := newFakeClock()
	r.now, r.base = clk.Now, clk.Now()
	ctx := context.Background()
	rate := apikey.Rate{N: 3, Per: time.Minute} // 20s interval
	for range 3 {
		if d, err := r.Allow(ctx, "dc", rate); err != nil || !d.Allowed {
			t.Fatalf("burst: %+v, %v", d, err)
		}
	}
	d, err := r.Allow(ctx, "dc", rate)
	if err != nil || d.Allowed {
		t.Fatalf("4th: %+v, %v; want denied by Redis", d, err)
	}
	calls := r.Calls()
	for i := range 10 {
		cd, err := r.Allow(ctx, "dc", rate)
		if err != nil || cd.Allowed || cd.RetryAfter != d.RetryAfter {
			t.Fatalf("cached denial %d: %+v, %v; want %+v", i, cd, err, d)
		}
	}
	if r.Calls() != calls || r.CacheHits() != 10 {
		t.Fatalf("%d Redis calls and %d cache hits for 10 known-denied requests, want 0 and 10", r.Calls()-calls, r.CacheHits())
	}
	// Another key is not affected.
	if d, err := r.Allow(ctx, "other", rate); err != nil || !d.Allowed {
		t.Fatalf("other key: %+v, %v", d, err)
	}
	clk.Add(d.RetryAfter)
	calls = r.Calls()
	if _, err := r.Allow(ctx, "dc", rate); err != nil {
		t.Fatal(err)
	}
	if r.Calls() != calls+1 {
		t.Fatal("the key was still denied locally after RetryAfter")
	}
}

// TestRedisOutageAndRestart stops and pauses Redis under both policies, then
// restarts it: every call during the outage answers by the policy within
// Timeout+10ms, and limits apply again afterwards with the same client.
func TestRedisOutageAndRestart(t *testing.T) {
	const timeout = 20 * time.Millisecond
	for _, policy := range []config.OnError{config.OnErrorAllow, config.OnErrorDeny} {
		t.Run(policy.String(), func(t *testing.T) {
			p, c := singleClient(t)
			r := newTestRedis(t, c, RedisOptions{Timeout: timeout, OnError: policy})
			ctx := context.Background()
			if _, err := r.Allow(ctx, "warm", rate240); err != nil {
				t.Fatal(err)
			}
			outage := func(what string) { wantPolicy(t, ctx, r, timeout, policy, what) }
			p.Pause()
			outage("paused")
			p.Resume()
			p.Stop()
			outage("stopped")
			p.Start()

			// Same client: it reconnects; then the limit applies again.
			recovered(t, ctx, r, 5*time.Second, "limiter recovers after restart")
			rate := apikey.Rate{N: 3, Per: time.Minute}
			for i := range 4 {
				d, err := r.Allow(ctx, "after-restart", rate)
				if err != nil {
					t.Fatal(err)
				}
				if d.Allowed != (i < 3) {
					t.Fatalf("after restart, request %d: %+v", i+1, d)
				}
			}
		})
	}
}

// TestRedisClusterOutage pauses and then stops every node of a cluster: a
// warm client and a client created during the outage both answer by the
// policy within Timeout+10ms; after a restart the same client limits again.
func TestRedisClusterOutage(t *testing.T) {
	const timeout = 20 * time.Millisecond
	procs := testenv.StartRedisClusterNodes(t, 3)
	addrs := make([]string, len(procs))
	for i, p := range procs {
		addrs[i] = p.Addr()
	}
	newCluster := func() redis.UniversalClient {
		c, err := NewRedisClient(addrs, true, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ctx := context.Background()
	client := newCluster()
	// Load the slot map with a generous deadline first (the app does the same at
	// start); a 20 ms call may otherwise miss it on a loaded machine.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := client.Ping(pctx).Err(); err != nil {
		t.Fatal(err)
	}
	cancel()
	r := newTestRedis(t, client, RedisOptions{Timeout: timeout, OnError: config.OnErrorDeny})
	warmBy := time.Now().Add(10 * time.Second)
	for i := 0; i < 10; { // warm every node's connections
		if _, err := r.Allow(ctx, fmt.Sprint("warm", i), rate240); err == nil {
			i++
		} else if time.Now().After(warmBy) {
			t.Fatal(err)
		}
	}
	outage := func(what string, r *Redis) { wantPolicy(t, ctx, r, timeout, config.OnErrorDeny, what) }
	for _, p := range procs {
		p.Pause()
	}
	outage("paused", r)
	for _, p := range procs {
		p.Resume()
		p.Stop()
	}
	outage("stopped", r)
	outage("stopped, new client", newTestRedis(t, newCluster(), RedisOptions{Timeout: timeout, OnError: config.OnErrorDeny}))

	for _, p := range procs {
		p.Start()
	}
	recovered(t, ctx, r, 10*time.Second, "limiter recovers after the cluster restarted")
	// Limits apply again: a fresh key at 3/m gets exactly 3. A single call may still
	// miss its 20 ms budget while the client refreshes its slot map on a loaded
	// machine, so the sequence is retried with a new key for up to 10 s.
	rate := apikey.Rate{N: 3, Per: time.Minute}
	attempt := 0
	testenv.Eventually(t, 10*time.Second, "after restart, a fresh key at 3/m gets exactly 3", func() error {
		key := fmt.Sprintf("after-restart-%d", attempt)
		attempt++
		got := ""
		for range 4 {
			d, err := r.Allow(ctx, key, rate)
			if err != nil {
				return fmt.Errorf("%q, then %w", got, err)
			}
			got += fmt.Sprint(d.Allowed, " ")
		}
		if got != "true true true false " {
			return fmt.Errorf("%q", got)
		}
		return nil
	})
}

// TestRedisCloseDrains queues decisions while Redis is paused and closes the
// limiter: Close waits until Redis (resumed) has answered every decision
// already queued, so closing the client right after it fails none of them;
// a decision made once Close has begun answers by the policy without a
// command.
func TestRedisCloseDrains(t *testing.T) {
	p, c := singleClient(t)
	r := newTestRedis(t, c, RedisOptions{Timeout: 10 * time.Second, DenyCacheSize: -1})
	loadScript(t, c)
	ctx := context.Background()
	if _, err := r.Allow(ctx, "warm", rate240); err != nil {
		t.Fatal(err)
	}
	p.Pause()
	t.Cleanup(p.Resume)
	const n = 50
	errs := make(chan error, n)
	for i := range n {
		go func() {
			d, err := r.Allow(ctx, fmt.Sprint("drain-", i), rate240)
			if err == nil && !d.Allowed {
				err = fmt.Errorf("denied: %+v", d)
			}
			errs <- err
		}()
	}
	// One pipeline is out to the paused server, the rest wait behind it.
	eventually(t, "every decision is sent or queued", func() bool {
		return int(r.Calls())-1+r.batch.single.queued() == n
	})
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	eventually(t, "Close has begun", func() bool {
		r.batch.mu.RLock()
		defer r.batch.mu.RUnlock()
		return r.batch.closed
	})
	sent := r.Calls()
	if d, err := r.Allow(ctx, "late", rate240); !errors.Is(err, ErrUnavailable) || d.Allowed {
		t.Fatalf("decision during Close: %+v, %v; want the deny policy and ErrUnavailable", d, err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while decisions wait for a paused Redis", err)
	default:
	}
	p.Resume()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil { // what the app does right after
		t.Fatal(err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("a decision queued before Close failed: %v", err)
		}
	}
	if got := r.Calls(); got != n+1 {
		t.Fatalf("%d commands sent, want %d (one per decision before Close; none during Close, sent %d when it began)", got, n+1, sent)
	}
}

// TestRedisClusterSlowNode pauses one master of a cluster: decisions for
// keys on the other masters go on being answered by Redis while one for a
// key on the paused master is stuck (each master has its own queue).
func TestRedisClusterSlowNode(t *testing.T) {
	procs := testenv.StartRedisClusterNodes(t, 3)
	addrs := make([]string, len(procs))
	for i, p := range procs {
		addrs[i] = p.Addr()
	}
	c, err := NewRedisClient(addrs, true, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	cc := c.(*redis.ClusterClient)
	ctx := context.Background()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cc.Ping(pctx).Err(); err != nil {
		t.Fatal(err)
	}
	const stuckFor = 5 * time.Second
	r := newTestRedis(t, c, RedisOptions{Timeout: stuckFor, DenyCacheSize: -1})
	loadScript(t, c)

	// One key per master, found by its slot; the paused master is the first key's.
	keys := map[string]string{} // master address -> key
	for i := 0; len(keys) < len(procs); i++ {
		if i > 10_000 {
			t.Fatalf("found keys for only %d masters", len(keys))
		}
		k := fmt.Sprint("node-key-", i)
		m, err := cc.MasterForKey(pctx, "keyauthz:{"+k+"}")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := keys[m.Options().Addr]; !ok {
			keys[m.Options().Addr] = k
			if _, err := r.Allow(ctx, k, rate240); err != nil { // warm the node's connection
				t.Fatal(err)
			}
		}
	}
	var paused string
	for _, p := range procs {
		if _, ok := keys[p.Addr()]; ok && paused == "" {
			paused = p.Addr()
			p.Pause()
			t.Cleanup(p.Resume)
		}
	}
	stuck := make(chan error, 1)
	go func() {
		_, err := r.Allow(ctx, keys[paused], rate240)
		stuck <- err
	}()
	eventually(t, "the decision for the paused master is sent", func() bool { return r.Calls() == uint64(len(procs))+1 })
	for addr, k := range keys {
		if addr == paused {
			continue
		}
		for range 3 {
			if d, err := r.Allow(ctx, k, rate240); err != nil || !d.Allowed {
				t.Fatalf("key on healthy master %s: %+v, %v", addr, d, err)
			}
		}
	}
	select {
	case err := <-stuck:
		t.Fatalf("the decision for the paused master returned (%v) before the healthy ones were answered", err)
	default:
	}
	if err := <-stuck; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("paused master: %v, want ErrUnavailable", err)
	}
}
