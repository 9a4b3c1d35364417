//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// httpAuthzConfig turns on keyauthz's HTTP authorization listener on port
// (path_prefix: /authz, as envoy/http-service.yaml sends) next to the sidecar's ownership.
func httpAuthzConfig(port int) string {
	return sidecarConfig + fmt.Sprintf("http_authz:\n  listen: \"127.0.0.1:%d\"\n  path_prefix: /authz\n", port)
}

// newNginx runs envoy/nginx/nginx.conf in front of one app, keyauthz answering
// its auth_request on http_authz.
func newNginx(t *testing.T) *stack {
	port := testenv.FreePort(t)
	s := &stack{conf: "nginx/nginx.conf"}
	s.kz = testenv.StartKeyauthz(t, testenv.KeyauthzOptions{Extra: httpAuthzConfig(port)})
	s.app = testenv.StartUpstream(t, "app")
	n := testenv.StartNginx(t, testenv.NginxOptions{
		Config: s.conf,
		Ports:  map[int]int{testenv.DefaultHTTPAuthzPort: port, testenv.DefaultAppPort: s.app.Port},
	})
	s.url = n.URL
	s.client = newClient(t)
	return s
}

// newHTTPService runs envoy/http-service.yaml: Envoy's ext_authz over HTTP.
func newHTTPService(t *testing.T) *stack {
	port := testenv.FreePort(t)
	s := &stack{conf: "http-service.yaml"}
	s.kz = testenv.StartKeyauthz(t, testenv.KeyauthzOptions{Extra: httpAuthzConfig(port)})
	_, hp, _ := splitPort(t, s.kz.HTTPAddr)
	s.app = testenv.StartUpstream(t, "app")
	s.envoy = testenv.StartEnvoy(t, testenv.EnvoyOptions{
		Config: s.conf,
		Ports:  map[int]int{testenv.DefaultHTTPAuthzPort: port, 9002: hp, testenv.DefaultAppPort: s.app.Port},
	})
	s.client = newClient(t)
	return s
}

func splitPort(t *testing.T, addr string) (string, int, error) {
	t.Helper()
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			p, err := strconv.Atoi(addr[i+1:])
			if err != nil {
				t.Fatalf("address %q: %v", addr, err)
			}
			return addr[:i], p, nil
		}
	}
	t.Fatalf("address %q has no port", addr)
	return "", 0, nil
}

// TestNginx runs the seed contract through real nginx (envoy/nginx/nginx.conf).
func TestNginx(t *testing.T) {
	s := newNginx(t)
	httpContract(t, s)
	t.Run("unnormalized paths are refused before keyauthz", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "org-n", "dots")
		for _, p := range []string{"/organizations/org-n/../org-x/projects", "//organizations/org-x", "/organizations/org-n%2F..%2Forg-x"} {
			wantStatus(t, s.get(t, p, "X-API-KEY", k.Secret), http.StatusBadRequest)
		}
		if n := len(seen(t, s.app)); n != 0 {
			t.Errorf("app received %d requests", n)
		}
	})
}

// TestNginxKeyauthzDown: with keyauthz stopped nginx fails closed with a JSON
// 503, and /healthz still reaches the app.
func TestNginxKeyauthzDown(t *testing.T) {
	s := newNginx(t)
	k := s.kz.CreateKey(t, "ws-ngdown", "down")
	wantStatus(t, s.get(t, "/v1/things", "X-API-KEY", k.Secret), http.StatusOK)
	s.kz.Stop(t)
	r := s.get(t, "/v1/things", "X-API-KEY", k.Secret)
	wantJSONDeny(t, r, http.StatusServiceUnavailable)
	if r.body != `{"message":"Authorization unavailable"}` {
		t.Errorf("503 body %q", r.body)
	}
	wantStatus(t, s.get(t, "/healthz"), http.StatusOK)
	if n := len(seen(t, s.app)); n != 2 {
		t.Errorf("app received %d requests, want the allowed one and /healthz", n)
	}
}

