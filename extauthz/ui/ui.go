// Package ui is the API Access page: a small web page, served by keyauthz on
// its HTTP listener at /ui/ when the admin API is on, where the people who
// hold API keys list, create, refresh and delete them, see each key's usage
// and read the workspace's audit trail.
//
// The page is plain HTML, CSS and JavaScript modules embedded in the binary
// (no build step, no CDN, nothing fetched at run time). It talks to the admin
// API (/v1/) on the same origin with the admin token the user signs in with,
// sent as Authorization: Bearer and kept in sessionStorage only. Every answer
// carries a Content-Security-Policy that allows only the page's own files, so
// the page has no inline script or style.
package ui

import (
	"bytes"
	"embed"
	"errors"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Prefix is the URL path the page is served under; mount the handler there.
const Prefix = "/ui/"

// CSP is the Content-Security-Policy of every answer: the page's own files
// only (no inline script or style, no eval), and never inside a frame.
const CSP = "default-src 'self'; frame-ancestors 'none'"

//go:embed static
var static embed.FS

// asset is one embedded file, ready to serve.
type asset struct {
	body  []byte
	ctype string
}

// Handler serves the embedded page under Prefix. It implements http.Handler.
type Handler struct {
	assets map[string]asset // by path under Prefix; "" is index.html
	log    *zap.Logger
}

var _ http.Handler = (*Handler)(nil)

// modTime is the Last-Modified time of every asset: none (the zero time) so
// clients never revalidate against a stale copy; answers are no-store anyway.
var modTime time.Time

// New returns the handler serving the page; it reads every embedded file once.
func New(log *zap.Logger) (*Handler, error) {
	if log == nil {
		return nil, errors.New("ui: nil logger")
	}
	h := &Handler{assets: map[string]asset{}, log: log}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		ct := contentType(p)
		if ct == "" {
			return errors.New("ui: no content type for " + p)
		}
		h.assets[strings.TrimPrefix(p, "static/")] = asset{body: b, ctype: ct}
		return nil
	})
	if err != nil {
		return nil, err
	}
	idx, ok := h.assets["index.html"]
	if !ok {
		return nil, errors.New("ui: index.html is not embedded")
	}
	h.assets[""] = idx
	return h, nil
}

// Files returns the paths of the embedded files, relative to Prefix.
func (h *Handler) Files() []string {
	out := make([]string, 0, len(h.assets))
	for p := range h.assets {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// contentType is the Content-Type of an embedded file, "" for a kind the page does not use.
func contentType(p string) string {
	switch path.Ext(p) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	}
	return mime.TypeByExtension(path.Ext(p))
}

// ServeHTTP answers GET and HEAD for the embedded files, with the security headers on every answer.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	if r.URL.Path == strings.TrimSuffix(Prefix, "/") {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hd.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rel, ok := strings.CutPrefix(r.URL.Path, Prefix)
	a, found := h.assets[rel]
	if !ok || !found {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	hd.Set("Content-Type", a.ctype)
	http.ServeContent(w, r, rel, modTime, bytes.NewReader(a.body))
}
