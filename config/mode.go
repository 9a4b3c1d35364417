package config

import (
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Mode is the top-level mode: whether decisions are enforced or only reported.
type Mode uint8

// Modes.
const (
	ModeEnforce    Mode = iota + 1 // "enforce": denies are answered as denies
	ModeReportOnly                 // "report_only": every decision is computed, every request allowed
)

var modes = choice{"mode", []string{"enforce", "report_only"}}

// String returns the YAML word of v.
func (v Mode) String() string { return modes.word(uint8(v)) }

// UnmarshalText reads enforce or report_only.
func (v *Mode) UnmarshalText(b []byte) error { return unmarshal(modes, b, v) }

// MarshalText writes the YAML word.
func (v Mode) MarshalText() ([]byte, error) { return []byte(v.String()), modes.check(uint8(v)) }

// Check reports whether v is enforce or report_only (a constructor's validation).
func (v Mode) Check() error { return modes.check(uint8(v)) }

// Throttle limits, per source address, how many unknown well-formed keys a
// source may present before its further requests with keys not cached as
// valid are answered 429 without a store read. Off unless
// unknown_keys_per_source is set.
type Throttle struct {
	// UnknownKeysPerSource is how many unknown keys one source may present per
	// window, e.g. 20/m; once over, the rest of the window is throttled.
	UnknownKeysPerSource apikey.Rate `yaml:"unknown_keys_per_source"`
	// TrustedProxies is how many proxies in front of Envoy append to
	// x-forwarded-for: with N > 0 the source is the address N hops before
	// the peer in x-forwarded-for (the peer address appended); 0 uses the peer.
	TrustedProxies int `yaml:"trusted_proxies"`
	// Sources bounds the sources tracked at once (an LRU; default 100000).
	Sources int `yaml:"sources"`
}

// On reports whether the throttle is configured.
func (t *Throttle) On() bool { return !t.UnknownKeysPerSource.IsZero() }

// MaxTrustedProxies is the most throttle.trusted_proxies accepted.
const MaxTrustedProxies = 16

// maxThrottleWindow is the longest throttle window accepted.
const maxThrottleWindow = 24 * time.Hour

func (t *Throttle) validate(p *problems) {
	if t.On() {
		if err := t.UnknownKeysPerSource.Check(); err != nil {
			p.add("throttle.unknown_keys_per_source", "%v", err)
		} else if t.UnknownKeysPerSource.Per > maxThrottleWindow {
			p.add("throttle.unknown_keys_per_source", "window %v: at most %v", t.UnknownKeysPerSource.Per, maxThrottleWindow)
		}
	}
	if t.TrustedProxies < 0 || t.TrustedProxies > MaxTrustedProxies {
		p.add("throttle.trusted_proxies", "%d: want 0 to %d proxies", t.TrustedProxies, MaxTrustedProxies)
	}
	if t.Sources <= 0 {
		p.add("throttle.sources", "must be a positive number of sources")
	}
}

// validateModes checks mode and throttle.
func (c *Config) validateModes(p *problems) {
	p.err(modes.check(uint8(c.Mode)))
	c.Throttle.validate(p)
}
