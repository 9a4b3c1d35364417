//go:build e2e

package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// revokeWithin is how soon a refreshed or deleted key must stop working through Envoy.
const revokeWithin = time.Second

// TestSidecar runs the acceptance checks through envoy/sidecar.yaml. Subtests run
// in parallel on one stack; each uses its own keys and tags its requests.
func TestSidecar(t *testing.T) {
	s := newSidecar(t, false)

	t.Run("no key is 401", func(t *testing.T) {
		t.Parallel()
		wantInvalid(t, s.get(t, "/v1/things"), s.app)
	})

	t.Run("unknown checksum-broken and malformed keys are 401", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		valid := s.kz.CreateKey(t, ws, "checksum")
		for _, k := range []string{unknownKey(t), breakChecksum(valid.Secret), "not-a-key", "kz_short"} {
			wantInvalid(t, s.get(t, "/v1/things", "X-API-KEY", k), s.app)
		}
		// The unbroken key works, so the 401 above was the checksum.
		wantStatus(t, s.get(t, "/v1/things", "X-API-KEY", valid.Secret), http.StatusOK)
	})

	t.Run("expired key is 401", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "expiring", "--expires-in", "2s")
		if k.ExpiresAt == nil {
			t.Fatalf("keys create --expires-in 2s: no expires_at in the JSON")
		}
		// Before expiry the key works. The check happened before the reply came
		// back, so it was surely before expiry if the reply was.
		r := s.get(t, "/v1/things", "X-API-KEY", k.Secret)
		if time.Now().Before(k.ExpiresAt.Add(-200 * time.Millisecond)) {
			wantStatus(t, r, http.StatusOK)
		} else {
			t.Logf("the CLI took too long to check the key before it expired")
		}
		wait := time.Until(*k.ExpiresAt) + 3*time.Second
		wantInvalid(t, s.eventually(t, wait, http.StatusUnauthorized, "/v1/things", "X-API-KEY", k.Secret))
	})

	t.Run("valid key reaches the app with identity and rate-limit headers", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "valid")
		rem := wantReachesApp(t, s, k)
		r := s.get(t, "/v1/things", "X-API-KEY", k.Secret)
		wantStatus(t, r, http.StatusOK)
		if rem2 := wantRateHeaders(t, r, 240); rem2 >= rem {
			t.Errorf("x-ratelimit-remaining went %d → %d, want it to fall", rem, rem2)
		}
	})

	t.Run("identity headers from the client are overwritten", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "spoof")
		r := s.get(t, "/v1/things", "X-API-KEY", k.Secret,
			"X-Keyauthz-Workspace", "ws-evil", "X-Keyauthz-Key-Id", "key_evil")
		wantStatus(t, r, http.StatusOK)
		wantIdentity(t, only(t, s.app), k)
	})

	t.Run("both header names work as clients type them", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "names")
		for _, h := range []string{"X-API-KEY", "Salad-Api-Key", "x-api-key", "SALAD-API-KEY"} {
			t.Run(h, func(t *testing.T) {
				r := s.get(t, "/v1/things", h, k.Secret)
				wantStatus(t, r, http.StatusOK)
				wantRateHeaders(t, r, 240)
				wantIdentity(t, only(t, s.app), k)
			})
		}
	})

	t.Run("two different keys are 400", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		a := s.kz.CreateKey(t, ws, "conflict-a")
		b := s.kz.CreateKey(t, ws, "conflict-b")
		r := s.get(t, "/v1/things", "X-API-KEY", a.Secret, "Salad-Api-Key", b.Secret)
		wantJSONDeny(t, r, http.StatusBadRequest, s.app)
		// The same key in both headers is one key.
		wantStatus(t, s.get(t, "/v1/same", "X-API-KEY", a.Secret, "Salad-Api-Key", a.Secret), http.StatusOK)
		wantIdentity(t, only(t, s.app), a) // neither header reaches the app
	})

	t.Run("another workspace's organization is 403", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "org-a", "owner")
		wantJSONDeny(t, s.get(t, "/organizations/org-b/projects", "X-API-KEY", k.Secret), http.StatusForbidden, s.app)
		wantJSONDeny(t, s.get(t, "/organizations/org-b", "X-API-KEY", k.Secret), http.StatusForbidden, s.app)
		// normalize_path / merge_slashes: the path keyauthz checks is the one routed.
		wantJSONDeny(t, s.get(t, "/organizations/org-a/../org-b/projects", "X-API-KEY", k.Secret), http.StatusForbidden, s.app)
		wantJSONDeny(t, s.get(t, "//organizations//org-b/projects", "X-API-KEY", k.Secret), http.StatusForbidden, s.app)
		r := s.get(t, "/organizations/org-a/projects", "X-API-KEY", k.Secret)
		wantStatus(t, r, http.StatusOK)
		wantIdentity(t, only(t, s.app), k)
	})

	t.Run("granted organization is allowed", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "org-c", "granted", "--grant", "org-d")
		wantStatus(t, s.get(t, "/organizations/org-d/projects", "X-API-KEY", k.Secret), http.StatusOK)
		wantJSONDeny(t, s.get(t, "/organizations/org-e/projects", "X-API-KEY", k.Secret), http.StatusForbidden)
	})

	t.Run("over the rate limit is 429 and other keys are unaffected", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		const n = 5
		k := s.kz.CreateKey(t, ws, "limited", "--rate-limit", strconv.Itoa(n)+"/m")
		other := s.kz.CreateKey(t, ws, "unlimited")
		for i := 1; i <= n; i++ {
			r := s.get(t, "/v1/limited", "X-API-KEY", k.Secret)
			wantStatus(t, r, http.StatusOK)
			if rem := wantRateHeaders(t, r, n); rem != n-i {
				t.Errorf("request %d: x-ratelimit-remaining %d, want %d", i, rem, n-i)
			}
		}
		r := s.get(t, "/v1/limited", "X-API-KEY", k.Secret)
		wantJSONDeny(t, r, http.StatusTooManyRequests)
		if got := len(seen(t, s.app)); got != n {
			t.Errorf("app received %d requests, want %d (the 429 must not reach it)", got, n)
		}
		ra, err := strconv.Atoi(r.header.Get("retry-after"))
		if err != nil || ra < 1 || ra > 60 {
			t.Errorf("retry-after %q, want 1..60 seconds", r.header.Get("retry-after"))
		}
		if rem := wantRateHeaders(t, r, n); rem != 0 {
			t.Errorf("429 x-ratelimit-remaining %d, want 0", rem)
		}
		for i := 0; i < 3; i++ {
			r := s.get(t, "/v1/other", "X-API-KEY", other.Secret)
			wantStatus(t, r, http.StatusOK)
			wantRateHeaders(t, r, 240)
		}
	})

	t.Run("refresh revokes the old secret within 1s", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		old := s.kz.CreateKey(t, ws, "rotating")
		wantStatus(t, s.get(t, "/v1/things", "X-API-KEY", old.Secret), http.StatusOK) // now cached
		fresh := s.kz.RefreshKey(t, old.ID, "--grace", "0s")
		if fresh.ID != old.ID || fresh.Secret == old.Secret {
			t.Fatalf("refresh: id %s → %s, secret changed: %v", old.ID, fresh.ID, fresh.Secret != old.Secret)
		}
		wantInvalid(t, s.eventually(t, revokeWithin, http.StatusUnauthorized, "/v1/things", "X-API-KEY", old.Secret))
		r := s.get(t, "/v1/things", "Salad-Api-Key", fresh.Secret)
		wantStatus(t, r, http.StatusOK)
		wantIdentity(t, seen(t, s.app)[len(seen(t, s.app))-1], fresh)
	})

	t.Run("delete revokes within 1s", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "doomed")
		wantStatus(t, s.get(t, "/v1/things", "X-API-KEY", k.Secret), http.StatusOK) // now cached
		s.kz.DeleteKey(t, k.ID)
		wantInvalid(t, s.eventually(t, revokeWithin, http.StatusUnauthorized, "/v1/things", "X-API-KEY", k.Secret))
	})

	t.Run("healthz route needs no key", func(t *testing.T) {
		t.Parallel()
		r := s.get(t, "/healthz", "X-Keyauthz-Workspace", "ws-evil")
		wantStatus(t, r, http.StatusOK)
		if v := only(t, s.app).Header.Values(hWorkspace); len(v) != 0 {
			t.Errorf("app saw forged %s = %q on the unauthenticated route", hWorkspace, v)
		}
	})

	t.Run("access log carries the key id", func(t *testing.T) {
		t.Parallel()
		ws := workspace(t)
		k := s.kz.CreateKey(t, ws, "logged")
		wantStatus(t, s.get(t, "/v1/logged", "X-API-KEY", k.Secret), http.StatusOK)
		testenv.Eventually(t, 5*time.Second, "access log line with the key id", func() error {
			return logHas(s.envoy.Log, "key_id="+k.ID+" workspace="+ws)
		})
	})
}

