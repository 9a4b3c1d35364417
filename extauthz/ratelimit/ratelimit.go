// Package ratelimit decides whether one request for a key fits the key's
// rate, with the generic cell rate algorithm (GCRA).
//
// A rate of N requests per period P has an emission interval I = P/N and a
// burst tolerance of N·I (≈ P): from an empty state N requests pass at once,
// after that one request passes every I. Each key keeps a single number, its
// theoretical arrival time (TAT). A request at time now is allowed when
// max(TAT, now) + I - N·I <= now, and then moves TAT to max(TAT, now) + I; a
// denied request changes nothing, so it consumes no quota. A TAT at or before
// now is the same as no state at all, which is what lets both limiters drop
// such entries freely. Unlike fixed windows there is no 2× burst at window
// edges.
//
// Two limiters have the Allow method extauthz.Limiter asks for: Local keeps
// the state in memory (per replica) and Redis keeps it in Redis, shared by
// every replica, with one atomic Lua script per decision.
//
// The key passed to Allow is an identifier (the key id), never the API key
// secret: it is stored in memory or in Redis as given.
package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Decision is one limiter answer.
type Decision struct {
	Allowed    bool
	Limit      int           // N of the rate
	Remaining  int           // requests still allowed right now after this one (0 when denied)
	Reset      time.Duration // time until the budget is fully replenished (>=0)
	RetryAfter time.Duration // when denied: time until one request would be allowed (>0); 0 when allowed
	Window     time.Duration // the rate's period
}

// ErrUnavailable marks a limiter backend failure (error or timeout). The
// Decision returned with it follows the configured on_error policy and is the
// one callers must use; the error is for logging and metrics.
var ErrUnavailable = errors.New("ratelimit: backend unavailable")

// ErrInvalidRate is returned for a rate whose N or period is not positive.
var ErrInvalidRate = errors.New("ratelimit: invalid rate")

// params returns the emission interval and the burst tolerance of r in
// units of unit (nanoseconds for Local, microseconds for Redis). The interval
// is at least one unit, and the tolerance is exactly N intervals so a burst
// is exactly N requests even when the period does not divide evenly.
func params(r apikey.Rate, unit time.Duration) (iv, tau int64, err error) {
	if r.N <= 0 || r.Per <= 0 {
		return 0, 0, invalidRate(r)
	}
	iv = int64(r.Per/unit) / int64(r.N)
	if iv < 1 {
		iv = 1
	}
	return iv, iv * int64(r.N), nil
}

func invalidRate(r apikey.Rate) error {
	return fmt.Errorf("%w: %d per %v", ErrInvalidRate, r.N, r.Per)
}

// gcra decides one request at now for a stored tat (0 or any value <= now for
// an empty state). It returns the new TAT to store when allowed, and the
// decision with durations in units of unit.
//
// No sum wraps, whatever the rate (0 < iv <= tau <= MaxInt64) and the uptime
// (0 <= now <= MaxInt64): the TAT is unsigned, and a stored TAT is never more
// than tau ahead of the clock, so it stays below 2·MaxInt64 < MaxUint64; the
// test max(tat, now) + iv - tau <= now is made on differences within
// [0, MaxInt64]. (A signed TAT used to wrap negative past MaxInt64, which read
// as "no state": 1/9223372036854775807ns never limited, and 1/2562047h stopped
// limiting after 47 minutes of uptime.)
func gcra(now int64, tat uint64, iv, tau int64, r apikey.Rate, unit time.Duration) (uint64, Decision) {
	n := uint64(max(now, 0))
	if tat < n {
		tat = n
	}
	// <= the tau of the rate in force when tat was stored: at most MaxInt64.
	ahead := int64(min(tat-n, math.MaxInt64))
	d := Decision{Limit: r.N, Window: r.Per}
	if wait := ahead - (tau - iv); wait > 0 {
		d.RetryAfter = time.Duration(wait) * unit
		d.Reset = time.Duration(ahead) * unit
		return tat, d
	}
	return tat + uint64(iv), allowed(d, ahead+iv, iv, tau, unit)
}

// allowed fills an allowing decision from the time left until the new TAT.
func allowed(d Decision, ttl, iv, tau int64, unit time.Duration) Decision {
	d.Allowed = true
	d.Remaining = int((tau - ttl) / iv)
	d.Reset = time.Duration(ttl) * unit
	return d
}
