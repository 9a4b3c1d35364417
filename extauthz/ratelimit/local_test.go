package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func newTestLocal(t testing.TB, maxKeys int) (*Local, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	l, err := NewLocal(maxKeys, withClock(clk.Now), WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l, clk
}

func allow(t testing.TB, l limiter, key string, r apikey.Rate) Decision {
	t.Helper()
	d, err := l.Allow(context.Background(), key, r)
	if err != nil {
		t.Fatalf("Allow(%q, %v): %v", key, r, err)
	}
	return d
}

// limiter is what Local and Redis have in common (the Check service's
// extauthz.Limiter, which this package cannot import).
type limiter interface {
	Allow(ctx context.Context, key string, r apikey.Rate) (Decision, error)
}

var testRates = []apikey.Rate{
	{N: 240, Per: time.Minute},          // 250ms interval
	{N: 10, Per: time.Second},           // 100ms
	{N: 1, Per: time.Hour},              // no burst beyond one
	{N: 7, Per: time.Second},            // interval does not divide the period
	{N: 3, Per: 100 * time.Millisecond}, // short period
	{N: 5000, Per: 24 * time.Hour},
}

func TestLocalBurstThenOnePerInterval(t *testing.T) {
	for _, r := range testRates {
		t.Run(r.String(), func(t *testing.T) {
			l, clk := newTestLocal(t, 100)
			iv := r.Per / time.Duration(r.N)

			// From an empty state N requests pass at once, counting down.
			for i := 1; i <= r.N; i++ {
				d := allow(t, l, "k", r)
				want := Decision{Allowed: true, Limit: r.N, Remaining: r.N - i, Reset: time.Duration(i) * iv, Window: r.Per}
				if d != want {
					t.Fatalf("request %d: got %+v, want %+v", i, d, want)
				}
			}
			// The next one is denied until one interval has passed.
			d := allow(t, l, "k", r)
			want := Decision{Limit: r.N, RetryAfter: iv, Reset: time.Duration(r.N) * iv, Window: r.Per}
			if d != want {
				t.Fatalf("request %d: got %+v, want %+v", r.N+1, d, want)
			}
			clk.Add(d.RetryAfter - time.Nanosecond)
			if d := allow(t, l, "k", r); d.Allowed || d.RetryAfter != time.Nanosecond {
				t.Fatalf("1ns before RetryAfter: got %+v, want denied with RetryAfter 1ns", d)
			}
			clk.Add(time.Nanosecond)
			if d := allow(t, l, "k", r); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("at RetryAfter: got %+v, want allowed with Remaining 0", d)
			}
			if d := allow(t, l, "k", r); d.Allowed || d.RetryAfter != iv {
				t.Fatalf("right after: got %+v, want denied with RetryAfter %v", d, iv)
			}
			// After a full period of silence the whole burst is back.
			clk.Add(r.Per)
			for i := 1; i <= r.N; i++ {
				if d := allow(t, l, "k", r); !d.Allowed {
					t.Fatalf("after a period, request %d denied: %+v", i, d)
				}
			}
			if d := allow(t, l, "k", r); d.Allowed {
				t.Fatalf("after a period, request %d allowed: %+v", r.N+1, d)
			}
		})
	}
}

func TestLocalSteadyRateAllowsEveryInterval(t *testing.T) {
	l, clk := newTestLocal(t, 10)
	r := apikey.Rate{N: 4, Per: time.Second}
	for i := 0; i < 100; i++ {
		if d := allow(t, l, "k", r); !d.Allowed {
			t.Fatalf("request %d at the steady rate denied: %+v", i, d)
		}
		clk.Add(250 * time.Millisecond)
	}
}