// TestSidecarKeyauthzDown: with keyauthz stopped Envoy fails closed with
// status_on_error, /healthz still works, and a restarted keyauthz serves again
// without restarting Envoy.
func TestSidecarKeyauthzDown(t *testing.T) {
	s := newSidecar(t, false)
	// Envoy's gRPC health check (service envoy.service.auth.v3.Authorization) passed.
	if got := s.envoy.HealthFlags(t, "keyauthz"); len(got) != 1 || got[0] != "healthy" {
		t.Errorf("keyauthz host health in Envoy: %q, want [healthy]", got)
	}
	k := s.kz.CreateKey(t, "ws-down", "survivor")
	wantStatus(t, s.get(t, "/v1/things", "X-API-KEY", k.Secret), http.StatusOK)
	before := len(seen(t, s.app))

	errors := func() int64 {
		return s.envoy.Stats(t, "ext_authz.keyauthz.error")["http.ingress.ext_authz.keyauthz.error"]
	}
	errBefore := errors()
	s.kz.Stop(t)
	for _, h := range []string{"X-API-KEY", "Salad-Api-Key"} {
		r := s.get(t, "/v1/things", h, k.Secret)
		wantStatus(t, r, http.StatusServiceUnavailable) // status_on_error in envoy/sidecar.yaml
		if r.fromUpstream("app") {
			t.Errorf("503 came from the app")
		}
	}
	wantStatus(t, s.get(t, "/v1/things"), http.StatusServiceUnavailable)
	if got := len(seen(t, s.app)); got != before {
		t.Errorf("app received %d requests while keyauthz was down, want 0", got-before)
	}
	if got := errors() - errBefore; got != 3 {
		t.Errorf("ext_authz error counter grew by %d, want 3 (the 503s were Envoy's status_on_error)", got)
	}
	r := s.get(t, "/healthz")
	wantStatus(t, r, http.StatusOK)
	if !r.fromUpstream("app") {
		t.Errorf("/healthz did not reach the app: %s", r)
	}

	s.kz.Start(t)
	r = s.eventually(t, 10*time.Second, http.StatusOK, "/v1/things", "X-API-KEY", k.Secret)
	wantRateHeaders(t, r, 240)
	wantInvalid(t, s.get(t, "/v1/things"))
}

