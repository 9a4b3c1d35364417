//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// TestFrontProxy runs envoy/front-proxy.yaml: per-route context_extensions drive
// keyauthz's ownership check (keyauthz itself has no path templates here).
func TestFrontProxy(t *testing.T) {
	s := newFrontProxy(t)

	t.Run("resource_segment names the organization", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "acme", "fp-owner")
		r := s.get(t, "/v1/organizations/acme/projects", "X-API-KEY", k.Secret)
		wantStatus(t, r, http.StatusOK)
		if !r.fromUpstream("api") {
			t.Errorf("not from the api service: %s", r)
		}
		wantRateHeaders(t, r, 240)
		wantIdentity(t, only(t, s.app), k)
		for _, p := range []string{
			"/v1/organizations/globex/projects",
			"/v1/organizations/globex",
			"/v1/organizations/acme/../globex/projects",
			"/v1/organizations//globex/projects",
		} {
			wantJSONDeny(t, s.get(t, p, "Salad-Api-Key", k.Secret), http.StatusForbidden)
		}
		// An escaped slash is not a way around the check either: Envoy redirects
		// to the unescaped path (path_with_escaped_slashes_action) and the
		// request itself reaches nobody.
		r = s.get(t, "/v1/organizations/acme%2F..%2Fglobex/projects", "X-API-KEY", k.Secret)
		wantStatus(t, r, http.StatusTemporaryRedirect)
		if loc := r.header.Get("location"); loc != "/v1/organizations/globex/projects" {
			t.Errorf("escaped-slash redirect to %q, want the normalized path (which is 403 above)", loc)
		}
		if n := len(seen(t, s.app)); n != 1 {
			t.Errorf("api received %d requests, want only the allowed one", n)
		}
	})

	t.Run("granted organization is allowed", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "initech", "fp-granted", "--grant", "globex")
		wantStatus(t, s.get(t, "/v1/organizations/globex/projects", "X-API-KEY", k.Secret), http.StatusOK)
		wantStatus(t, s.get(t, "/v1/organizations/initech/projects", "X-API-KEY", k.Secret), http.StatusOK)
		wantJSONDeny(t, s.get(t, "/v1/organizations/umbrella/projects", "X-API-KEY", k.Secret), http.StatusForbidden)
	})

	t.Run("literal resource on a route", func(t *testing.T) {
		t.Parallel()
		outsider := s.kz.CreateKey(t, "acme", "fp-outsider")
		insider := s.kz.CreateKey(t, "internal", "fp-insider")
		granted := s.kz.CreateKey(t, "acme", "fp-ops", "--grant", "internal")
		wantJSONDeny(t, s.get(t, "/v1/internal/jobs", "X-API-KEY", outsider.Secret), http.StatusForbidden, s.app)
		wantStatus(t, s.get(t, "/v1/internal/jobs", "X-API-KEY", insider.Secret), http.StatusOK)
		wantStatus(t, s.get(t, "/v1/internal/jobs", "X-API-KEY", granted.Secret), http.StatusOK)
	})

	t.Run("routes without a resource need any valid key", func(t *testing.T) {
		t.Parallel()
		k := s.kz.CreateKey(t, "acme", "fp-any")
		wantInvalid(t, s.get(t, "/v1/me"), s.app)
		wantInvalid(t, s.get(t, "/v1/me", "X-API-KEY", unknownKey(t)), s.app)
		r := s.get(t, "/v1/me", "X-API-KEY", k.Secret)
		wantStatus(t, r, http.StatusOK)
		wantIdentity(t, only(t, s.app), k)
	})

	t.Run("public route bypasses auth and drops forged identity", func(t *testing.T) {
		t.Parallel()
		r := s.get(t, "/public/logo.svg", "X-Keyauthz-Workspace", "acme", "X-Keyauthz-Key-Id", "key_forged")
		wantStatus(t, r, http.StatusOK)
		if !r.fromUpstream("public") {
			t.Errorf("not from the public service: %s", r)
		}
		got := only(t, s.public)
		for _, h := range []string{hWorkspace, hKeyID} {
			if v := got.Header.Values(h); len(v) != 0 {
				t.Errorf("public service saw forged %s = %q", h, v)
			}
		}
		if n := len(seen(t, s.app)); n != 0 {
			t.Errorf("api received %d requests", n)
		}
	})

}

// TestFrontProxyKeyauthzDown: with keyauthz stopped the public route still works
// and the authorized routes fail closed.
func TestFrontProxyKeyauthzDown(t *testing.T) {
	s := newFrontProxy(t)
	k := s.kz.CreateKey(t, "acme", "fp-down")
	wantStatus(t, s.get(t, "/v1/organizations/acme/x", "X-API-KEY", k.Secret), http.StatusOK)
	s.kz.Stop(t)
	wantStatus(t, s.get(t, "/public/logo.svg"), http.StatusOK)
	for _, p := range []string{"/v1/organizations/acme/x", "/v1/internal/x", "/v1/me"} {
		wantStatus(t, s.get(t, p, "X-API-KEY", k.Secret), http.StatusServiceUnavailable)
	}
	if n := len(seen(t, s.app)); n != 1 {
		t.Errorf("api received %d requests, want only the one before the stop", n)
	}
}

// TestShippedConfigsValidate runs `envoy --mode validate` on the files under
// envoy/ exactly as users copy them.
func TestShippedConfigsValidate(t *testing.T) {
	bin := testenv.EnvoyBin(t)
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(t), "envoy", "*.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("envoy/*.yaml: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, err := exec.Command(bin, "--mode", "validate", "--disable-hot-restart", "-c", f).CombinedOutput()
			if err != nil {
				t.Fatalf("envoy --mode validate -c %s: %v\n%s", f, err, out)
			}
			if strings.Contains(strings.ToLower(string(out)), "deprecated") {
				t.Errorf("envoy warns about deprecated fields in %s:\n%s", f, out)
			}
		})
	}
}

// logHas reports whether the file contains s.
func logHas(path, s string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), s) {
		return fmt.Errorf("%s does not contain %q", filepath.Base(path), s)
	}
	return nil
}
