package extauthz

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

// withRegistry gives fx's service fresh metrics in a registry the test reads.
func withRegistry(t *testing.T, fx *fixture) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	fx.svc.metrics = m
	return reg
}

// wantWouldDeny fails unless o is an allow marked as a would-be deny with
// status code ("" for an unmarked allow).
func wantWouldDeny(t *testing.T, what string, o outcome, code string) {
	t.Helper()
	if o.code != 200 {
		t.Fatalf("%s: answered %d (%s), want an allow in report-only mode", what, o.code, o.body)
	}
	if got, ok := o.up[WouldDenyHeader]; got != code || ok != (code != "") {
		t.Fatalf("%s: upstream %s = %q (set %v), want %q", what, WouldDenyHeader, got, ok, code)
	}
	if code == "" && !slices.Contains(o.removed, WouldDenyHeader) {
		t.Fatalf("%s: an unmarked report-only allow must remove the client's %s: removed %v", what, WouldDenyHeader, o.removed)
	}
}

// wantAnonymous fails unless o carries no identity and removes the client's copies of it.
func wantAnonymous(t *testing.T, what string, o outcome) {
	t.Helper()
	if o.up["x-keyauthz-key-id"] != "" || o.up["x-keyauthz-workspace"] != "" {
		t.Fatalf("%s: a request without a valid key carries identity upstream: %v", what, o.up)
	}
	for _, h := range []string{"x-api-key", "salad-api-key", "x-keyauthz-key-id", "x-keyauthz-workspace"} {
		if !slices.Contains(o.removed, h) {
			t.Fatalf("%s: %s not removed (removed %v)", what, h, o.removed)
		}
	}
}

func TestReportOnly(t *testing.T) {
	fx := newFixture(t, nil, func(o *Options) { o.ReportOnly = true })
	reg := withRegistry(t, fx)
	valid, vk := fx.add(t, "acme", nil)
	limited, lk := fx.add(t, "acme", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 2, Per: time.Hour} })
	revoked, _ := fx.add(t, "acme", func(k *apikey.Key) { k.RevokedAt = fx.now.Add(-time.Second) })
	unknown, _ := fx.format.Generate()
	check := func(path string, h map[string]string) outcome {
		t.Helper()
		resp, err := fx.svc.Check(context.Background(), req(path, h, nil))
		return result(t, resp, err)
	}

	o := check("/", nil)
	wantWouldDeny(t, "no key", o, "401")
	wantAnonymous(t, "no key", o)
	// A client cannot forge identity on a would-deny: its headers are removed.
	o = check("/", map[string]string{"x-keyauthz-key-id": "key_forged", WouldDenyHeader: "0"})
	wantWouldDeny(t, "no key, forged identity", o, "401")
	wantAnonymous(t, "no key, forged identity", o)
	for name, key := range map[string]string{"unknown": unknown, "malformed": flipLast(valid), "revoked": revoked} {
		o := check("/", map[string]string{"x-api-key": key})
		wantWouldDeny(t, name, o, "401")
		wantAnonymous(t, name, o)
	}
	o = check("/", map[string]string{"x-api-key": valid, "salad-api-key": unknown})
	wantWouldDeny(t, "conflict", o, "400")

	// A valid key: an ordinary allow, the client's would-deny header removed.
	o = check("/", map[string]string{"x-api-key": valid, WouldDenyHeader: "401"})
	wantWouldDeny(t, "valid key", o, "")
	if o.up["x-keyauthz-key-id"] != vk.ID || o.headers["x-ratelimit-limit"] != "240" {
		t.Fatalf("valid key: upstream %v, client headers %v", o.up, o.headers)
	}
	// Not its resource: allowed with identity, marked 403.
	o = check("/organizations/other/x", map[string]string{"x-api-key": valid})
	wantWouldDeny(t, "forbidden", o, "403")
	if o.up["x-keyauthz-key-id"] != vk.ID {
		t.Fatalf("forbidden: identity %v", o.up)
	}

	// Over the limit: allowed with identity and rate-limit headers, marked 429.
	for i := range 2 {
		wantWouldDeny(t, "under the limit", check("/", map[string]string{"x-api-key": limited}), "")
		_ = i
	}
	for range 3 {
		o = check("/", map[string]string{"x-api-key": limited})
		wantWouldDeny(t, "over the limit", o, "429")
		if o.up["x-keyauthz-key-id"] != lk.ID || o.up["x-keyauthz-workspace"] != "acme" {
			t.Fatalf("over the limit: identity %v", o.up)
		}
		if o.headers["x-ratelimit-remaining"] != "0" || o.headers["x-ratelimit-limit"] != "2" {
			t.Fatalf("over the limit: rate-limit headers %v", o.headers)
		}
	}

	for _, c := range []struct {
		result, reason string
		want           float64
	}{
		{"denied", reasonMissing, 2}, {"denied", reasonUnknown, 1}, {"denied", reasonChecksum, 1}, {"denied", reasonRevoked, 1},
		{"denied", reasonConflict, 1}, {"denied", reasonForbidden, 1}, {"denied", reasonLimited, 3}, {"allowed", "", 3},
	} {
		if got := checksTotalMode(t, reg, "report_only", c.result, c.reason); got != c.want {
			t.Errorf("checks_total{%s,%s,report_only} = %v, want %v", c.result, c.reason, got, c.want)
		}
		if got := checksTotalMode(t, reg, "enforce", c.result, c.reason); got != 0 {
			t.Errorf("checks_total{%s,%s,enforce} = %v in report-only mode, want 0", c.result, c.reason, got)
		}
	}
}

