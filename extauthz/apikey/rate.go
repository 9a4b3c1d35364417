package apikey

import (
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

// ParseRate reads "600/m", "10/s", "1000/h", "5000/d" or "100/30s".
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
