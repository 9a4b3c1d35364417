package extauthz

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

func TestTemplateMatch(t *testing.T) {
	const org = "/organizations/{organization}/projects/{project}/containers/{container_group}"
	long := strings.Repeat("o", 100)
	for _, tc := range []struct {
		tmpl, path, want string
		ok               bool
	}{
		// One capture, as before.
		{"/organizations/{resource}", "/organizations/acme/jobs", "acme", true},
		{"/organizations/{resource}", "/organizations/acme?x=/y", "acme", true},
		{"/organizations/{resource}", "/organizations/acme#frag", "acme", true},
		{"/organizations/{resource}", "/organizations", "", false},
		{"/organizations/{resource}", "/organizations/", "", false},
		{"/organizations/{resource}", "/organizations//x", "", false},
		{"/organizations/{resource}", "/teams/acme", "", false},
		{"/v1/organizations/{resource}", "/v1/organizations/acme", "acme", true},
		{"/v1/organizations/{resource}", "/v2/organizations/acme", "", false},
		{"/{resource}", "/acme/x", "acme", true},
		// Several captures, as far as the path goes.
		{org, "/organizations/acme", "acme", true},
		{org, "/organizations/acme/projects", "acme", true},
		{org, "/organizations/acme/projects/web", "acme/web", true},
		{org, "/organizations/acme/projects/web/x", "acme/web", true},
		{org, "/organizations/acme/projects/web/containers/gpu-1", "acme/web/gpu-1", true},
		{org, "/organizations/acme/projects/web/containers/gpu-1/logs?tail=1", "acme/web/gpu-1", true},
		{org, "/organizations/acme/projects/web?q=/containers/x", "acme/web", true},
		{org, "/organizations/acme/projects//containers/gpu-1", "acme", true},
		// A path that leaves the template names the levels captured so far.
		{org, "/organizations/acme/billing/web", "acme", true},
		{org, "/organizations/acme/projects/web/jobs/gpu-1", "acme/web", true},
		{org, "/organizations", "", false},
		{org, "/projects/acme", "", false},
		// Any capture names, adjacent captures.
		{"/v1/{org}/{proj}", "/v1/a/b/c", "a/b", true},
		{"/v1/{org}/{proj}", "/v1/a", "a", true},
		// Longer than the scratch buffer.
		{"/o/{a}/{b}/{c}", "/o/" + long + "/" + long + "/" + long, long + "/" + long + "/" + long, true},
	} {
		ts := parseTemplates([]string{tc.tmpl})
		if len(ts) != 1 {
			t.Fatalf("%s: parsed %d templates", tc.tmpl, len(ts))
		}
		var scratch [128]byte
		got, ok := ts[0].match(tc.path, scratch[:0])
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s matching %s = %q, %v; want %q, %v", tc.tmpl, tc.path, got, ok, tc.want, tc.ok)
		}
	}
	if ts := parseTemplates([]string{"/organizations/{}", "/literal/only"}); len(ts) != 0 {
		t.Errorf("templates without a capture parsed: %v", ts)
	}
}

// The first matching template wins, and a multi-level resource path is built
// without allocating.
func TestResourceFirstTemplateAndNoAlloc(t *testing.T) {
	ts := parseTemplates([]string{"/organizations/{organization}/projects/{project}", "/teams/{resource}"})
	ext := extSource{pairs: pairs{}}
	if r := resource("/teams/acme/x", ext, ts, nil); r != "acme" {
		t.Errorf("second template: %q", r)
	}
	if r := resource("/organizations/acme/projects/web", extSource{pairs: pairs{{ExtResource, "other/x"}}}, ts, nil); r != "other/x" {
		t.Errorf("context extension resource path: %q, want other/x", r)
	}
	if raceEnabled {
		return // allocation counts are meaningless under the race detector
	}
	if n := testing.AllocsPerRun(100, func() {
		var scratch [128]byte
		if r := resource("/organizations/acme/projects/web/x", ext, ts, scratch[:0]); r != "acme/web" {
			t.Fatal("resource is not acme/web") // r itself not printed: that would move scratch to the heap
		}
	}); n != 0 {
		t.Errorf("a two-level resource path allocates %v times, want 0", n)
	}
}

