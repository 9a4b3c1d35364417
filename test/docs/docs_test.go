// Package docs holds tests that keep the repository's documents and shipped
// configuration honest: every relative Markdown link resolves inside the
// repository, and every shipped Envoy ext_authz filter forwards the headers
// keyauthz reads keys from.
package docs

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// skipDirs are never searched for documents or configs: tools and generated state.
var skipDirs = map[string]bool{".git": true, ".venv": true, "node_modules": true, "testdata": true}

// files lists the repository's files whose names end in one of exts.
func files(t *testing.T, root string, exts ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if skipDirs[d.Name()] && p != root {
				return filepath.SkipDir
			}
			return nil
		}
		for _, e := range exts {
			if strings.HasSuffix(p, e) {
				out = append(out, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mdLink matches inline links and images, [text](target "title"), and
// reference definitions, [name]: target.
var mdLink = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)|(?m)^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)`)

// fence matches fenced code blocks, whose text is not Markdown.
var fence = regexp.MustCompile("(?ms)^\\s*```.*?^\\s*```")

func TestMarkdownLinksResolve(t *testing.T) {
	root := testenv.RepoRoot(t)
	docs := files(t, root, ".md")
	if len(docs) < 3 {
		t.Fatalf("found %d Markdown files under %s; the walk is broken", len(docs), root)
	}
	checked := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		text := fence.ReplaceAll(b, nil)
		rel, _ := filepath.Rel(root, doc)
		for _, m := range mdLink.FindAllSubmatch(text, -1) {
			target := string(m[1])
			if target == "" {
				target = string(m[2])
			}
			if err := resolves(root, doc, target); err != nil {
				t.Errorf("%s: link %q: %v", rel, target, err)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no links checked; the link pattern is broken")
	}
}

// resolves says whether a link target written in doc names a file or folder inside root.
// Links with a scheme (https:, mailto:) and same-page anchors are not files and pass.
func resolves(root, doc, target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	if u.Scheme != "" || u.Host != "" || u.Path == "" {
		return nil
	}
	p := u.Path
	if strings.HasPrefix(p, "/") {
		p = filepath.Join(root, p)
	} else {
		p = filepath.Join(filepath.Dir(doc), p)
	}
	if r, err := filepath.Rel(root, p); err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return errors.New("points outside the repository")
	}
	_, err = os.Stat(p)
	return err
}

func TestLinkCheckerCatchesBrokenLinks(t *testing.T) {
	root := t.TempDir()
	doc := filepath.Join(root, "README.md")
	if err := os.WriteFile(doc, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for target, ok := range map[string]bool{
		"README.md": true, "./README.md#set-up": true, "https://example.com/x": true, "#anchor": true,
		"missing.md": false, "../outside.md": false, "../../etc/passwd": false,
	} {
		if err := resolves(root, doc, target); (err == nil) != ok {
			t.Errorf("resolves(%q) = %v, want ok=%v", target, err, ok)
		}
	}
	m := mdLink.FindAllSubmatch([]byte("see [a](x.md) and ![b](y.png \"t\")\n[ref]: z.md\n"), -1)
	if len(m) != 3 {
		t.Fatalf("link pattern found %d links, want 3", len(m))
	}
}

// extAuthz is one ext_authz filter found in a shipped file.
type extAuthz struct {
	where string
	cfg   *extauthzv3.ExtAuthz
}

// findExtAuthz walks a YAML tree for Envoy ext_authz filters. Strings that are
// themselves YAML documents holding an Envoy config (a Kubernetes ConfigMap's
// data) are searched too.
func findExtAuthz(t *testing.T, where string, n any, out *[]extAuthz) {
	switch v := n.(type) {
	case map[string]any:
		if v["name"] == "envoy.filters.http.ext_authz" {
			if tc, ok := v["typed_config"].(map[string]any); ok {
				*out = append(*out, extAuthz{where: where, cfg: decodeExtAuthz(t, where, tc)})
			}
		}
		for k, c := range v {
			findExtAuthz(t, where+"."+k, c, out)
		}
	case []any:
		for _, c := range v {
			findExtAuthz(t, where, c, out)
		}
	case string:
		if strings.Contains(v, "envoy.filters.http.ext_authz") && strings.Contains(v, "\n") {
			var inner any
			if yaml.Unmarshal([]byte(v), &inner) == nil {
				findExtAuthz(t, where, inner, out)
			}
		}
	}
}

// decodeExtAuthz decodes a filter's typed_config strictly into Envoy's own type.
func decodeExtAuthz(t *testing.T, where string, tc map[string]any) *extauthzv3.ExtAuthz {
	t.Helper()
	c := map[string]any{}
	for k, v := range tc {
		if k != "@type" {
			c[k] = v
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	var cfg extauthzv3.ExtAuthz
	if err := protojson.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%s: ext_authz typed_config does not decode as envoy.extensions.filters.http.ext_authz.v3.ExtAuthz: %v", where, err)
	}
	return &cfg
}

// matches reports whether a header name passes one of Envoy's string matchers.
func matches(m *matcherv3.StringMatcher, name string) bool {
	s := name
	pat := func(p string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(p)
		}
		return p
	}
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	switch {
	case m.GetExact() != "":
		return s == pat(m.GetExact())
	case m.GetPrefix() != "":
		return strings.HasPrefix(s, pat(m.GetPrefix()))
	case m.GetSuffix() != "":
		return strings.HasSuffix(s, pat(m.GetSuffix()))
	case m.GetContains() != "":
		return strings.Contains(s, pat(m.GetContains()))
	case m.GetSafeRegex() != nil:
		re, err := regexp.Compile("^(?:" + m.GetSafeRegex().GetRegex() + ")$")
		return err == nil && re.MatchString(name)
	}
	return false
}

func TestEnvoyFilesForwardKeyHeaders(t *testing.T) {
	root := testenv.RepoRoot(t)
	def := config.Default()
	want := append([]string(nil), def.Headers.APIKey...)
	want = append(want, "authorization") // headers.bearer: true reads Authorization; the files allow for it
	var found []extAuthz
	for _, f := range files(t, filepath.Join(root, "envoy"), ".yaml", ".yml") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 0; ; i++ {
			var doc any
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: document %d: %v", rel, i, err)
			}
			findExtAuthz(t, rel, doc, &found)
		}
	}
	if len(found) < 2 {
		t.Fatalf("found %d ext_authz filters under envoy/, want the sidecar and front-proxy ones at least", len(found))
	}
	readme, err := os.ReadFile(filepath.Join(root, "envoy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(l, "| `allowed_headers`") {
			row = l
		}
	}
	if row == "" {
		t.Fatal("envoy/README.md has no `allowed_headers` row in its option table")
	}
	for _, f := range found {
		pats := f.cfg.GetAllowedHeaders().GetPatterns()
		if len(pats) == 0 {
			continue // unset: Envoy sends every header
		}
		for _, h := range want {
			ok := false
			for _, p := range pats {
				ok = ok || matches(p, h)
			}
			if !ok {
				t.Errorf("%s: allowed_headers lets no %q through; keyauthz would never see that key header", f.where, h)
			}
			if !strings.Contains(row, "`"+h+"`") {
				t.Errorf("envoy/README.md's allowed_headers row does not name %q, which the shipped files allow", h)
			}
		}
	}
	if strings.Contains(row, "| unset |") {
		t.Errorf("envoy/README.md says allowed_headers is unset, but the shipped files set it")
	}
}

func TestHeaderMatcher(t *testing.T) {
	for _, c := range []struct {
		m    *matcherv3.StringMatcher
		name string
		want bool
	}{
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "x-api-key"}}, "x-api-key", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "x-api-key"}}, "salad-api-key", false},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "X-"}, IgnoreCase: true}, "x-api-key", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "-api-key"}}, "salad-api-key", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*-api-key"}}}, "x-api-key", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "api"}}}, "x-api-key", false},
	} {
		if got := matches(c.m, c.name); got != c.want {
			t.Errorf("matches(%v, %q) = %v, want %v", c.m, c.name, got, c.want)
		}
	}
}
