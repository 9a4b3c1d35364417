package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func newHandler(t *testing.T) *Handler {
	t.Helper()
	h, err := New(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func get(t *testing.T, h http.Handler, method, target string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantSecurityHeaders checks the headers every answer under /ui/ carries.
func wantSecurityHeaders(t *testing.T, what string, r *http.Response) {
	t.Helper()
	for name, want := range map[string]string{
		"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"Cache-Control":           "no-store",
		"X-Frame-Options":         "DENY",
	} {
		if got := r.Header.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s: %s = %q, want %q", what, name, got, want)
		}
	}
}

func TestNewNeedsLogger(t *testing.T) {
	if _, err := New(nil); err == nil {
		t.Fatal("New(nil): no error")
	}
}

func TestIndexAndHeaders(t *testing.T) {
	h := newHandler(t)
	r := get(t, h, http.MethodGet, "/ui/")
	if r.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui/: %d", r.StatusCode)
	}
	wantSecurityHeaders(t, "GET /ui/", r)
	if ct := r.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("GET /ui/: Content-Type %q", ct)
	}
	b := body(t, r)
	for _, want := range []string{`type="password"`, `<script type="module" src="app.js">`, `<link rel="stylesheet" href="app.css">`} {
		if !strings.Contains(b, want) {
			t.Errorf("index.html lacks %s", want)
		}
	}
	if idx := get(t, h, http.MethodGet, "/ui/index.html"); body(t, idx) != b {
		t.Errorf("/ui/index.html differs from /ui/")
	}
}

func TestEveryAnswerHasHeaders(t *testing.T) {
	h := newHandler(t)
	for _, c := range []struct {
		method, target string
		code           int
		ctype          string
	}{
		{http.MethodGet, "/ui/app.js", 200, "text/javascript; charset=utf-8"},
		{http.MethodGet, "/ui/api.js", 200, "text/javascript; charset=utf-8"},
		{http.MethodGet, "/ui/chart.js", 200, "text/javascript; charset=utf-8"},
		{http.MethodGet, "/ui/app.css", 200, "text/css; charset=utf-8"},
		{http.MethodGet, "/ui/icon.svg", 200, "image/svg+xml"},
		{http.MethodHead, "/ui/app.js", 200, "text/javascript; charset=utf-8"},
		{http.MethodGet, "/ui/nope.js", 404, ""},
		{http.MethodGet, "/ui/static/app.js", 404, ""},
		{http.MethodGet, "/ui/../v1/workspaces", 404, ""},
		{http.MethodPost, "/ui/", 405, ""},
		{http.MethodDelete, "/ui/app.js", 405, ""},
		{http.MethodGet, "/ui", 301, ""},
	} {
		r := get(t, h, c.method, c.target)
		what := c.method + " " + c.target
		if r.StatusCode != c.code {
			t.Errorf("%s: %d, want %d", what, r.StatusCode, c.code)
		}
		wantSecurityHeaders(t, what, r)
		if c.ctype != "" && r.Header.Get("Content-Type") != c.ctype {
			t.Errorf("%s: Content-Type %q, want %q", what, r.Header.Get("Content-Type"), c.ctype)
		}
		if c.code == 301 && r.Header.Get("Location") != "/ui/" {
			t.Errorf("%s: Location %q", what, r.Header.Get("Location"))
		}
		if c.code == 405 && r.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: Allow %q", what, r.Header.Get("Allow"))
		}
	}
}

var (
	htmlRef   = regexp.MustCompile(`\b(?:src|href)="([^"]+)"`)
	jsImport  = regexp.MustCompile(`(?m)^\s*import\s[^;]*?from\s+"([^"]+)"|\bimport\(\s*"([^"]+)"`)
	cssURL    = regexp.MustCompile(`url\(\s*["']?([^"')]+)`)
	scriptTag = regexp.MustCompile(`(?i)<script[^>]*>`)
	absoluteU = regexp.MustCompile(`(?i)\b(?:https?:)?//[a-z0-9.-]+`)
)

