package load

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// titleDThrottle is scenario (d-throttle)'s title.
const titleDThrottle = "(d-throttle) flood of unknown well-formed keys from one source, throttle on (429 without a store read)"

// dThrottleRate is (d-throttle)'s throttle.unknown_keys_per_source: a window
// longer than any run, so the flooding source stays throttled throughout.
const dThrottleRate = "20/h"

// scenarioDThrottle is scenario (d)'s flood (the same 5,000 unknown keys,
// all from the one source address of the load's requests) against a
// keyauthz with the throttle on, interleaved with a keyauthz without it (the
// negative-cache flood of scenario d) in the same run: after the source's
// first 20 unknown keys every request is answered 429 without a store read,
// and the CPU per check of both is reported side by side.
func (r *runner) scenarioDThrottle(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "d-throttle", KeyauthzConfig{NegativeSize: dNegativeSize, Throttle: dThrottleRate, Pprof: r.profiling("d-throttle")})
	if err != nil {
		return err
	}
	defer s.Stop()
	neg, err := r.keyauthz(ctx, "d-negative", KeyauthzConfig{NegativeSize: dNegativeSize})
	if err != nil {
		return err
	}
	defer neg.Stop()
	pool, err := r.requests(streamUnknown, 0, dPool, false)
	if err != nil {
		return err
	}
	// Put the source over its budget: 20 unknown keys answered 401, then 429.
	c, err := Dial(s.GRPC, 1, r.o.Load.Transport)
	if err != nil {
		return err
	}
	pre := c.Closed(ctx, bounded{src: pool, n: 25}, 1, 30*time.Second, new(atomic.Uint64))
	c.Close()
	if pre.Errors > 0 || pre.Codes[16] != 20 || pre.Codes[8] != 5 {
		return fmt.Errorf("d-throttle: 25 unknown keys from one source at %s: %s, want 20 × 401 then 5 × 429", dThrottleRate, codeSummary(pre))
	}
	reads, err := metricDelta(s, "keyauthz_cache_store_reads_total")
	if err != nil {
		return err
	}
	throttled, err := metricDelta(s, "keyauthz_checks_total", `reason="throttled"`)
	if err != nil {
		return err
	}
	// The 25 keys above are negative-cached now in s; warm neg up alike (Measure's warm-up does the rest).
	m, err := r.measurePeer(ctx, s, neg, "d-throttle", titleDThrottle, pool, nil)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 8); err != nil {
		return err
	}
	n, err := reads()
	if err != nil {
		return err
	}
	th, err := throttled()
	if err != nil {
		return err
	}
	r.res.Facts["d_throttle_store_reads"] = n
	r.res.Facts["d_throttle_us_per_check"] = us(m.Sat.PerCheck())
	r.res.Facts["d_negative_us_per_check"] = us(m.Peer.PerCheck())
	m.Notes = append(m.Notes, fmt.Sprintf("throttle.unknown_keys_per_source %s; %d distinct unknown keys from one source; throttled checks %.0f, store reads %.0f; "+
		"CPU per check %.1f µs throttled vs %.1f µs for the negative-cache flood (keyauthz without the throttle, interleaved): ratio %.2f",
		dThrottleRate, dPool, th, n, us(m.Sat.PerCheck()), us(m.Peer.PerCheck()), ratio(float64(m.Sat.PerCheck()), float64(m.Peer.PerCheck()))))
	r.add(m)
	return nil
}
