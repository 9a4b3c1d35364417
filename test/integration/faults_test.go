//go:build integration

package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// The faults of issue 10 "Replicas under faults", with their bounds asserted:
// a Redis stall (SIGSTOP) and restart, PostgreSQL stopped and started, a
// replica's LISTEN connection terminated, a replica killed with SIGKILL.

// answer is the part of a CheckResponse the fault tests look at.
type answer struct {
	code    int // HTTP status Envoy would send; 200 for allow
	body    string
	headers map[string]string
	took    time.Duration // the Check's round trip, as the client saw it
}

// answer asks r about key; a gRPC error fails the test.
func (r *replica) answer(t testing.TB, key string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := r.client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/v1/x", Headers: map[string]string{"x-api-key": key}},
	}}})
	a := answer{took: time.Since(start), headers: map[string]string{}}
	if err != nil {
		t.Errorf("check: %v", err)
		return a
	}
	if resp.GetOkResponse() != nil {
		a.code = 200
		return a
	}
	d := resp.GetDeniedResponse()
	a.code, a.body = int(d.GetStatus().GetCode()), d.GetBody()
	for _, h := range d.GetHeaders() {
		a.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return a
}

// wantOutage asserts a is the on_error: deny answer to a limiter outage.
func wantOutage(t testing.TB, a answer) {
	t.Helper()
	if a.code != 503 || a.body != `{"message":"Rate limiter unavailable"}` || a.headers["retry-after"] == "" {
		t.Fatalf("limiter outage answered %d %s %v, want 503 Rate limiter unavailable with Retry-After", a.code, a.body, a.headers)
	}
}

