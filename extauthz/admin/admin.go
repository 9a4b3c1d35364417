// Package admin is keyauthz's REST admin API: create (secret shown once), list,
// get, update, refresh (rotate, with an opt-in grace period) and delete API keys,
// read a key's usage and a workspace's audit trail, and manage workspace records,
// behind admin bearer tokens that may be limited to some workspaces. It also holds
// a small Go client for that API (Client) and helpers the CLI prints with.
package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed" // the OpenAPI document
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// OpenAPI is the OpenAPI 3 document of the admin API, served at GET /v1/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

const (
	// DefaultPageSize is the page size of list and audit when no limit is given.
	DefaultPageSize = 100
	// MaxPageSize is the largest limit list and audit accept.
	MaxPageSize = 500
	// MaxGrace is the longest grace period a refresh accepts.
	MaxGrace = 30 * 24 * time.Hour
	// MinTokenLen is the shortest admin token accepted, in bytes.
	MinTokenLen = 16
	// changeTimeout bounds applying a change to the local cache (Options.OnChange).
	changeTimeout = 5 * time.Second
	// realm is the WWW-Authenticate realm of 401 answers.
	realm = "keyauthz-admin"
)

// Token is one admin bearer token; its Name is the actor recorded in the audit trail.
type Token struct {
	Name   string
	Secret []byte
	// Workspaces limits the token to these workspaces (403 elsewhere, and
	// GET /v1/workspaces lists only these); nil means every workspace.
	Workspaces []string
}

