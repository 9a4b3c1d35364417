package extauthz

import (
	"strconv"
	"strings"
)

// Context extension names that routes set in Envoy's per-route ext_authz config.
const (
	// ExtResource names, literally, the resource a route belongs to.
	ExtResource = "resource"
	// ExtResourceSegment is the 1-based index of the path segment naming the resource.
	ExtResourceSegment = "resource_segment"
)

// extSource reads Envoy's per-route context_extensions from a proto map or wire pairs.
type extSource struct {
	m     map[string]string
	pairs pairs
}

func (e extSource) get(k string) (string, bool) {
	if e.m != nil {
		v, ok := e.m[k]
		return v, ok
	}
	return e.pairs.get(k)
}

// template is a path prefix with one captured segment, e.g. /organizations/{resource}.
type template struct {
	segs []string // literal segments; "" at the capture index
	at   int      // index of the capture
}

func parseTemplates(ts []string) []template {
	out := make([]template, 0, len(ts))
	for _, t := range ts {
		segs := strings.Split(strings.Trim(t, "/"), "/")
		at := -1
		for i, s := range segs {
			if s == "{resource}" {
				segs[i], at = "", i
			}
		}
		if at >= 0 {
			out = append(out, template{segs: segs, at: at})
		}
	}
	return out
}

// segment returns the n-th (0-based) segment of path, ignoring the query string.
func segment(path string, n int) (string, bool) {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	path = strings.TrimPrefix(path, "/")
	for i := 0; ; i++ {
		s := path
		j := strings.IndexByte(path, '/')
		if j >= 0 {
			s, path = path[:j], path[j+1:]
		}
		if i == n {
			return s, s != ""
		}
		if j < 0 {
			return "", false
		}
	}
}

// resource returns the resource the request targets, or "" when the route names none.
func resource(path string, ext extSource, ts []template) string {
	if r, ok := ext.get(ExtResource); ok && r != "" {
		return r
	}
	if s, ok := ext.get(ExtResourceSegment); ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return "\x00invalid" // a misconfigured route matches no key: fail closed
		}
		r, _ := segment(path, n-1)
		if r == "" {
			return "\x00missing"
		}
		return r
	}
	for _, t := range ts {
		if r, ok := t.match(path); ok {
			return r
		}
	}
	return ""
}

func (t template) match(path string) (string, bool) {
	for i, lit := range t.segs {
		s, ok := segment(path, i)
		if !ok {
			return "", false
		}
		if i != t.at && s != lit {
			return "", false
		}
	}
	return segment(path, t.at)
}