// TestFaultRedisStall stalls Redis (SIGSTOP) for 150 ms in the middle of a
// burst over 3 replicas (on_error: deny, timeout 20 ms). No Check takes more
// than the timeout + 20 ms, the stalled ones answer 503, and none of them
// spends quota: the key (240 per hour: no refill during the test) is allowed
// 240 ± 1 times in all (not 240 minus the stalled commands Redis ran when it
// resumed). The burst pauses for the instant Redis is stopped: a command Redis
// had run with its reply still unsent would be spent, a race no deadline closes.
func TestFaultRedisStall(t *testing.T) {
	const timeout = 20 * time.Millisecond
	pg := testenv.StartPostgres(t)
	rd := testenv.StartRedis(t)
	rs := cluster(t, 3, pg.URL(), redisConfig([]string{rd.Addr()}, false, "deny", timeout))
	k := rs[0].kz.CreateKey(t, "acme", "stall", "--rate-limit", "240/h")
	for _, r := range rs { // cache the key record on every replica: only Redis is under test
		if a := r.answer(t, k.Secret); a.code != 200 {
			t.Fatalf("warm: %d", a.code)
		}
	}
	allowed := atomic.Int64{}
	allowed.Store(int64(len(rs)))
	var decided, unavailable atomic.Int64
	var mu sync.Mutex
	var slow []time.Duration // Checks over timeout + 20 ms
	var worst time.Duration
	// burst runs 6 clients over the replicas until done says so.
	burst := func(done func() bool) {
		t.Helper()
		var g errgroup.Group
		for w := range 6 {
			r := rs[w%len(rs)]
			g.Go(func() error {
				for !done() {
					a := r.answer(t, k.Secret)
					switch a.code {
					case 200:
						allowed.Add(1)
					case 503:
						wantOutage(t, a)
						unavailable.Add(1)
					case 429:
					default:
						return fmt.Errorf("status %d", a.code)
					}
					mu.Lock()
					worst = max(worst, a.took)
					if a.took > timeout+20*time.Millisecond {
						slow = append(slow, a.took)
					}
					mu.Unlock()
					decided.Add(1)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	burst(func() bool { return decided.Load() >= 60 })
	rd.Pause()
	var resumed atomic.Bool
	time.AfterFunc(150*time.Millisecond, func() {
		rd.Resume()
		resumed.Store(true)
	})
	burst(resumed.Load)
	if unavailable.Load() == 0 {
		t.Fatal("no Check answered 503 during the stall: nothing was stalled")
	}
	if len(slow) > 0 {
		t.Fatalf("%d Checks took longer than timeout + 20ms during the stall: %v", len(slow), slow)
	}
	// Spend what is left of the burst, until Redis says 429.
	for i := 0; ; i++ {
		a := rs[i%len(rs)].answer(t, k.Secret)
		if a.code == 429 {
			break
		}
		if a.code == 200 {
			allowed.Add(1)
		}
		if i > 1000 {
			t.Fatal("never limited")
		}
	}
	t.Logf("150 ms redis stall mid-burst: %d allowed, %d answered 503 (on_error: deny), slowest Check %v",
		allowed.Load(), unavailable.Load(), worst)
	if n := allowed.Load(); n < 239 || n > 241 {
		t.Fatalf("allowed %d, want 240 ± 1: Checks answered by on_error spent quota", n)
	}
}

// TestFaultRedisRestart restarts Redis 5 times under 3 replicas: while it is
// down Checks answer 503, and each replica allows a Check at most 250 ms after
// Redis answers PING again.
func TestFaultRedisRestart(t *testing.T) {
	pg := testenv.StartPostgres(t)
	rd := testenv.StartRedis(t)
	rs := cluster(t, 3, pg.URL(), redisConfig([]string{rd.Addr()}, false, "deny", 20*time.Millisecond))
	k := rs[0].kz.CreateKey(t, "acme", "restart", "--rate-limit", "100000/s")
	for _, r := range rs {
		if a := r.answer(t, k.Secret); a.code != 200 {
			t.Fatalf("warm: %d", a.code)
		}
	}
	var worst time.Duration
	var took []string
	for i := range 5 {
		rd.Stop()
		// Down for a second, with Checks arriving: every one answers 503 (and
		// the replicas' failed dials would open go-redis's dial breaker).
		for end := time.Now().Add(time.Second); time.Now().Before(end); {
			for _, r := range rs {
				wantOutage(t, r.answer(t, k.Secret))
			}
			time.Sleep(2 * time.Millisecond)
		}
		rd.Start() // returns as soon as Redis answers PING
		up := time.Now()
		var last time.Duration
		for j, r := range rs {
			for a := r.answer(t, k.Secret); a.code != 200; a = r.answer(t, k.Secret) {
				if a.code != 503 {
					t.Fatalf("restart %d, replica %d: status %d", i, j, a.code)
				}
				if time.Since(up) > 5*time.Second {
					t.Fatalf("restart %d: replica %d still refusing 5s after redis came back", i, j)
				}
				time.Sleep(time.Millisecond)
			}
			last = time.Since(up)
		}
		worst = max(worst, last)
		took = append(took, last.Round(time.Millisecond/10).String())
	}
	t.Logf("redis restarts: all 3 replicas allowing again %s after PING answered (max %v)", strings.Join(took, ", "), worst)
	if worst > 250*time.Millisecond {
		t.Fatalf("a replica refused Checks for %v after redis came back, want <= 250ms", worst)
	}
}

// deleteAndWait deletes k from rs[0] and returns how long until every other
// replica answers 401 for it.
func deleteAndWait(t *testing.T, rs []*replica, k testenv.Key) time.Duration {
	t.Helper()
	rs[0].kz.DeleteKey(t, k.ID)
	deleted := time.Now()
	for _, r := range rs[1:] {
		for r.answer(t, k.Secret).code != 401 {
			if time.Since(deleted) > 10*time.Second {
				t.Fatalf("deletion not seen by a replica within 10s")
			}
			time.Sleep(time.Millisecond)
		}
	}
	return time.Since(deleted)
}

// terminateListeners waits until want LISTEN connections (one per replica)
// are open on url's database, then ends them all (pg_terminate_backend).
func terminateListeners(t *testing.T, url string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	const listeners = `FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'`
	testenv.Eventually(t, 5*time.Second, "every replica listening", func() error {
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) `+listeners).Scan(&n); err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("%d LISTEN connections, want %d", n, want)
		}
		return nil
	})
	var n int
	if err := c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) `+listeners).Scan(&n); err != nil || n != want {
		t.Fatalf("terminated %d LISTEN connections (%v), want %d", n, err, want)
	}
}

// TestFaultPostgresPropagation deletes keys on one of 3 replicas right after
// PostgreSQL restarts (the replicas' LISTEN connections are still
// reconnecting) and right after every replica's LISTEN connection is
// terminated: each deletion reaches both other replicas with p99 ≤ 250 ms.
func TestFaultPostgresPropagation(t *testing.T) {
	pg := testenv.StartPostgres(t)
	rs := cluster(t, 3, pg.URL(), "")
	var delays []time.Duration
	record := func(what string, d time.Duration) {
		delays = append(delays, d)
		t.Logf("%s: %v", what, d.Round(time.Millisecond/10))
	}
	for i := range 3 {
		// Keys created and cached before the outage, deleted right after it.
		var keys []testenv.Key
		for j := range 4 {
			k := rs[0].kz.CreateKey(t, "restart", fmt.Sprintf("r%d-%d", i, j))
			for _, r := range rs[1:] {
				if a := r.answer(t, k.Secret); a.code != 200 {
					t.Fatalf("warm: %d", a.code)
				}
			}
			keys = append(keys, k)
		}
		pg.Stop()
		time.Sleep(1500 * time.Millisecond) // long enough for LISTEN's reconnection backoff to grow
		pg.Start()
		for j, k := range keys {
			record(fmt.Sprintf("restart %d, deletion %d", i, j), deleteAndWait(t, rs, k))
		}
	}
	for i := range 6 {
		k := rs[0].kz.CreateKey(t, "terminate", fmt.Sprintf("t%d", i))
		for _, r := range rs[1:] {
			if a := r.answer(t, k.Secret); a.code != 200 {
				t.Fatalf("warm: %d", a.code)
			}
		}
		terminateListeners(t, pg.URL(), len(rs))
		record(fmt.Sprintf("LISTEN terminated, deletion %d", i), deleteAndWait(t, rs, k))
	}
	slices.Sort(delays)
	p50, p99 := delays[len(delays)/2], delays[(len(delays)*99+99)/100-1]
	t.Logf("propagation through postgres restarts and LISTEN terminations, %d deletions: p50 %v, p99 %v, max %v",
		len(delays), p50, p99, delays[len(delays)-1])
	if p99 > 250*time.Millisecond {
		t.Fatalf("p99 propagation %v through faults, want <= 250ms", p99)
	}
}

// TestFaultReplicaKill kills one of 3 replicas (SIGKILL) while keys change on
// the others, and starts it again, twice: its very first Checks after /readyz
// answer right: a key deleted while it was down is 401, a key whose quota the
// others spent is 429 (the count lives in Redis), a live key is 200.
func TestFaultReplicaKill(t *testing.T) {
	pg := testenv.StartPostgres(t)
	rd := testenv.StartRedis(t)
	rs := cluster(t, 3, pg.URL(), redisConfig([]string{rd.Addr()}, false, "deny", 500*time.Millisecond))
	victim := rs[2]
	live := rs[0].kz.CreateKey(t, "acme", "live")
	spent := rs[0].kz.CreateKey(t, "acme", "spent", "--rate-limit", "3/h")
	for _, k := range []testenv.Key{live, spent} {
		if a := victim.answer(t, k.Secret); a.code != 200 {
			t.Fatalf("warm: %d", a.code)
		}
	}
	for i := range 2 {
		doomed := rs[0].kz.CreateKey(t, "acme", fmt.Sprintf("doomed%d", i))
		if a := victim.answer(t, doomed.Secret); a.code != 200 { // cached on the victim
			t.Fatalf("warm: %d", a.code)
		}
		victim.kz.Kill(t)
		rs[0].kz.DeleteKey(t, doomed.ID)
		for j := range 2 { // the rest of spent's 3 requests (then 429s)
			rs[j].answer(t, spent.Secret)
		}
		victim.kz.Start(t)
		for _, c := range []struct {
			name string
			key  string
			want int
		}{{"deleted while down", doomed.Secret, 401}, {"quota spent elsewhere", spent.Secret, 429}, {"live", live.Secret, 200}} {
			if a := victim.answer(t, c.key); a.code != c.want {
				t.Fatalf("kill %d: first Check after restart, %s key: %d, want %d", i, c.name, a.code, c.want)
			}
		}
	}
}
