package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func TestNewValidates(t *testing.T) {
	e := newEnv(t, envOpt{})
	good := []Token{{Name: "ops", Secret: []byte(opsToken)}}
	ok := Options{MaxBody: testMaxBody}
	for _, tc := range []struct {
		name   string
		m      *apikey.Manager
		tokens []Token
		opt    Options
		log    *zap.Logger
	}{
		{"nil manager", nil, good, ok, zap.NewNop()},
		{"nil logger", e.mgr, good, ok, nil},
		{"no tokens", e.mgr, nil, ok, zap.NewNop()},
		{"unnamed token", e.mgr, []Token{{Secret: []byte(opsToken)}}, ok, zap.NewNop()},
		{"short token", e.mgr, []Token{{Name: "a", Secret: []byte("short\n")}}, ok, zap.NewNop()},
		{"duplicate names", e.mgr, []Token{{Name: "a", Secret: []byte(opsToken)}, {Name: "a", Secret: []byte(ciToken)}}, ok, zap.NewNop()},
		{"negative max body", e.mgr, good, Options{MaxBody: -1}, zap.NewNop()},
		{"no max body", e.mgr, good, Options{}, zap.NewNop()},
	} {
		if _, err := New(tc.m, tc.tokens, tc.opt, tc.log); err == nil {
			t.Errorf("%s: New succeeded, want an error", tc.name)
		}
	}
}

// Every route but the OpenAPI document answers 401 without a valid token.
func TestAuth(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	paths := []struct{ method, path string }{
		{"POST", "/v1/workspaces/acme/api-keys"},
		{"GET", "/v1/workspaces/acme/api-keys"},
		{"GET", "/v1/workspaces/acme/api-keys/" + k.ID},
		{"POST", "/v1/workspaces/acme/api-keys/" + k.ID + "/refresh"},
		{"DELETE", "/v1/workspaces/acme/api-keys/" + k.ID},
		{"GET", "/v1/workspaces/acme/audit"},
		{"PATCH", "/v1/workspaces/acme/api-keys/" + k.ID},
		{"GET", "/v1/workspaces/acme/api-keys/" + k.ID + "/usage"},
		{"GET", "/v1/workspaces"},
		{"GET", "/v1/workspaces/acme"},
		{"PUT", "/v1/workspaces/acme"},
		{"PATCH", "/v1/workspaces/acme"},
		{"GET", "/v1/nothing-here"},
	}
	for _, p := range paths {
		for _, auth := range []struct{ name, header string }{
			{"no header", ""},
			{"wrong token", "Bearer " + opsToken + "x"},
			{"token prefix", "Bearer " + opsToken[:len(opsToken)-1]},
			{"wrong scheme", "Basic " + opsToken},
			{"empty bearer", "Bearer "},
			{"bare token", opsToken},
		} {
			req, _ := http.NewRequest(p.method, e.srv.URL+p.path, strings.NewReader(`{"name":"x"}`))
			req.Header.Set("Content-Type", "application/json")
			if auth.header != "" {
				req.Header.Set("Authorization", auth.header)
			}
			res, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s with %s: %d, want 401", p.method, p.path, auth.name, res.StatusCode)
			}
			if got := res.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer ") {
				t.Errorf("%s %s with %s: WWW-Authenticate %q", p.method, p.path, auth.name, got)
			}
		}
	}
	if _, err := e.store.Get(context.Background(), k.ID); err != nil {
		t.Errorf("key gone after unauthorized calls: %v", err)
	}
	// The scheme is case-insensitive, and each token's name is its actor.
	r := e.call("GET", "/v1/workspaces/acme/api-keys", "", "", nil)
	if r.code != 401 {
		t.Errorf("no token: %d", r.code)
	}
	req, _ := http.NewRequest("DELETE", e.srv.URL+"/v1/workspaces/acme/api-keys/"+k.ID, nil)
	req.Header.Set("Authorization", "bearer "+ciToken)
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Fatalf("delete with the ci token: %d", res.StatusCode)
	}
	evs, _ := e.store.Events(context.Background(), "acme", 0, 0)
	actors := map[string]string{}
	for _, ev := range evs {
		actors[ev.Kind] = ev.Actor
	}
	if actors["created"] != "ops" || actors["deleted"] != "ci" {
		t.Errorf("audit actors = %v, want created by ops, deleted by ci", actors)
	}
	// The OpenAPI document needs no token.
	r = e.call("GET", "/v1/openapi.yaml", "", "", nil)
	if r.code != 200 || !strings.HasPrefix(string(r.body), "openapi: 3") {
		t.Errorf("GET /v1/openapi.yaml: %d %.40s", r.code, r.body)
	}
}