func TestLocalPartialRefill(t *testing.T) {
	l, clk := newTestLocal(t, 10)
	r := apikey.Rate{N: 10, Per: time.Second} // 100ms interval
	for range 10 {
		allow(t, l, "k", r)
	}
	clk.Add(350 * time.Millisecond) // 3.5 intervals: 3 requests back
	for i := 1; i <= 3; i++ {
		d := allow(t, l, "k", r)
		if !d.Allowed || d.Remaining != 3-i {
			t.Fatalf("refilled request %d: got %+v, want allowed with Remaining %d", i, d, 3-i)
		}
		if want := time.Second - 350*time.Millisecond + time.Duration(i)*100*time.Millisecond; d.Reset != want {
			t.Fatalf("refilled request %d: Reset %v, want %v", i, d.Reset, want)
		}
	}
	if d := allow(t, l, "k", r); d.Allowed || d.RetryAfter != 50*time.Millisecond {
		t.Fatalf("got %+v, want denied with RetryAfter 50ms", d)
	}
}

func TestLocalDeniedDoesNotConsume(t *testing.T) {
	l, clk := newTestLocal(t, 10)
	r := apikey.Rate{N: 2, Per: time.Second}
	allow(t, l, "k", r)
	allow(t, l, "k", r)
	for i := 0; i < 1000; i++ {
		if d := allow(t, l, "k", r); d.Allowed || d.RetryAfter != 500*time.Millisecond {
			t.Fatalf("denied request %d: %+v", i, d)
		}
	}
	clk.Add(500 * time.Millisecond)
	if d := allow(t, l, "k", r); !d.Allowed {
		t.Fatalf("after one interval the hammering left no quota: %+v", d)
	}
}

func TestLocalKeysAndRatesIndependent(t *testing.T) {
	l, _ := newTestLocal(t, 100)
	small := apikey.Rate{N: 2, Per: time.Minute}
	big := apikey.Rate{N: 5, Per: time.Minute}
	for range 2 {
		allow(t, l, "a", small)
	}
	if d := allow(t, l, "a", small); d.Allowed {
		t.Fatal("a: third request under 2/m allowed")
	}
	for i := 0; i < 5; i++ {
		if d := allow(t, l, "b", big); !d.Allowed {
			t.Fatalf("b: request %d under 5/m denied after a was exhausted", i+1)
		}
	}
	if d := allow(t, l, "b", big); d.Allowed {
		t.Fatal("b: sixth request under 5/m allowed")
	}
	if d := allow(t, l, "c", small); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("c: fresh key: %+v", d)
	}
}

func TestLocalInvalidRate(t *testing.T) {
	l, _ := newTestLocal(t, 10)
	for _, r := range []apikey.Rate{{}, {N: 0, Per: time.Second}, {N: 5, Per: 0}, {N: -1, Per: time.Second}} {
		if _, err := l.Allow(context.Background(), "k", r); !errors.Is(err, ErrInvalidRate) {
			t.Errorf("Allow with %+v: err %v, want ErrInvalidRate", r, err)
		}
	}
}

func TestNewLocalValidates(t *testing.T) {
	if _, err := NewLocal(0); err == nil {
		t.Error("NewLocal(0) succeeded")
	}
}

func TestLocalConcurrentExact(t *testing.T) {
	for _, r := range []apikey.Rate{{N: 240, Per: time.Minute}, {N: 1, Per: time.Second}, {N: 999, Per: time.Hour}} {
		t.Run(r.String(), func(t *testing.T) {
			l, _ := newTestLocal(t, 1000) // frozen clock: no replenishment
			var ok atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range 1000 {
				wg.Go(func() {
					<-start
					if d, err := l.Allow(context.Background(), "hot", r); err == nil && d.Allowed {
						ok.Add(1)
					}
				})
			}
			close(start)
			wg.Wait()
			if ok.Load() != int64(r.N) {
				t.Fatalf("%d of 1000 concurrent requests allowed, want exactly %d", ok.Load(), r.N)
			}
		})
	}
}

