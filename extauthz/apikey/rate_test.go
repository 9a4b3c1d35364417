package apikey

import (
	"errors"
	"math"
	"testing"
	"time"
)

// Rate.Check bounds a rate to 1..1e9 requests per 1s..1 year; the zero Rate
// (not set) passes. ParseRate itself still reads any positive rate, so that a
// rate stored before the bounds existed still loads.
func TestRateCheck(t *testing.T) {
	ok := []Rate{
		{}, {N: 1, Per: time.Second}, {N: MaxRateCount, Per: time.Second}, {N: 1, Per: MaxRatePeriod},
		{N: MaxRateCount, Per: MaxRatePeriod}, {N: 240, Per: time.Minute},
	}
	for _, r := range ok {
		if err := r.Check(); err != nil {
			t.Errorf("%v: %v, want nil", r, err)
		}
	}
	bad := []Rate{
		{N: 1, Per: time.Duration(math.MaxInt64)}, {N: 1, Per: 2562047 * time.Hour}, {N: 1, Per: MaxRatePeriod + time.Nanosecond},
		{N: 1, Per: time.Second - time.Nanosecond}, {N: 3, Per: 100 * time.Millisecond}, {N: MaxRateCount + 1, Per: time.Hour},
		{N: 0, Per: time.Minute}, {N: 5, Per: 0}, {N: -1, Per: time.Minute}, {N: 1, Per: -time.Second},
	}
	for _, r := range bad {
		if err := r.Check(); !errors.Is(err, ErrRateBounds) {
			t.Errorf("%+v: %v, want ErrRateBounds", r, err)
		}
	}
	for _, s := range []string{"1/9223372036854775807ns", "1/2562047h", "3/100ms"} {
		r, err := ParseRate(s)
		if err != nil {
			t.Errorf("ParseRate(%q): %v, want it read (stored rates)", s, err)
		} else if r.Check() == nil {
			t.Errorf("%q passes Check", s)
		}
	}
	spec := Spec{Workspace: "acme", Name: "n", RateLimit: Rate{N: 1, Per: 2562047 * time.Hour}}
	var fe *FieldError
	if err := spec.Validate(time.Now()); !errors.As(err, &fe) || fe.Field != "rate_limit" {
		t.Errorf("Spec.Validate with rate 1/2562047h: %v, want a FieldError for rate_limit", err)
	}
}