func TestCreate(t *testing.T) {
	e := newEnv(t, envOpt{maxBody: 4096})
	future := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	const path = "/v1/workspaces/acme/api-keys"
	for _, tc := range []struct {
		name  string
		path  string
		ct    string
		body  string
		code  int
		field string
		check func(t *testing.T, v View)
	}{
		{name: "minimal", body: `{"name":"ci"}`, code: 201, check: func(t *testing.T, v View) {
			if v.Name != "ci" || v.Workspace != "acme" || v.ExpiresAt != nil || v.LastUsedAt != nil {
				t.Errorf("view = %+v", v)
			}
		}},
		{name: "every field", body: `{"name":"full","expires_at":"` + future.Format(time.RFC3339) + `","rate_limit":"600/m",
			"grants":["org1","org2"],"metadata":{"team":"payments"},"not_before":"2020-01-01T00:00:00Z"}`, code: 201,
			check: func(t *testing.T, v View) {
				if v.ExpiresAt == nil || !v.ExpiresAt.Equal(future) || v.RateLimit != "600/m" ||
					strings.Join(v.Grants, ",") != "org1,org2" || v.Metadata["team"] != "payments" || v.NotBefore == nil {
					t.Errorf("view = %+v", v)
				}
			}},
		{name: "expires in seconds", body: `{"name":"short","expires_in_seconds":3600}`, code: 201, check: func(t *testing.T, v View) {
			if v.ExpiresAt == nil || time.Until(*v.ExpiresAt) < 59*time.Minute || time.Until(*v.ExpiresAt) > time.Hour {
				t.Errorf("expires_at = %v, want about an hour from now", v.ExpiresAt)
			}
		}},
		{name: "charset parameter", ct: "application/json; charset=utf-8", body: `{"name":"charset"}`, code: 201},
		{name: "duplicate name", body: `{"name":"ci"}`, code: 409, field: "name"},
		{name: "malformed JSON", body: `{"name":`, code: 400, field: "body"},
		{name: "syntax error", body: `{"name" "x"}`, code: 400, field: "body"},
		{name: "not an object", body: `["x"]`, code: 400, field: "body"},
		{name: "null", body: `null`, code: 400, field: "body"},
		{name: "two objects", body: `{"name":"a"}{"name":"b"}`, code: 400, field: "body"},
		{name: "empty body", body: ``, code: 400, field: "body"},
		{name: "unknown field", body: `{"name":"x","nme":"y"}`, code: 400, field: "nme"},
		{name: "name missing", body: `{}`, code: 400, field: "name"},
		{name: "name blank", body: `{"name":"   "}`, code: 400, field: "name"},
		{name: "name too long", body: `{"name":"` + strings.Repeat("n", 101) + `"}`, code: 400, field: "name"},
		{name: "name control character", body: `{"name":"a\u0007b"}`, code: 400, field: "name"},
		{name: "name not a string", body: `{"name":5}`, code: 400, field: "name"},
		{name: "expires_at malformed", body: `{"name":"x","expires_at":"tomorrow"}`, code: 400, field: "expires_at"},
		{name: "expires_at past", body: `{"name":"x","expires_at":"2001-01-01T00:00:00Z"}`, code: 400, field: "expires_at"},
		{name: "both expiries", body: `{"name":"x","expires_at":"` + future.Format(time.RFC3339) + `","expires_in_seconds":60}`, code: 400, field: "expires_in_seconds"},
		{name: "expires_in_seconds zero", body: `{"name":"x","expires_in_seconds":0}`, code: 400, field: "expires_in_seconds"},
		{name: "expires_in_seconds huge", body: `{"name":"x","expires_in_seconds":9223372036854775807}`, code: 400, field: "expires_in_seconds"},
		{name: "expires_in_seconds fraction", body: `{"name":"x","expires_in_seconds":1.5}`, code: 400, field: "expires_in_seconds"},
		{name: "not_before malformed", body: `{"name":"x","not_before":"soon"}`, code: 400, field: "not_before"},
		{name: "rate_limit malformed", body: `{"name":"x","rate_limit":"fast"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit zero", body: `{"name":"x","rate_limit":"0/m"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit period max int64 ns", body: `{"name":"x","rate_limit":"1/9223372036854775807ns"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit period 2562047h", body: `{"name":"x","rate_limit":"1/2562047h"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit period past a year", body: `{"name":"x","rate_limit":"1/8761h"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit period under a second", body: `{"name":"x","rate_limit":"1/999ms"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit count past a billion", body: `{"name":"x","rate_limit":"1000000001/d"}`, code: 400, field: "rate_limit"},
		{name: "rate_limit widest", body: `{"name":"wide","rate_limit":"1000000000/8760h"}`, code: 201},
		{name: "rate_limit narrowest", body: `{"name":"narrow","rate_limit":"1/1s"}`, code: 201},
		{name: "grants bad name", body: `{"name":"x","grants":["org 1"]}`, code: 400, field: "grants"},
		{name: "grants not a list", body: `{"name":"x","grants":"org1"}`, code: 400, field: "grants"},
		{name: "grants too many", body: `{"name":"x","grants":[` + strings.TrimSuffix(strings.Repeat(`"o",`, 65), ",") + `]}`, code: 400, field: "grants"},
		{name: "metadata not strings", body: `{"name":"x","metadata":{"a":1}}`, code: 400, field: "metadata"},
		{name: "metadata too many", body: `{"name":"x","metadata":{` + manyMeta(17) + `}}`, code: 400, field: "metadata"},
		{name: "bad workspace", path: "/v1/workspaces/bad%21ws/api-keys", body: `{"name":"x"}`, code: 400, field: "workspace"},
		{name: "too large", body: `{"name":"x","metadata":{"a":"` + strings.Repeat("a", 5000) + `"}}`, code: 413, field: "body"},
		{name: "text/plain", ct: "text/plain", body: `{"name":"x"}`, code: 415},
		{name: "form", ct: "application/x-www-form-urlencoded", body: `name=x`, code: 415},
		{name: "no content type", ct: "-", body: `{"name":"x"}`, code: 415},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, ct := tc.path, tc.ct
			if p == "" {
				p = path
			}
			switch ct {
			case "":
				ct = "application/json"
			case "-":
				ct = ""
			}
			r := e.call("POST", p, opsToken, ct, []byte(tc.body))
			v, ok := r.view(t, tc.code, tc.field)
			if !ok {
				return
			}
			if err := e.format.Check(v.Key); err != nil || !strings.HasPrefix(v.Key, v.Display) || len(v.Display) != len("kz_")+4 {
				t.Errorf("secret present %v, display %q: %v", v.Key != "", v.Display, err)
			}
			if loc := r.header.Get("Location"); loc != "/v1/workspaces/acme/api-keys/"+v.ID {
				t.Errorf("Location %q", loc)
			}
			if got, err := e.store.Get(context.Background(), v.ID); err != nil || got.Name != v.Name {
				t.Errorf("store Get = %+v, %v", got, err)
			}
			if tc.check != nil {
				tc.check(t, v)
			}
		})
	}
}

