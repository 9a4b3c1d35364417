package kube

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	envoygateway "github.com/envoyproxy/gateway/api/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	securityv1beta1 "istio.io/api/security/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// manifestDirs are the directories under envoy/ whose YAML files are manifests.
var manifestDirs = []string{"kubernetes", "istio", "gateway"}

// doc is one YAML document of a manifest file.
type doc struct {
	File  string // path relative to the repository root
	Index int    // position in the file, from 0
	YAML  []byte
	Kind  string // apiVersion/kind, or "meshConfig" for Istio's mesh config snippet
	JSON  map[string]any
}

func (d doc) String() string { return fmt.Sprintf("%s[%d] %s", d.File, d.Index, d.Kind) }

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// manifests reads every document of every manifest file.
func manifests(t *testing.T) []doc {
	t.Helper()
	root := testenv.RepoRoot(t)
	var out []doc
	for _, dir := range manifestDirs {
		files, err := filepath.Glob(filepath.Join(root, "envoy", dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no manifests in envoy/%s (%v)", dir, err)
		}
		sort.Strings(files)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, f)
			for i, part := range docSep.Split(string(b), -1) {
				d, err := parseDoc(rel, i, []byte(part))
				if err != nil {
					t.Fatalf("%s[%d]: %v", rel, i, err)
				}
				if d != nil {
					out = append(out, *d)
				}
			}
		}
	}
	return out
}

// parseDoc reads a document's kind; nil for a document of comments only.
func parseDoc(file string, i int, b []byte) (*doc, error) {
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, nil
	}
	d := &doc{File: file, Index: i, YAML: b, JSON: m}
	if _, ok := m["meshConfig"]; ok {
		d.Kind = "meshConfig"
	} else {
		av, _ := m["apiVersion"].(string)
		k, _ := m["kind"].(string)
		if av == "" || k == "" {
			return nil, fmt.Errorf("no apiVersion and kind")
		}
		d.Kind = av + "/" + k
	}
	return d, nil
}

