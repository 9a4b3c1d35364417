package extauthz

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

// countingKeys is an in-memory key store that counts every lookup.
type countingKeys struct {
	mu    sync.Mutex
	keys  map[[32]byte]apikey.Key
	reads atomic.Int64
	err   error
}

func (c *countingKeys) Lookup(_ context.Context, d apikey.Digest) (apikey.Key, error) {
	c.reads.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return apikey.Key{}, c.err
	}
	k, ok := c.keys[d.Sum]
	if !ok {
		return apikey.Key{}, apikey.ErrNotFound
	}
	k.PepperVersion = d.Version
	return k, nil
}

type fixture struct {
	svc    *Service
	keys   *countingKeys
	format *apikey.Format
	hasher *apikey.Hasher
	now    time.Time
}

var pepper = []byte("0123456789abcdef0123456789abcdef")

// formatHasher returns the tests' key format ("kz") and a hasher with pepper as version 1.
func formatHasher(t testing.TB) (*apikey.Format, *apikey.Hasher) {
	t.Helper()
	f, err := apikey.NewFormat("kz", 256, false)
	if err != nil {
		t.Fatal(err)
	}
	h, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return f, h
}

func newFixture(t testing.TB, lim Limiter, mod func(*Options)) *fixture {
	t.Helper()
	f, h := formatHasher(t)
	if lim == nil {
		l, err := ratelimit.NewLocal(1000)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		lim = l
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{keys: &countingKeys{keys: map[[32]byte]apikey.Key{}}, format: f, hasher: h, now: time.Now()}
	def := config.Default()
	opt := defaultOptions(def.Headers.APIKey, def.RateLimit.Default)
	opt.Templates = []string{"/organizations/{resource}"}
	opt.WorkspaceRate = map[string]apikey.Rate{"big": {N: 1000, Per: time.Minute}}
	if mod != nil {
		mod(&opt)
	}
	fx.svc, err = New(f, h, fx.keys, lim, m, opt, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

// defaultOptions are the options config.Default describes, reading the given
// key headers, with the given default rate.
func defaultOptions(headers []string, rate apikey.Rate) Options {
	def := config.Default()
	return Options{
		Headers: headers, KeyIDHeader: def.Headers.KeyID, WorkspaceHeader: def.Headers.Workspace, DefaultRate: rate,
		Realm: def.Response.Realm, Body: def.Response.Body, RateHeaders: def.Response.RateHeaders, Reset: def.Response.Reset,
	}
}

// add stores a key (modified by mod) and returns its secret.
func (fx *fixture) add(t testing.TB, ws string, mod func(*apikey.Key)) (string, apikey.Key) {
	t.Helper()
	secret, err := fx.format.Generate()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := apikey.NewID()
	k := apikey.Key{ID: id, Workspace: ws, Name: "n", CreatedAt: fx.now}
	if mod != nil {
		mod(&k)
	}
	fx.keys.mu.Lock()
	fx.keys.keys[fx.hasher.Sum(secret).Sum] = k
	fx.keys.mu.Unlock()
	return secret, k
}

// req builds a CheckRequest as Envoy sends it: lower-cased header names.
func req(path string, headers map[string]string, ext map[string]string) *authv3.CheckRequest {
	h := map[string]string{":method": "GET", ":path": path}
	for k, v := range headers {
		h[strings.ToLower(k)] = v // Envoy lower-cases names, whatever the client typed
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request:           &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: path, Headers: h}},
		ContextExtensions: ext,
	}}
}

// outcome is what a test asserts about a CheckResponse.
type outcome struct {
	code    int // HTTP status the client would see (200 for allow)
	body    string
	headers map[string]string // client headers (deny headers or response_headers_to_add)
	up      map[string]string // upstream headers (allow only)
	removed []string
}

