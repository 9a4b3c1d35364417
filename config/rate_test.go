package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// A rate outside 1..1e9 per 1s..1 year is a config error naming its YAML path;
// the edges themselves are accepted.
func TestRateBounds(t *testing.T) {
	bad := []struct{ yaml, path string }{
		{"ratelimit: {default: 1/9223372036854775807ns}", "ratelimit.default"},
		{"ratelimit: {default: 1/2562047h}", "ratelimit.default"},
		{"ratelimit: {default: 1/8761h}", "ratelimit.default"},
		{"ratelimit: {default: 10/999ms}", "ratelimit.default"},
		{"ratelimit: {default: 1000000001/s}", "ratelimit.default"},
		{"ratelimit: {default: ''}", "ratelimit.default"},
		{"workspaces: {acme: {rate_limit: 1/9223372036854775807ns}}", "workspaces.acme.rate_limit"},
		{"workspaces: {acme: {rate_limit: 1/2562047h}}", "workspaces.acme.rate_limit"},
		{"workspaces: {big: {rate_limit: 5000000000/d}}", "workspaces.big.rate_limit"},
		{"workspaces: {fast: {rate_limit: 1/500ms}}", "workspaces.fast.rate_limit"},
	}
	for _, tc := range bad {
		_, err := Parse([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.path+":") {
			t.Errorf("%s: error %v, want a FieldError naming %s", tc.yaml, err, tc.path)
		}
	}
	good := map[string]apikey.Rate{
		"ratelimit: {default: 1/8760h}":                      {N: 1, Per: apikey.MaxRatePeriod},
		"ratelimit: {default: 1000000000/s}":                 {N: apikey.MaxRateCount, Per: apikey.MinRatePeriod},
		"workspaces: {acme: {rate_limit: 1000000000/8760h}}": {N: apikey.MaxRateCount, Per: apikey.MaxRatePeriod},
		"workspaces: {acme: {rate_limit: 1/1s}, other: {}}":  {N: 1, Per: apikey.MinRatePeriod},
	}
	for yaml, want := range good {
		c, err := Parse([]byte(yaml))
		if err != nil {
			t.Errorf("%s: %v", yaml, err)
			continue
		}
		got := c.RateLimit.Default
		if strings.HasPrefix(yaml, "workspaces") {
			got = c.Workspaces["acme"].RateLimit
		}
		if got != want {
			t.Errorf("%s: rate %v, want %v", yaml, got, want)
		}
	}
}
