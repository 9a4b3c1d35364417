package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/extauthz/usage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Admin tokens used by the tests.
const (
	opsToken = "ops-token-0123456789abcdef"
	ciToken  = "ci-token-0123456789abcdef"
	// testMaxBody is config.Default's admin.max_body.
	testMaxBody = 64 << 10
)

var pepper = []byte("0123456789abcdef0123456789abcdef")

// syncBuffer collects every log line of a test (to assert no secret is logged).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countingStore is the real sqlite store, counting Touch calls (per key) and
// optionally failing reads to provoke store faults.
type countingStore struct {
	apikey.Store
	mu       sync.Mutex
	touches  int
	perKey   map[string]int
	failList atomic.Pointer[error]
	totals   atomic.Int64 // UsageTotals calls
}

func (c *countingStore) UsageTotals(ctx context.Context, ids []string, since time.Time) (map[string]int64, error) {
	c.totals.Add(1)
	return c.Store.UsageTotals(ctx, ids, since)
}

func (c *countingStore) Touch(ctx context.Context, used map[string]time.Time) error {
	c.mu.Lock()
	c.touches++
	for id := range used {
		c.perKey[id]++
	}
	c.mu.Unlock()
	return c.Store.Touch(ctx, used)
}

func (c *countingStore) List(ctx context.Context, ws, after string, limit int) ([]apikey.Key, error) {
	if p := c.failList.Load(); p != nil {
		return nil, *p
	}
	return c.Store.List(ctx, ws, after, limit)
}

func (c *countingStore) touchCounts() (int, map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.perKey))
	for k, v := range c.perKey {
		m[k] = v
	}
	return c.touches, m
}

// env is a running admin API over a real sqlite store, with the Check path wired
// the way the app wires it: keycache + follower (Poll as OnChange) + local limiter
// + the usage recorder.
type env struct {
	t        *testing.T
	srv      *httptest.Server
	store    *countingStore
	mgr      *apikey.Manager
	format   *apikey.Format
	hasher   *apikey.Hasher
	cache    *keycache.Cache
	follower *keycache.Follower
	check    *extauthz.Service
	rec      *usage.Recorder
	logs     *syncBuffer
	router   routers.Router
	changes  atomic.Int64 // OnChange calls
}

type envOpt struct {
	maxBody       int64
	touchInterval time.Duration
	noOnChange    bool
	tokens        []Token          // more admin tokens besides ops and ci
	now           func() time.Time // the handler's clock (time.Now when nil)
}

var (
	docOnce   sync.Once
	docT      *openapi3.T
	docRouter routers.Router
	docErr    error
)

// loadDoc parses and validates the embedded OpenAPI document once, and builds a
// router over it that matches paths on any server.
func loadDoc(t testing.TB) (*openapi3.T, routers.Router) {
	t.Helper()
	docOnce.Do(func() {
		l := openapi3.NewLoader()
		if docT, docErr = l.LoadFromData(OpenAPI); docErr != nil {
			return
		}
		if docErr = docT.Validate(l.Context); docErr != nil {
			return
		}
		cp := *docT
		cp.Servers = nil
		docRouter, docErr = legacy.NewRouter(&cp)
	})
	if docErr != nil {
		t.Fatalf("OpenAPI document: %v", docErr)
	}
	return docT, docRouter
}

