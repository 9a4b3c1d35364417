// Package binary drives the built keyauthz binary end to end without Envoy:
// serve on free ports with a temp SQLite store, the key CLI, gRPC Checks.
package binary

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/test/testenv"
)

var bin string

func TestMain(m *testing.M) {
	bin = os.Getenv(testenv.KeyauthzBinEnv)
	tmp := ""
	if bin == "" {
		root, err := testenv.TryRepoRoot()
		if err == nil {
			tmp, err = os.MkdirTemp("", "kzbin")
		}
		if err == nil {
			bin, err = testenv.BuildKeyauthz(root, tmp)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "build keyauthz:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// startServe runs `keyauthz serve args...` in dir ("" keeps ours); its output
// goes to a log printed if the test fails, and it is killed at cleanup.
func startServe(t *testing.T, dir string, args ...string) *testenv.Proc {
	t.Helper()
	return testenv.StartProc(t, testenv.ProcOptions{Name: "keyauthz", Bin: bin, Dir: dir, Args: append([]string{"serve"}, args...)})
}

// serving waits for p's "serving" log line and returns the gRPC and HTTP
// addresses in it; the test fails if p exits first or 20 s pass.
func serving(t *testing.T, p *testenv.Proc) [2]string {
	t.Helper()
	var addrs [2]string
	var exited bool
	err := testenv.Poll(20*time.Second, func() error {
		for _, line := range strings.Split(p.Output(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "serving" {
				addrs = [2]string{fmt.Sprint(m["grpc"]), fmt.Sprint(m["http"])}
				return nil
			}
		}
		if exited, _ = p.Exited(); exited {
			return nil
		}
		return errors.New("no \"serving\" log line yet")
	})
	switch {
	case exited:
		t.Fatalf("serve exited before serving: %v", p.Err())
	case err != nil:
		t.Fatalf("serve did not start serving: %v", err)
	}
	return addrs
}

// exitCode waits for p to exit and returns its exit code (-1 when killed by a signal).
func exitCode(t *testing.T, p *testenv.Proc, within time.Duration) int {
	t.Helper()
	code, ok := p.ExitCode(within)
	if !ok {
		t.Fatalf("keyauthz still running after %v", within)
	}
	return code
}

// server is a running `keyauthz serve` on loopback port 0, with gRPC clients.
type server struct {
	*testenv.Proc
	grpc   string
	http   string
	client authv3.AuthorizationClient
	health healthpb.HealthClient
}

// start runs `keyauthz serve` in dir on port 0 and reads the bound ports from its log.
func start(t *testing.T, dir string, args ...string) *server {
	t.Helper()
	s := &server{Proc: startServe(t, dir, append([]string{"--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, args...)...)}
	a := serving(t, s.Proc)
	s.grpc, s.http = a[0], a[1]
	conn, err := grpc.NewClient(s.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.client, s.health = authv3.NewAuthorizationClient(conn), healthpb.NewHealthClient(conn)
	poll(t, "health SERVING", 10*time.Second, func() bool {
		r, err := s.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	return s
}

// stop sends SIGTERM and expects exit code 0.
func (s *server) stop(t *testing.T) {
	t.Helper()
	if err := s.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
}

type decision struct {
	code    int
	headers map[string]string
}

func (s *server) check(t *testing.T, key string) decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := s.client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/v1/things", Headers: map[string]string{":path": "/v1/things", "x-api-key": key}},
	}}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	d := decision{headers: map[string]string{}}
	if ok := r.GetOkResponse(); ok != nil {
		d.code = 200
		for _, h := range ok.GetResponseHeadersToAdd() {
			d.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		return d
	}
	d.code = int(r.GetDeniedResponse().GetStatus().GetCode())
	for _, h := range r.GetDeniedResponse().GetHeaders() {
		d.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return d
}

// poll waits until cond holds (testenv.Eventually) and returns how long that took.
func poll(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	return testenv.Eventually(t, within, what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// cli runs a keyauthz command and returns stdout, stderr and the exit code.
func cli(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

type created struct {
	ID  string `json:"id"`
	Key string `json:"key"`
}

func mustJSON(t *testing.T, out string) created {
	t.Helper()
	var c created
	if err := json.Unmarshal([]byte(out), &c); err != nil || c.ID == "" || c.Key == "" {
		t.Fatalf("bad JSON %q: %v", out, err)
	}
	return c
}

func TestBinaryLifecycle(t *testing.T) {
	dir := t.TempDir()
	pepper := filepath.Join(dir, "pepper")
	if err := os.WriteFile(pepper, []byte(strings.Repeat("s3cr3t-pepper-", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "keys.db")
	conf := filepath.Join(dir, "keyauthz.yaml")
	yaml := fmt.Sprintf("store: {url: \"sqlite://%s\", follow_interval: 200ms}\npepper: {current: 1, versions: [{version: 1, file: %q}]}\nlog: {level: debug}\n", db, pepper)
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var cliLogs strings.Builder
	run := func(args ...string) (string, int) {
		out, errOut, code := cli(t, dir, append(args, "--config", conf)...)
		cliLogs.WriteString(out + errOut)
		return out, code
	}
	s := start(t, dir, "--config", conf)

	out, code := run("keys", "create", "--workspace", "acme", "--name", "ci", "--json")
	if code != 0 {
		t.Fatalf("keys create: exit %d: %s", code, out)
	}
	k := mustJSON(t, out)
	secrets := []string{k.Key}

	start := time.Now()
	first := s.check(t, k.Key)
	if first.code != 200 || first.headers["x-ratelimit-limit"] != "240" {
		t.Fatalf("first check: %+v", first)
	}
	allowed := 1
	var deny decision
	for i := 0; i < 400; i++ {
		d := s.check(t, k.Key)
		if d.code != 200 {
			deny = d
			break
		}
		allowed++
	}
	elapsed := time.Since(start)
	// GCRA: 240 at once, then one more every 250 ms; the loop is far faster than that.
	if maxAllowed := 240 + int(elapsed/(250*time.Millisecond)); allowed < 240 || allowed > maxAllowed {
		t.Fatalf("allowed %d before the first deny in %v, want 240..%d", allowed, elapsed, maxAllowed)
	}
	if deny.code != 429 || deny.headers["retry-after"] == "" || deny.headers["x-ratelimit-remaining"] != "0" {
		t.Fatalf("request %d: %+v, want 429 with retry-after", allowed+1, deny)
	}

	// Rotation: a fresh key (its quota untouched) is refreshed; the old secret is
	// denied within a second, the new one allowed.
	out, code = run("keys", "create", "--workspace", "acme", "--name", "rotated", "--json")
	if code != 0 {
		t.Fatalf("create rotated: %d", code)
	}
	rk := mustJSON(t, out)
	secrets = append(secrets, rk.Key)
	if d := s.check(t, rk.Key); d.code != 200 {
		t.Fatalf("before refresh: %d", d.code)
	}
	out, code = run("keys", "refresh", rk.ID, "--json")
	if code != 0 {
		t.Fatalf("keys refresh: %d %s", code, out)
	}
	r := mustJSON(t, out)
	if r.ID != rk.ID || r.Key == rk.Key {
		t.Fatalf("refresh returned %s", r.ID)
	}
	secrets = append(secrets, r.Key)
	took := poll(t, "old secret denied after refresh", time.Second, func() bool { return s.check(t, rk.Key).code == 401 })
	t.Logf("old secret denied %v after refresh", took)
	if d := s.check(t, r.Key); d.code != 200 {
		t.Fatalf("new secret: %d", d.code)
	}

	out, code = run("keys", "create", "--workspace", "acme", "--name", "second", "--json")
	if code != 0 {
		t.Fatalf("create second: %d", code)
	}
	k2 := mustJSON(t, out)
	secrets = append(secrets, k2.Key)
	if d := s.check(t, k2.Key); d.code != 200 {
		t.Fatalf("second key: %d", d.code)
	}
	if _, code := run("keys", "delete", k2.ID); code != 0 {
		t.Fatalf("keys delete: %d", code)
	}
	took = poll(t, "deleted key denied", time.Second, func() bool { return s.check(t, k2.Key).code == 401 })
	t.Logf("deleted key denied %v after delete", took)

	out, code = run("keys", "list", "--workspace", "acme", "--json")
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.Items) != 2 {
		t.Fatalf("keys list: %d %s", code, out)
	}
	for _, it := range list.Items {
		if _, ok := it["key"]; ok {
			t.Fatal("list returned a secret")
		}
	}

	// The workspace limit: 10 keys, the 11th is refused with exit code 1.
	for i := 0; i < 8; i++ {
		out, code := run("keys", "create", "--workspace", "acme", "--name", fmt.Sprintf("k%d", i), "--json")
		if code != 0 {
			t.Fatalf("key %d: %d", i+3, code)
		}
		secrets = append(secrets, mustJSON(t, out).Key)
	}
	_, errOut, code := cli(t, dir, "keys", "create", "--workspace", "acme", "--name", "eleventh", "--config", conf)
	if code != 1 || !strings.Contains(errOut, "maximum number of keys") {
		t.Fatalf("11th key: exit %d, %q", code, errOut)
	}

	s.stop(t)

	// No issued secret in the database files or in any log line.
	files, _ := filepath.Glob(db + "*")
	var hay []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		hay = append(hay, string(b))
	}
	if len(files) == 0 {
		t.Fatal("no database file")
	}
	logs := s.Output()
	if !strings.Contains(logs, k.ID) && !strings.Contains(logs, `"msg":"serving"`) {
		t.Fatal("server log looks empty")
	}
	hay = append(hay, logs, cliLogs.String())
	for _, sec := range secrets {
		for i, h := range hay {
			// CLI stdout carries each secret once, by design; look only in logs and files.
			if i == len(hay)-1 {
				h = strings.ReplaceAll(h, `"key":"`+sec+`"`, "")
			}
			if strings.Contains(h, sec) {
				t.Fatalf("secret %s… found in %s", sec[:7], map[bool]string{true: "the CLI output", false: "the database or server log"}[i == len(hay)-1])
			}
		}
	}
}

func TestEmbeddedDefault(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir) // no --config: sqlite ./keyauthz.db and a generated pepper
	fi, err := os.Stat(filepath.Join(dir, "keyauthz.pepper"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pepper file: %v %v", err, fi)
	}
	if _, err := os.Stat(filepath.Join(dir, "keyauthz.db")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.Output(), "created a random pepper") {
		t.Fatal("log does not say a pepper was created")
	}
	out, _, code := cli(t, dir, "keys", "create", "--workspace", "w", "--name", "n", "--json")
	if code != 0 {
		t.Fatalf("create: %d", code)
	}
	if d := s.check(t, mustJSON(t, out).Key); d.code != 200 {
		t.Fatalf("embedded default check: %d", d.code)
	}
	s.stop(t)

	// With a config file, a missing pepper is a startup error naming the setting.
	conf := filepath.Join(dir, "c.yaml")
	os.WriteFile(conf, []byte("log: {level: info}\n"), 0o600)
	_, errOut, code := cli(t, dir, "serve", "--config", conf, "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	if code == 0 || !strings.Contains(errOut, "pepper.versions") {
		t.Fatalf("missing pepper: exit %d, %q", code, errOut)
	}
}
