package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// scrape reads a's /metrics over HTTP and parses it with the Prometheus text parser.
func scrape(t *testing.T, a *App) map[string]*dto.MetricFamily {
	t.Helper()
	r, err := http.Get("http://" + a.HTTPAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", r.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// family returns the family name, failing unless it has type typ and every
// series exactly the label names labels.
func family(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels ...string) *dto.MetricFamily {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("/metrics lacks %s", name)
	}
	if f.GetType() != typ {
		t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
	}
	for _, m := range f.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName())
		}
		if strings.Join(got, ",") != strings.Join(labels, ",") {
			t.Errorf("%s has labels %v, want %v", name, got, labels)
		}
	}
	return f
}

// value sums the family's series whose labels include want: a counter's or
// gauge's value, a histogram's sample count.
func value(f *dto.MetricFamily, want map[string]string) float64 {
	var sum float64
series:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// check runs one Check with headers and returns its HTTP status (0 for a gRPC error).
func check(t *testing.T, conn *grpc.ClientConn, headers map[string]string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Path: "/", Headers: headers}},
	}})
	switch {
	case err != nil:
		return 0
	case r.GetOkResponse() != nil:
		return http.StatusOK
	}
	return int(r.GetDeniedResponse().GetStatus().GetCode())
}

// TestMetricsScrape drives Checks and admin calls through a running app, scrapes
// /metrics over HTTP, and checks the latency, admin, cache and change-feed
// families: types, closed label sets, counts that match what was done, and no
// label value holding a key id, a secret, a workspace or a raw path.
func TestMetricsScrape(t *testing.T) {
	const token = "metrics-admin-token-0123456789"
	t.Setenv("KEYAUTHZ_TEST_METRICS_TOKEN", token)
	cfg := testConfig(t)
	cfg.Admin.Tokens = []config.Token{{Name: "ops", Secret: config.Secret{Env: "KEYAUTHZ_TEST_METRICS_TOKEN"}}}
	a := startApp(t, cfg)
	base := "http://" + a.HTTPAddr().String()
	call := func(method, path, tok string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, b
	}

	// Admin calls: create (201) twice, get (200), get unknown (404), delete (204),
	// list without a token (401), an unknown route (404).
	var keys [2]struct{ ID, Key string }
	for i := range keys {
		code, b := call(http.MethodPost, "/v1/workspaces/acme/api-keys", token, map[string]string{"name": fmt.Sprint("metrics-", i)})
		if code != http.StatusCreated || json.Unmarshal(b, &keys[i]) != nil || keys[i].Key == "" {
			t.Fatalf("create: %d %s", code, b)
		}
	}
	live, gone := keys[0], keys[1]
	admin := []struct {
		method, path, tok string
		code              int
	}{
		{http.MethodGet, "/v1/workspaces/acme/api-keys/" + live.ID, token, http.StatusOK},
		{http.MethodGet, "/v1/workspaces/acme/api-keys/key_nosuchkey", token, http.StatusNotFound},
		{http.MethodDelete, "/v1/workspaces/acme/api-keys/" + gone.ID, token, http.StatusNoContent},
		{http.MethodGet, "/v1/workspaces/acme/api-keys", "", http.StatusUnauthorized},
		{http.MethodGet, "/v1/nowhere/acme", token, http.StatusNotFound},
	}
	for _, c := range admin {
		if code, b := call(c.method, c.path, c.tok, nil); code != c.code {
			t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, code, b, c.code)
		}
	}

	// Checks: three allowed (one store read, then cache hits), and three denied:
	// no key, a malformed key, the deleted key.
	conn := dialGRPC(t, a.GRPCAddr())
	for range 3 {
		if c := check(t, conn, map[string]string{"x-api-key": live.Key}); c != http.StatusOK {
			t.Fatalf("live key: %d", c)
		}
	}
	for _, h := range []map[string]string{nil, {"x-api-key": "not-a-key"}, {"x-api-key": gone.Key}} {
		if c := check(t, conn, h); c != http.StatusUnauthorized {
			t.Fatalf("Check %v: %d, want 401", h, c)
		}
	}

	fams := scrape(t, a)
	hist, counter, gauge := dto.MetricType_HISTOGRAM, dto.MetricType_COUNTER, dto.MetricType_GAUGE

	dur := family(t, fams, "keyauthz_check_duration_seconds", hist, "result")
	checks := family(t, fams, "keyauthz_checks_total", counter, "mode", "reason", "result")
	if got := value(checks, map[string]string{"mode": "report_only"}); got != 0 {
		t.Errorf("keyauthz_checks_total{mode=report_only} = %v in enforce mode, want 0", got)
	}
	for result, want := range map[string]float64{"allowed": 3, "denied": 3, "error": 0} {
		if got := value(dur, map[string]string{"result": result}); got != want {
			t.Errorf("keyauthz_check_duration_seconds{result=%q} count %v, want %v", result, got, want)
		}
		if got := value(checks, map[string]string{"result": result}); got != want {
			t.Errorf("keyauthz_checks_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	// The local limiter is not timed (its time is the Check's); the family is there.
	if got := value(family(t, fams, "keyauthz_ratelimit_duration_seconds", hist, "result"), nil); got != 0 {
		t.Errorf("keyauthz_ratelimit_duration_seconds count %v with the local limiter, want 0", got)
	}

	reads := family(t, fams, "keyauthz_store_read_duration_seconds", hist, "result")
	storeReads := value(family(t, fams, "keyauthz_cache_store_reads_total", counter), nil)
	if got := value(reads, nil); got != storeReads || got < 2 {
		t.Errorf("keyauthz_store_read_duration_seconds count %v, keyauthz_cache_store_reads_total %v: want equal, at least 2 (live and deleted key)", got, storeReads)
	}
	if got := value(reads, map[string]string{"result": "found"}); got < 1 {
		t.Errorf("keyauthz_store_read_duration_seconds{result=found} count %v, want at least 1", got)
	}
	if got := value(reads, map[string]string{"result": "error"}); got != 0 {
		t.Errorf("keyauthz_store_read_duration_seconds{result=error} count %v, want 0", got)
	}

	hits := value(family(t, fams, "keyauthz_cache_hits_total", counter), nil)
	lookups := value(family(t, fams, "keyauthz_cache_lookups_total", counter), nil)
	neg := value(family(t, fams, "keyauthz_cache_negative_hits_total", counter), nil)
	misses := value(family(t, fams, "keyauthz_cache_misses_total", counter), nil)
	if lookups != hits+neg+misses || hits < 2 || lookups < 4 {
		t.Errorf("cache: %v lookups, %v hits, %v negative hits, %v misses: want lookups = the sum, at least 2 hits of 4 lookups", lookups, hits, neg, misses)
	}

	lag := value(family(t, fams, "keyauthz_change_feed_lag_seconds", gauge), nil)
	if lag < 0 || lag > (cfg.Store.FollowInterval+5*time.Second).Seconds() {
		t.Errorf("keyauthz_change_feed_lag_seconds = %v, want between 0 and the poll interval (plus slack)", lag)
	}

	reqs := family(t, fams, "keyauthz_admin_requests_total", counter, "code", "route")
	adur := family(t, fams, "keyauthz_admin_request_duration_seconds", hist, "route")
	const (
		keysRoute = "/v1/workspaces/{ws}/api-keys"
		keyRoute  = keysRoute + "/{id}"
	)
	for _, c := range []struct {
		route, code string
		n           float64
	}{
		{"POST " + keysRoute, "201", 2},
		{"GET " + keyRoute, "200", 1},
		{"GET " + keyRoute, "404", 1},
		{"DELETE " + keyRoute, "204", 1},
		{"GET " + keysRoute, "401", 1},
		{"unmatched", "404", 1},
	} {
		if got := value(reqs, map[string]string{"route": c.route, "code": c.code}); got != c.n {
			t.Errorf("keyauthz_admin_requests_total{route=%q,code=%q} = %v, want %v", c.route, c.code, got, c.n)
		}
	}
	if total, timed := value(reqs, nil), value(adur, nil); total != 7 || timed != total {
		t.Errorf("admin requests: %v counted, %v timed, want 7 each", total, timed)
	}
	routes := map[string]bool{"unmatched": true}
	for _, rt := range a.admin.Routes() {
		routes[rt] = true
	}
	for _, f := range []*dto.MetricFamily{reqs, adur} {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && !routes[l.GetValue()] {
					t.Errorf("%s: route %q is not a route pattern", f.GetName(), l.GetValue())
				}
			}
		}
	}

	// No label value anywhere holds a key id, a secret, a workspace or a raw path.
	secrets := []string{live.ID, live.Key, gone.ID, gone.Key, "acme", "key_nosuchkey", "not-a-key", token, "/v1/nowhere"}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				for _, s := range secrets {
					if strings.Contains(l.GetValue(), s) {
						t.Errorf("%s: label %s=%q holds %q", name, l.GetName(), l.GetValue(), s)
					}
				}
			}
		}
	}
}

