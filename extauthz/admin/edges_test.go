package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Issue 10 item 2: every expires_at not after now is refused, Go's zero time
// (which Spec reads as "never") included.
func TestCreateExpiresAtNotInFuture(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, at := range []string{
		"0001-01-01T00:00:00Z",      // time.Time{}: was a key that never expires
		"0001-01-01T00:00:00+01:00", // before the zero time
		"0001-01-01T00:00:00.000000001Z",
		"1970-01-01T00:00:00Z",
		"2001-01-01T00:00:00Z",
		time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano),
	} {
		t.Run(at, func(t *testing.T) {
			r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json",
				jsonBody(t, map[string]any{"name": "x", "expires_at": at}))
			if r.code != http.StatusBadRequest {
				t.Fatalf("code %d, want 400: %s", r.code, r.body)
			}
			if ae := r.apiErr(t); ae.Field != "expires_at" || !strings.Contains(ae.Message, "must be in the future") {
				t.Errorf("answer %+v, want expires_at: must be in the future", ae)
			}
		})
	}
	if keys, err := e.store.List(context.Background(), "acme", "", 10); err != nil || len(keys) != 0 {
		t.Errorf("store holds %d keys (%v), want none", len(keys), err)
	}
}

// rawCall sends a request whose path is sent exactly as given (percent-escapes kept),
// without the OpenAPI validation of call (such paths are not in the document).
func (e *env) rawCall(method, rawPath string, body []byte) resp {
	e.t.Helper()
	u, err := url.Parse(e.srv.URL)
	if err != nil {
		e.t.Fatal(err)
	}
	req, err := http.NewRequest(method, e.srv.URL, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.URL = &url.URL{Scheme: u.Scheme, Host: u.Host, Opaque: "//" + u.Host + rawPath}
	req.Header.Set("Authorization", "Bearer "+opsToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return e.do(req)
}

// Issue 10 item 12: a workspace id is checked after percent-decoding against the one
// id rule (apikey.ValidName) on every route, so "%2e" and "%2e%2e" are 400 naming
// workspace, and a Location always resolves to the key it names.
func TestWorkspaceIDRule(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "probe")
	bad := []string{"%2e", "%2E", "%2e%2e", "%2e%2e%2e", ".hidden", "..a", "-x", "_x", "a%2Fb", "a%2F..",
		"a%00", "a%20b", "%C3%A9", strings.Repeat("a", 129)}
	routes := []struct{ method, path string }{
		{"POST", "/v1/workspaces/%s/api-keys"},
		{"GET", "/v1/workspaces/%s/api-keys"},
		{"GET", "/v1/workspaces/%s/api-keys/" + k.ID},
		{"POST", "/v1/workspaces/%s/api-keys/" + k.ID + "/refresh"},
		{"DELETE", "/v1/workspaces/%s/api-keys/" + k.ID},
		{"GET", "/v1/workspaces/%s/audit"},
	}
	for _, ws := range bad {
		for _, rt := range routes {
			var body []byte
			if rt.method == "POST" {
				body = []byte(`{"name":"x"}`)
				if strings.HasSuffix(rt.path, "/refresh") {
					body = []byte(`{}`)
				}
			}
			r := e.rawCall(rt.method, fmt.Sprintf(rt.path, ws), body)
			if r.code != http.StatusBadRequest {
				t.Errorf("%s %s: %d %s, want 400", rt.method, fmt.Sprintf(rt.path, ws), r.code, r.body)
				continue
			}
			if ae := r.apiErr(t); ae.Field != "workspace" {
				t.Errorf("%s %s: field %q, want workspace", rt.method, fmt.Sprintf(rt.path, ws), ae.Field)
			}
		}
	}
	if !e.allowed(k.Key) {
		t.Error("the probe key was refreshed or deleted through a bad workspace")
	}
	base, _ := url.Parse("http://admin.example/")
	for _, ws := range []string{"a", "a.b", "a..b", "A-1_x.", "0", strings.Repeat("z", 128)} {
		v := e.create(ws, "n")
		r := e.call("POST", "/v1/workspaces/"+ws+"/api-keys", opsToken, "application/json", []byte(`{"name":"m"}`))
		if r.code != http.StatusCreated {
			t.Fatalf("create in %q: %d %s", ws, r.code, r.body)
		}
		var v2 View
		r.json(t, &v2)
		loc, err := base.Parse(r.header.Get("Location"))
		if err != nil || loc.Path != "/v1/workspaces/"+ws+"/api-keys/"+v2.ID || loc.Host != base.Host {
			t.Errorf("Location %q resolves to %v (%v)", r.header.Get("Location"), loc, err)
		}
		if got := e.call("GET", r.header.Get("Location"), opsToken, "", nil); got.code != http.StatusOK {
			t.Errorf("GET Location of %q: %d %s", ws, got.code, got.body)
		}
		_ = v
	}
}

// Issue 10 item 13: no 4xx answer echoes a submitted value holding the key prefix,
// wherever the secret was pasted.
func TestErrorsNeverEchoSecrets(t *testing.T) {
	e := newEnv(t, envOpt{})
	secret, err := e.format.Generate()
	if err != nil {
		t.Fatal(err)
	}
	short := secret[:12] // a truncated paste
	js := func(v any) string { return string(jsonBody(t, v)) }
	bodies := map[string]string{
		"grants":              js(map[string]any{"name": "x", "grants": []string{"org1", secret}}),
		"grants short":        js(map[string]any{"name": "x", "grants": []string{short + " "}}),
		"grants long":         js(map[string]any{"name": "x", "grants": []string{secret + strings.Repeat("a", 100)}}),
		"grants not strings":  `{"name":"x","grants":[{"` + secret + `":1}]}`,
		"unknown field":       `{"name":"x","` + secret + `":1}`,
		"unknown short field": `{"name":"x","` + short + `":1}`,
		"upper short field":   `{"name":"x","` + strings.ToUpper(short) + `":1}`,
		"metadata key type":   `{"name":"x","metadata":{"` + secret + `":1}}`,
		"metadata key empty":  js(map[string]any{"name": "x", "metadata": map[string]string{"": secret}}),
		"expires_at":          js(map[string]any{"name": "x", "expires_at": secret}),
		"not_before":          js(map[string]any{"name": "x", "not_before": secret}),
		"rate_limit":          js(map[string]any{"name": "x", "rate_limit": secret}),
		"name control":        js(map[string]any{"name": secret + "\u202e"}),
		"name type":           `{"name":["` + secret + `"]}`,
		"syntax":              `{"name":"x","grants":["` + secret + `" "]}`,
		"deep":                `{"name":"x","grants":` + strings.Repeat("[", 40) + `"` + secret + `"` + strings.Repeat("]", 40) + `}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json", []byte(body))
			if r.code != http.StatusBadRequest {
				t.Fatalf("code %d, want 400: %s", r.code, r.body)
			}
			if ae := r.apiErr(t); ae.Field == "" {
				t.Errorf("no field named: %s", r.body)
			}
			if b := strings.ToLower(string(r.body)); strings.Contains(b, "kz_") {
				t.Errorf("answer echoes the pasted secret: %s", r.body)
			}
		})
	}
	// A secret pasted as the workspace, the key id or the method.
	for _, p := range []struct{ method, path string }{
		{"POST", "/v1/workspaces/" + secret + "/api-keys"},
		{"GET", "/v1/workspaces/" + secret + "x%21/api-keys"},
		{"GET", "/v1/workspaces/acme/api-keys/" + secret},
		{strings.ToUpper(secret), "/v1/workspaces/acme/api-keys"},
	} {
		r := e.rawCall(p.method, p.path, []byte(`{"name":"x"}`))
		if r.code < 400 && r.code != http.StatusCreated {
			t.Errorf("%.10s… %s: %d", p.method, p.path, r.code)
		}
		if r.code != http.StatusCreated && strings.Contains(strings.ToLower(string(r.body)), "kz_") {
			t.Errorf("%d answer echoes the pasted secret: %s", r.code, r.body)
		}
	}
	if l := leaks([]View{{Key: secret, Display: e.format.Display(secret)}}, map[string]string{"log": e.logs.String()}); len(l) > 0 {
		t.Errorf("%v", l)
	}
}

// Issue 10 item 13: the limit answer (409) does not echo the path's workspace.
func TestLimitAnswerNamesNoWorkspace(t *testing.T) {
	e := newEnv(t, envOpt{})
	secret, _ := e.format.Generate()
	for i := range 10 {
		e.create(secret[:20], fmt.Sprint("k", i))
	}
	r := e.call("POST", "/v1/workspaces/"+secret[:20]+"/api-keys", opsToken, "application/json", []byte(`{"name":"k10"}`))
	if r.code != http.StatusConflict || strings.Contains(string(r.body), secret[3:20]) {
		t.Errorf("%d %s", r.code, r.body)
	}
}

// Issue 10 item 14: names with control, format, separator, private-use or
// noncharacter code points are 400 naming name; ordinary text of any script is fine.
func TestKeyNameCharacters(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, tc := range []struct {
		desc string
		body string // the name's JSON encoding, quotes included
		ok   bool
	}{
		{"ascii", `"deploy key"`, true},
		{"latin", `"Café – prod"`, true},
		{"cjk", `"本番キー"`, true},
		{"arabic letters", `"مفتاح"`, true},
		{"combining mark", `"e\u0301te"`, true},
		{"emoji", `"key 🔑"`, true},
		{"emoji zwj sequence is refused (U+200D is Cf)", `"\ud83d\udc69\u200d\ud83d\udcbb"`, false},
		{"NUL", `"a\u0000b"`, false},
		{"BEL", `"a\u0007b"`, false},
		{"ESC", `"a\u001b[31m"`, false},
		{"DEL", `"a\u007fb"`, false},
		{"NEL U+0085", `"a\u0085b"`, false},
		{"C1 U+009B", `"a\u009bb"`, false},
		{"line separator U+2028", `"a\u2028b"`, false},
		{"paragraph separator U+2029", `"a\u2029b"`, false},
		{"RLO U+202E", `"a\u202eb"`, false},
		{"LRI U+2066", `"a\u2066b"`, false},
		{"zero width space U+200B", `"a\u200bb"`, false},
		{"zero width joiner U+200D", `"a\u200db"`, false},
		{"BOM U+FEFF", `"\ufeffab"`, false},
		{"soft hyphen U+00AD", `"a\u00adb"`, false},
		{"private use U+E000", `"a\ue000b"`, false},
		{"private use plane 15", `"a\udb80\udc00b"`, false},
		{"noncharacter U+FDD0", `"a\ufdd0b"`, false},
		{"noncharacter U+FFFE", `"a\ufffeb"`, false},
		{"noncharacter U+1FFFF", `"a\ud83f\udfffb"`, false},
		{"lone surrogate", `"a\ud800b"`, false},
		{"invalid UTF-8", "\"a\xffb\"", false},
		{"replacement character", `"a\ufffdb"`, false},
		{"tag character U+E0001", `"a\udb40\udc01b"`, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json", []byte(`{"name":`+tc.body+`}`))
			if tc.ok {
				if r.code != http.StatusCreated {
					t.Errorf("code %d, want 201: %s", r.code, r.body)
				}
				return
			}
			if r.code != http.StatusBadRequest {
				t.Fatalf("code %d, want 400: %s", r.code, r.body)
			}
			if ae := r.apiErr(t); ae.Field != "name" {
				t.Errorf("field %q, want name (%s)", ae.Field, ae.Message)
			}
		})
	}
}

// Issue 10 item 15: deep nesting says so, instead of "malformed JSON at byte N".
func TestDeepNesting(t *testing.T) {
	e := newEnv(t, envOpt{maxBody: 64 << 10})
	for _, tc := range []struct {
		desc string
		body string
	}{
		{"past encoding/json's limit", strings.Repeat("[", 10001) + strings.Repeat("]", 10001)},
		{"unterminated", strings.Repeat("[", 20000)},
		{"objects", strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000)},
		{"in a field", `{"name":"x","metadata":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json", []byte(tc.body))
			if r.code != http.StatusBadRequest {
				t.Fatalf("code %d, want 400: %.200s", r.code, r.body)
			}
			if ae := r.apiErr(t); ae.Field != "body" || !strings.Contains(ae.Message, "nesting too deep") {
				t.Errorf("answer %+v, want body: nesting too deep", ae)
			}
		})
	}
	// Brackets inside strings are text, and a body at the bound is judged on its merits.
	r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json",
		[]byte(`{"name":"`+strings.Repeat("[{", 40)+`\"\\"}`))
	if r.code != http.StatusCreated {
		t.Errorf("brackets in a name: %d %s", r.code, r.body)
	}
	r = e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json",
		[]byte(`{"name":"y","metadata":`+strings.Repeat("[", maxDepth-1)+strings.Repeat("]", maxDepth-1)+`}`))
	if ae := r.apiErr(t); r.code != http.StatusBadRequest || ae.Field != "metadata" {
		t.Errorf("%d %+v, want 400 naming metadata", r.code, ae)
	}
}