// TestSidecarUnixSocket points envoy/sidecar.yaml's keyauthz endpoint at a unix
// socket (pipe address), as envoy/README.md describes.
func TestSidecarUnixSocket(t *testing.T) {
	s := newSidecar(t, true)
	if !strings.HasPrefix(s.kz.GRPCAddr, "unix://") {
		t.Fatalf("keyauthz gRPC address %q, want unix://", s.kz.GRPCAddr)
	}
	k := s.kz.CreateKey(t, "ws-unix", "unix")
	r := s.get(t, "/v1/things", "X-API-KEY", k.Secret)
	wantStatus(t, r, http.StatusOK)
	wantRateHeaders(t, r, 240)
	wantIdentity(t, only(t, s.app), k)
	wantInvalid(t, s.get(t, "/v1/things", "X-API-KEY", unknownKey(t)))
}

// wantReachesApp sends GET /v1/things?x=1 with k (and extra request headers)
// through s and asserts the seed contract's allow: 200 from the app, the
// rate-limit headers to the client, the app the only upstream to see it, with
// k's identity and the path unchanged. It returns x-ratelimit-remaining.
func wantReachesApp(t *testing.T, s *stack, k testenv.Key, extra ...string) int {
	t.Helper()
	r := s.get(t, "/v1/things?x=1", append([]string{"X-API-KEY", k.Secret}, extra...)...)
	wantStatus(t, r, http.StatusOK)
	if !r.fromUpstream("app") {
		t.Errorf("200 did not come from the app: %s", r)
	}
	rem := wantRateHeaders(t, r, 240)
	got := only(t, s.app)
	wantIdentity(t, got, k)
	if got.Path != "/v1/things?x=1" {
		t.Errorf("app saw path %q, want /v1/things?x=1", got.Path)
	}
	return rem
}
