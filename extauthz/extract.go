package extauthz

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// extractResult says what the request's headers held.
type extractResult uint8

const (
	keyMissing extractResult = iota
	keyFound
	keyConflict
)

// KV is one name/value pair of a request decoded straight from the wire.
type KV struct{ K, V string }

// pairs is a small list of name/value pairs, searched linearly (Envoy sends a
// few dozen headers at most; a map would cost more to build than to search).
type pairs []KV

func (p pairs) get(name string) (string, bool) {
	for i := range p {
		if p[i].K == name {
			return p[i].V, true
		}
	}
	return "", false
}

// headerSource reads one header from a CheckRequest in any of its encodings:
// the plain map (default), header_map (encode_raw_headers), or wire pairs.
type headerSource struct {
	m     map[string]string
	raw   *corev3.HeaderMap
	pairs pairs
}

func (h headerSource) get(name string) (string, bool) {
	if h.m != nil {
		v, ok := h.m[name]
		return v, ok
	}
	if h.pairs != nil {
		// Repeated headers arrive joined by Envoy already; a name seen twice in the
		// wire map keeps the last value, as proto map decoding does.
		v, ok := "", false
		for i := range h.pairs {
			if h.pairs[i].K == name {
				v, ok = h.pairs[i].V, true
			}
		}
		return v, ok
	}
	if h.raw == nil {
		return "", false
	}
	var out string
	found := false
	for _, hv := range h.raw.GetHeaders() {
		if !strings.EqualFold(hv.GetKey(), name) {
			continue
		}
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		if found {
			out += "," + v // Envoy joins repeated headers with ','
		} else {
			out, found = v, true
		}
	}
	return out, found
}

// extract returns the one API key the request presents. The first configured
// header present wins; any different key elsewhere (another header, or a second
// comma-separated value in the same header) is a conflict.
func extract(h headerSource, names []string, bearer bool) (string, extractResult) {
	key := ""
	add := func(v string) bool {
		for v != "" {
			part := v
			if i := strings.IndexByte(v, ','); i >= 0 {
				part, v = v[:i], v[i+1:]
			} else {
				v = ""
			}
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if key == "" {
				key = part
			} else if key != part {
				return false
			}
		}
		return true
	}
	for _, n := range names {
		if v, ok := h.get(n); ok && !add(v) {
			return "", keyConflict
		}
	}
	if bearer {
		if v, ok := h.get("authorization"); ok {
			if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
				if !add(v[7:]) {
					return "", keyConflict
				}
			}
		}
	}
	if key == "" {
		return "", keyMissing
	}
	return key, keyFound
}
