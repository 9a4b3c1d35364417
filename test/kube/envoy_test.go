//go:build e2e

package kube

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// TestEnvoyConfigsValidate runs `envoy --mode validate` on every Envoy config a
// ConfigMap of the manifests carries, as it is shipped (no rewriting), and on a
// copy with an unknown field, which Envoy must reject (so the check has teeth).
func TestEnvoyConfigsValidate(t *testing.T) {
	bin := testenv.EnvoyBin(t)
	cfgs := envoyConfigs(t)
	if len(cfgs) < 2 {
		t.Fatalf("found %d Envoy configs in ConfigMaps, want the sidecar's and the shared service's", len(cfgs))
	}
	validate := func(name, cfg string) (string, error) {
		f := filepath.Join(t.TempDir(), "envoy.yaml")
		if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "--mode", "validate", "-c", f, "--log-level", "warn").CombinedOutput()
		return string(out), err
	}
	for name, cfg := range cfgs {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			if out, err := validate(name, cfg); err != nil {
				t.Errorf("envoy --mode validate: %v\n%s", err, out)
			}
			bad := strings.Replace(cfg, "stat_prefix: ingress", "stat_prefix: ingress\n          keyauthz_unknown_field: 1", 1)
			if bad == cfg {
				t.Fatalf("no stat_prefix: ingress to mutate")
			}
			if out, err := validate(name, bad); err == nil {
				t.Errorf("envoy accepted an unknown field:\n%s", out)
			}
		})
	}
}

// configMaps returns the data of every ConfigMap in the manifest file, by name.
func configMaps(t *testing.T, file string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, d := range manifests(t) {
		if d.File != file || d.Kind != "v1/ConfigMap" {
			continue
		}
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict(d.YAML, &cm); err != nil {
			t.Fatal(err)
		}
		out[cm.Name] = cm.Data
	}
	return out
}

// envoyConfigs returns every envoy.yaml a ConfigMap of the manifests carries,
// by "file ConfigMap-name".
func envoyConfigs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	seen := map[string]bool{}
	for _, d := range manifests(t) {
		if seen[d.File] {
			continue
		}
		seen[d.File] = true
		for name, data := range configMaps(t, d.File) {
			if s, ok := data["envoy.yaml"]; ok {
				out[d.File+" "+name] = s
			}
		}
	}
	return out
}