// TestReferencedAssetsAreEmbedded follows every src, href, import and url()
// from index.html and fails on a reference that is not an embedded file (or a
// same-page #fragment): the page needs nothing from elsewhere.
func TestReferencedAssetsAreEmbedded(t *testing.T) {
	h := newHandler(t)
	files := h.Files()
	for _, want := range []string{"index.html", "app.js", "api.js", "chart.js", "app.css", "icon.svg"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is not embedded (have %v)", want, files)
		}
	}
	seen := map[string]bool{}
	var visit func(from, ref string)
	visit = func(from, ref string) {
		if strings.HasPrefix(ref, "#") {
			return
		}
		if strings.Contains(ref, ":") || strings.HasPrefix(ref, "/") {
			t.Errorf("%s references %q: only relative references to embedded files are allowed", from, ref)
			return
		}
		p := path.Clean(path.Join(path.Dir(from), ref))
		if seen[p] {
			return
		}
		seen[p] = true
		a, ok := h.assets[p]
		if !ok {
			t.Errorf("%s references %q, which is not embedded", from, ref)
			return
		}
		s := string(a.body)
		var refs [][]string
		switch path.Ext(p) {
		case ".html":
			refs = htmlRef.FindAllStringSubmatch(s, -1)
		case ".js":
			refs = jsImport.FindAllStringSubmatch(s, -1)
		case ".css":
			refs = cssURL.FindAllStringSubmatch(s, -1)
		}
		for _, m := range refs {
			for _, r := range m[1:] {
				if r != "" {
					visit(p, r)
				}
			}
		}
	}
	visit("index.html", "index.html")
	for _, want := range []string{"app.js", "api.js", "chart.js", "app.css", "icon.svg"} {
		if !seen[want] {
			t.Errorf("%s is embedded but nothing references it (the reference scan missed it?)", want)
		}
	}
}

// TestNoInlineCodeOrRemoteURLs guards the CSP promise: no inline script or
// style the policy would block, no eval, no HTML built from strings, and no
// address outside the page (the SVG namespace is a name, not a fetch).
func TestNoInlineCodeOrRemoteURLs(t *testing.T) {
	h := newHandler(t)
	bad := map[string][]*regexp.Regexp{
		".html": {
			regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]`), // a script with a body
			regexp.MustCompile(`(?i)<style`),
			regexp.MustCompile(`(?i)\sstyle=`),
			regexp.MustCompile(`(?i)\son[a-z]+=`),
			regexp.MustCompile(`(?i)javascript:`),
		},
		".js": {
			regexp.MustCompile(`\beval\s*\(`),
			regexp.MustCompile(`\bnew\s+Function\b`),
			regexp.MustCompile(`\.(?:inner|outer)HTML\b`),
			regexp.MustCompile(`insertAdjacentHTML|document\.write`),
			regexp.MustCompile(`setAttribute\(\s*["']style`),
			regexp.MustCompile(`\blocalStorage\b`),
			regexp.MustCompile(`\bdocument\.cookie\b`),
			regexp.MustCompile(`\bsetTimeout\(\s*["']`),
		},
	}
	for p, a := range h.assets {
		if p == "" {
			continue
		}
		s := string(a.body)
		for _, re := range bad[path.Ext(p)] {
			if loc := re.FindStringIndex(s); loc != nil {
				t.Errorf("%s: %q matches %s", p, s[loc[0]:min(loc[1]+20, len(s))], re)
			}
		}
		if path.Ext(p) == ".html" {
			for _, tag := range scriptTag.FindAllString(s, -1) {
				if !strings.Contains(tag, " src=") {
					t.Errorf("%s: %s: a script without src (inline script)", p, tag)
				}
			}
		}
		for _, m := range absoluteU.FindAllString(s, -1) {
			if m != "http://www.w3.org" {
				t.Errorf("%s: absolute address %q: the page must not fetch anything from elsewhere", p, m)
			}
		}
	}
}

// TestSecretsNeverInURLs: the token and secrets travel only in headers and
// bodies. The only query parameters the page builds are listed here, and no
// form field has a name, so even a form submitted natively (before the
// script runs, or if it failed) puts nothing in a URL.
func TestSecretsNeverInURLs(t *testing.T) {
	h := newHandler(t)
	idx := string(h.assets["index.html"].body)
	for _, tag := range regexp.MustCompile(`(?i)<(?:input|select|textarea|button)\b[^>]*>`).FindAllString(idx, -1) {
		if strings.Contains(tag, " name=") {
			t.Errorf("index.html: %s: a named form field would be sent in a URL by a native GET submit", tag)
		}
	}
	if !strings.Contains(idx, `type="password"`) {
		t.Error("index.html: the token input is not type=password")
	}
	api := string(h.assets["api.js"].body)
	if !strings.Contains(api, `Authorization: "Bearer "`) || !strings.Contains(api, "sessionStorage") {
		t.Error("api.js does not send the token as Authorization: Bearer from sessionStorage")
	}
	query := regexp.MustCompile(`[?&]([a-z_]+)=`)
	allowed := []string{"granularity", "limit", "cursor"}
	for _, p := range []string{"app.js", "api.js"} {
		for _, m := range query.FindAllStringSubmatch(string(h.assets[p].body), -1) {
			if !slices.Contains(allowed, m[1]) {
				t.Errorf("%s builds a URL with query parameter %q; allowed: %v", p, m[1], allowed)
			}
		}
	}
}