func newEnv(t *testing.T, o envOpt) *env {
	t.Helper()
	ctx := context.Background()
	logs := &syncBuffer{}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logs), zap.DebugLevel))
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "keys.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cs := &countingStore{Store: s, perKey: map[string]int{}}
	e := &env{t: t, store: cs, logs: logs}
	if e.format, err = apikey.NewFormat("kz", 256, false); err != nil {
		t.Fatal(err)
	}
	if e.hasher, err = apikey.NewHasher(map[int][]byte{1: pepper}, 1); err != nil {
		t.Fatal(err)
	}
	e.mgr, err = apikey.NewManager(cs, e.format, e.hasher, func(ws string) int {
		if ws == "big" {
			return 12 // per-workspace override
		}
		return 10
	})
	if err != nil {
		t.Fatal(err)
	}
	// A long TTL: only the change feed (OnChange) can make a change visible at once.
	e.cache, err = keycache.New(cs, keycache.Options{Size: 1000, TTL: time.Hour, NegativeSize: 1000, NegativeTTL: time.Hour}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cache.Close() })
	if e.follower, err = keycache.NewFollower(cs, e.cache, time.Hour, log); err != nil {
		t.Fatal(err)
	}
	if err := e.follower.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	lim, err := ratelimit.NewLocal(1000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	m, err := extauthz.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	interval := o.touchInterval
	if interval == 0 {
		interval = time.Hour
	}
	if e.rec, err = usage.New(cs, interval, 840*time.Hour, log); err != nil {
		t.Fatal(err)
	}
	def := config.Default()
	e.check, err = extauthz.New(e.format, e.hasher, e.cache, lim, m, extauthz.Options{
		Headers: []string{"x-api-key"}, DefaultRate: apikey.Rate{N: 1_000_000, Per: time.Minute},
		KeyIDHeader: def.Headers.KeyID, WorkspaceHeader: def.Headers.Workspace, Realm: def.Response.Realm,
		Body: def.Response.Body, RateHeaders: def.Response.RateHeaders, Reset: def.Response.Reset,
		Used: e.rec.Used,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	opt := Options{MaxBody: o.maxBody, Now: o.now}
	if opt.MaxBody == 0 {
		opt.MaxBody = testMaxBody
	}
	if !o.noOnChange {
		opt.OnChange = func(ctx context.Context) error {
			e.changes.Add(1)
			return e.follower.Poll(ctx)
		}
	}
	toks := append([]Token{{Name: "ops", Secret: []byte(opsToken + "\n")}, {Name: "ci", Secret: []byte(ciToken)}}, o.tokens...)
	h, err := New(e.mgr, toks, opt, log)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	_, e.router = loadDoc(t)
	return e
}

// resp is one answer of the admin API.
type resp struct {
	code   int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// view checks r's status against code: an error answer must name field (ok
// false); a success is decoded into v (ok true).
func (r resp) view(t *testing.T, code int, field string) (v View, ok bool) {
	t.Helper()
	if r.code != code {
		t.Fatalf("code %d, want %d: %s", r.code, code, r.body)
	}
	if code >= 300 {
		if ae := r.apiErr(t); ae.Field != field {
			t.Errorf("field %q, want %q (message %q)", ae.Field, field, ae.Message)
		}
		return v, false
	}
	r.json(t, &v)
	return v, true
}

// apiErr decodes an error answer.
func (r resp) apiErr(t *testing.T) Error {
	t.Helper()
	var e Error
	r.json(t, &e)
	if e.Message == "" {
		t.Errorf("error answer without a message: %s", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer Content-Type %q, want application/json", ct)
	}
	return e
}

// call sends a request; token "" sends none; body nil sends none; ct "" sets none.
// Every answer to a documented route is validated against the OpenAPI document,
// and the request too when it succeeded.
func (e *env) call(method, path, token, ct string, body []byte) resp {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	r := e.do(req)
	e.validate(req, body, r)
	return r
}

// do sends req to the test server and reads the whole answer.
func (e *env) do(req *http.Request) resp {
	e.t.Helper()
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{code: res.StatusCode, header: res.Header, body: b}
}

// validate checks an answer (and a successful request) against the OpenAPI document.
func (e *env) validate(req *http.Request, body []byte, r resp) {
	e.t.Helper()
	vreq := req.Clone(context.Background())
	if body != nil {
		vreq.Body = io.NopCloser(bytes.NewReader(body))
	}
	route, params, err := e.router.FindRoute(vreq)
	if err != nil {
		if r.code != http.StatusNotFound && r.code != http.StatusMethodNotAllowed && r.code != http.StatusUnauthorized {
			e.t.Errorf("%s %s answered %d but is not in the OpenAPI document: %v", req.Method, req.URL.Path, r.code, err)
		}
		return
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if r.code < 300 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			e.t.Errorf("%s %s succeeded (%d) but the request does not match the OpenAPI document: %v", req.Method, req.URL.Path, r.code, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: r.code, Header: r.header,
		Body: io.NopCloser(bytes.NewReader(r.body)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		e.t.Errorf("%s %s answer %d %s does not match the OpenAPI document: %v", req.Method, req.URL.Path, r.code, r.body, err)
	}
}

// jsonBody marshals v.
func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// create makes a key through the API and returns its view (with the secret).
func (e *env) create(ws, name string) View {
	e.t.Helper()
	r := e.call("POST", "/v1/workspaces/"+ws+"/api-keys", opsToken, "application/json", jsonBody(e.t, map[string]any{"name": name}))
	if r.code != http.StatusCreated {
		e.t.Fatalf("create %s/%s: %d %s", ws, name, r.code, r.body)
	}
	var v View
	r.json(e.t, &v)
	return v
}

// allowed runs one Check with secret and reports whether it was allowed.
func (e *env) allowed(secret string) bool {
	e.t.Helper()
	res, err := e.check.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/things", Headers: map[string]string{":method": "GET", ":path": "/things", "x-api-key": secret},
		}},
	}})
	if err != nil {
		e.t.Fatalf("Check: %v", err)
	}
	return res.GetOkResponse() != nil
}

// leaks returns the places among texts where a secret (or its part after the display form) appears.
func leaks(secrets []View, texts map[string]string) []string {
	var out []string
	for _, v := range secrets {
		if v.Key == "" || len(v.Key) <= len(v.Display) {
			continue
		}
		rest := v.Key[len(v.Display):]
		for where, s := range texts {
			if strings.Contains(s, v.Key) || strings.Contains(s, rest) {
				out = append(out, where+" holds the secret of "+v.ID)
			}
		}
	}
	return out
}