// decodeStrict decodes a manifest document (YAML or JSON) into its published
// Go type, failing on any field the type does not have.
func decodeStrict(kind string, b []byte) (any, error) {
	var obj any
	switch kind {
	case "v1/Namespace":
		obj = &corev1.Namespace{}
	case "v1/Secret":
		obj = &corev1.Secret{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "policy/v1/PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "gateway.envoyproxy.io/v1alpha1/SecurityPolicy":
		obj = &envoygateway.SecurityPolicy{}
	case "gateway.networking.k8s.io/v1beta1/ReferenceGrant":
		obj = &gatewayv1beta1.ReferenceGrant{}
	case "security.istio.io/v1/AuthorizationPolicy":
		// The client-go type checks the envelope; its spec's generated JSON
		// decoder allows unknown fields, so the spec is decoded again below
		// with protojson, which does not.
		ap := &istiosecurity.AuthorizationPolicy{}
		if err := yaml.UnmarshalStrict(b, ap); err != nil {
			return nil, err
		}
		spec, err := field(b, "spec")
		if err != nil {
			return nil, err
		}
		if err := protojson.Unmarshal(spec, &securityv1beta1.AuthorizationPolicy{}); err != nil {
			return nil, fmt.Errorf("spec: %w", err)
		}
		return ap, nil
	case "meshConfig":
		var top map[string]json.RawMessage
		if err := yaml.UnmarshalStrict(b, &top); err != nil {
			return nil, err
		}
		for k := range top {
			if k != "meshConfig" {
				return nil, fmt.Errorf("unknown top-level field %q: want meshConfig only", k)
			}
		}
		mc := &meshv1alpha1.MeshConfig{}
		if err := protojson.Unmarshal(top["meshConfig"], mc); err != nil {
			return nil, fmt.Errorf("meshConfig: %w", err)
		}
		return mc, nil
	default:
		return nil, fmt.Errorf("no Go type known for %s: add it to decodeStrict", kind)
	}
	if err := yaml.UnmarshalStrict(b, obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// field returns the JSON of a top-level field of a YAML document.
func field(b []byte, name string) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := yaml.Unmarshal(b, &top); err != nil {
		return nil, err
	}
	v, ok := top[name]
	if !ok {
		return nil, fmt.Errorf("no %s", name)
	}
	return v, nil
}

// TestManifestsDecodeStrictly decodes every document of every manifest into
// its published API type.
func TestManifestsDecodeStrictly(t *testing.T) {
	kinds := map[string]int{}
	for _, d := range manifests(t) {
		if _, err := decodeStrict(d.Kind, d.YAML); err != nil {
			t.Errorf("%s: %v", d, err)
		}
		kinds[d.Kind]++
	}
	// What the issue asks the manifests to hold.
	for _, k := range []string{"apps/v1/Deployment", "v1/Service", "v1/ConfigMap", "v1/Secret", "policy/v1/PodDisruptionBudget",
		"security.istio.io/v1/AuthorizationPolicy", "meshConfig", "gateway.envoyproxy.io/v1alpha1/SecurityPolicy"} {
		if kinds[k] == 0 {
			t.Errorf("no %s among the manifests", k)
		}
	}
}

// freeForm are fields whose values are maps with arbitrary keys: adding an
// unknown key there is not an error for any decoder.
var freeForm = map[string]bool{
	"labels": true, "annotations": true, "data": true, "stringData": true, "binaryData": true,
	"matchLabels": true, "requests": true, "limits": true,
}

// mutations returns copies of a document's JSON with one unknown field added at
// each object level (the top, spec, each container, …), each with its path.
func mutations(kind string, v any, path string) map[string]any {
	out := map[string]any{}
	switch x := v.(type) {
	case map[string]any:
		m := cloneMap(x)
		m["keyauthzUnknownField"] = true
		out[path] = m
		for k, child := range x {
			if freeForm[k] || (k == "selector" && kind == "v1/Service") {
				continue
			}
			for p, mut := range mutations(kind, child, path+"."+k) {
				c := cloneMap(x)
				c[k] = mut
				out[p] = c
			}
		}
	case []any:
		for i, child := range x {
			for p, mut := range mutations(kind, child, fmt.Sprintf("%s[%d]", path, i)) {
				c := append([]any(nil), x...)
				c[i] = mut
				out[p] = c
			}
		}
	}
	return out
}

func cloneMap(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// TestManifestsRejectUnknownFields proves the decoding is strict: a copy of each
// document with an unknown field added at any object level fails to decode.
func TestManifestsRejectUnknownFields(t *testing.T) {
	n := 0
	for _, d := range manifests(t) {
		for path, mut := range mutations(d.Kind, d.JSON, "") {
			b, err := json.Marshal(mut)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := decodeStrict(d.Kind, b); err == nil {
				t.Errorf("%s: an unknown field at %q decodes without error", d, "."+strings.TrimPrefix(path, "."))
			}
			n++
		}
	}
	t.Logf("%d mutated copies, each rejected", n)
	if n < 50 {
		t.Errorf("only %d mutations: the manifests were not walked", n)
	}
}

// TestManifestKeyauthzConfigsLoad loads every keyauthz.yaml a ConfigMap carries
// with keyauthz's own strict config loader.
func TestManifestKeyauthzConfigsLoad(t *testing.T) {
	n := 0
	for _, d := range manifests(t) {
		if d.Kind != "v1/ConfigMap" {
			continue
		}
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict(d.YAML, &cm); err != nil {
			t.Fatal(err)
		}
		s, ok := cm.Data["keyauthz.yaml"]
		if !ok {
			continue
		}
		f := filepath.Join(t.TempDir(), "keyauthz.yaml")
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := config.Load(f); err != nil {
			t.Errorf("%s: keyauthz.yaml: %v", d, err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no ConfigMap carries a keyauthz.yaml")
	}
}