// TestEnforceUnchanged: the same requests in enforce mode are denied as
// before and counted under mode enforce; an enforce allow carries no mark and
// removes only the key headers.
func TestEnforceUnchanged(t *testing.T) {
	fx := newFixture(t, nil, nil)
	reg := withRegistry(t, fx)
	valid, _ := fx.add(t, "acme", nil)
	limited, _ := fx.add(t, "acme", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 1, Per: time.Hour} })
	for _, c := range []struct {
		h    map[string]string
		code int
	}{
		{nil, 401}, {map[string]string{"x-api-key": limited}, 200}, {map[string]string{"x-api-key": limited}, 429},
	} {
		resp, err := fx.svc.Check(context.Background(), req("/", c.h, nil))
		if o := result(t, resp, err); o.code != c.code {
			t.Fatalf("%v: %d, want %d", c.h, o.code, c.code)
		}
	}
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	o := result(t, resp, err)
	if _, ok := o.up[WouldDenyHeader]; ok || strings.Join(o.removed, ",") != "x-api-key,salad-api-key" {
		t.Fatalf("enforce allow: upstream %v, removed %v", o.up, o.removed)
	}
	if got := checksTotalMode(t, reg, "enforce", "denied", reasonLimited); got != 1 {
		t.Fatalf("checks_total{denied,rate_limited,enforce} = %v, want 1", got)
	}
	if got := checksTotalMode(t, reg, "report_only", "denied", reasonMissing); got != 0 {
		t.Fatalf("checks_total{denied,missing,report_only} = %v in enforce mode, want 0", got)
	}
}

// TestModePerRoute: the keyauthz_mode context extension overrides the
// service's mode both ways; a value it does not know enforces.
func TestModePerRoute(t *testing.T) {
	for _, c := range []struct {
		reportOnly bool
		ext        map[string]string
		want       int // 200: allowed, marked 401
	}{
		{false, nil, 401},
		{false, map[string]string{ExtMode: "report_only"}, 200},
		{true, nil, 200},
		{true, map[string]string{ExtMode: "enforce"}, 401},
		{true, map[string]string{ExtMode: "Report_Only"}, 401},
		{true, map[string]string{ExtMode: ""}, 401},
	} {
		fx := newFixture(t, nil, func(o *Options) { o.ReportOnly = c.reportOnly })
		resp, err := fx.svc.Check(context.Background(), req("/", nil, c.ext))
		o := result(t, resp, err)
		if o.code != c.want {
			t.Fatalf("report_only %v, extensions %v: %d, want %d", c.reportOnly, c.ext, o.code, c.want)
		}
		if c.want == 200 {
			wantWouldDeny(t, "route in report-only", o, "401")
		}
	}
}

