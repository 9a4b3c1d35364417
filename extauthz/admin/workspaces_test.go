package admin

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

const teamToken = "team-token-0123456789abcdef"

// send sends a JSON body to a workspace route with the ops token.
func (e *env) send(method, path string, body string) resp {
	e.t.Helper()
	var b []byte
	ct := ""
	if body != "" {
		b, ct = []byte(body), "application/json"
	}
	return e.call(method, path, opsToken, ct, b)
}

// wsView decodes a workspace answer with status code.
func (r resp) wsView(t *testing.T, code int) WorkspaceView {
	t.Helper()
	if r.code != code {
		t.Fatalf("code %d, want %d: %s", r.code, code, r.body)
	}
	var v WorkspaceView
	r.json(t, &v)
	return v
}

// wantErr checks an error answer's code, field and (when msg is not "") message.
func (r resp) wantErr(t *testing.T, code int, field, msg string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("code %d, want %d: %s", r.code, code, r.body)
	}
	ae := r.apiErr(t)
	if ae.Field != field {
		t.Errorf("field %q, want %q (%s)", ae.Field, field, ae.Message)
	}
	if msg != "" && ae.Message != msg {
		t.Errorf("message %q, want %q", ae.Message, msg)
	}
}

func TestWorkspaceRecordLifecycle(t *testing.T) {
	e := newEnv(t, envOpt{})
	ctx := context.Background()
	e.send("GET", "/v1/workspaces/acme", "").wantErr(t, 404, "", "workspace not found")
	e.send("PATCH", "/v1/workspaces/acme", `{"disabled":true}`).wantErr(t, 404, "", "workspace not found")

	before := e.changes.Load()
	r := e.send("PUT", "/v1/workspaces/acme", `{"rate_limit":"600/m","max_keys":20,"grants":["acme2","org/web"]}`)
	v := r.wsView(t, 201)
	if r.header.Get("Location") != "/v1/workspaces/acme" {
		t.Errorf("Location %q", r.header.Get("Location"))
	}
	if v.ID != "acme" || v.RateLimit != "600/m" || v.MaxKeys != 20 || strings.Join(v.Grants, ",") != "acme2,org/web" || v.Disabled || v.CreatedAt.IsZero() {
		t.Errorf("PUT created %+v", v)
	}
	if e.changes.Load() == before {
		t.Error("PUT did not call OnChange")
	}
	got := e.send("GET", "/v1/workspaces/acme", "").wsView(t, 200)
	if got.RateLimit != "600/m" || got.MaxKeys != 20 || len(got.Grants) != 2 {
		t.Errorf("GET = %+v", got)
	}

	// PATCH: absent fields stay, null resets, values set.
	before = e.changes.Load()
	p := e.send("PATCH", "/v1/workspaces/acme", `{"rate_limit":null,"disabled":true}`).wsView(t, 200)
	if p.RateLimit != "" || p.MaxKeys != 20 || len(p.Grants) != 2 || !p.Disabled {
		t.Errorf("PATCH rate null, disabled = %+v; want rate inherited, max_keys and grants kept", p)
	}
	if e.changes.Load() == before {
		t.Error("PATCH did not call OnChange")
	}
	p = e.send("PATCH", "/v1/workspaces/acme", `{"max_keys":null,"grants":null,"disabled":null,"rate_limit":"10/s"}`).wsView(t, 200)
	if p.RateLimit != "10/s" || p.MaxKeys != 0 || len(p.Grants) != 0 || p.Disabled {
		t.Errorf("PATCH nulls = %+v", p)
	}
	if p2 := e.send("PATCH", "/v1/workspaces/acme", `{}`).wsView(t, 200); p2.RateLimit != "10/s" || !p2.UpdatedAt.Equal(p.UpdatedAt) {
		t.Errorf("empty PATCH changed the record: %+v", p2)
	}

	// PUT replaces: absent and null fields take their defaults; created_at is kept.
	r = e.send("PUT", "/v1/workspaces/acme", `{"max_keys":null,"disabled":false}`)
	rep := r.wsView(t, 200)
	if rep.RateLimit != "" || rep.MaxKeys != 0 || len(rep.Grants) != 0 || !rep.CreatedAt.Equal(v.CreatedAt) || r.header.Get("Location") != "" {
		t.Errorf("PUT replace = %+v (Location %q)", rep, r.header.Get("Location"))
	}

	// The audit trail records each change with the token's name.
	evs, err := e.store.Events(ctx, "acme", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs {
		if ev.Kind == "workspace_updated" {
			n++
			if ev.Actor != "ops" || ev.KeyID != "" {
				t.Errorf("event %+v: want actor ops, no key", ev)
			}
		}
	}
	if n != 4 { // put, patch, patch, put: the empty patch wrote nothing
		t.Errorf("%d workspace_updated events, want 4", n)
	}
}

func TestWorkspaceBadInput(t *testing.T) {
	e := newEnv(t, envOpt{})
	secret, err := e.format.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{"PUT", "PATCH"} {
		if method == "PATCH" {
			e.send("PUT", "/v1/workspaces/acme", `{}`).wsView(t, 201)
		}
		for body, field := range map[string]string{
			`{"rate_limit":"fast"}`:            "rate_limit",
			`{"rate_limit":600}`:               "rate_limit",
			`{"rate_limit":"0/m"}`:             "rate_limit",
			`{"max_keys":-1}`:                  "max_keys",
			`{"max_keys":1000001}`:             "max_keys",
			`{"max_keys":"ten"}`:               "max_keys",
			`{"max_keys":1.5}`:                 "max_keys",
			`{"grants":"acme"}`:                "grants",
			`{"grants":["a/"]}`:                "grants",
			`{"grants":["a/b/c/d/e/f/g/h/i"]}`: "grants",
			`{"grants":["` + secret + `"]}`:    "grants",
			`{"disabled":"yes"}`:               "disabled",
			`{"color":"red"}`:                  "color",
			`[]`:                               "body",
			`{"disabled":true`:                 "body",
		} {
			r := e.send(method, "/v1/workspaces/acme", body)
			r.wantErr(t, 400, field, "")
			if strings.Contains(string(r.body), secret) {
				t.Errorf("%s %s: the answer echoes the secret", method, field)
			}
		}
		e.send(method, "/v1/workspaces/%2e%2e", `{}`).wantErr(t, 400, "workspace", "")
		if r := e.call(method, "/v1/workspaces/acme", opsToken, "text/plain", []byte(`{}`)); r.code != 415 {
			t.Errorf("%s text/plain: %d", method, r.code)
		}
	}
	e.send("GET", "/v1/workspaces/a%20b", "").wantErr(t, 400, "workspace", "")
	// Nothing bad was stored.
	if v := e.send("GET", "/v1/workspaces/acme", "").wsView(t, 200); v.RateLimit != "" || v.MaxKeys != 0 || len(v.Grants) != 0 || v.Disabled {
		t.Errorf("after bad input: %+v", v)
	}
}

func TestListWorkspacesPages(t *testing.T) {
	e := newEnv(t, envOpt{})
	if r := e.send("GET", "/v1/workspaces", ""); r.code != 200 || strings.TrimSpace(string(r.body)) != `{"items":[]}` {
		t.Errorf("empty list: %d %s", r.code, r.body)
	}
	for _, ws := range []string{"d", "b", "a", "c", "e"} {
		e.send("PUT", "/v1/workspaces/"+ws, `{}`).wsView(t, 201)
	}
	var ids []string
	cursor, pages := "", 0
	for {
		r := e.send("GET", "/v1/workspaces?limit=2&cursor="+cursor, "")
		var p WorkspacePage
		if r.code != 200 {
			t.Fatalf("page: %d %s", r.code, r.body)
		}
		r.json(t, &p)
		pages++
		for _, v := range p.Items {
			ids = append(ids, v.ID)
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	if strings.Join(ids, ",") != "a,b,c,d,e" || pages != 3 {
		t.Errorf("pages = %d, ids %v", pages, ids)
	}
	// Cursors of other lists are refused, and the other way round.
	k := e.create("a", "k1")
	e.create("a", "k2")
	var kp KeyPage
	r := e.send("GET", "/v1/workspaces/a/api-keys?limit=1", "")
	r.json(t, &kp)
	e.send("GET", "/v1/workspaces?cursor="+kp.NextCursor, "").wantErr(t, 400, "cursor", "")
	wsCursor := encodeCursor("w", "", "a")
	e.send("GET", "/v1/workspaces/a/api-keys?cursor="+wsCursor, "").wantErr(t, 400, "cursor", "")
	e.send("GET", "/v1/workspaces?cursor=not-base64!", "").wantErr(t, 400, "cursor", "")
	e.send("GET", "/v1/workspaces?limit=0", "").wantErr(t, 400, "limit", "")
	_ = k
}

// A workspace record takes effect on its keys' checks at once (OnChange).
func TestWorkspaceDisableDeniesItsKeys(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	other := e.create("beta", "ci")
	if !e.allowed(k.Key) || !e.allowed(other.Key) {
		t.Fatal("keys denied before any record")
	}
	e.send("PUT", "/v1/workspaces/acme", `{"disabled":true}`).wsView(t, 201)
	if e.allowed(k.Key) {
		t.Error("key of a disabled workspace still allowed")
	}
	if !e.allowed(other.Key) {
		t.Error("another workspace's key denied")
	}
	e.send("PATCH", "/v1/workspaces/acme", `{"disabled":false}`).wsView(t, 200)
	if !e.allowed(k.Key) {
		t.Error("key still denied after the workspace was enabled")
	}
}

func TestUpdateKey(t *testing.T) {
	e := newEnv(t, envOpt{})
	ctx := context.Background()
	k := e.create("acme", "ci")
	path := "/v1/workspaces/acme/api-keys/" + k.ID
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)

	before := e.changes.Load()
	r := e.send("PATCH", path, fmt.Sprintf(`{"name":"deploy","rate_limit":"600/m","expires_at":%q,"grants":["org1","org2/web"],"metadata":{"team":"x"}}`, exp.Format(time.RFC3339)))
	v, _ := r.view(t, 200, "")
	if v.Name != "deploy" || v.RateLimit != "600/m" || v.ExpiresAt == nil || !v.ExpiresAt.Equal(exp) ||
		strings.Join(v.Grants, ",") != "org1,org2/web" || v.Metadata["team"] != "x" || v.Disabled || v.Key != "" {
		t.Errorf("PATCH = %+v", v)
	}
	if e.changes.Load() == before {
		t.Error("PATCH did not call OnChange")
	}
	// Absent fields stay; null resets.
	v, _ = e.send("PATCH", path, `{"rate_limit":null,"expires_at":null}`).view(t, 200, "")
	if v.Name != "deploy" || v.RateLimit != "" || v.ExpiresAt != nil || len(v.Grants) != 2 || v.Metadata["team"] != "x" {
		t.Errorf("PATCH nulls = %+v", v)
	}
	v, _ = e.send("PATCH", path, `{"grants":null,"metadata":null}`).view(t, 200, "")
	if len(v.Grants) != 0 || len(v.Metadata) != 0 || v.Name != "deploy" {
		t.Errorf("PATCH grants, metadata null = %+v", v)
	}
	// An empty object changes nothing and writes nothing.
	evsBefore, _ := e.store.Events(ctx, "acme", 0, 100)
	if v2, _ := e.send("PATCH", path, `{}`).view(t, 200, ""); v2.Name != "deploy" || v2.ID != k.ID {
		t.Errorf("empty PATCH = %+v", v2)
	}
	if evs, _ := e.store.Events(ctx, "acme", 0, 100); len(evs) != len(evsBefore) {
		t.Errorf("empty PATCH wrote %d audit events", len(evs)-len(evsBefore))
	}
	// The audit trail names the changed fields and the token.
	evs, _ := e.store.Events(ctx, "acme", 0, 100)
	updated := 0
	for _, ev := range evs {
		if ev.Kind == "updated" {
			updated++
			if ev.Actor != "ops" || ev.KeyID != k.ID {
				t.Errorf("updated event %+v", ev)
			}
		}
	}
	if updated != 3 {
		t.Errorf("%d updated events, want 3", updated)
	}

	// Disabled → 401 at once; enabled → allowed again; other keys untouched.
	other := e.create("acme", "other")
	if !e.allowed(k.Key) {
		t.Fatal("key denied before disabling")
	}
	if v, _ := e.send("PATCH", path, `{"disabled":true}`).view(t, 200, ""); !v.Disabled {
		t.Error("disabled not shown")
	}
	if e.allowed(k.Key) {
		t.Error("disabled key still allowed")
	}
	if !e.allowed(other.Key) {
		t.Error("another key was denied")
	}
	if g, _ := e.send("GET", path, "").view(t, 200, ""); !g.Disabled {
		t.Error("GET does not show disabled")
	}
	e.send("PATCH", path, `{"disabled":null}`).view(t, 200, "")
	if !e.allowed(k.Key) {
		t.Error("re-enabled key denied")
	}

	// Failures.
	e.send("PATCH", path, `{"name":"other"}`).wantErr(t, 409, "name", "")
	e.send("PATCH", "/v1/workspaces/beta/api-keys/"+k.ID, `{"name":"x"}`).wantErr(t, 404, "", "API key not found")
	e.send("PATCH", "/v1/workspaces/acme/api-keys/key_nope", `{"name":"x"}`).wantErr(t, 404, "", "")
	e.send("PATCH", "/v1/workspaces/acme/api-keys/"+other.ID, `{}`).view(t, 200, "")
	if err := e.mgr.Delete(ctx, other.ID, "test"); err != nil {
		t.Fatal(err)
	}
	e.send("PATCH", "/v1/workspaces/acme/api-keys/"+other.ID, `{}`).wantErr(t, 404, "", "")
	secret, _ := e.format.Generate()
	for body, field := range map[string]string{
		`{"name":null}`:                         "name",
		`{"name":""}`:                           "name",
		`{"name":7}`:                            "name",
		`{"name":"` + secret + `"}`:             "name",
		`{"rate_limit":"lots"}`:                 "rate_limit",
		`{"expires_at":"tomorrow"}`:             "expires_at",
		`{"expires_at":"2001-01-01T00:00:00Z"}`: "expires_at",
		`{"expires_at":"0001-01-01T00:00:00Z"}`: "expires_at",
		`{"expires_at":12}`:                     "expires_at",
		`{"grants":["bad grant"]}`:              "grants",
		`{"metadata":{"a":1}}`:                  "metadata",
		`{"metadata":{"":"x"}}`:                 "metadata",
		`{"metadata":{"a":null}}`:               "metadata",
		`{"metadata":{"k":"` + secret + `"}}`:   "metadata",
		`{"disabled":"no"}`:                     "disabled",
		`{"expires_in_seconds":60}`:             "expires_in_seconds",
		`{"workspace":"beta"}`:                  "workspace",
	} {
		r := e.send("PATCH", path, body)
		r.wantErr(t, 400, field, "")
		if strings.Contains(string(r.body), secret) {
			t.Errorf("%s: the answer echoes the secret", field)
		}
	}
	if g, _ := e.send("GET", path, "").view(t, 200, ""); g.Name != "deploy" || g.Workspace != "acme" {
		t.Errorf("bad input changed the key: %+v", g)
	}
}

// hour is a UTC hour start, n hours before base's hour.
func hourBefore(base time.Time, n int) time.Time {
	return base.UTC().Truncate(time.Hour).Add(-time.Duration(n) * time.Hour)
}

func TestKeyUsage(t *testing.T) {
	now := time.Date(2031, 5, 10, 12, 30, 0, 0, time.UTC)
	e := newEnv(t, envOpt{now: func() time.Time { return now }})
	ctx := context.Background()
	k := e.create("acme", "ci")
	other := e.create("acme", "other")
	var c1, c2, c3 [apikey.NumOutcomes]int64
	c1[apikey.OutcomeAllowed], c1[apikey.OutcomeRateLimited] = 5, 2
	c2[apikey.OutcomeAllowed], c2[apikey.OutcomeForbidden], c2[apikey.OutcomeUnavailable] = 3, 1, 4
	c3[apikey.OutcomeAllowed] = 100
	if err := e.store.AddUsage(ctx, []apikey.Usage{
		{KeyID: k.ID, Hour: hourBefore(now, 0), Counts: c1},  // 12:00
		{KeyID: k.ID, Hour: hourBefore(now, 3), Counts: c2},  // 09:00
		{KeyID: k.ID, Hour: hourBefore(now, 30), Counts: c3}, // yesterday 06:00, outside the default 24 h
		{KeyID: other.ID, Hour: hourBefore(now, 1), Counts: c3},
	}); err != nil {
		t.Fatal(err)
	}
	base := "/v1/workspaces/acme/api-keys/" + k.ID + "/usage"
	get := func(q string) Usage {
		t.Helper()
		r := e.send("GET", base+q, "")
		if r.code != 200 {
			t.Fatalf("GET usage%s: %d %s", q, r.code, r.body)
		}
		var u Usage
		r.json(t, &u)
		return u
	}
	// Default: hourly over the last 24 hours, dense.
	u := get("")
	if u.KeyID != k.ID || u.Granularity != "hour" || !u.To.Equal(now) || !u.From.Equal(hourBefore(now, 24)) {
		t.Errorf("default range: %s %s..%s", u.Granularity, u.From, u.To)
	}
	if len(u.Buckets) != 25 { // 11:00 yesterday .. 12:00 today: from is now-24h truncated
		t.Errorf("%d buckets, want 25", len(u.Buckets))
	}
	for i, b := range u.Buckets {
		if !b.Start.Equal(u.From.Add(time.Duration(i) * time.Hour)) {
			t.Fatalf("bucket %d starts %s", i, b.Start)
		}
	}
	last := u.Buckets[len(u.Buckets)-1]
	if last.Allowed != 5 || last.Denied.RateLimited != 2 || u.Buckets[len(u.Buckets)-4].Denied.LimiterUnavailable != 4 {
		t.Errorf("buckets: last %+v, 09:00 %+v", last, u.Buckets[len(u.Buckets)-4])
	}
	if u.Totals.Allowed != 8 || u.Totals.Denied.RateLimited != 2 || u.Totals.Denied.Forbidden != 1 || u.Totals.Denied.LimiterUnavailable != 4 || u.Totals.Total() != 15 {
		t.Errorf("totals %+v", u.Totals)
	}
	// Daily over an explicit range, with a UTC offset in the input.
	u = get("?granularity=day&from=2031-05-08T05:00:00%2B02:00&to=2031-05-10T13:00:00Z")
	if u.Granularity != "day" || !u.From.Equal(time.Date(2031, 5, 8, 0, 0, 0, 0, time.UTC)) || len(u.Buckets) != 3 {
		t.Fatalf("daily: from %s, %d buckets", u.From, len(u.Buckets))
	}
	if u.Buckets[1].Allowed != 100 || u.Buckets[2].Allowed != 8 || u.Totals.Allowed != 108 {
		t.Errorf("daily buckets %+v totals %+v", u.Buckets, u.Totals)
	}
	// An hour range that misses the data: zeros, still dense.
	u = get("?from=2031-05-01T00:00:00Z&to=2031-05-01T03:00:00Z")
	if len(u.Buckets) != 3 || u.Totals.Total() != 0 {
		t.Errorf("empty range: %d buckets, totals %+v", len(u.Buckets), u.Totals)
	}

	for q, field := range map[string]string{
		"?granularity=week":        "granularity",
		"?from=yesterday":          "from",
		"?to=2031-13-01T00:00:00Z": "to",
		"?from=2031-05-10T12:00:00Z&to=2031-05-10T12:00:00Z": "from",
		"?from=2031-05-10T13:00:00Z&to=2031-05-10T12:00:00Z": "from",
		"?from=2031-03-01T00:00:00Z":                         "from", // 70 days of hours
		"?granularity=day&from=2029-01-01T00:00:00Z":         "from",
		"?to=":                          "to",
		"?from=&to=":                    "from",
		"?granularity=":                 "granularity",
		"?to=0001-01-01T00:30:00Z":      "to",
		"?to=9999-12-31T23:00:00-05:00": "to",
	} {
		e.send("GET", base+q, "").wantErr(t, 400, field, "")
	}
	e.send("GET", "/v1/workspaces/beta/api-keys/"+k.ID+"/usage", "").wantErr(t, 404, "", "")
	e.send("GET", "/v1/workspaces/acme/api-keys/key_none/usage", "").wantErr(t, 404, "", "")
}

func TestRequests30dAndUnusedFor(t *testing.T) {
	now := time.Now().UTC()
	var clock = now
	e := newEnv(t, envOpt{now: func() time.Time { return clock }})
	ctx := context.Background()
	used := e.create("acme", "used")
	e.create("acme", "idle")
	quiet := e.create("acme", "quiet")
	var c [apikey.NumOutcomes]int64
	c[apikey.OutcomeAllowed], c[apikey.OutcomeExpired] = 7, 3
	old := c
	old[apikey.OutcomeAllowed] = 1000
	if err := e.store.AddUsage(ctx, []apikey.Usage{
		{KeyID: used.ID, Hour: hourBefore(now, 2), Counts: c},
		{KeyID: used.ID, Hour: hourBefore(now, 31*24), Counts: old}, // before the 30 days
		{KeyID: quiet.ID, Hour: hourBefore(now, 5), Counts: c},
	}); err != nil {
		t.Fatal(err)
	}
	calls := e.store.totals.Load()
	var p KeyPage
	e.send("GET", "/v1/workspaces/acme/api-keys", "").json(t, &p)
	if n := e.store.totals.Load() - calls; n != 1 {
		t.Errorf("list made %d UsageTotals calls, want 1", n)
	}
	got := map[string]int64{}
	for _, v := range p.Items {
		got[v.Name] = v.Requests30d
	}
	if got["used"] != 10 || got["quiet"] != 10 || got["idle"] != 0 {
		t.Errorf("requests_30d = %v, want used 10, quiet 10, idle 0", got)
	}
	// Pages: one call each.
	calls = e.store.totals.Load()
	var p1, p2 KeyPage
	e.send("GET", "/v1/workspaces/acme/api-keys?limit=2", "").json(t, &p1)
	e.send("GET", "/v1/workspaces/acme/api-keys?limit=2&cursor="+p1.NextCursor, "").json(t, &p2)
	if n := e.store.totals.Load() - calls; n != 2 || len(p1.Items)+len(p2.Items) != 3 {
		t.Errorf("2 pages made %d UsageTotals calls (want 2), %d keys", n, len(p1.Items)+len(p2.Items))
	}
	if v, _ := e.send("GET", "/v1/workspaces/acme/api-keys/"+used.ID, "").view(t, 200, ""); v.Requests30d != 10 {
		t.Errorf("get requests_30d = %d, want 10", v.Requests30d)
	}

	// unused_for: keys created before now-d and not used (allowed) since.
	if err := e.store.Touch(ctx, map[string]time.Time{used.ID: now.Add(44 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	clock = now.Add(45 * 24 * time.Hour) // every key is 45 days old; used was used a day ago
	names := func(q string) string {
		t.Helper()
		var p KeyPage
		r := e.send("GET", "/v1/workspaces/acme/api-keys?"+q, "")
		if r.code != 200 {
			t.Fatalf("%s: %d %s", q, r.code, r.body)
		}
		r.json(t, &p)
		var ns []string
		for _, v := range p.Items {
			ns = append(ns, v.Name)
		}
		return strings.Join(slices.Sorted(slices.Values(ns)), ",")
	}
	if got := names("unused_for=30d"); got != "idle,quiet" {
		t.Errorf("unused_for=30d: %s, want idle,quiet", got)
	}
	if got := names("unused_for=72h"); got != "idle,quiet" {
		t.Errorf("unused_for=72h: %s", got)
	}
	if got := names("unused_for=100d"); got != "" { // created 45 days ago: not yet unused for 100 days
		t.Errorf("unused_for=100d: %s, want none", got)
	}
	if got := names("unused_for=1h"); got != "idle,quiet,used" {
		t.Errorf("unused_for=1h: %s", got)
	}
	for _, q := range []string{"unused_for=", "unused_for=0d", "unused_for=-1h", "unused_for=soon", "unused_for=36501d", "unused_for=99999999999999d", "unused_for=1.5d"} {
		e.send("GET", "/v1/workspaces/acme/api-keys?"+q, "").wantErr(t, 400, "unused_for", "")
	}
}

// Issue 16 done-when 6: a scoped token cannot read, list, create, update or
// delete outside its workspaces (403) and sees only them in lists.
func TestScopedToken(t *testing.T) {
	e := newEnv(t, envOpt{tokens: []Token{{Name: "team", Secret: []byte(teamToken), Workspaces: []string{"beta", "acme", "acme"}}}})
	ctx := context.Background()
	for _, ws := range []string{"acme", "other", "zeta"} {
		e.send("PUT", "/v1/workspaces/"+ws, `{}`).wsView(t, 201)
	}
	foreign := e.create("other", "k")
	own := e.create("acme", "k")
	call := func(method, path, body string) resp {
		t.Helper()
		ct := ""
		var b []byte
		if body != "" {
			ct, b = "application/json", []byte(body)
		}
		return e.call(method, path, teamToken, ct, b)
	}
	outside := []struct{ method, path, body string }{
		{"GET", "/v1/workspaces/other", ""},
		{"PUT", "/v1/workspaces/other", `{"disabled":true}`},
		{"PATCH", "/v1/workspaces/other", `{"disabled":true}`},
		{"PUT", "/v1/workspaces/new", `{}`},
		{"POST", "/v1/workspaces/other/api-keys", `{"name":"x"}`},
		{"GET", "/v1/workspaces/other/api-keys", ""},
		{"GET", "/v1/workspaces/other/api-keys/" + foreign.ID, ""},
		{"PATCH", "/v1/workspaces/other/api-keys/" + foreign.ID, `{"disabled":true}`},
		{"GET", "/v1/workspaces/other/api-keys/" + foreign.ID + "/usage", ""},
		{"POST", "/v1/workspaces/other/api-keys/" + foreign.ID + "/refresh", `{}`},
		{"DELETE", "/v1/workspaces/other/api-keys/" + foreign.ID, ""},
		{"GET", "/v1/workspaces/other/audit", ""},
		{"GET", "/v1/workspaces/other/api-keys/key_none", ""}, // 403 before 404
		{"GET", "/v1/workspaces/nothing-here", ""},            // 403 before 404
		{"GET", "/v1/workspaces/%2e%2e/api-keys", ""},         // 403 before 400
		{"DELETE", "/v1/workspaces/acme/api-keys/" + foreign.ID, ""},
	}
	for _, c := range outside {
		r := call(c.method, c.path, c.body)
		want := http.StatusForbidden
		if strings.HasPrefix(c.path, "/v1/workspaces/acme/") {
			want = http.StatusNotFound // its own workspace: another's key is simply not there
		}
		if r.code != want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, r.code, r.body, want)
			continue
		}
		if want == http.StatusForbidden {
			if ae := r.apiErr(t); ae.Message != "token not allowed for this workspace" || ae.Code != "forbidden" {
				t.Errorf("%s %s: %+v", c.method, c.path, ae)
			}
		}
	}
	// Nothing outside changed.
	if k, err := e.store.Get(ctx, foreign.ID); err != nil || k.Disabled || k.Display != foreign.Display {
		t.Errorf("foreign key after the scoped token's calls: %+v, %v", k, err)
	}
	if w, err := e.store.GetWorkspace(ctx, "other"); err != nil || w.Disabled {
		t.Errorf("foreign workspace after the scoped token's calls: %+v, %v", w, err)
	}
	if _, err := e.store.GetWorkspace(ctx, "new"); err == nil {
		t.Error("the scoped token created a workspace outside its list")
	}
	if keys, _ := e.store.List(ctx, "other", "", 10); len(keys) != 1 {
		t.Errorf("other holds %d keys", len(keys))
	}
	// Inside, everything works, and the audit trail names the token.
	if r := call("PATCH", "/v1/workspaces/acme", `{"rate_limit":"5/s"}`); r.code != 200 {
		t.Errorf("PATCH own workspace: %d %s", r.code, r.body)
	}
	if r := call("PUT", "/v1/workspaces/beta", `{}`); r.code != 201 {
		t.Errorf("PUT own workspace: %d %s", r.code, r.body)
	}
	if r := call("PATCH", "/v1/workspaces/acme/api-keys/"+own.ID, `{"name":"renamed"}`); r.code != 200 {
		t.Errorf("PATCH own key: %d %s", r.code, r.body)
	}
	for _, p := range []string{"/v1/workspaces/acme/api-keys", "/v1/workspaces/acme/api-keys/" + own.ID, "/v1/workspaces/acme/api-keys/" + own.ID + "/usage", "/v1/workspaces/acme/audit"} {
		if r := call("GET", p, ""); r.code != 200 {
			t.Errorf("GET %s: %d %s", p, r.code, r.body)
		}
	}
	evs, _ := e.store.Events(ctx, "acme", 0, 100)
	actors := map[string]string{}
	for _, ev := range evs {
		actors[ev.Kind] = ev.Actor
	}
	if actors["workspace_updated"] != "team" || actors["updated"] != "team" {
		t.Errorf("audit actors %v, want team for workspace_updated and updated", actors)
	}
	// Lists show only its workspaces (beta, acme; not other, zeta), in pages too.
	var ids []string
	cursor := ""
	for range 5 {
		var p WorkspacePage
		r := call("GET", "/v1/workspaces?limit=1&cursor="+cursor, "")
		if r.code != 200 {
			t.Fatalf("list: %d %s", r.code, r.body)
		}
		r.json(t, &p)
		for _, v := range p.Items {
			ids = append(ids, v.ID)
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	if strings.Join(ids, ",") != "acme,beta" {
		t.Errorf("scoped list = %v, want acme,beta", ids)
	}
	var all WorkspacePage
	e.send("GET", "/v1/workspaces", "").json(t, &all)
	if len(all.Items) != 4 {
		t.Errorf("unscoped list holds %d records, want 4", len(all.Items))
	}
}

func TestScopedTokenConfig(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, toks := range [][]Token{
		{{Name: "a", Secret: []byte(opsToken), Workspaces: []string{}}},
		{{Name: "a", Secret: []byte(opsToken), Workspaces: []string{"ok", ".."}}},
		{{Name: "a", Secret: []byte(opsToken), Workspaces: []string{"a/b"}}},
	} {
		if _, err := New(e.mgr, toks, Options{MaxBody: testMaxBody}, zap.NewNop()); err == nil {
			t.Errorf("New(%+v) succeeded", toks[0].Workspaces)
		} else if strings.Contains(err.Error(), opsToken) {
			t.Errorf("error holds the token: %v", err)
		}
	}
}

// Issue 16's schemathesis mismatches: create accepts null for its optional
// fields (documented nullable), refuses a null metadata value (it would be
// read as ""), and refuses expires_at with expires_in_seconds (documented).
func TestCreateNullsAndConflicts(t *testing.T) {
	e := newEnv(t, envOpt{})
	v, _ := e.send("POST", "/v1/workspaces/acme/api-keys", `{"name":"a","expires_at":null,"expires_in_seconds":null,"not_before":null,"rate_limit":null,"grants":null,"metadata":null}`).view(t, 201, "")
	if v.ExpiresAt != nil || v.NotBefore != nil || v.RateLimit != "" || len(v.Grants) != 0 || len(v.Metadata) != 0 {
		t.Errorf("create with nulls = %+v", v)
	}
	e.send("POST", "/v1/workspaces/acme/api-keys", `{"name":"b","metadata":{"k":null}}`).wantErr(t, 400, "metadata", "")
	e.send("POST", "/v1/workspaces/acme/api-keys", `{"name":"b","expires_at":"2099-01-01T00:00:00Z","expires_in_seconds":60}`).wantErr(t, 400, "expires_in_seconds", "")
	if r := e.send("POST", "/v1/workspaces/acme/api-keys/"+v.ID+"/refresh", `{"grace_seconds":null}`); r.code != 200 {
		t.Errorf("refresh with grace_seconds null: %d %s", r.code, r.body)
	}
	// The document says the same: a request with both is not valid.
	doc, _ := loadDoc(t)
	sch := doc.Components.Schemas["CreateKeyRequest"].Value
	if err := sch.VisitJSON(map[string]any{"name": "x", "expires_at": "2099-01-01T00:00:00Z", "expires_in_seconds": 60.0}); err == nil {
		t.Error("CreateKeyRequest allows expires_at with expires_in_seconds")
	}
	if err := sch.VisitJSON(map[string]any{"name": "x", "expires_at": nil}); err != nil {
		t.Errorf("CreateKeyRequest refuses expires_at null: %v", err)
	}
}
