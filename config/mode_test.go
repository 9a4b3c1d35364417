package config

import (
	"strings"
	"testing"
	"time"
)

func TestModeAndThrottle(t *testing.T) {
	c := Default()
	if c.Mode != ModeEnforce || c.Throttle.On() || c.Throttle.Sources != 100_000 || c.Throttle.TrustedProxies != 0 {
		t.Fatalf("defaults: mode %v, throttle %+v", c.Mode, c.Throttle)
	}
	c, err := Parse([]byte(`
mode: report_only
throttle: {unknown_keys_per_source: 20/m, trusted_proxies: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeReportOnly || !c.Throttle.On() || c.Throttle.UnknownKeysPerSource.N != 20 ||
		c.Throttle.UnknownKeysPerSource.Per != time.Minute || c.Throttle.TrustedProxies != 1 || c.Throttle.Sources != 100_000 {
		t.Fatalf("parsed mode %v, throttle %+v", c.Mode, c.Throttle)
	}
	for _, tc := range []struct{ yaml, path string }{
		{"mode: shadow", "mode: "},
		{"throttle: {unknown_keys_per_source: 20/m, trusted_proxies: -1}", "throttle.trusted_proxies: "},
		{"throttle: {unknown_keys_per_source: 20/m, trusted_proxies: 17}", "throttle.trusted_proxies: "},
		{"throttle: {unknown_keys_per_source: 20/m, sources: 0}", "throttle.sources: "},
		{"throttle: {unknown_keys_per_source: 20/2d}", "throttle.unknown_keys_per_source: "},
		{"throttle: {unknown_keys_per_source: abc}", "throttle.unknown_keys_per_source"},
		{"throttle: {unknown_keys: 20/m}", "throttle.unknown_keys: unknown field"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: error %v, want one naming %q", tc.yaml, err, tc.path)
		}
	}
	var m Mode
	if err := m.Check(); err == nil {
		t.Error("a zero Mode passes Check")
	}
}