func TestHierarchicalGrants(t *testing.T) {
	fx := newFixture(t, nil, func(o *Options) {
		o.Templates = []string{"/organizations/{organization}/projects/{project}/containers/{container_group}"}
	})
	orgGrant, _ := fx.add(t, "ws1", func(k *apikey.Key) { k.Grants = []string{"acme"} })
	projGrant, _ := fx.add(t, "ws1", func(k *apikey.Key) { k.Grants = []string{"acme/web"} })
	spaceGrant, _ := fx.add(t, "ws1", func(k *apikey.Key) { k.Space.Grants = []string{"acme/web"} })
	spaceOrg, _ := fx.add(t, "ws1", func(k *apikey.Key) { k.Space.Grants = []string{"beta"} })
	owner, _ := fx.add(t, "acme", nil)
	plain, _ := fx.add(t, "ws1", nil)

	const (
		orgPath     = "/organizations/acme"
		projPath    = "/organizations/acme/projects/web/jobs"
		groupPath   = "/organizations/acme/projects/web/containers/gpu-1"
		siblingPath = "/organizations/acme/projects/api/containers/gpu-1"
		leftPath    = "/organizations/acme/billing"
	)
	for _, tc := range []struct {
		name, key, path string
		ext             map[string]string
		code            int
	}{
		{"organization grant covers a project", orgGrant, projPath, nil, 200},
		{"organization grant covers a container group", orgGrant, groupPath, nil, 200},
		{"organization grant covers the organization", orgGrant, orgPath, nil, 200},
		{"organization grant, other organization", orgGrant, "/organizations/beta/projects/web", nil, 403},
		{"project grant covers its project", projGrant, projPath, nil, 200},
		{"project grant covers its container group", projGrant, groupPath, nil, 200},
		{"project grant, sibling project", projGrant, siblingPath, nil, 403},
		{"project grant, the organization itself", projGrant, orgPath, nil, 403},
		{"project grant, path leaving the template", projGrant, leftPath, nil, 403},
		{"project grant, context extension path", projGrant, "/x", map[string]string{ExtResource: "acme/web/gpu-2"}, 200},
		{"project grant, context extension sibling", projGrant, "/x", map[string]string{ExtResource: "acme/api"}, 403},
		{"workspace grant covers its project", spaceGrant, groupPath, nil, 200},
		{"workspace grant, sibling project", spaceGrant, siblingPath, nil, 403},
		{"workspace grant, the organization", spaceGrant, orgPath, nil, 403},
		{"workspace organization grant", spaceOrg, "/organizations/beta/projects/x/containers/y", nil, 200},
		{"workspace organization grant, other organization", spaceOrg, groupPath, nil, 403},
		{"owning workspace covers every level", owner, groupPath, nil, 200},
		{"no grant", plain, projPath, nil, 403},
		{"no resource on the route", plain, "/v1/things", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := fx.svc.Check(context.Background(), req(tc.path, map[string]string{"x-api-key": tc.key}, tc.ext))
			if o := result(t, resp, err); o.code != tc.code {
				t.Fatalf("%s: %d, want %d", tc.path, o.code, tc.code)
			}
		})
	}
}

// used records Options.Used calls.
type used struct {
	ids      []string
	outcomes []apikey.Outcome
	ats      []time.Time
}

func (u *used) hook(id string, at time.Time, o apikey.Outcome) {
	u.ids, u.ats, u.outcomes = append(u.ids, id), append(u.ats, at), append(u.outcomes, o)
}

func (u *used) reset() { *u = used{} }

