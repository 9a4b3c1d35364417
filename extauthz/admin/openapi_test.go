package admin

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"go.uber.org/zap"
)

// Acceptance 6: the OpenAPI document validates with a real OpenAPI parser, and the
// routes the server serves are exactly the documented paths and methods.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc, _ := loadDoc(t) // parses and validates
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	// Strict validation too (examples, defaults, patterns).
	l := openapi3.NewLoader()
	strict, err := l.LoadFromData(OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := strict.Validate(context.Background(), openapi3.EnableExamplesValidation(), openapi3.EnableSchemaDefaultsValidation(), openapi3.EnableSchemaPatternValidation()); err != nil {
		t.Fatalf("strict validation: %v", err)
	}

	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	e := newEnv(t, envOpt{})
	h, err := New(e.mgr, []Token{{Name: "ops", Secret: []byte(opsToken)}}, Options{MaxBody: testMaxBody}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var served []string
	for _, rt := range h.routes {
		served = append(served, rt.method+" "+rt.path)
		item := doc.Paths.Find(rt.path)
		if item == nil || item.GetOperation(rt.method) == nil {
			continue // reported below
		}
		op := item.GetOperation(rt.method)
		switch {
		case rt.public && (op.Security == nil || len(*op.Security) != 0):
			t.Errorf("%s %s needs no token but the document does not say security: []", rt.method, rt.path)
		case !rt.public && op.Security != nil && len(*op.Security) == 0:
			t.Errorf("%s %s needs a token but the document says security: []", rt.method, rt.path)
		}
		if !rt.public && op.Responses.Value("401") == nil {
			t.Errorf("%s %s: the document lists no 401 answer", rt.method, rt.path)
		}
		// Every answer the route can give is documented: 403 for a scoped token
		// under /v1/workspaces/{ws}, 404 where a key or record is looked up, and
		// 400, 413, 415 where a body is read.
		want := []string{"500"}
		if strings.Contains(rt.path, "{ws}") {
			want = append(want, "400", "403")
		}
		if strings.Contains(rt.path, "{id}") || (rt.path == "/v1/workspaces/{ws}" && rt.method != http.MethodPut) {
			want = append(want, "404")
		}
		if op.RequestBody != nil {
			want = append(want, "400", "413", "415")
		}
		if rt.public {
			want = nil
		}
		for _, code := range want {
			if op.Responses.Value(code) == nil {
				t.Errorf("%s %s: the document lists no %s answer", rt.method, rt.path, code)
			}
		}
	}
	sort.Strings(documented)
	sort.Strings(served)
	if strings.Join(documented, "\n") != strings.Join(served, "\n") {
		t.Errorf("routes differ from the OpenAPI document:\nserved:\n  %s\ndocumented:\n  %s",
			strings.Join(served, "\n  "), strings.Join(documented, "\n  "))
	}

	// Every documented operation is really served: with a token, a request to it
	// (concrete values for the path parameters) never hits "no such route" or 405.
	k := e.create("acme", "probe")
	for _, d := range documented {
		method, path, _ := strings.Cut(d, " ")
		path = strings.NewReplacer("{ws}", "acme", "{id}", k.ID).Replace(path)
		if strings.Contains(path, "{") {
			t.Errorf("%s: unknown path parameter", d)
			continue
		}
		ct, body := "", []byte(nil)
		switch {
		case method == http.MethodPost && strings.HasSuffix(path, "/refresh"):
			ct, body = "application/json", []byte(`{}`)
		case method == http.MethodPost:
			ct, body = "application/json", []byte(`{"name":"probe2"}`)
		case method == http.MethodPut || method == http.MethodPatch:
			ct, body = "application/json", []byte(`{}`)
		}
		r := e.call(method, path, opsToken, ct, body)
		if r.code == http.StatusMethodNotAllowed || (r.code == http.StatusNotFound && strings.Contains(string(r.body), "no such route")) {
			t.Errorf("%s is documented but not served: %d %s", d, r.code, r.body)
		}
	}
	// And the served document is the embedded one.
	r := e.call("GET", "/v1/openapi.yaml", "", "", nil)
	if r.code != 200 || string(r.body) != string(OpenAPI) || r.header.Get("Content-Type") != "application/yaml" {
		t.Errorf("GET /v1/openapi.yaml: %d %q", r.code, r.header.Get("Content-Type"))
	}
}