// Options tune the handler. They are taken as given (the defaults are
// config.Default's): New refuses options that are missing or invalid.
type Options struct {
	// MaxBody bounds request bodies in bytes; it must be positive.
	MaxBody int64
	// OnChange is called after every committed key change, before the answer is
	// sent, so this replica's cache drops changed keys at once (wire the change-feed
	// follower's Poll). Its error is logged; the change stands.
	OnChange func(ctx context.Context) error
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Observe, when set, is called after every request with its route (the
	// pattern it matched, such as "GET /v1/workspaces/{ws}/api-keys", or
	// RouteUnmatched), the status code answered and how long it took: a closed
	// set of labels for metrics, never the raw path.
	Observe func(route string, code int, took time.Duration)
}

// RouteUnmatched is the route Options.Observe reports for a request no route matched.
const RouteUnmatched = "unmatched"

// Handler serves the admin API under /v1/. It implements http.Handler.
type Handler struct {
	m      *apikey.Manager
	store  apikey.Store
	tokens []tokenSum
	opt    Options
	log    *zap.Logger
	mux    *http.ServeMux
	routes []route
}

var _ http.Handler = (*Handler)(nil)

type tokenSum struct {
	name  string
	sum   [sha256.Size]byte
	scope []string // sorted, deduplicated; nil = every workspace
}

// caller is who sent an authenticated request: the token's name (the audit
// actor) and the workspaces it may reach (nil = all).
type caller struct {
	name  string
	scope []string
}

// allows reports whether the caller may act on workspace ws.
func (c caller) allows(ws string) bool {
	if c.scope == nil {
		return true
	}
	_, ok := slices.BinarySearch(c.scope, ws)
	return ok
}

// route is one served method and path; public routes need no token.
type route struct {
	method, path string
	public       bool
	serve        func(w http.ResponseWriter, r *http.Request, c caller)
}

// New returns the admin API over m, accepting the given bearer tokens (at least one;
// surrounding whitespace, such as a token file's newline, is ignored).
func New(m *apikey.Manager, tokens []Token, opt Options, log *zap.Logger) (*Handler, error) {
	switch {
	case m == nil:
		return nil, errors.New("admin: nil manager")
	case log == nil:
		return nil, errors.New("admin: nil logger")
	case len(tokens) == 0:
		return nil, errors.New("admin: no admin token configured")
	case opt.MaxBody <= 0:
		return nil, fmt.Errorf("admin: max body %d: must be positive", opt.MaxBody)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	h := &Handler{m: m, store: m.Store(), opt: opt, log: log, mux: http.NewServeMux()}
	seen := map[string]bool{}
	for i, t := range tokens {
		secret := bytes.TrimSpace(t.Secret)
		switch {
		case t.Name == "":
			return nil, fmt.Errorf("admin: token %d: name required", i)
		case seen[t.Name]:
			return nil, fmt.Errorf("admin: token %q: name appears twice", t.Name)
		case len(secret) < MinTokenLen:
			return nil, fmt.Errorf("admin: token %q: %d bytes, need at least %d", t.Name, len(secret), MinTokenLen)
		}
		seen[t.Name] = true
		ts := tokenSum{name: t.Name, sum: sha256.Sum256(secret)}
		if t.Workspaces != nil {
			if len(t.Workspaces) == 0 {
				return nil, fmt.Errorf("admin: token %q: empty workspaces list; leave it out for every workspace", t.Name)
			}
			for j, ws := range t.Workspaces {
				if !apikey.ValidName(ws) {
					return nil, fmt.Errorf("admin: token %q: workspaces entry %d: %s", t.Name, j, apikey.IDRule)
				}
			}
			ts.scope = slices.Compact(slices.Sorted(slices.Values(t.Workspaces)))
		}
		h.tokens = append(h.tokens, ts)
	}
	h.routes = []route{
		{method: http.MethodGet, path: "/v1/workspaces", serve: h.listWorkspaces},
		{method: http.MethodPut, path: "/v1/workspaces/{ws}", serve: h.putWorkspace},
		{method: http.MethodPatch, path: "/v1/workspaces/{ws}", serve: h.patchWorkspace},
		{method: http.MethodGet, path: "/v1/workspaces/{ws}", serve: h.getWorkspace},
		{method: http.MethodPost, path: "/v1/workspaces/{ws}/api-keys", serve: h.create},
		{method: http.MethodGet, path: "/v1/workspaces/{ws}/api-keys", serve: h.list},
		{method: http.MethodGet, path: "/v1/workspaces/{ws}/api-keys/{id}", serve: h.get},
		{method: http.MethodPatch, path: "/v1/workspaces/{ws}/api-keys/{id}", serve: h.update},
		{method: http.MethodGet, path: "/v1/workspaces/{ws}/api-keys/{id}/usage", serve: h.usage},
		{method: http.MethodPost, path: "/v1/workspaces/{ws}/api-keys/{id}/refresh", serve: h.refresh},
		{method: http.MethodDelete, path: "/v1/workspaces/{ws}/api-keys/{id}", serve: h.delete},
		{method: http.MethodGet, path: "/v1/workspaces/{ws}/audit", serve: h.audit},
		{method: http.MethodGet, path: "/v1/openapi.yaml", public: true, serve: h.openapi},
	}
	for _, rt := range h.routes {
		h.mux.Handle(rt.method+" "+rt.path, h.wrap(rt))
	}
	return h, nil
}

// wrap checks the token of non-public routes, refuses (403) a token limited to
// other workspaces on every route under /v1/workspaces/{ws}, before anything
// else is looked at, and passes the caller on.
func (h *Handler) wrap(rt route) http.Handler {
	scoped := strings.Contains(rt.path, "{ws}")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c caller
		if !rt.public {
			var ok bool
			if c, ok = h.authenticate(r); !ok {
				h.unauthorized(w, r)
				return
			}
			if scoped && !c.allows(r.PathValue("ws")) {
				writeError(w, http.StatusForbidden, errForbidden)
				return
			}
		}
		rt.serve(w, r, c)
	})
}

// Routes returns the pattern of every served route, such as
// "GET /v1/workspaces/{ws}/api-keys": the routes Options.Observe reports,
// besides RouteUnmatched.
func (h *Handler) Routes() []string {
	out := make([]string, len(h.routes))
	for i, rt := range h.routes {
		out[i] = rt.method + " " + rt.path
	}
	return out
}