// TestHTTPService runs the seed contract through Envoy's ext_authz http_service
// (envoy/http-service.yaml).
func TestHTTPService(t *testing.T) {
	s := newHTTPService(t)
	if got := s.envoy.HealthFlags(t, "keyauthz"); len(got) != 1 || got[0] != "healthy" {
		t.Errorf("keyauthz host health in Envoy: %q, want [healthy] (http_health_check /readyz)", got)
	}
	httpContract(t, s)
}

// httpContract is the seed contract through a front that asks keyauthz over HTTP.
func httpContract(t *testing.T, s *stack) {
	t.Run("no key is 401 with the JSON body and WWW-Authenticate", func(t *testing.T) {
		t.Parallel()
		wantInvalid(t, s.get(t, "/v1/things"), s.app)
		wantInvalid(t, s.get(t, "/v1/things", "X-API-KEY", unknownKey(t)), s.app)
		if w := s.get(t, "/v1/things").header.Values("www-authenticate"); len(w) != 1 || w[0] != `ApiKey realm="keyauthz"` {
			t.Errorf("www-authenticate %q, want exactly one ApiKey realm=\"keyauthz\"", w)
		}
	})

	t.Run("valid key reaches the app with identity, without the key; client sees rate-limit headers", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "valid")
		rem := wantReachesApp(t, s, k, "X-Keyauthz-Workspace", "ws-evil", "X-Keyauthz-Key-Id", "key_evil")
		r := s.get(t, "/v1/other", "Salad-Api-Key", k.Secret)
		wantStatus(t, r, http.StatusOK)
		if rem2 := wantRateHeaders(t, r, 240); rem2 >= rem {
			t.Errorf("x-ratelimit-remaining went %d → %d, want it to fall", rem, rem2)
		}
		wantIdentity(t, seen(t, s.app)[1], k)
	})

	t.Run("another workspace's organization is 403", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "org-h", "owner")
		wantJSONDeny(t, s.get(t, "/organizations/org-i/projects", "X-API-KEY", k.Secret), http.StatusForbidden, s.app)
		r := s.get(t, "/organizations/org-i/projects", "X-API-KEY", k.Secret)
		if r.body != `{"message":"API key is not allowed to access this resource"}` {
			t.Errorf("403 body %q", r.body)
		}
		wantStatus(t, s.get(t, "/organizations/org-h/projects", "X-API-KEY", k.Secret), http.StatusOK)
	})

	t.Run("two different keys are 400", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		a := s.kz.CreateKey(t, ws, "conflict-a")
		b := s.kz.CreateKey(t, ws, "conflict-b")
		wantJSONDeny(t, s.get(t, "/v1/things", "X-API-KEY", a.Secret, "Salad-Api-Key", b.Secret), http.StatusBadRequest, s.app)
	})

	t.Run("over the rate limit is 429 with Retry-After and the JSON body", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		const n = 3
		k := s.kz.CreateKey(t, ws, "limited", "--rate-limit", strconv.Itoa(n)+"/m")
		for i := 1; i <= n; i++ {
			r := s.get(t, "/v1/limited", "X-API-KEY", k.Secret)
			wantStatus(t, r, http.StatusOK)
			if rem := wantRateHeaders(t, r, n); rem != n-i {
				t.Errorf("request %d: remaining %d, want %d", i, rem, n-i)
			}
		}
		r := s.get(t, "/v1/limited", "X-API-KEY", k.Secret)
		wantJSONDeny(t, r, http.StatusTooManyRequests)
		if r.body != `{"message":"Rate limit exceeded"}` {
			t.Errorf("429 body %q", r.body)
		}
		if v := r.header.Values("retry-after"); len(v) != 1 {
			t.Errorf("retry-after %q, want one value", v)
		} else if ra, err := strconv.Atoi(v[0]); err != nil || ra < 1 || ra > 60 {
			t.Errorf("retry-after %q, want 1..60 seconds", v[0])
		}
		if rem := wantRateHeaders(t, r, n); rem != 0 {
			t.Errorf("429 x-ratelimit-remaining %d, want 0", rem)
		}
		if got := len(seen(t, s.app)); got != n {
			t.Errorf("app received %d requests, want %d", got, n)
		}
		if v := r.header.Values("x-keyauthz-body"); len(v) != 0 {
			t.Errorf("client saw x-keyauthz-body %q", v)
		}
	})
}