// TestMetricsLimiterDuration times calls to a limiter that is not in-process:
// Redis, here unreachable, so the one call fails and the Check answers 503
// (rate_limit.on_error: deny).
func TestMetricsLimiterDuration(t *testing.T) {
	cfg := testConfig(t)
	cfg.RateLimit.Backend = config.BackendRedis
	cfg.RateLimit.Redis.Addrs = []string{testenv.FreeAddr(t)} // nothing listens
	a := startApp(t, cfg)
	secret := newSecret(t, a)
	if c := check(t, dialGRPC(t, a.GRPCAddr()), map[string]string{"x-api-key": secret}); c != http.StatusServiceUnavailable {
		t.Fatalf("Check with Redis down: %d, want 503", c)
	}
	fams := scrape(t, a)
	lim := family(t, fams, "keyauthz_ratelimit_duration_seconds", dto.MetricType_HISTOGRAM, "result")
	if ok, failed := value(lim, map[string]string{"result": "ok"}), value(lim, map[string]string{"result": "error"}); ok != 0 || failed != 1 {
		t.Errorf("keyauthz_ratelimit_duration_seconds: %v ok, %v error, want 0 and 1", ok, failed)
	}
	dur := family(t, fams, "keyauthz_check_duration_seconds", dto.MetricType_HISTOGRAM, "result")
	if got := value(dur, map[string]string{"result": "denied"}); got != 1 {
		t.Errorf("keyauthz_check_duration_seconds{result=denied} count %v, want 1", got)
	}
}
