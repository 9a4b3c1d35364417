package testenv

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
)

// TagHeader is the request header tests set to find their own requests among
// those an Upstream shared by parallel tests has seen.
const TagHeader = "x-e2e-tag"

// UpstreamHeader is set on every Upstream response so a client can tell the
// upstream answered and not Envoy.
const UpstreamHeader = "x-e2e-upstream"

// Seen is one request as the upstream received it.
type Seen struct {
	Method string
	Path   string // path and query as received
	Header http.Header
}

// Upstream is an HTTP server on loopback that answers 200 and records every
// request it receives.
type Upstream struct {
	Name string
	Port int
	URL  string

	srv  *httptest.Server
	mu   sync.Mutex
	seen []Seen
}

// StartUpstream starts an Upstream named name; it is closed in t.Cleanup.
func StartUpstream(t testing.TB, name string) *Upstream {
	t.Helper()
	u := &Upstream{Name: name}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	u.URL = u.srv.URL
	u.Port = u.srv.Listener.Addr().(*net.TCPAddr).Port
	return u
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.seen = append(u.seen, Seen{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone()})
	n := len(u.seen)
	u.mu.Unlock()
	w.Header().Set("content-type", "application/json")
	w.Header().Set(UpstreamHeader, u.Name)
	_ = json.NewEncoder(w).Encode(map[string]string{"upstream": u.Name, "path": r.URL.RequestURI(), "n": strconv.Itoa(n)})
}

// Requests returns the requests received so far.
func (u *Upstream) Requests() []Seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Seen(nil), u.seen...)
}

// Tagged returns the requests received so far that carry TagHeader: tag.
func (u *Upstream) Tagged(tag string) []Seen {
	var out []Seen
	for _, s := range u.Requests() {
		if s.Header.Get(TagHeader) == tag {
			out = append(out, s)
		}
	}
	return out
}
