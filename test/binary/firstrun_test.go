package binary

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// First-run traps (issue 12): what a new operator's first commands must not
// do by accident.

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// serveExits runs `keyauthz serve args...` in dir, expecting it to exit within
// 20 s; it returns stderr and the exit code (-1 when it had to be killed).
func serveExits(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"serve"}, args...)...)
	cmd.Dir = dir
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Errorf("serve %q still running after 20 s, want it to refuse to start:\n%s", args, errb.String())
		return errb.String(), -1
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return errb.String(), 0
}

// writeSecret writes a 0600 file holding s into dir and returns its path.
func writeSecret(t *testing.T, dir, name, s string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Only serve and migrate create a store: every other local command on a
// missing store exits 1 saying so, and leaves no database and no pepper behind.
func TestLocalCommandsNeverCreateAStore(t *testing.T) {
	cmds := [][]string{
		{"keys", "list", "--workspace", "acme"},
		{"keys", "create", "--workspace", "acme", "--name", "ci"},
		{"keys", "refresh", "key_x"},
		{"keys", "delete", "key_x"},
		{"audit", "--workspace", "acme"},
	}
	for _, c := range []struct {
		name  string
		store func(dir string) string // --store, "" for none
		want  string                  // in stderr
	}{
		{"embedded default", func(string) string { return "" }, "no key store at sqlite://./keyauthz.db; run `keyauthz migrate`"},
		{"mistyped sqlite path", func(dir string) string { return "sqlite://" + dir + "/mistyped/path.db" },
			"no key store at sqlite://%s/mistyped/path.db; run `keyauthz migrate`"},
		{"relative sqlite path", func(string) string { return "sqlite://./keys.db" }, "no key store at sqlite://./keys.db; run `keyauthz migrate`"},
		{"missing key file", func(dir string) string { return "file://" + dir + "/keys.yaml" }, "no key store at file://%s/keys.yaml"},
		{"config file, mistyped sqlite path", func(dir string) string { return "sqlite://" + dir + "/typo.db" },
			"no key store at sqlite://%s/typo.db; run `keyauthz migrate`"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			want := c.want
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, dir)
			}
			var conf []string // the embedded default needs a sqlite store for its pepper
			if !strings.HasPrefix(c.want, "no key store at sqlite://./") && c.name != "mistyped sqlite path" {
				conf = []string{"--config", startupConfig(t, t.TempDir(), "sqlite://./unused.db")}
			}
			for _, args := range cmds {
				args = append(args[:len(args):len(args)], conf...)
				if s := c.store(dir); s != "" {
					args = append(args, "--store", s)
				}
				out, errOut, code := cli(t, dir, args...)
				if code != 1 || !strings.Contains(errOut, want) {
					t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 saying %q", args, code, out, errOut, want)
				}
				if got := dirEntries(t, dir); len(got) != 0 {
					t.Fatalf("%q created %v", args, got)
				}
			}
		})
	}
}

// migrate creates the embedded default's store and pepper; the key commands
// then work on them.
func TestMigrateCreatesTheEmbeddedDefault(t *testing.T) {
	dir := t.TempDir()
	if out, errOut, code := cli(t, dir, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d: %s %s", code, out, errOut)
	}
	for _, f := range []string{"keyauthz.db", "keyauthz.pepper"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("migrate did not create %s: %v", f, err)
		}
	}
	if _, errOut, code := cli(t, dir, "keys", "create", "--workspace", "acme", "--name", "ci"); code != 0 {
		t.Fatalf("keys create after migrate: exit %d: %s", code, errOut)
	}
	if out, _, code := cli(t, dir, "keys", "list", "--workspace", "acme"); code != 0 || !strings.Contains(out, "ci") {
		t.Fatalf("keys list after migrate: exit %d: %s", code, out)
	}
}