func TestLocalMemoryBound(t *testing.T) {
	for _, max := range []int{1, 5, 100, 1000} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			l, clk := newTestLocal(t, max)
			r := apikey.Rate{N: 10, Per: time.Hour} // every entry stays active
			for i := 0; i < 5*max+10; i++ {
				if d := allow(t, l, fmt.Sprint("key-", i), r); !d.Allowed {
					t.Fatalf("new key %d denied: %+v", i, d)
				}
				if n := l.Len(); n > max {
					t.Fatalf("after %d keys the limiter holds %d, want <= %d", i+1, n, max)
				}
				clk.Add(time.Millisecond)
			}
		})
	}
}

func TestShardEvictsPassedThenOldest(t *testing.T) {
	s := &shard{m: map[string]uint64{}, max: 3}
	s.insert("a", 30, 0)
	s.insert("b", 10, 0)
	s.insert("c", 20, 0)
	s.insert("d", 40, 0) // full, nothing passed: evicts b, the oldest TAT
	if _, ok := s.m["b"]; ok || len(s.m) != 3 {
		t.Fatalf("after inserting into a full shard: %v, want b evicted", keys(s.m))
	}
	s.insert("e", 50, 30) // a (30) and c (20) have passed: both go, d stays
	if len(s.m) != 2 || s.m["d"] != 40 || s.m["e"] != 50 {
		t.Fatalf("after a sweep at 30: %v, want [d e]", keys(s.m))
	}
}

func keys(m map[string]uint64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestLocalEvictionKeepsHotKeyLimited(t *testing.T) {
	// One shard with room for two keys: room is made from passed or
	// oldest-TAT entries, so a key that is over its limit stays limited
	// while idle keys come and go.
	l, clk := newTestLocal(t, 2)
	hot := apikey.Rate{N: 1, Per: time.Hour}
	cold := apikey.Rate{N: 1, Per: time.Millisecond}
	allow(t, l, "hot", hot)
	for i := 0; i < 50; i++ {
		allow(t, l, fmt.Sprint("cold-", i), cold)
		clk.Add(2 * time.Millisecond) // the cold key's TAT passes
		if d := allow(t, l, "hot", hot); d.Allowed {
			t.Fatalf("round %d: the hot key was evicted and got a fresh burst", i)
		}
	}
}

func TestLocalSweeperDropsIdleKeys(t *testing.T) {
	clk := newFakeClock()
	l, err := NewLocal(100, withClock(clk.Now), WithSweepInterval(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := apikey.Rate{N: 5, Per: time.Second}
	for i := 0; i < 20; i++ {
		allow(t, l, fmt.Sprint("k", i), r)
	}
	if n := l.Len(); n != 20 {
		t.Fatalf("Len = %d, want 20", n)
	}
	clk.Add(time.Second) // every TAT (now+200ms) has passed
	deadline := time.Now().Add(5 * time.Second)
	for l.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sweeper left %d idle keys", l.Len())
		}
		time.Sleep(time.Millisecond)
	}
	// A swept key behaves exactly like a fresh one.
	if d := allow(t, l, "k0", r); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("swept key: %+v, want a full burst", d)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestLocalAllowZeroAllocs(t *testing.T) {
	l, clk := newTestLocal(t, 100)
	r := apikey.Rate{N: 1_000_000, Per: time.Second}
	ctx := context.Background()
	allow(t, l, "key_existing", r)
	n := testing.AllocsPerRun(1000, func() {
		clk.Add(time.Microsecond)
		_, _ = l.Allow(ctx, "key_existing", r)
	})
	if n != 0 {
		t.Fatalf("Allow on an existing key allocates %v times per call, want 0", n)
	}
}

func TestLocalRealClock(t *testing.T) {
	l, err := NewLocal(10)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := apikey.Rate{N: 3, Per: time.Hour}
	for range 3 {
		if d := allow(t, l, "k", r); !d.Allowed {
			t.Fatal("burst denied with the real clock")
		}
	}
	if d := allow(t, l, "k", r); d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 20*time.Minute {
		t.Fatalf("fourth request: %+v, want denied with RetryAfter in (0, 20m]", d)
	}
}