func result(t testing.TB, resp *authv3.CheckResponse, err error) outcome {
	t.Helper()
	if err != nil {
		t.Fatalf("Check returned error %v; a deny must be a response", err)
	}
	o := outcome{headers: map[string]string{}, up: map[string]string{}}
	get := func(hs []*corev3.HeaderValueOption, into map[string]string) {
		for _, h := range hs {
			into[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
	}
	if ok := resp.GetOkResponse(); ok != nil {
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			t.Fatalf("ok response with status %v", resp.GetStatus())
		}
		o.code = 200
		get(ok.GetHeaders(), o.up)
		get(ok.GetResponseHeadersToAdd(), o.headers)
		o.removed = ok.GetHeadersToRemove()
		return o
	}
	d := resp.GetDeniedResponse()
	if d == nil || resp.GetStatus().GetCode() == int32(codes.OK) {
		t.Fatalf("response neither allows nor denies: %v", resp)
	}
	o.code, o.body = int(d.GetStatus().GetCode()), d.GetBody()
	get(d.GetHeaders(), o.headers)
	return o
}

// flipLast changes a key's last character, breaking its checksum.
func flipLast(k string) string {
	if k[len(k)-1] == 'a' {
		return k[:len(k)-1] + "b"
	}
	return k[:len(k)-1] + "a"
}

const invalidBody = `{"message":"Invalid API key"}`

func TestCheckBehaviour(t *testing.T) {
	fx := newFixture(t, nil, nil)
	valid, vk := fx.add(t, "acme", nil)
	granted, _ := fx.add(t, "acme", func(k *apikey.Key) { k.Grants = []string{"partner"} })
	expired, _ := fx.add(t, "acme", func(k *apikey.Key) { k.ExpiresAt = fx.now.Add(-time.Second) })
	revoked, _ := fx.add(t, "acme", func(k *apikey.Key) { k.RevokedAt = fx.now.Add(-time.Second) })
	early, _ := fx.add(t, "acme", func(k *apikey.Key) { k.NotBefore = fx.now.Add(time.Hour) })
	custom, _ := fx.add(t, "acme", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 600, Per: time.Minute} })
	bigws, _ := fx.add(t, "big", nil)
	unknown, _ := fx.format.Generate()
	broken := flipLast(valid)

	tests := []struct {
		name    string
		path    string
		headers map[string]string
		ext     map[string]string
		code    int
		body    string
		limit   string // expected x-ratelimit-limit on allow
	}{
		{name: "x-api-key allowed", path: "/v1/things", headers: map[string]string{"x-api-key": valid}, code: 200, limit: "240"},
		{name: "salad-api-key allowed", path: "/v1/things", headers: map[string]string{"salad-api-key": valid}, code: 200, limit: "240"},
		{name: "header typed in mixed case", path: "/", headers: map[string]string{"X-API-KEY": valid}, code: 200, limit: "240"},
		{name: "Salad-Api-Key typed by a client", path: "/", headers: map[string]string{"Salad-Api-Key": valid}, code: 200, limit: "240"},
		{name: "same key in both headers", path: "/", headers: map[string]string{"x-api-key": valid, "salad-api-key": valid}, code: 200, limit: "240"},
		{name: "missing key", path: "/", code: 401, body: invalidBody},
		{name: "empty header", path: "/", headers: map[string]string{"x-api-key": ""}, code: 401, body: invalidBody},
		{name: "unknown key", path: "/", headers: map[string]string{"x-api-key": unknown}, code: 401, body: invalidBody},
		{name: "expired key", path: "/", headers: map[string]string{"x-api-key": expired}, code: 401, body: invalidBody},
		{name: "revoked key", path: "/", headers: map[string]string{"x-api-key": revoked}, code: 401, body: invalidBody},
		{name: "not yet valid key", path: "/", headers: map[string]string{"x-api-key": early}, code: 401, body: invalidBody},
		{name: "checksum broken", path: "/", headers: map[string]string{"x-api-key": broken}, code: 401, body: invalidBody},
		{name: "oversize key", path: "/", headers: map[string]string{"x-api-key": strings.Repeat("a", 257)}, code: 401, body: invalidBody},
		{name: "bad alphabet", path: "/", headers: map[string]string{"x-api-key": "kz_é" + valid[4:]}, code: 401, body: invalidBody},
		{name: "wrong prefix", path: "/", headers: map[string]string{"x-api-key": "sk" + valid[2:]}, code: 401, body: invalidBody},
		{name: "conflicting headers", path: "/", headers: map[string]string{"x-api-key": valid, "salad-api-key": unknown}, code: 400, body: `{"message":"Conflicting API keys"}`},
		{name: "comma joined repeated header", path: "/", headers: map[string]string{"x-api-key": valid + "," + unknown}, code: 400, body: `{"message":"Conflicting API keys"}`},
		{name: "own workspace by path", path: "/organizations/acme/jobs", headers: map[string]string{"x-api-key": valid}, code: 200, limit: "240"},
		{name: "other workspace by path", path: "/organizations/other/jobs", headers: map[string]string{"x-api-key": valid}, code: 403, body: `{"message":"API key is not allowed to access this resource"}`},
		{name: "granted resource by path", path: "/organizations/partner/jobs?x=1", headers: map[string]string{"x-api-key": granted}, code: 200, limit: "240"},
		{name: "ungranted resource", path: "/organizations/partner/jobs", headers: map[string]string{"x-api-key": valid}, code: 403, body: `{"message":"API key is not allowed to access this resource"}`},
		{name: "context extension resource", path: "/anything", ext: map[string]string{ExtResource: "other"}, headers: map[string]string{"x-api-key": valid}, code: 403, body: `{"message":"API key is not allowed to access this resource"}`},
		{name: "context extension segment own", path: "/teams/acme/x", ext: map[string]string{ExtResourceSegment: "2"}, headers: map[string]string{"x-api-key": valid}, code: 200, limit: "240"},
		{name: "context extension segment other", path: "/teams/zzz/x", ext: map[string]string{ExtResourceSegment: "2"}, headers: map[string]string{"x-api-key": valid}, code: 403, body: `{"message":"API key is not allowed to access this resource"}`},
		{name: "bad context extension fails closed", path: "/teams/acme/x", ext: map[string]string{ExtResourceSegment: "x"}, headers: map[string]string{"x-api-key": valid}, code: 403, body: `{"message":"API key is not allowed to access this resource"}`},
		{name: "per-key rate override", path: "/", headers: map[string]string{"x-api-key": custom}, code: 200, limit: "600"},
		{name: "per-workspace rate override", path: "/", headers: map[string]string{"x-api-key": bigws}, code: 200, limit: "1000"},
		{name: "bearer ignored unless enabled", path: "/", headers: map[string]string{"authorization": "Bearer " + valid}, code: 401, body: invalidBody},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := fx.svc.Check(context.Background(), req(tc.path, tc.headers, tc.ext))
			o := result(t, resp, err)
			if o.code != tc.code {
				t.Fatalf("status %d, want %d (body %s)", o.code, tc.code, o.body)
			}
			if tc.code != 200 {
				if o.body != tc.body {
					t.Errorf("body %s, want %s", o.body, tc.body)
				}
				if ct := o.headers["content-type"]; ct != "application/json" {
					t.Errorf("content-type %q", ct)
				}
				if tc.code == 401 && o.headers["www-authenticate"] != `ApiKey realm="keyauthz"` {
					t.Errorf("www-authenticate %q", o.headers["www-authenticate"])
				}
				return
			}
			if o.headers["x-ratelimit-limit"] != tc.limit {
				t.Errorf("x-ratelimit-limit %q, want %s", o.headers["x-ratelimit-limit"], tc.limit)
			}
			for _, h := range []string{"x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit-policy", "ratelimit"} {
				if o.headers[h] == "" {
					t.Errorf("allowed response lacks %s", h)
				}
			}
			if o.up["x-keyauthz-workspace"] == "" || !strings.HasPrefix(o.up["x-keyauthz-key-id"], "key_") {
				t.Errorf("upstream identity headers %v", o.up)
			}
			if strings.Join(o.removed, ",") != "x-api-key,salad-api-key" {
				t.Errorf("headers_to_remove %v", o.removed)
			}
			md := resp.GetDynamicMetadata().GetFields()
			if md[MetadataKeyID].GetStringValue() != o.up["x-keyauthz-key-id"] || md[MetadataWorkspace].GetStringValue() == "" {
				t.Errorf("dynamic metadata %v", md)
			}
		})
	}
	_ = vk
}