// Keys made on the embedded default are hashed with pepper version 1. A
// config naming the same file as version 2 would deny every one of them:
// serve and the commands that hash secrets refuse it, naming the version,
// the key count and the fix; listing still works.
func TestUnknownPepperVersionRefused(t *testing.T) {
	dir := t.TempDir()
	if _, errOut, code := cli(t, dir, "migrate"); code != 0 {
		t.Fatalf("migrate: %s", errOut)
	}
	out, errOut, code := cli(t, dir, "keys", "create", "--workspace", "acme", "--name", "ci", "--json")
	if code != 0 {
		t.Fatalf("keys create: exit %d: %s", code, errOut)
	}
	key := mustJSON(t, out).Key
	conf := func(name, pepper string) string {
		p := filepath.Join(dir, name)
		yaml := "grpc: {listen: \"127.0.0.1:0\", drain_timeout: 2s}\nhttp: {listen: \"127.0.0.1:0\"}\n" +
			"store: {url: \"sqlite://./keyauthz.db\"}\npepper: " + pepper + "\n"
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	v2 := conf("v2.yaml", "{current: 2, versions: [{version: 2, file: keyauthz.pepper}]}")
	for _, args := range [][]string{
		{"serve", "--config", v2},
		{"keys", "create", "--config", v2, "--workspace", "acme", "--name", "other"},
		{"keys", "refresh", "--config", v2, "key_x"},
	} {
		errOut, code := refused(t, dir, args...)
		for _, want := range []string{"pepper.versions", "version 1 (1 key)", "keyauthz.pepper", "is version 1"} {
			if code != 1 || !strings.Contains(errOut, want) {
				t.Errorf("%q: exit %d, stderr %q; want exit 1 naming %q", args[:1], code, errOut, want)
			}
		}
	}
	if out, errOut, code := cli(t, dir, "keys", "list", "--config", v2, "--workspace", "acme"); code != 0 || !strings.Contains(out, "ci") {
		t.Errorf("keys list with the version 2 config: exit %d, %q %q; want the list", code, out, errOut)
	}
	// Version 1 kept, version 2 current: the key verifies (and is re-hashed).
	both := conf("both.yaml", "{current: 2, versions: [{version: 1, file: keyauthz.pepper}, {version: 2, file: pepper-2}]}")
	writeSecret(t, dir, "pepper-2", strings.Repeat("second-pepper-", 4))
	s := start(t, dir, "--config", both)
	if d := s.check(t, key); d.code != 200 {
		t.Fatalf("key made on the embedded default, config with version 1: %d, want 200", d.code)
	}
	s.stop(t)
}

// A lost embedded default pepper is not silently replaced while the store
// holds keys made with it.
func TestLostPepperNotReplaced(t *testing.T) {
	dir := t.TempDir()
	if _, errOut, code := cli(t, dir, "migrate"); code != 0 {
		t.Fatalf("migrate: %s", errOut)
	}
	if _, errOut, code := cli(t, dir, "keys", "create", "--workspace", "acme", "--name", "ci"); code != 0 {
		t.Fatalf("keys create: %s", errOut)
	}
	if err := os.Remove(filepath.Join(dir, "keyauthz.pepper")); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, {"migrate"}} {
		errOut, code := refused(t, dir, args...)
		if code != 1 || !strings.Contains(errOut, "keyauthz.pepper is missing") || !strings.Contains(errOut, "1 live key") {
			t.Errorf("%s without its pepper: exit %d, %q; want exit 1 saying the pepper is missing", args[0], code, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "keyauthz.pepper")); err == nil {
		t.Fatal("a new pepper was created")
	}
}

// A config that cannot serve (a port in use, a short admin token) stops serve
// before anything is created on disk: no database, no pepper.
func TestServeCreatesNothingBeforeConfigValidates(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()
	for _, c := range []struct {
		name string
		args func(dir string) []string
		want string
	}{
		{"grpc port in use", func(string) []string {
			return []string{"--grpc-listen", inUse, "--http-listen", "127.0.0.1:0"}
		}, "grpc.listen"},
		{"http port in use", func(string) []string {
			return []string{"--grpc-listen", "127.0.0.1:0", "--http-listen", inUse}
		}, "http.listen"},
		{"short admin token", func(dir string) []string {
			tok := writeSecret(t, t.TempDir(), "token", "short")
			conf := filepath.Join(t.TempDir(), "c.yaml")
			pepper := writeSecret(t, t.TempDir(), "pepper", strings.Repeat("p", 40))
			yaml := fmt.Sprintf("grpc: {listen: \"127.0.0.1:0\"}\nhttp: {listen: \"127.0.0.1:0\"}\nstore: {url: \"sqlite://./keys.db\"}\n"+
				"pepper: {current: 1, versions: [{version: 1, file: %q}]}\nadmin: {tokens: [{name: ops, file: %q}]}\n", pepper, tok)
			if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{"--config", conf}
		}, "admin.tokens[0]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			errOut, code := serveExits(t, dir, c.args(dir)...)
			if code != 1 || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 1 naming %s", code, errOut, c.want)
			}
			if got := dirEntries(t, dir); len(got) != 0 {
				t.Fatalf("serve created %v before failing", got)
			}
		})
	}
}