// Every decision about a known key reaches Options.Used with its outcome,
// and the metric reason of a disabled key is "disabled".
func TestUsedOutcomesAndDisabled(t *testing.T) {
	var u used
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fx := newFixture(t, nil, func(o *Options) { o.Used = u.hook; o.Now = func() time.Time { return now } })
	fx.now = now
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	fx.svc.metrics = m
	valid, vk := fx.add(t, "acme", nil)
	disabled, dk := fx.add(t, "acme", func(k *apikey.Key) { k.Disabled = true })
	wsDisabled, wk := fx.add(t, "acme", func(k *apikey.Key) { k.Space.Disabled = true })
	expired, ek := fx.add(t, "acme", func(k *apikey.Key) { k.ExpiresAt = now.Add(-time.Second) })
	revoked, rk := fx.add(t, "acme", func(k *apikey.Key) { k.RevokedAt = now.Add(-time.Second) })
	early, nk := fx.add(t, "acme", func(k *apikey.Key) { k.NotBefore = now.Add(time.Hour) })
	one, ok1 := fx.add(t, "acme", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 1, Per: time.Hour} })
	unknown, _ := fx.format.Generate()

	for _, tc := range []struct {
		name, key, path string
		code            int
		id              string
		o               apikey.Outcome
		reason          string // metric reason of a deny
	}{
		{"allowed", valid, "/", 200, vk.ID, apikey.OutcomeAllowed, ""},
		{"forbidden", valid, "/organizations/other", 403, vk.ID, apikey.OutcomeForbidden, reasonForbidden},
		{"disabled key", disabled, "/", 401, dk.ID, apikey.OutcomeDisabled, reasonDisabled},
		{"disabled workspace", wsDisabled, "/", 401, wk.ID, apikey.OutcomeDisabled, reasonDisabled},
		{"expired", expired, "/", 401, ek.ID, apikey.OutcomeExpired, reasonExpired},
		{"revoked", revoked, "/", 401, rk.ID, apikey.OutcomeRevoked, reasonRevoked},
		{"not yet valid", early, "/", 401, nk.ID, apikey.OutcomeNotYetValid, reasonNotYet},
		{"first of one", one, "/", 200, ok1.ID, apikey.OutcomeAllowed, ""},
		{"rate limited", one, "/", 429, ok1.ID, apikey.OutcomeRateLimited, reasonLimited},
		{"unknown key", unknown, "/", 401, "", 0, reasonUnknown},
		{"malformed key", flipLast(valid), "/", 401, "", 0, reasonChecksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u.reset()
			before := checksTotal(t, reg, resultDenied, tc.reason)
			resp, err := fx.svc.Check(context.Background(), req(tc.path, map[string]string{"x-api-key": tc.key}, nil))
			o := result(t, resp, err)
			if o.code != tc.code {
				t.Fatalf("%d, want %d", o.code, tc.code)
			}
			if tc.code == 401 && o.body != invalidBody {
				t.Errorf("body %s, want %s", o.body, invalidBody)
			}
			switch {
			case tc.id == "" && len(u.ids) != 0:
				t.Errorf("Used called %v %v for a key not known", u.ids, u.outcomes)
			case tc.id != "" && (len(u.ids) != 1 || u.ids[0] != tc.id || u.outcomes[0] != tc.o || !u.ats[0].Equal(now)):
				t.Errorf("Used %v %v %v, want once %s %v at %v", u.ids, u.outcomes, u.ats, tc.id, tc.o, now)
			}
			if tc.reason != "" {
				if after := checksTotal(t, reg, resultDenied, tc.reason); after != before+1 {
					t.Errorf("denied{reason=%q} went %v -> %v, want +1", tc.reason, before, after)
				}
			}
		})
	}

	// A limiter outage under on_error: deny is a known key's deny too.
	fx2 := newFixture(t, failingLimiter{err: ratelimit.ErrUnavailable}, func(o *Options) { o.Used = u.hook })
	k2, kk := fx2.add(t, "acme", nil)
	u.reset()
	resp, err := fx2.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": k2}, nil))
	if o := result(t, resp, err); o.code != 503 || len(u.ids) != 1 || u.ids[0] != kk.ID || u.outcomes[0] != apikey.OutcomeUnavailable {
		t.Errorf("limiter down: %d, Used %v %v", o.code, u.ids, u.outcomes)
	}
}

func TestRatePrecedence(t *testing.T) {
	fx := newFixture(t, nil, nil) // default 240/m; config: workspace "big" 1000/m
	space := apikey.Policy{RateLimit: apikey.Rate{N: 700, Per: time.Minute}}
	for _, tc := range []struct {
		name  string
		ws    string
		mod   func(*apikey.Key)
		limit string
	}{
		{"default", "acme", nil, "240"},
		{"config workspace", "big", nil, "1000"},
		{"workspace record over config", "big", func(k *apikey.Key) { k.Space = space }, "700"},
		{"workspace record over default", "acme", func(k *apikey.Key) { k.Space = space }, "700"},
		{"key over workspace record", "big", func(k *apikey.Key) { k.Space = space; k.RateLimit = apikey.Rate{N: 600, Per: time.Minute} }, "600"},
		{"key over config workspace", "big", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 600, Per: time.Minute} }, "600"},
	} {
		key, _ := fx.add(t, tc.ws, tc.mod)
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": key}, nil))
		if o := result(t, resp, err); o.code != 200 || o.headers["x-ratelimit-limit"] != tc.limit {
			t.Errorf("%s: %d, limit %q; want 200, %s", tc.name, o.code, o.headers["x-ratelimit-limit"], tc.limit)
		}
	}
}
