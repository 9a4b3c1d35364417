package kube

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// TestSidecarEnvoyConfigIsSidecarYAML keeps the sidecar pod's Envoy config the
// same as envoy/sidecar.yaml (which test/e2e runs on both Envoy releases) but
// for the two documented differences: keyauthz's endpoint is the unix socket,
// and a second listener passes kubelet's gRPC health probe to keyauthz.
func TestSidecarEnvoyConfigIsSidecarYAML(t *testing.T) {
	root := testenv.RepoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "envoy", "sidecar.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	var pod map[string]any
	for _, d := range manifests(t) {
		if d.File != filepath.Join("envoy", "kubernetes", "sidecar.yaml") || d.Kind != "v1/ConfigMap" {
			continue
		}
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict(d.YAML, &cm); err != nil {
			t.Fatal(err)
		}
		if s, ok := cm.Data["envoy.yaml"]; ok {
			if err := yaml.Unmarshal([]byte(s), &pod); err != nil {
				t.Fatal(err)
			}
		}
	}
	if pod == nil {
		t.Fatal("envoy/kubernetes/sidecar.yaml: no ConfigMap with envoy.yaml")
	}
	sr := pod["static_resources"].(map[string]any)
	var listeners []any
	health := false
	for _, l := range sr["listeners"].([]any) {
		if l.(map[string]any)["name"] == "keyauthz-health" {
			health = true
			continue
		}
		listeners = append(listeners, l)
	}
	if !health {
		t.Error("no keyauthz-health listener in the pod's Envoy config")
	}
	sr["listeners"] = listeners
	socket := false
	for _, c := range sr["clusters"].([]any) {
		cm := c.(map[string]any)
		if cm["name"] != "keyauthz" {
			continue
		}
		ep := cm["load_assignment"].(map[string]any)["endpoints"].([]any)[0].(map[string]any)["lb_endpoints"].([]any)[0].(map[string]any)["endpoint"].(map[string]any)
		addr := ep["address"].(map[string]any)
		if p, ok := addr["pipe"].(map[string]any); ok && p["path"] == "/run/keyauthz/grpc.sock" {
			socket = true
		}
		ep["address"] = map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": float64(testenv.DefaultKeyauthzPort)}}
	}
	if !socket {
		t.Error("the pod's keyauthz cluster is not pipe /run/keyauthz/grpc.sock")
	}
	if !reflect.DeepEqual(pod, want) {
		a, _ := json.MarshalIndent(pod, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("the pod's Envoy config drifted from envoy/sidecar.yaml beyond the socket and the health listener:\npod:\n%s\nenvoy/sidecar.yaml:\n%s", a, w)
	}
}