func manyMeta(n int) string {
	var parts []string
	for i := range n {
		parts = append(parts, fmt.Sprintf(`"k%d":"v"`, i))
	}
	return strings.Join(parts, ",")
}

// The workspace limit (10 by default, 12 for "big" here) answers 409 with a message.
func TestCreateLimit(t *testing.T) {
	e := newEnv(t, envOpt{})
	for ws, max := range map[string]int{"acme": 10, "big": 12} {
		for i := range max {
			e.create(ws, fmt.Sprintf("k%d", i))
		}
		r := e.call("POST", "/v1/workspaces/"+ws+"/api-keys", opsToken, "application/json", []byte(`{"name":"one-too-many"}`))
		if r.code != http.StatusConflict {
			t.Fatalf("%s: key %d: %d %s, want 409", ws, max+1, r.code, r.body)
		}
		if ae := r.apiErr(t); ae.Code != "limit" || !strings.Contains(ae.Message, "maximum") {
			t.Errorf("%s: 409 body %s", ws, r.body)
		}
	}
	// A deleted key frees its slot.
	keys, _ := e.store.List(context.Background(), "acme", "", 0)
	if r := e.call("DELETE", "/v1/workspaces/acme/api-keys/"+keys[0].ID, opsToken, "", nil); r.code != 204 {
		t.Fatalf("delete: %d", r.code)
	}
	e.create("acme", "after-delete")
}