func TestMalformedKeysNeverReachStore(t *testing.T) {
	fx := newFixture(t, nil, nil)
	valid, _ := fx.add(t, "acme", nil)
	bad := []string{
		flipLast(valid),                 // checksum
		valid[:10] + "_" + valid[11:],   // body changed, checksum stale
		strings.Repeat("k", 300),        // too long
		"kz_" + strings.Repeat("A", 10), // wrong shape
		"kz_" + strings.Repeat("é", 20), // alphabet
		"Bearer " + valid,               // space: alphabet
	}
	for _, k := range bad {
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": k}, nil))
		if o := result(t, resp, err); o.code != 401 {
			t.Fatalf("malformed key got %d", o.code)
		}
	}
	if n := fx.keys.reads.Load(); n != 0 {
		t.Fatalf("malformed keys caused %d store reads, want 0", n)
	}
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	if o := result(t, resp, err); o.code != 200 || fx.keys.reads.Load() != 1 {
		t.Fatalf("valid key: %d after %d reads", o.code, fx.keys.reads.Load())
	}
}

func TestBearer(t *testing.T) {
	fx := newFixture(t, nil, func(o *Options) { o.Bearer = true })
	valid, _ := fx.add(t, "acme", nil)
	for _, h := range []string{"Bearer " + valid, "bearer " + valid} {
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"Authorization": h}, nil))
		o := result(t, resp, err)
		if o.code != 200 {
			t.Fatalf("%q: %d", h[:7], o.code)
		}
		if !strings.Contains(strings.Join(o.removed, ","), "authorization") {
			t.Fatalf("authorization not removed: %v", o.removed)
		}
	}
	other, _ := fx.format.Generate()
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid, "authorization": "Bearer " + other}, nil))
	if o := result(t, resp, err); o.code != 400 {
		t.Fatalf("conflict via bearer: %d", o.code)
	}
}

