package config

import (
	"fmt"
	"strings"
)

// The options below are small integers decoded once from their YAML words;
// the zero value of each is invalid (no default hides in a zero), and each
// appears at one YAML path, which its decoding error names.

// Codec is grpc.codec: how Check requests are decoded.
type Codec uint8

// Codecs.
const (
	CodecFast     Codec = iota + 1 // "fast": the wire decoder of package fastgrpc
	CodecStandard                  // "standard": grpc-go's proto codec
)

// Backend is ratelimit.backend: where rate-limit state lives.
type Backend uint8

// Backends.
const (
	BackendLocal Backend = iota + 1 // "local": in this replica's memory
	BackendRedis                    // "redis": in Redis, shared by every replica
)

// OnError is ratelimit.on_error: the decision when the limiter cannot decide.
type OnError uint8

// On-error policies.
const (
	OnErrorAllow OnError = iota + 1 // "allow": let the request through
	OnErrorDeny                     // "deny": answer 503, limiter unavailable
)

// Body is response.body: the shape of deny bodies.
type Body uint8

// Deny body shapes.
const (
	BodyJSON    Body = iota + 1 // "json": {"message": …}
	BodyProblem                 // "problem": RFC 9457 problem details
)

// RateHeaders is response.rate_headers: which rate-limit headers answers carry.
type RateHeaders uint8

// Rate-limit header styles.
const (
	RateHeadersLegacy RateHeaders = iota + 1 // "legacy": X-RateLimit-Limit, -Remaining, -Reset
	RateHeadersIETF                          // "ietf": RateLimit-Policy and RateLimit (IETF draft)
	RateHeadersBoth                          // "both": legacy and IETF
)

// Reset is response.reset: how X-RateLimit-Reset is written.
type Reset uint8

// Reset styles.
const (
	ResetSeconds Reset = iota + 1 // "seconds": seconds until the window resets
	ResetUnix                     // "unix": the Unix time at which it resets
)

// choice is the text form of one option: its YAML path and its words, in the
// order of its values (the first is 1).
type choice struct {
	path  string
	words []string
}

var (
	codecs      = choice{"grpc.codec", []string{"fast", "standard"}}
	backends    = choice{"ratelimit.backend", []string{"local", "redis"}}
	onErrors    = choice{"ratelimit.on_error", []string{"allow", "deny"}}
	bodies      = choice{"response.body", []string{"json", "problem"}}
	rateHeaders = choice{"response.rate_headers", []string{"legacy", "ietf", "both"}}
	resets      = choice{"response.reset", []string{"seconds", "unix"}}
)

// parse returns the value of word, or a *FieldError listing the words.
func (c choice) parse(word []byte) (uint8, error) {
	for i, w := range c.words {
		if string(word) == w {
			return uint8(i + 1), nil
		}
	}
	return 0, c.err(fmt.Sprintf("%q", word))
}

// err is the error for got, the word or value c does not know.
func (c choice) err(got string) error {
	return &FieldError{Path: c.path, Msg: got + ": want one of " + strings.Join(c.words, ", ")}
}

func (c choice) valid(v uint8) bool { return v >= 1 && int(v) <= len(c.words) }

// word is v's word; "unset" for zero and "invalid(v)" for a value out of range.
func (c choice) word(v uint8) string {
	switch {
	case c.valid(v):
		return c.words[v-1]
	case v == 0:
		return "unset"
	}
	return fmt.Sprintf("invalid(%d)", v)
}

// check reports a value outside the choice (a zero left in a Config built in Go).
func (c choice) check(v uint8) error {
	if c.valid(v) {
		return nil
	}
	return c.err(c.word(v))
}

// String returns the YAML word of v.
func (v Codec) String() string { return codecs.word(uint8(v)) }

// UnmarshalText reads fast or standard.
func (v *Codec) UnmarshalText(b []byte) error { return unmarshal(codecs, b, v) }

// MarshalText writes the YAML word.
func (v Codec) MarshalText() ([]byte, error) { return []byte(v.String()), codecs.check(uint8(v)) }

// String returns the YAML word of v.
func (v Backend) String() string { return backends.word(uint8(v)) }

// UnmarshalText reads local or redis.
func (v *Backend) UnmarshalText(b []byte) error { return unmarshal(backends, b, v) }

// MarshalText writes the YAML word.
func (v Backend) MarshalText() ([]byte, error) { return []byte(v.String()), backends.check(uint8(v)) }

// String returns the YAML word of v.
func (v OnError) String() string { return onErrors.word(uint8(v)) }

// UnmarshalText reads allow or deny.
func (v *OnError) UnmarshalText(b []byte) error { return unmarshal(onErrors, b, v) }

// MarshalText writes the YAML word.
func (v OnError) MarshalText() ([]byte, error) { return []byte(v.String()), onErrors.check(uint8(v)) }

// Check reports whether v is allow or deny (a constructor's validation).
func (v OnError) Check() error { return onErrors.check(uint8(v)) }

// String returns the YAML word of v.
func (v Body) String() string { return bodies.word(uint8(v)) }

// UnmarshalText reads json or problem.
func (v *Body) UnmarshalText(b []byte) error { return unmarshal(bodies, b, v) }

// MarshalText writes the YAML word.
func (v Body) MarshalText() ([]byte, error) { return []byte(v.String()), bodies.check(uint8(v)) }

// Check reports whether v is json or problem (a constructor's validation).
func (v Body) Check() error { return bodies.check(uint8(v)) }

// String returns the YAML word of v.
func (v RateHeaders) String() string { return rateHeaders.word(uint8(v)) }

// UnmarshalText reads legacy, ietf or both.
func (v *RateHeaders) UnmarshalText(b []byte) error { return unmarshal(rateHeaders, b, v) }

// MarshalText writes the YAML word.
func (v RateHeaders) MarshalText() ([]byte, error) {
	return []byte(v.String()), rateHeaders.check(uint8(v))
}

// Check reports whether v is legacy, ietf or both (a constructor's validation).
func (v RateHeaders) Check() error { return rateHeaders.check(uint8(v)) }

// String returns the YAML word of v.
func (v Reset) String() string { return resets.word(uint8(v)) }

// UnmarshalText reads seconds or unix.
func (v *Reset) UnmarshalText(b []byte) error { return unmarshal(resets, b, v) }

// MarshalText writes the YAML word.
func (v Reset) MarshalText() ([]byte, error) { return []byte(v.String()), resets.check(uint8(v)) }

// Check reports whether v is seconds or unix (a constructor's validation).
func (v Reset) Check() error { return resets.check(uint8(v)) }

// unmarshal sets *v to word's value in c, leaving it unchanged on error.
func unmarshal[T ~uint8](c choice, word []byte, v *T) error {
	n, err := c.parse(word)
	if err != nil {
		return err
	}
	*v = T(n)
	return nil
}