// Acceptance 2: 20 concurrent creates in one workspace → exactly 10 succeed.
func TestConcurrentCreates(t *testing.T) {
	e := newEnv(t, envOpt{})
	codes := make([]int, 20)
	bodies := make([][]byte, 20)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", e.srv.URL+"/v1/workspaces/acme/api-keys", strings.NewReader(fmt.Sprintf(`{"name":"k%d"}`, i)))
			req.Header.Set("Authorization", "Bearer "+opsToken)
			req.Header.Set("Content-Type", "application/json")
			res, err := e.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			codes[i] = res.StatusCode
			var ae Error
			_ = jsonDecode(res, &ae)
			bodies[i] = []byte(ae.Code)
		}()
	}
	wg.Wait()
	n := map[int]int{}
	for i, c := range codes {
		n[c]++
		if c == http.StatusConflict && string(bodies[i]) != "limit" {
			t.Errorf("409 with code %q, want limit", bodies[i])
		}
	}
	if n[201] != 10 || n[409] != 10 {
		t.Errorf("status counts = %v, want 10 × 201 and 10 × 409", n)
	}
	keys, err := e.store.List(context.Background(), "acme", "", 0)
	if err != nil || len(keys) != 10 {
		t.Errorf("store holds %d keys (%v), want 10", len(keys), err)
	}
}

func TestGet(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	other := e.create("globex", "ci")
	gone := e.create("acme", "gone")
	if r := e.call("DELETE", "/v1/workspaces/acme/api-keys/"+gone.ID, opsToken, "", nil); r.code != 204 {
		t.Fatal(r.code)
	}
	for _, tc := range []struct {
		name, path string
		code       int
		field      string
	}{
		{"ok", "/v1/workspaces/acme/api-keys/" + k.ID, 200, ""},
		{"unknown id", "/v1/workspaces/acme/api-keys/key_doesnotexist", 404, ""},
		{"not an id", "/v1/workspaces/acme/api-keys/nope", 404, ""},
		{"another workspace's key", "/v1/workspaces/acme/api-keys/" + other.ID, 404, ""},
		{"deleted", "/v1/workspaces/acme/api-keys/" + gone.ID, 404, ""},
		{"bad workspace", "/v1/workspaces/" + url.PathEscape("a b") + "/api-keys/" + k.ID, 400, "workspace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.call("GET", tc.path, opsToken, "", nil)
			v, ok := r.view(t, tc.code, tc.field)
			if !ok {
				return
			}
			if v.ID != k.ID || v.Key != "" || v.Display != k.Display || !v.CreatedAt.Equal(k.CreatedAt) {
				t.Errorf("get = %+v, want %s without the secret", v, k.ID)
			}
			if strings.Contains(string(r.body), `"key"`) {
				t.Errorf("get answer has a key field: %s", r.body)
			}
		})
	}
}