func TestRateLimit(t *testing.T) {
	fx := newFixture(t, nil, nil)
	a, _ := fx.add(t, "acme", nil)
	b, _ := fx.add(t, "acme", nil)
	for i := 1; i <= 240; i++ {
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": a}, nil))
		o := result(t, resp, err)
		if o.code != 200 {
			t.Fatalf("request %d: %d", i, o.code)
		}
		if i == 1 && (o.headers["x-ratelimit-remaining"] != "239" || o.headers["ratelimit-policy"] != `"default";q=240;w=60`) {
			t.Fatalf("first request headers %v", o.headers)
		}
	}
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": a}, nil))
	o := result(t, resp, err)
	if o.code != 429 || o.body != `{"message":"Rate limit exceeded"}` {
		t.Fatalf("241st: %d %s", o.code, o.body)
	}
	if o.headers["retry-after"] == "" || o.headers["retry-after"] == "0" || o.headers["x-ratelimit-remaining"] != "0" ||
		o.headers["content-type"] != "application/json" || !strings.HasPrefix(o.headers["ratelimit"], `"default";r=0;t=`) {
		t.Fatalf("429 headers %v", o.headers)
	}
	resp, err = fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": b}, nil))
	if o := result(t, resp, err); o.code != 200 {
		t.Fatalf("another key affected: %d", o.code)
	}
}

// failingLimiter always fails, as a Redis outage does.
type failingLimiter struct {
	allow bool
	err   error
}

func (f failingLimiter) Allow(context.Context, string, apikey.Rate) (ratelimit.Decision, error) {
	return ratelimit.Decision{Allowed: f.allow, Limit: 240, Window: time.Minute, RetryAfter: time.Second}, f.err
}

func TestFaultsAreErrors(t *testing.T) {
	fx := newFixture(t, nil, nil)
	valid, _ := fx.add(t, "acme", nil)
	fx.keys.err = errors.New("database is down")
	_, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("store fault: %v, want Unavailable", err)
	}
	if strings.Contains(err.Error(), valid) {
		t.Fatal("error leaks the key")
	}

	for _, policy := range []bool{true, false} {
		lim := failingLimiter{allow: policy, err: ratelimit.ErrUnavailable}
		fx := newFixture(t, lim, nil)
		valid, _ := fx.add(t, "acme", nil)
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
		o := result(t, resp, err)
		if want := map[bool]int{true: 200, false: 503}[policy]; o.code != want {
			t.Fatalf("on_error allow=%v: %d, want %d", policy, o.code, want)
		}
	}
	fx = newFixture(t, failingLimiter{err: errors.New("bug")}, nil)
	valid, _ = fx.add(t, "acme", nil)
	if _, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil)); status.Code(err) != codes.Unavailable {
		t.Fatalf("unexpected limiter fault: %v", err)
	}
}

