package binary

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCLIAgainstAdminAPI drives the keys and audit commands through a running
// server's admin API (--server, --token-file) and the local audit and migrate commands.
func TestCLIAgainstAdminAPI(t *testing.T) {
	dir := t.TempDir()
	pepper := filepath.Join(dir, "pepper")
	token := filepath.Join(dir, "admin-token")
	os.WriteFile(pepper, []byte(strings.Repeat("p", 40)), 0o600)
	os.WriteFile(token, []byte("admin-token-for-tests-0123456789\n"), 0o600)
	conf := filepath.Join(dir, "keyauthz.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf(`store: {url: "sqlite://%s"}
pepper: {current: 1, versions: [{version: 1, file: %q}]}
admin: {tokens: [{name: portal, file: %q}]}
`, filepath.Join(dir, "keys.db"), pepper, token)), 0o600)

	if out, errOut, code := cli(t, dir, "migrate", "--config", conf); code != 0 || !strings.Contains(out, "current schema") {
		t.Fatalf("migrate: %d %s %s", code, out, errOut)
	}
	s := start(t, dir, "--config", conf)
	remote := []string{"--server", "http://" + s.http, "--token-file", token}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := cli(t, dir, append(args, remote...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	k := mustJSON(t, run("keys", "create", "--workspace", "acme", "--name", "portal-key", "--json"))
	if d := s.check(t, k.Key); d.code != 200 {
		t.Fatalf("key created through the admin API: %d", d.code)
	}
	if out := run("keys", "list", "--workspace", "acme", "--json"); !strings.Contains(out, k.ID) || strings.Contains(out, k.Key) {
		t.Fatalf("list over the API: %s", out)
	}
	r := mustJSON(t, run("keys", "refresh", "--workspace", "acme", "--json", k.ID))
	if d := s.check(t, k.Key); d.code != 401 { // this replica evicts at once
		t.Fatalf("old secret after refresh over the API: %d", d.code)
	}
	run("keys", "delete", "--workspace", "acme", k.ID)
	poll(t, "deleted key denied", time.Second, func() bool { return s.check(t, r.Key).code == 401 })

	var audit struct {
		Items []struct {
			Kind  string `json:"kind"`
			KeyID string `json:"key_id"`
			Actor string `json:"actor"`
		} `json:"items"`
	}
	out := run("audit", "--workspace", "acme", "--json")
	if err := json.Unmarshal([]byte(out), &audit); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range audit.Items {
		if e.KeyID == k.ID {
			kinds = append(kinds, e.Kind+"/"+e.Actor)
		}
	}
	if got := strings.Join(kinds, ","); !strings.Contains(got, "created/portal") || !strings.Contains(got, "refreshed/portal") || !strings.Contains(got, "deleted/portal") {
		t.Fatalf("audit over the API: %s", got)
	}
	local, _, code := cli(t, dir, "audit", "--workspace", "acme", "--config", conf)
	if code != 0 || !strings.Contains(local, k.ID) {
		t.Fatalf("local audit: %d %s", code, local)
	}
	for _, sec := range []string{k.Key, r.Key} {
		if strings.Contains(out+local+s.Output(), sec) {
			t.Fatal("a secret appears in audit output or logs")
		}
	}
	_, errOut, code := cli(t, dir, "keys", "list", "--workspace", "acme", "--server", "http://"+s.http, "--token-file", pepper)
	if code != 1 || errOut == "" {
		t.Fatalf("wrong token: exit %d %q", code, errOut)
	}
	s.stop(t)
}
