package extauthz

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

// checksTotal returns keyauthz_checks_total{result, reason, mode="enforce"} from reg.
func checksTotal(t *testing.T, reg *prometheus.Registry, result, reason string) float64 {
	t.Helper()
	return checksTotalMode(t, reg, modeLabels[modeEnforce], result, reason)
}

// checksTotalMode returns keyauthz_checks_total{result, reason, mode} from reg; -1 when absent.
func checksTotalMode(t *testing.T, reg *prometheus.Registry, mode, result, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keyauthz_checks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if got["result"] == result && got["reason"] == reason && got["mode"] == mode {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// TestLimiterOutageIs503 checks that a limiter outage under on_error: deny
// answers 503 "Rate limiter unavailable" with Retry-After and no rate-limit
// headers, in both body formats, counted as denied/limiter_unavailable (not
// rate_limited), while a real limit stays a 429.
func TestLimiterOutageIs503(t *testing.T) {
	for _, body := range []config.Body{config.BodyJSON, config.BodyProblem} {
		t.Run(body.String(), func(t *testing.T) {
			fx := newFixture(t, failingLimiter{allow: false, err: ratelimit.ErrUnavailable}, func(o *Options) { o.Body = body })
			reg := prometheus.NewRegistry()
			m, err := NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			fx.svc.metrics = m
			valid, _ := fx.add(t, "acme", nil)
			resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
			o := result(t, resp, err)
			if o.code != 503 {
				t.Fatalf("on_error deny, limiter down: %d, want 503", o.code)
			}
			if o.headers["retry-after"] != "1" {
				t.Fatalf("retry-after %q, want 1", o.headers["retry-after"])
			}
			if _, ok := o.headers["x-ratelimit-limit"]; ok {
				t.Fatalf("outage answer carries rate-limit headers: %v", o.headers)
			}
			want := `{"message":"Rate limiter unavailable"}`
			ct := "application/json"
			if body == config.BodyProblem {
				want = `{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"Rate limiter unavailable"}`
				ct = "application/problem+json"
			}
			if o.body != want || o.headers["content-type"] != ct {
				t.Fatalf("body %s (%s), want %s (%s)", o.body, o.headers["content-type"], want, ct)
			}
			if strings.Contains(o.body, valid) {
				t.Fatal("body leaks the key")
			}
			if got := checksTotal(t, reg, "denied", "limiter_unavailable"); got != 1 {
				t.Fatalf("checks_total{denied,limiter_unavailable} = %v, want 1", got)
			}
			if got := checksTotal(t, reg, "denied", "rate_limited"); got != 0 {
				t.Fatalf("checks_total{denied,rate_limited} = %v, want 0", got)
			}
		})
	}
	// A real limit is still a 429.
	fx := newFixture(t, failingLimiter{allow: false}, nil)
	valid, _ := fx.add(t, "acme", nil)
	resp, err := fx.svc.Check(context.Background(), req("/", map[string]string{"x-api-key": valid}, nil))
	if o := result(t, resp, err); o.code != 429 {
		t.Fatalf("limited: %d, want 429", o.code)
	}
}