func TestList(t *testing.T) {
	e := newEnv(t, envOpt{})
	var want []string
	for i := range 5 {
		want = append(want, e.create("acme", fmt.Sprintf("k%d", i)).ID)
	}
	e.create("globex", "other")
	sort.Strings(want)

	var got []string
	cursor, pages := "", 0
	for {
		q := "?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		r := e.call("GET", "/v1/workspaces/acme/api-keys"+q, opsToken, "", nil)
		if r.code != 200 {
			t.Fatalf("list: %d %s", r.code, r.body)
		}
		var p KeyPage
		r.json(t, &p)
		pages++
		if len(p.Items) > 2 {
			t.Fatalf("page of %d items with limit 2", len(p.Items))
		}
		for _, v := range p.Items {
			if v.Key != "" || v.Workspace != "acme" || v.Display == "" || v.CreatedAt.IsZero() {
				t.Errorf("list item %+v", v)
			}
			got = append(got, v.ID)
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	if strings.Join(got, ",") != strings.Join(want, ",") || pages != 3 {
		t.Errorf("listed %v in %d pages, want %v in 3", got, pages, want)
	}
	// Exactly one full page: no next cursor.
	r := e.call("GET", "/v1/workspaces/acme/api-keys?limit=5", opsToken, "", nil)
	var p KeyPage
	r.json(t, &p)
	if len(p.Items) != 5 || p.NextCursor != "" {
		t.Errorf("limit=5 over 5 keys: %d items, next %q", len(p.Items), p.NextCursor)
	}
	// An empty workspace lists [] (not null).
	r = e.call("GET", "/v1/workspaces/empty/api-keys", opsToken, "", nil)
	if r.code != 200 || !strings.Contains(string(r.body), `"items":[]`) {
		t.Errorf("empty workspace: %d %s", r.code, r.body)
	}
	first := e.call("GET", "/v1/workspaces/acme/api-keys?limit=1", opsToken, "", nil)
	var fp KeyPage
	first.json(t, &fp)
	for _, tc := range []struct {
		name, query, field string
	}{
		{"limit zero", "?limit=0", "limit"},
		{"limit too big", "?limit=501", "limit"},
		{"limit not a number", "?limit=ten", "limit"},
		{"limit empty", "?limit=", "limit"},
		{"cursor garbage", "?cursor=%21%21", "cursor"},
		{"cursor not ours", "?cursor=" + encodeCursor("x", "acme", "key_a"), "cursor"},
		{"audit cursor", "?cursor=" + encodeCursor("a", "acme", "1"), "cursor"},
		{"another workspace's cursor", "?cursor=" + encodeCursor("k", "globex", "key_a"), "cursor"},
		{"cursor too long", "?cursor=" + strings.Repeat("A", 600), "cursor"},
	} {
		r := e.call("GET", "/v1/workspaces/acme/api-keys"+tc.query, opsToken, "", nil)
		if r.code != 400 {
			t.Errorf("%s: %d, want 400", tc.name, r.code)
			continue
		}
		if ae := r.apiErr(t); ae.Field != tc.field {
			t.Errorf("%s: field %q, want %q", tc.name, ae.Field, tc.field)
		}
	}
	// A store fault is a 500 with a generic message, logged.
	boom := errors.New("disk on fire")
	e.store.failList.Store(&boom)
	r = e.call("GET", "/v1/workspaces/acme/api-keys", opsToken, "", nil)
	e.store.failList.Store(nil)
	if r.code != 500 {
		t.Fatalf("store fault: %d, want 500", r.code)
	}
	if ae := r.apiErr(t); strings.Contains(ae.Message, "disk") {
		t.Errorf("500 message leaks the cause: %q", ae.Message)
	}
	if !strings.Contains(e.logs.String(), "disk on fire") {
		t.Errorf("store fault not logged")
	}
}

func TestRefresh(t *testing.T) {
	e := newEnv(t, envOpt{maxBody: 1024})
	k := e.create("acme", "ci")
	other := e.create("globex", "ci")
	base := "/v1/workspaces/acme/api-keys/" + k.ID + "/refresh"
	prev := k
	for _, tc := range []struct {
		name, path, ct, body string
		code                 int
		field                string
	}{
		{name: "empty body", code: 200},
		{name: "empty object", ct: "application/json", body: `{}`, code: 200},
		{name: "no grace", ct: "application/json", body: `{"grace_seconds":0}`, code: 200},
		{name: "grace", ct: "application/json", body: `{"grace_seconds":60}`, code: 200},
		{name: "negative grace", ct: "application/json", body: `{"grace_seconds":-1}`, code: 400, field: "grace_seconds"},
		{name: "grace too long", ct: "application/json", body: `{"grace_seconds":2592001}`, code: 400, field: "grace_seconds"},
		{name: "grace a string", ct: "application/json", body: `{"grace_seconds":"60"}`, code: 400, field: "grace_seconds"},
		{name: "unknown field", ct: "application/json", body: `{"grace":60}`, code: 400, field: "grace"},
		{name: "malformed", ct: "application/json", body: `{`, code: 400, field: "body"},
		{name: "body without content type", body: `{"grace_seconds":1}`, code: 415},
		{name: "text/plain", ct: "text/plain", body: `{}`, code: 415},
		{name: "too large", ct: "application/json", body: `{"grace_seconds":1` + strings.Repeat(" ", 2000) + `}`, code: 413, field: "body"},
		{name: "unknown key", path: "/v1/workspaces/acme/api-keys/key_doesnotexist/refresh", code: 404},
		{name: "another workspace's key", path: "/v1/workspaces/acme/api-keys/" + other.ID + "/refresh", code: 404},
		{name: "bad workspace", path: "/v1/workspaces/a%20b/api-keys/" + k.ID + "/refresh", code: 400, field: "workspace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.path
			if p == "" {
				p = base
			}
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			v, ok := e.call("POST", p, opsToken, tc.ct, body).view(t, tc.code, tc.field)
			if !ok {
				return
			}
			if v.ID != k.ID || v.Key == "" || v.Key == prev.Key || !strings.HasPrefix(v.Key, v.Display) {
				t.Errorf("refresh = id %s, new secret %v, display %q", v.ID, v.Key != "" && v.Key != prev.Key, v.Display)
			}
			if g, _ := e.store.Get(context.Background(), k.ID); g.Display != v.Display {
				t.Errorf("stored display %q, want %q", g.Display, v.Display)
			}
			prev = v
		})
	}
	if _, err := e.store.Get(context.Background(), other.ID); err != nil {
		t.Errorf("other workspace's key after a refresh attempt: %v", err)
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	other := e.create("globex", "ci")
	for _, tc := range []struct {
		name, path string
		code       int
	}{
		{"another workspace's key", "/v1/workspaces/acme/api-keys/" + other.ID, 404},
		{"unknown", "/v1/workspaces/acme/api-keys/key_doesnotexist", 404},
		{"ok", "/v1/workspaces/acme/api-keys/" + k.ID, 204},
		{"again", "/v1/workspaces/acme/api-keys/" + k.ID, 404},
	} {
		r := e.call("DELETE", tc.path, opsToken, "", nil)
		if r.code != tc.code {
			t.Errorf("%s: %d, want %d (%s)", tc.name, r.code, tc.code, r.body)
		}
		if tc.code == 204 && len(r.body) != 0 {
			t.Errorf("%s: 204 with body %s", tc.name, r.body)
		}
	}
	if _, err := e.store.Get(context.Background(), k.ID); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("deleted key Get: %v", err)
	}
	if _, err := e.store.Get(context.Background(), other.ID); err != nil {
		t.Errorf("other workspace's key after a delete attempt: %v", err)
	}
}

func TestAudit(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	e.create("globex", "other")
	if r := e.call("POST", "/v1/workspaces/acme/api-keys/"+k.ID+"/refresh", ciToken, "application/json", []byte(`{"grace_seconds":30}`)); r.code != 200 {
		t.Fatal(r.code)
	}
	if r := e.call("DELETE", "/v1/workspaces/acme/api-keys/"+k.ID, opsToken, "", nil); r.code != 204 {
		t.Fatal(r.code)
	}
	if err := e.store.Audit(context.Background(), apikey.Event{Kind: "denied_after_revoke", Workspace: "acme", KeyID: k.ID, Actor: "check"}); err != nil {
		t.Fatal(err)
	}
	var got []Event
	cursor := ""
	for range 10 {
		q := "?limit=3"
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		r := e.call("GET", "/v1/workspaces/acme/audit"+q, opsToken, "", nil)
		if r.code != 200 {
			t.Fatalf("audit: %d %s", r.code, r.body)
		}
		var p AuditPage
		r.json(t, &p)
		got = append(got, p.Items...)
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	var kinds []string
	for i, ev := range got {
		kinds = append(kinds, ev.Kind+"/"+ev.Actor)
		if ev.KeyID != k.ID || ev.At.IsZero() || (i > 0 && ev.Seq <= got[i-1].Seq) {
			t.Errorf("event %+v", ev)
		}
	}
	if want := "created/ops,refreshed/ci,deleted/ops,denied_after_revoke/check"; strings.Join(kinds, ",") != want {
		t.Errorf("audit = %s, want %s", strings.Join(kinds, ","), want)
	}
	if !strings.Contains(got[1].Detail, "grace") {
		t.Errorf("refresh detail %q, want the grace period", got[1].Detail)
	}
	for _, tc := range []struct{ q, field string }{
		{"?limit=-1", "limit"},
		{"?cursor=" + encodeCursor("a", "acme", "x"), "cursor"},
		{"?cursor=" + encodeCursor("a", "acme", "-5"), "cursor"},
		{"?cursor=" + encodeCursor("a", "acme", "5x"), "cursor"},
		{"?cursor=" + encodeCursor("k", "acme", "1"), "cursor"},
	} {
		r := e.call("GET", "/v1/workspaces/acme/audit"+tc.q, opsToken, "", nil)
		if r.code != 400 || r.apiErr(t).Field != tc.field {
			t.Errorf("audit%s: %d %s, want 400 naming %s", tc.q, r.code, r.body, tc.field)
		}
	}
	if r := e.call("GET", "/v1/workspaces/bad%20ws/audit", opsToken, "", nil); r.code != 400 {
		t.Errorf("bad workspace: %d", r.code)
	}
}

func TestUnknownRoutes(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"GET", "/v1/nothing", 404, ""},
		{"GET", "/v1/workspaces/acme", 404, ""}, // no record
		{"GET", "/v1/workspaces/acme/nothing", 404, ""},
		{"PUT", "/v1/workspaces/acme/api-keys/key_x", 405, "GET, PATCH, DELETE"},
		{"PUT", "/v1/workspaces/acme/api-keys", 405, "GET, POST"},
		{"DELETE", "/v1/workspaces/acme", 405, "GET, PUT, PATCH"},
		{"POST", "/v1/workspaces", 405, "GET"},
		{"POST", "/v1/workspaces/acme/api-keys/key_x/usage", 405, "GET"},
		{"GET", "/v1/workspaces/acme/api-keys/key_x/refresh", 405, "POST"},
		{"POST", "/v1/openapi.yaml", 405, "GET"},
	} {
		r := e.call(tc.method, tc.path, opsToken, "", nil)
		if r.code != tc.code || r.header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q, want %d Allow %q", tc.method, tc.path, r.code, r.header.Get("Allow"), tc.code, tc.allow)
			continue
		}
		r.apiErr(t)
	}
}

