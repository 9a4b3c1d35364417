package apikey

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Rate is a request budget: N requests per Per. The zero Rate means "not set".
type Rate struct {
	N   int           // requests allowed per period
	Per time.Duration // period length
}

// IsZero reports whether the rate is unset.
func (r Rate) IsZero() bool { return r.N == 0 && r.Per == 0 }

// Bounds of a rate keyauthz accepts from the admin API, the CLI and the config:
// a period from a second to a year and a count from 1 to a billion. Wider rates
// mean nothing a limit is for (one request in 292 years) and would push a
// limiter's clock arithmetic near its int64 edge.
const (
	MinRatePeriod = time.Second
	MaxRatePeriod = 365 * 24 * time.Hour
	MaxRateCount  = 1_000_000_000
)

// RateRule says what a valid rate is, for error messages.
const RateRule = "must be COUNT/PERIOD such as 600/m, 10/s, 1000/h, 5000/d or 100/30s, " +
	"with COUNT from 1 to 1000000000 and PERIOD from 1s to 1 year (8760h)"

// ErrRateBounds is returned by Rate.Check for a rate outside the bounds.
var ErrRateBounds = errors.New("rate out of bounds")

// Check reports whether r is within the bounds (MinRatePeriod..MaxRatePeriod,
// 1..MaxRateCount). The zero Rate ("not set") passes.
func (r Rate) Check() error {
	switch {
	case r.IsZero():
		return nil
	case r.N < 1 || r.N > MaxRateCount:
		return fmt.Errorf("%w: count %d: must be from 1 to %d", ErrRateBounds, r.N, MaxRateCount)
	case r.Per < MinRatePeriod || r.Per > MaxRatePeriod:
		return fmt.Errorf("%w: period %v: must be from %v to 1 year (%v)", ErrRateBounds, r.Per, MinRatePeriod, MaxRatePeriod)
	}
	return nil
}

// String formats the rate as ParseRate reads it, e.g. "240/m".
func (r Rate) String() string {
	if r.IsZero() {
		return ""
	}
	switch r.Per {
	case time.Second:
		return fmt.Sprintf("%d/s", r.N)
	case time.Minute:
		return fmt.Sprintf("%d/m", r.N)
	case time.Hour:
		return fmt.Sprintf("%d/h", r.N)
	case 24 * time.Hour:
		return fmt.Sprintf("%d/d", r.N)
	}
	return fmt.Sprintf("%d/%s", r.N, r.Per)
}

// ParseRate reads "600/m", "10/s", "1000/h", "5000/d" or "100/30s": a positive
// count and a positive period. It does not apply the bounds (Check does), so a
// rate stored before they existed still reads.
func ParseRate(s string) (Rate, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/PERIOD, e.g. 600/m", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count <= 0 {
		return Rate{}, fmt.Errorf("rate %q: count must be a positive integer", s)
	}
	var d time.Duration
	switch per {
	case "s", "sec", "second":
		d = time.Second
	case "m", "min", "minute":
		d = time.Minute
	case "h", "hour":
		d = time.Hour
	case "d", "day":
		d = 24 * time.Hour
	default:
		d, err = time.ParseDuration(per)
		if err != nil || d <= 0 {
			return Rate{}, fmt.Errorf("rate %q: period must be s, m, h, d or a positive duration", s)
		}
	}
	return Rate{N: count, Per: d}, nil
}

// MarshalText implements encoding.TextMarshaler.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Rate) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*r = Rate{}
		return nil
	}
	v, err := ParseRate(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}