// ServeHTTP routes a request; unknown routes answer 404 or 405 as JSON (401 without a valid token).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, pattern := h.mux.Handler(r)
	if h.opt.Observe != nil {
		start, sw := time.Now(), &statusWriter{ResponseWriter: w}
		w = sw
		defer func() {
			route := pattern
			if route == "" {
				route = RouteUnmatched
			}
			h.opt.Observe(route, sw.status(), time.Since(start))
		}()
	}
	hd := w.Header()
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	if pattern != "" {
		h.mux.ServeHTTP(w, r)
		return
	}
	if _, ok := h.authenticate(r); !ok {
		h.unauthorized(w, r)
		return
	}
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodPost, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := h.mux.Handler(r2); p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		hd.Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, &apiError{Code: "method_not_allowed", Message: "method not allowed here; see the Allow header"})
		return
	}
	writeError(w, http.StatusNotFound, &apiError{Code: "not_found", Message: "no such route"})
}

// authenticate returns the caller whose token is in the Authorization header.
// Every configured token is compared, in constant time, whatever matches.
func (h *Handler) authenticate(r *http.Request) (caller, bool) {
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return caller{}, false
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return caller{}, false
	}
	sum := sha256.Sum256([]byte(tok))
	match := -1
	for i := range h.tokens {
		eq := subtle.ConstantTimeCompare(sum[:], h.tokens[i].sum[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return caller{}, false
	}
	return caller{name: h.tokens[match].name, scope: h.tokens[match].scope}, true
}

func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request) {
	h.log.Info("admin request without a valid token", zap.String("method", r.Method),
		zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr))
	w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`"`)
	writeError(w, http.StatusUnauthorized, &apiError{Code: "unauthorized", Message: "missing or invalid admin token"})
}

// ---------------------------------------------------------------- handlers

func (h *Handler) openapi(w http.ResponseWriter, _ *http.Request, _ caller) {
	w.Header().Set("Content-Type", "application/yaml")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(OpenAPI)
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request, c caller) {
	ws, e := workspace(r)
	if e == nil {
		var b createBody
		if e = h.readJSON(r, &b, false); e == nil {
			var spec apikey.Spec
			if spec, e = b.spec(ws, h.opt.Now()); e == nil {
				h.created(w, r, spec, c.name)
				return
			}
		}
	}
	writeError(w, e.status(), e)
}

