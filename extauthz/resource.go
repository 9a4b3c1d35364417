package extauthz

import (
	"strconv"
	"strings"
	"unsafe"

	"github.com/keyauthz/keyauthz/config"
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

// template is a path prefix with capture segments, from the top level of the
// resource hierarchy down, e.g. /organizations/{resource} or
// /organizations/{organization}/projects/{project}.
type template struct {
	segs []string // the template's segments; "" at a capture
	capt []bool   // whether each segment is a capture
}

// parseTemplates reads path templates; a template without a capture is left out
// (config validation refuses those).
func parseTemplates(ts []string) []template {
	out := make([]template, 0, len(ts))
	for _, t := range ts {
		segs := strings.Split(strings.Trim(t, "/"), "/")
		capt := make([]bool, len(segs))
		n := 0
		for i, s := range segs {
			if _, ok := config.Capture(s); ok {
				segs[i], capt[i] = "", true
				n++
			}
		}
		if n > 0 {
			out = append(out, template{segs: segs, capt: capt})
		}
	}
	return out
}

// segment returns the n-th (0-based) segment of path, ignoring the query string.
func segment(path string, n int) (string, bool) {
	path = trimPath(path)
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

// trimPath drops the query string or fragment and the leading '/'.
func trimPath(path string) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	return strings.TrimPrefix(path, "/")
}

// resource returns the resource path the request targets ("acme",
// "acme/web"), or "" when the route names none. A path joined from several
// captures is built in scratch when it fits (the result may point into it).
func resource(path string, ext extSource, ts []template, scratch []byte) string {
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
		if r, ok := t.match(path, scratch); ok {
			return r
		}
	}
	return ""
}

// match returns the resource path of path under t: the captured segments
// joined by '/', top level first, as far as path goes. t matches when path
// holds every segment up to t's first capture, literals equal; after that,
// captures are collected while path has segments and its literals equal t's
// (a path that leaves the template, e.g. /organizations/acme/billing under
// /organizations/{organization}/projects/{project}, names the levels it
// captured so far: "acme"). Empty segments end the path.
func (t *template) match(path string, scratch []byte) (string, bool) {
	path = trimPath(path)
	var (
		first string // the first capture
		b     []byte // the joined path, from the second capture on
		n     int    // captures collected
	)
	for i, lit := range t.segs {
		if path == "" {
			break
		}
		s := path
		if j := strings.IndexByte(path, '/'); j >= 0 {
			s, path = path[:j], path[j+1:]
		} else {
			path = ""
		}
		if s == "" {
			break
		}
		if !t.capt[i] {
			if s != lit {
				break
			}
			continue
		}
		switch n {
		case 0:
			first = s
		case 1:
			b = append(append(append(scratch[:0], first...), '/'), s...)
		default:
			b = append(append(b, '/'), s...)
		}
		n++
	}
	switch n {
	case 0:
		return "", false
	case 1:
		return first, true
	}
	return unsafe.String(unsafe.SliceData(b), len(b)), true
}