// Without admin.tokens the admin API is off, and says so: a log line at
// start, and a JSON 404 under /v1 naming the setting.
func TestAdminAPIOffSaysSo(t *testing.T) {
	s := start(t, t.TempDir())
	if !strings.Contains(s.Output(), "admin api off: set admin.tokens to enable") {
		t.Errorf("no admin-off log line in:\n%s", s.Output())
	}
	r, err := http.Get("http://" + s.http + "/v1/workspaces/acme/api-keys")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	var body map[string]string
	if r.StatusCode != http.StatusNotFound || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") ||
		json.Unmarshal(b, &body) != nil || !strings.Contains(body["message"], "admin.tokens") {
		t.Fatalf("GET /v1/… with the admin API off: %d %s %q; want a JSON 404 naming admin.tokens", r.StatusCode, r.Header.Get("Content-Type"), b)
	}
	s.stop(t)
}

// checkPath asks s for a decision on a GET of path with key, and returns the status.
func checkPath(t *testing.T, s *server, key, path string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := s.client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: path, Headers: map[string]string{":path": path, "x-api-key": key}},
	}}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if r.GetOkResponse() != nil {
		return 200
	}
	return int(r.GetDeniedResponse().GetStatus().GetCode())
}

// The shipped example config serves, continuing the embedded default (same
// database, its pepper as version 1): a key made before still verifies, its
// ownership templates give 403 on another workspace's resource, and its admin
// API answers.
func TestExampleConfigServes(t *testing.T) {
	example := filepath.Join(testenv.RepoRoot(t), "config", "keyauthz.example.yaml")
	dir := t.TempDir()
	s := start(t, dir) // the embedded default first, as the README's walkthrough
	out, errOut, code := cli(t, dir, "keys", "create", "--workspace", "acme", "--name", "ci", "--json")
	if code != 0 {
		t.Fatalf("keys create: %s", errOut)
	}
	key := mustJSON(t, out).Key
	s.stop(t)

	tok := "ops-token-" + strings.Repeat("x", 20)
	writeSecret(t, dir, "admin.token", tok)
	s = start(t, dir, "--config", example)
	for path, want := range map[string]int{"/organizations/acme/projects": 200, "/organizations/globex/projects": 403, "/health": 200} {
		if got := checkPath(t, s, key, path); got != want {
			t.Errorf("GET %s with an acme key: %d, want %d", path, got, want)
		}
	}
	out, errOut, code = cli(t, dir, "keys", "create", "--config", example, "--workspace", "acme", "--name", "web", "--json")
	if code != 0 {
		t.Fatalf("keys create --config example: %s", errOut)
	}
	if got := checkPath(t, s, mustJSON(t, out).Key, "/organizations/acme/x"); got != 200 {
		t.Errorf("key made with the example config: %d, want 200", got)
	}
	req, _ := http.NewRequest("GET", "http://"+s.http+"/v1/workspaces/acme/api-keys", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Errorf("admin API with the example's token: %d, want 200", r.StatusCode)
	}
	s.stop(t)
}

// refused runs a command expected to stop at once, serve included (which
// would otherwise keep running), and returns its stderr and exit code.
func refused(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	if args[0] == "serve" {
		return serveExits(t, dir, args[1:]...)
	}
	_, errOut, code := cli(t, dir, args...)
	return errOut, code
}