func TestProblemJSONAndStyles(t *testing.T) {
	fx := newFixture(t, nil, func(o *Options) { o.Body = config.BodyProblem; o.RateHeaders = config.RateHeadersIETF; o.Realm = "api" })
	valid, _ := fx.add(t, "acme", nil)
	resp, err := fx.svc.Check(context.Background(), req("/", nil, nil))
	o := result(t, resp, err)
	if o.headers["content-type"] != "application/problem+json" || !strings.Contains(o.body, `"status":401`) ||
		o.headers["www-authenticate"] != `ApiKey realm="api"` {
		t.Fatalf("problem deny: %v %s", o.headers, o.body)
	}
	resp, err = fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	o = result(t, resp, err)
	if _, ok := o.headers["x-ratelimit-limit"]; ok || o.headers["ratelimit"] == "" {
		t.Fatalf("ietf style headers: %v", o.headers)
	}
	fx = newFixture(t, nil, func(o *Options) { o.RateHeaders = config.RateHeadersLegacy; o.Reset = config.ResetUnix })
	valid, _ = fx.add(t, "acme", nil)
	resp, err = fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	o = result(t, resp, err)
	if _, ok := o.headers["ratelimit"]; ok || len(o.headers["x-ratelimit-reset"]) < 10 {
		t.Fatalf("legacy unix style headers: %v", o.headers)
	}
}

func TestPepperRotation(t *testing.T) {
	fx := newFixture(t, nil, nil)
	old, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		t.Fatal(err)
	}
	newer := []byte("ffffffffffffffffffffffffffffffff")
	h2, err := apikey.NewHasher(map[int][]byte{1: pepper, 2: newer}, 2)
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := fx.format.Generate()
	fx.keys.keys[old.Sum(secret).Sum] = apikey.Key{ID: "key_x", Workspace: "acme"}
	var rehashed atomic.Int32
	m, _ := NewMetrics(prometheus.NewRegistry())
	l, _ := ratelimit.NewLocal(10)
	defer l.Close()
	opt := defaultOptions([]string{"x-api-key"}, apikey.Rate{N: 10, Per: time.Second})
	opt.Rehash = func(d apikey.Digest, key string) {
		if d.Version == 1 && key == secret {
			rehashed.Add(1)
		}
	}
	svc, err := New(fx.format, h2, fx.keys, l, m, opt, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := svc.Check(context.Background(), req("/", map[string]string{"x-api-key": secret}, nil))
	if o := result(t, resp, err); o.code != 200 || rehashed.Load() != 1 {
		t.Fatalf("old-pepper key: %d, rehash calls %d", o.code, rehashed.Load())
	}
}

func TestHeaderMapEncoding(t *testing.T) {
	fx := newFixture(t, nil, nil)
	valid, _ := fx.add(t, "acme", nil)
	r := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Path: "/", HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-api-key", RawValue: []byte(valid)}}},
	}}}}
	resp, err := fx.svc.Check(context.Background(), r)
	if o := result(t, resp, err); o.code != 200 {
		t.Fatalf("header_map request: %d", o.code)
	}
}

// TestHeaderMapWithEmptyHeaders: an empty headers map is read as absent, so
// header_map is used, as the fast codec reads the same bytes (proto.Unmarshal
// leaves an empty map for a headers field of another wire type).
func TestHeaderMapWithEmptyHeaders(t *testing.T) {
	fx := newFixture(t, nil, nil)
	valid, _ := fx.add(t, "acme", nil)
	r := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Path: "/", Headers: map[string]string{},
		HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-api-key", Value: valid}}},
	}}}}
	resp, err := fx.svc.Check(context.Background(), r)
	if o := result(t, resp, err); o.code != 200 {
		t.Fatalf("empty headers map with header_map: %d, want 200", o.code)
	}
}

// New takes its options as given: a missing or invalid one is an error, never
// a default (the defaults are config.Default's).
func TestNewRefusesIncompleteOptions(t *testing.T) {
	fx := newFixture(t, nil, nil)
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Options){
		"no key header":       func(o *Options) { o.Headers, o.Bearer = nil, false },
		"no default rate":     func(o *Options) { o.DefaultRate = apikey.Rate{} },
		"no key id header":    func(o *Options) { o.KeyIDHeader = "" },
		"no workspace header": func(o *Options) { o.WorkspaceHeader = "" },
		"no realm":            func(o *Options) { o.Realm = "" },
		"no body":             func(o *Options) { o.Body = 0 },
		"no rate headers":     func(o *Options) { o.RateHeaders = 0 },
		"unknown reset":       func(o *Options) { o.Reset = 9 },
	} {
		opt := defaultOptions([]string{"x-api-key"}, apikey.Rate{N: 1, Per: time.Second})
		mod(&opt)
		if _, err := New(fx.format, fx.hasher, fx.keys, fx.svc.limiter, m, opt, zap.NewNop()); err == nil {
			t.Errorf("%s: New succeeded, want an error", name)
		}
	}
}