func (h *Handler) created(w http.ResponseWriter, r *http.Request, spec apikey.Spec, actor string) {
	k, secret, err := h.m.Create(r.Context(), spec, actor)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.changed(r.Context(), k.ID)
	h.log.Info("key created", zap.String("key_id", k.ID), zap.String("workspace", k.Workspace),
		zap.String("display", k.Display), zap.String("actor", actor))
	w.Header().Set("Location", keyLocation(k.Workspace, k.ID))
	writeJSON(w, http.StatusCreated, NewView(k, secret))
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request, _ caller) {
	ws, e := workspace(r)
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	limit, after, e := page(r, "k", ws)
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	var unused time.Duration
	if q := r.URL.Query(); q.Has("unused_for") {
		var err error
		if unused, err = ParseUnusedFor(q.Get("unused_for")); err != nil {
			writeError(w, http.StatusBadRequest, invalid("unused_for", unusedRule))
			return
		}
	}
	now := h.opt.Now().UTC()
	var keys []apikey.Key
	var err error
	if unused > 0 {
		keys, err = h.store.ListUnused(r.Context(), ws, now.Add(-unused), after, limit+1)
	} else {
		keys, err = h.store.List(r.Context(), ws, after, limit+1)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := KeyPage{Items: make([]View, 0, min(len(keys), limit))}
	if out.MaxKeys, err = h.m.MaxKeys(r.Context(), ws); err != nil {
		h.fail(w, r, err)
		return
	}
	for i := range keys {
		if i == limit {
			out.NextCursor = encodeCursor("k", ws, keys[i-1].ID)
			break
		}
		out.Items = append(out.Items, NewView(keys[i], ""))
	}
	if err := h.requests30d(r.Context(), now, out.Items); err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// requests30d fills the Requests30d of views with one UsageTotals call.
func (h *Handler) requests30d(ctx context.Context, now time.Time, views []View) error {
	return FillRequests30d(ctx, h.store, now, views)
}

// FillRequests30d sets each view's Requests30d from one s.UsageTotals call
// over the 30 days before now (the admin API's list and get, and the CLI).
func FillRequests30d(ctx context.Context, s apikey.UsageStore, now time.Time, views []View) error {
	if len(views) == 0 {
		return nil
	}
	ids := make([]string, len(views))
	for i := range views {
		ids[i] = views[i].ID
	}
	totals, err := s.UsageTotals(ctx, ids, now.Add(-RequestsWindow))
	if err != nil {
		return err
	}
	for i := range views {
		views[i].Requests30d = totals[views[i].ID]
	}
	return nil
}

// key returns the live key named by the path, 404 when it is not in the path's workspace.
func (h *Handler) key(w http.ResponseWriter, r *http.Request) (apikey.Key, bool) {
	ws, e := workspace(r)
	if e != nil {
		writeError(w, e.status(), e)
		return apikey.Key{}, false
	}
	id := r.PathValue("id")
	if !validID(id) {
		writeError(w, http.StatusNotFound, errNotFound)
		return apikey.Key{}, false
	}
	k, err := h.store.Get(r.Context(), id)
	if err == nil && k.Workspace != ws {
		err = apikey.ErrNotFound // another workspace's key is not reachable from this one
	}
	if err != nil {
		h.fail(w, r, err)
		return apikey.Key{}, false
	}
	return k, true
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, _ caller) {
	k, ok := h.key(w, r)
	if !ok {
		return
	}
	v := []View{NewView(k, "")}
	if err := h.requests30d(r.Context(), h.opt.Now().UTC(), v); err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v[0])
}

func (h *Handler) refresh(w http.ResponseWriter, r *http.Request, c caller) {
	actor := c.name
	if _, e := workspace(r); e != nil {
		writeError(w, e.status(), e)
		return
	}
	var b refreshBody
	if e := h.readJSON(r, &b, true); e != nil {
		writeError(w, e.status(), e)
		return
	}
	grace, e := b.grace()
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	k, ok := h.key(w, r)
	if !ok {
		return
	}
	// Counted before the rotation: failing afterwards would lose the new secret.
	v := []View{NewView(k, "")}
	if err := h.requests30d(r.Context(), h.opt.Now().UTC(), v); err != nil {
		h.fail(w, r, err)
		return
	}
	k, secret, err := h.m.Refresh(r.Context(), k.ID, grace, actor)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.changed(r.Context(), k.ID)
	h.log.Info("key refreshed", zap.String("key_id", k.ID), zap.String("workspace", k.Workspace),
		zap.String("display", k.Display), zap.Duration("grace", grace), zap.String("actor", actor))
	out := NewView(k, secret)
	out.Requests30d = v[0].Requests30d
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) delete(w http.ResponseWriter, r *http.Request, c caller) {
	actor := c.name
	k, ok := h.key(w, r)
	if !ok {
		return
	}
	if err := h.m.Delete(r.Context(), k.ID, actor); err != nil {
		h.fail(w, r, err)
		return
	}
	h.changed(r.Context(), k.ID)
	h.log.Info("key deleted", zap.String("key_id", k.ID), zap.String("workspace", k.Workspace), zap.String("actor", actor))
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) audit(w http.ResponseWriter, r *http.Request, _ caller) {
	ws, e := workspace(r)
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	limit, after, e := page(r, "a", ws)
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	var seq int64
	if after != "" {
		var err error
		if seq, err = strconv.ParseInt(after, 10, 64); err != nil || seq < 0 {
			writeError(w, http.StatusBadRequest, errCursor)
			return
		}
	}
	evs, err := h.store.Events(r.Context(), ws, seq, limit+1)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := AuditPage{Items: make([]Event, 0, min(len(evs), limit))}
	for i := range evs {
		if i == limit {
			out.NextCursor = encodeCursor("a", ws, strconv.FormatInt(evs[i-1].Seq, 10))
			break
		}
		out.Items = append(out.Items, NewEvent(evs[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

// changed applies a committed change (of key id, or of a workspace record
// when id is "") to this replica's cache at once.
func (h *Handler) changed(ctx context.Context, id string) {
	if h.opt.OnChange == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	if err := h.opt.OnChange(ctx); err != nil {
		h.log.Warn("applying a change to the local cache failed; the change feed will retry",
			zap.String("key_id", id), zap.Error(err))
	}
}

// fail answers a Manager or store error: bad input, not found and conflicts are
// the caller's; anything else is a fault (logged, generic answer).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var fe *apikey.FieldError
	switch {
	case errors.As(err, &fe):
		f := fe.Field
		if f == "grace" {
			f = "grace_seconds"
		}
		writeError(w, http.StatusBadRequest, &apiError{Code: "invalid", Field: f, Message: f + ": " + fe.Msg})
	case errors.Is(err, apikey.ErrNotFound):
		writeError(w, http.StatusNotFound, errNotFound)
	case errors.Is(err, apikey.ErrLimit):
		writeError(w, http.StatusConflict, &apiError{Code: "limit", Message: "the workspace already holds its maximum number of API keys; delete one first"})
	case errors.Is(err, apikey.ErrNameTaken):
		writeError(w, http.StatusConflict, &apiError{Code: "name_taken", Field: "name", Message: "name: another API key in this workspace has this name"})
	case errors.Is(err, apikey.ErrReadOnly):
		writeError(w, http.StatusConflict, &apiError{Code: "read_only", Message: "the key store is read-only; keys are managed in its file"})
	case r.Context().Err() != nil:
		h.log.Debug("admin request canceled", zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, &apiError{Code: "canceled", Message: "request canceled"})
	default:
		h.log.Error("admin request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, http.StatusInternalServerError, &apiError{Code: "internal", Message: "internal error; see the server log"})
	}
}

// ---------------------------------------------------------------- answers

var (
	errNotFound  = &apiError{Code: "not_found", Message: "API key not found"}
	errNoSpace   = &apiError{Code: "not_found", Message: "workspace not found"}
	errForbidden = &apiError{Code: "forbidden", Message: "token not allowed for this workspace"}
	errCursor    = &apiError{Code: "invalid", Field: "cursor", Message: "cursor: not a cursor this list returned"}
)

// apiError is the JSON error body: a message, and the offending field for bad input.
type apiError struct {
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	Code    string `json:"code,omitempty"`
	http    int    // HTTP status for status(); 0 means 400
}

// status is the HTTP status of an input error.
func (e *apiError) status() int {
	if e.http != 0 {
		return e.http
	}
	return http.StatusBadRequest
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b = []byte(`{"message":"internal error","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, e *apiError) { writeJSON(w, code, e) }

// workspace returns the path's workspace, checked (after percent-decoding, so
// "%2e%2e" is "..", refused) against apikey.ValidName; the error never echoes it.
func workspace(r *http.Request) (string, *apiError) {
	ws := r.PathValue("ws")
	if !apikey.ValidName(ws) {
		return "", invalid("workspace", apikey.IDRule)
	}
	return ws, nil
}

// keyLocation is the URL path of a key; ws and id are checked ids (never "." or ".."),
// each escaped as one path segment.
func keyLocation(ws, id string) string {
	return "/v1/workspaces/" + url.PathEscape(ws) + "/api-keys/" + url.PathEscape(id)
}

// validID reports whether id can be a key id at all (anything else is simply not found).
func validID(id string) bool {
	return strings.HasPrefix(id, "key_") && len(id) <= 64 && apikey.ValidName(id)
}

// statusWriter remembers the status code a handler answers with (Options.Observe).
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status is the code answered: 200 when the handler wrote nothing.
func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