// Issue 10 item 12: the Go client refuses a workspace or key id the server would
// resolve elsewhere, sending nothing.
func TestClientRefusesBadPathSegments(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusTeapot)
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, opsToken, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var fe *apikey.FieldError
	for _, ws := range []string{".", "..", "", "a/b", "-x"} {
		if _, err := c.Create(ctx, ws, CreateRequest{Name: "x"}); !errors.As(err, &fe) || fe.Field != "workspace" {
			t.Errorf("Create(%q): %v", ws, err)
		}
		if _, err := c.List(ctx, ws, "", 0); !errors.As(err, &fe) {
			t.Errorf("List(%q): %v", ws, err)
		}
		if _, err := c.Get(ctx, ws, "key_x"); !errors.As(err, &fe) {
			t.Errorf("Get(%q): %v", ws, err)
		}
		if _, err := c.Refresh(ctx, ws, "key_x", 0); !errors.As(err, &fe) {
			t.Errorf("Refresh(%q): %v", ws, err)
		}
		if err := c.Delete(ctx, ws, "key_x"); !errors.As(err, &fe) {
			t.Errorf("Delete(%q): %v", ws, err)
		}
		if _, err := c.Audit(ctx, ws, "", 0); !errors.As(err, &fe) {
			t.Errorf("Audit(%q): %v", ws, err)
		}
	}
	for _, id := range []string{".", "..", ""} {
		if err := c.Delete(ctx, "acme", id); err == nil {
			t.Errorf("Delete(acme, %q) sent", id)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests reached the server", n)
	}
}

// The OpenAPI document's Name pattern is apikey.ValidName's rule.
func TestOpenAPINamePattern(t *testing.T) {
	doc, _ := loadDoc(t)
	sch := doc.Components.Schemas["Name"]
	if sch == nil || sch.Value == nil {
		t.Fatal("no Name schema")
	}
	re, err := regexp.Compile(sch.Value.Pattern)
	if err != nil {
		t.Fatal(err)
	}
	cases := []string{"", ".", "..", "a", "a.", ".a", "-a", "_a", "a-_.", "A9", "é", "a b", "a/b",
		strings.Repeat("a", 128), strings.Repeat("a", 129), "a\n", "key_x"}
	for i := range 2000 { // every short string over a small alphabet
		s := ""
		for n := i; n > 0; n /= 7 {
			s += string("a.-_/Z\x00"[n%7])
		}
		cases = append(cases, s)
	}
	for _, s := range cases {
		if re.MatchString(s) != apikey.ValidName(s) {
			t.Errorf("%q: pattern %v, ValidName %v", s, re.MatchString(s), apikey.ValidName(s))
		}
	}
}