// TestReportOnlyFaults: store and limiter failures allow in report-only mode,
// marked 503, and are counted as errors of mode report_only.
func TestReportOnlyFaults(t *testing.T) {
	fx := newFixture(t, nil, func(o *Options) { o.ReportOnly = true })
	reg := withRegistry(t, fx)
	valid, vk := fx.add(t, "acme", nil)
	fx.keys.err = errors.New("database is down")
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	o := result(t, resp, err)
	wantWouldDeny(t, "store down", o, "503")
	wantAnonymous(t, "store down", o)
	if got := checksTotalMode(t, reg, "report_only", "error", reasonStore); got != 1 {
		t.Fatalf("checks_total{error,store,report_only} = %v, want 1", got)
	}

	for name, lim := range map[string]failingLimiter{
		"limiter fault":             {err: errors.New("bug")},
		"limiter down, deny policy": {err: ratelimit.ErrUnavailable},
	} {
		fx := newFixture(t, lim, func(o *Options) { o.ReportOnly = true })
		reg := withRegistry(t, fx)
		valid, vk = fx.add(t, "acme", nil)
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
		o := result(t, resp, err)
		wantWouldDeny(t, name, o, "503")
		if o.up["x-keyauthz-key-id"] != vk.ID {
			t.Fatalf("%s: identity %v", name, o.up)
		}
		res, reason := "error", reasonLimiter
		if errors.Is(lim.err, ratelimit.ErrUnavailable) {
			res, reason = "denied", reasonLimiterDown
		}
		if got := checksTotalMode(t, reg, "report_only", res, reason); got != 1 {
			t.Fatalf("%s: checks_total{%s,%s,report_only} = %v, want 1", name, res, reason, got)
		}
	}
}

// TestReportOnlyLog: would-be denies are logged at info with the key id,
// never the key, at most one line per tenth of a second.
func TestReportOnlyLog(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	now := time.Now()
	fx := newFixture(t, nil, func(o *Options) { o.ReportOnly = true; o.Now = func() time.Time { return now } })
	fx.svc.log = zap.New(core)
	revoked, rk := fx.add(t, "acme", func(k *apikey.Key) { k.RevokedAt = fx.now.Add(-time.Second) })
	for range 50 {
		resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": revoked}, nil))
		wantWouldDeny(t, "revoked", result(t, resp, err), "401")
	}
	lines := logs.TakeAll()
	if len(lines) != 1 {
		t.Fatalf("%d lines logged for 50 would-be denies within one instant, want 1", len(lines))
	}
	f := lines[0].ContextMap()
	if lines[0].Level != zapcore.InfoLevel || f["key_id"] != rk.ID || f["status"] != int64(401) || f["reason"] != reasonRevoked {
		t.Fatalf("logged %s %v", lines[0].Message, f)
	}
	now = now.Add(time.Second)
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": revoked}, nil))
	wantWouldDeny(t, "revoked", result(t, resp, err), "401")
	lines = logs.TakeAll()
	if len(lines) != 1 || lines[0].ContextMap()["not_logged_since"] != int64(49) {
		t.Fatalf("a second later: %d lines, want 1 counting the 49 not logged: %v", len(lines), lines)
	}
	for _, l := range lines {
		if strings.Contains(l.Message, revoked) || strings.Contains(fmtFields(l.ContextMap()), revoked) {
			t.Fatal("log line holds the key")
		}
	}
}

func fmtFields(m map[string]any) string {
	var b strings.Builder
	for k, v := range m {
		b.WriteString(k)
		b.WriteString("=")
		if s, ok := v.(string); ok {
			b.WriteString(s)
		}
		b.WriteString(" ")
	}
	return b.String()
}