// A read-only store (file://) answers 409, not a fault.
func TestReadOnlyStore(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	ro := &readOnly{Store: e.store}
	m, err := apikey.NewManager(ro, e.format, e.hasher, func(string) int { return 10 })
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(m, []Token{{Name: "ops", Secret: []byte(opsToken)}}, Options{MaxBody: testMaxBody}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	e.srv = srv
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/workspaces/acme/api-keys", `{"name":"x"}`},
		{"POST", "/v1/workspaces/acme/api-keys/" + k.ID + "/refresh", `{}`},
		{"DELETE", "/v1/workspaces/acme/api-keys/" + k.ID, ""},
	} {
		var body []byte
		ct := ""
		if c.body != "" {
			body, ct = []byte(c.body), "application/json"
		}
		r := e.call(c.method, c.path, opsToken, ct, body)
		if r.code != 409 || r.apiErr(t).Code != "read_only" {
			t.Errorf("%s %s on a read-only store: %d %s", c.method, c.path, r.code, r.body)
		}
	}
}

type readOnly struct{ apikey.Store }

func (readOnly) Create(context.Context, apikey.NewKey) (apikey.Key, error) {
	return apikey.Key{}, apikey.ErrReadOnly
}

func (readOnly) Refresh(context.Context, string, apikey.Digest, string, time.Duration, string) (apikey.Key, error) {
	return apikey.Key{}, apikey.ErrReadOnly
}

func (readOnly) Delete(context.Context, string, string) error { return apikey.ErrReadOnly }

func jsonDecode(res *http.Response, v any) error { return json.NewDecoder(res.Body).Decode(v) }
