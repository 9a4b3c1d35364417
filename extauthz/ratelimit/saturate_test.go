package ratelimit

import (
	"fmt"
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

const year = 365 * 24 * time.Hour

// Uptimes the local limiter is tested at: its clock counts nanoseconds since it
// started, so a TAT of now+interval comes near MaxInt64 only after long runs
// or with huge intervals.
var uptimes = []time.Duration{0, 47 * time.Minute, 48 * time.Minute, time.Hour, 30 * 24 * time.Hour, year, 100 * year, 290 * year}

// Rates whose arithmetic used to wrap: 1/9223372036854775807ns never limited,
// 1/2562047h stopped limiting after ~47 minutes of uptime (TAT + interval
// past MaxInt64 read as "no state"). Out of apikey's bounds, but a rate stored
// before the bounds existed may still reach the limiter: it must limit, at any
// uptime.
func TestLocalHugePeriodsStillLimit(t *testing.T) {
	for _, r := range []apikey.Rate{
		{N: 1, Per: time.Duration(math.MaxInt64)},
		{N: 1, Per: 2562047 * time.Hour},
		{N: 2, Per: time.Duration(math.MaxInt64)},
		{N: 3, Per: 2562047 * time.Hour},
	} {
		for _, up := range uptimes {
			t.Run(fmt.Sprintf("%d per %v at uptime %v", r.N, r.Per, up), func(t *testing.T) {
				l, clk := newTestLocal(t, 100)
				clk.Add(up)
				for i := 1; i <= r.N; i++ {
					if d := allow(t, l, "k", r); !d.Allowed || d.Remaining != r.N-i || d.Reset <= 0 {
						t.Fatalf("request %d of the burst: %+v, want allowed with Remaining %d", i, d, r.N-i)
					}
				}
				for i := range 5 {
					d := allow(t, l, "k", r)
					if d.Allowed || d.RetryAfter < 40*year || d.Reset < d.RetryAfter {
						t.Fatalf("request %d after the burst: %+v, want denied, RetryAfter over 40 years, Reset >= RetryAfter", r.N+1+i, d)
					}
					clk.Add(30 * 24 * time.Hour)
				}
			})
		}
	}
}

// Within the bounds the limiter is exact at any uptime up to 290 years: a
// burst of N, then one request per interval, to the nanosecond.
func TestLocalExactAtLongUptimes(t *testing.T) {
	for _, r := range []apikey.Rate{
		{N: 1, Per: apikey.MaxRatePeriod},
		{N: apikey.MaxRateCount, Per: apikey.MaxRatePeriod},
		{N: 7, Per: apikey.MaxRatePeriod},
		{N: 1, Per: apikey.MinRatePeriod},
		{N: 240, Per: time.Minute},
	} {
		iv := r.Per / time.Duration(r.N)
		for _, up := range uptimes {
			t.Run(fmt.Sprintf("%v at uptime %v", r, up), func(t *testing.T) {
				l, clk := newTestLocal(t, 100)
				clk.Add(up)
				if r.N > 1000 { // a burst of a billion: check its start only
					if d := allow(t, l, "k", r); !d.Allowed || d.Remaining != r.N-1 || d.Reset != iv {
						t.Fatalf("first request: %+v, want allowed with Remaining %d and Reset %v", d, r.N-1, iv)
					}
					return
				}
				for i := 1; i <= r.N; i++ {
					if d := allow(t, l, "k", r); !d.Allowed || d.Remaining != r.N-i {
						t.Fatalf("request %d: %+v, want allowed with Remaining %d", i, d, r.N-i)
					}
				}
				d := allow(t, l, "k", r)
				if d.Allowed || d.RetryAfter != iv {
					t.Fatalf("after the burst: %+v, want denied with RetryAfter %v", d, iv)
				}
				clk.Add(iv - time.Nanosecond)
				if d := allow(t, l, "k", r); d.Allowed || d.RetryAfter != time.Nanosecond {
					t.Fatalf("1ns early: %+v, want denied with RetryAfter 1ns", d)
				}
				clk.Add(time.Nanosecond)
				if d := allow(t, l, "k", r); !d.Allowed || d.Remaining != 0 {
					t.Fatalf("on time: %+v, want allowed with Remaining 0", d)
				}
			})
		}
	}
}

// gcra agrees with the same rule computed without overflow (math/big) for
// intervals and tolerances up to MaxInt64, at clocks up to MaxInt64, from any
// TAT a previous decision can have stored (at most tau ahead of its clock).
func TestGCRAMatchesExactArithmetic(t *testing.T) {
	const top = math.MaxInt64
	type rate struct{ iv, tau int64 }
	rates := []rate{{top, top}, {top / 2, top / 2 * 2}, {top / 3, top / 3 * 3}, {top / 1000, top / 1000 * 1000}, {int64(year), int64(year)},
		{1, 1}, {1, 1_000_000_000}, {31_536_000, 31_536_000_000_000_000}}
	clocks := []int64{0, 1, int64(47 * time.Minute), int64(time.Hour), int64(year), int64(100 * year), top / 2, top - int64(time.Hour), top - 1, top}
	for _, rt := range rates {
		r := apikey.Rate{N: int(rt.tau / rt.iv), Per: time.Duration(rt.tau)}
		for _, now := range clocks {
			var tats []uint64
			for _, back := range []int64{0, 1, rt.iv, rt.tau - rt.iv, rt.tau} {
				for _, from := range clocks { // stored at clock from <= now, at most tau ahead of it
					if from > now {
						continue
					}
					tats = append(tats, uint64(from)+uint64(rt.tau-back))
				}
			}
			tats = append(tats, 0, uint64(now))
			for _, tat := range tats {
				next, d := gcra(now, tat, rt.iv, rt.tau, r, time.Nanosecond)
				// The rule on unbounded integers.
				bt := new(big.Int).SetUint64(tat)
				bn := big.NewInt(now)
				if bt.Cmp(bn) < 0 {
					bt.Set(bn)
				}
				wait := new(big.Int).Add(bt, big.NewInt(rt.iv))
				wait.Sub(wait, big.NewInt(rt.tau)).Sub(wait, bn)
				ahead := new(big.Int).Sub(bt, bn)
				what := fmt.Sprintf("gcra(now %d, tat %d, iv %d, tau %d)", now, tat, rt.iv, rt.tau)
				if wantAllowed := wait.Sign() <= 0; d.Allowed != wantAllowed {
					t.Fatalf("%s: allowed %v, want %v", what, d.Allowed, wantAllowed)
				}
				if d.Allowed {
					wantNext := new(big.Int).Add(bt, big.NewInt(rt.iv))
					if new(big.Int).SetUint64(next).Cmp(wantNext) != 0 {
						t.Fatalf("%s: new TAT %d, want %v", what, next, wantNext)
					}
					ttl := new(big.Int).Sub(wantNext, bn)
					if big.NewInt(int64(d.Reset)).Cmp(ttl) != 0 || d.Remaining < 0 || d.Remaining >= r.N {
						t.Fatalf("%s: %+v, want Reset %v and Remaining in [0, %d)", what, d, ttl, r.N)
					}
					continue
				}
				if next != max(tat, uint64(now)) {
					t.Fatalf("%s: denied but TAT moved to %d", what, next)
				}
				if big.NewInt(int64(d.RetryAfter)).Cmp(wait) != 0 || big.NewInt(int64(d.Reset)).Cmp(ahead) != 0 {
					t.Fatalf("%s: %+v, want RetryAfter %v and Reset %v", what, d, wait, ahead)
				}
			}
		}
	}
}
