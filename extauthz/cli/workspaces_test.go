package cli

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

// target is where the CLI commands of a test go: a local store (--store) or a
// server (--server, --token-file); add returns usage rows straight to the store.
type target struct {
	flags []string
	store apikey.Store
}

// localTarget migrates a fresh SQLite store (and its pepper) for the CLI.
func localTarget(t *testing.T) target {
	t.Helper()
	db := filepath.Join(t.TempDir(), "keys.db")
	url := "sqlite://" + db
	if out, errOut, code := run("migrate", "--store", url); code != 0 {
		t.Fatalf("migrate: exit %d %s %s", code, out, errOut)
	}
	s, err := sqlite.Open(context.Background(), db, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return target{flags: []string{"--store", url}, store: s}
}

const cliToken = "cli-token-0123456789abcdef"

// remoteTarget serves the admin API over a fresh SQLite store; tokens add
// scoped tokens (their secret file paths are returned by name).
func remoteTarget(t *testing.T, scoped ...admin.Token) (target, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	s, err := sqlite.Open(context.Background(), filepath.Join(dir, "keys.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f, err := apikey.NewFormat("kz", 256, false)
	if err != nil {
		t.Fatal(err)
	}
	h, err := apikey.NewHasher(map[int][]byte{1: []byte("0123456789abcdef0123456789abcdef")}, 1)
	if err != nil {
		t.Fatal(err)
	}
	m, err := apikey.NewManager(s, f, h, func(string) int { return 10 })
	if err != nil {
		t.Fatal(err)
	}
	toks := append([]admin.Token{{Name: "ops", Secret: []byte(cliToken)}}, scoped...)
	ah, err := admin.New(m, toks, admin.Options{MaxBody: 64 << 10}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ah)
	t.Cleanup(srv.Close)
	files := map[string]string{}
	for _, tk := range toks {
		p := filepath.Join(dir, tk.Name+".token")
		if err := os.WriteFile(p, tk.Secret, 0o600); err != nil {
			t.Fatal(err)
		}
		files[tk.Name] = p
	}
	return target{flags: []string{"--server", srv.URL, "--token-file", files["ops"]}, store: s}, files
}

// cmd runs a CLI command against the target and fails the test unless it exits 0.
func (tg target) cmd(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := run(append(args, tg.flags...)...)
	if code != 0 {
		t.Fatalf("%q: exit %d, stderr %q", args, code, errOut)
	}
	return out
}

// fails runs a command that must exit with code, its stderr holding want.
func (tg target) fails(t *testing.T, code int, want string, args ...string) string {
	t.Helper()
	_, errOut, got := run(append(args, tg.flags...)...)
	if got != code || !strings.Contains(errOut, want) {
		t.Errorf("%q: exit %d, stderr %q; want exit %d with %q", args, got, errOut, code, want)
	}
	return errOut
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

// The workspaces, keys update, keys usage and keys list --unused-for commands
// work the same on the local store and through the admin API.
func TestWorkspaceAndKeyCommands(t *testing.T) {
	for _, mode := range []string{"local", "server"} {
		t.Run(mode, func(t *testing.T) {
			var tg target
			if mode == "local" {
				tg = localTarget(t)
			} else {
				tg, _ = remoteTarget(t)
			}
			testCommands(t, tg, mode == "server")
		})
	}
}

func testCommands(t *testing.T, tg target, remote bool) {
	ctx := context.Background()
	tg.fails(t, 1, "workspace acme has no record", "workspaces", "get", "acme")
	out := tg.cmd(t, "workspaces", "set", "acme", "--rate-limit", "600/m", "--max-keys", "5", "--grant", "org1,org2/web")
	if !strings.HasPrefix(out, "Created the record of workspace acme.") || !strings.Contains(out, "600/m") || !strings.Contains(out, "org1,org2/web") {
		t.Errorf("workspaces set (create):\n%s", out)
	}
	w := decode[admin.WorkspaceView](t, tg.cmd(t, "workspaces", "set", "acme", "--rate-limit", "", "--disable", "--json"))
	if w.RateLimit != "" || w.MaxKeys != 5 || len(w.Grants) != 2 || !w.Disabled {
		t.Errorf("workspaces set --rate-limit '' --disable = %+v; want rate inherited, the rest kept, disabled", w)
	}
	w = decode[admin.WorkspaceView](t, tg.cmd(t, "workspaces", "set", "acme", "--grant", "", "--enable", "--max-keys", "0", "--json"))
	if w.MaxKeys != 0 || len(w.Grants) != 0 || w.Disabled {
		t.Errorf("workspaces set --grant '' --enable --max-keys 0 = %+v", w)
	}
	if g := decode[admin.WorkspaceView](t, tg.cmd(t, "workspaces", "get", "acme", "--json")); g.ID != "acme" || g.Disabled {
		t.Errorf("workspaces get = %+v", g)
	}
	tg.cmd(t, "workspaces", "set", "beta")
	list := decode[struct{ Items []admin.WorkspaceView }](t, tg.cmd(t, "workspaces", "list", "--json"))
	if len(list.Items) != 2 || list.Items[0].ID != "acme" || list.Items[1].ID != "beta" {
		t.Errorf("workspaces list = %+v", list.Items)
	}
	if out := tg.cmd(t, "workspaces", "list"); !strings.Contains(out, "WORKSPACE") || !strings.Contains(out, "beta") {
		t.Errorf("workspaces list table:\n%s", out)
	}
	if _, err := tg.store.GetWorkspace(ctx, "acme"); err != nil {
		t.Errorf("the store has no record of acme: %v", err)
	}

	// keys update.
	created := decode[admin.View](t, tg.cmd(t, "keys", "create", "--workspace", "acme", "--name", "ci", "--json"))
	tg.cmd(t, "keys", "create", "--workspace", "acme", "--name", "other")
	id := created.ID
	v := decode[admin.View](t, tg.cmd(t, "keys", "update", id, "--workspace", "acme", "--name", "deploy", "--rate-limit", "10/s",
		"--expires-in", "48h", "--grant", "org1/web", "--meta", "team=a", "--meta", "env=prod", "--disable", "--json"))
	if v.Name != "deploy" || v.RateLimit != "10/s" || v.ExpiresAt == nil || strings.Join(v.Grants, ",") != "org1/web" ||
		v.Metadata["team"] != "a" || v.Metadata["env"] != "prod" || !v.Disabled || v.Key != "" {
		t.Errorf("keys update = %+v", v)
	}
	v = decode[admin.View](t, tg.cmd(t, "keys", "update", id, "--workspace", "acme", "--rate-limit", "", "--no-expiry", "--grant", "", "--no-meta", "--enable", "--json"))
	if v.Name != "deploy" || v.RateLimit != "" || v.ExpiresAt != nil || len(v.Grants) != 0 || len(v.Metadata) != 0 || v.Disabled {
		t.Errorf("keys update resets = %+v", v)
	}
	if out := tg.cmd(t, "keys", "update", id, "--workspace", "acme", "--expires-at", "2099-01-02T03:04:05Z"); !strings.HasPrefix(out, "Updated key "+id) || !strings.Contains(out, "2099-01-02T03:04:05Z") {
		t.Errorf("keys update table:\n%s", out)
	}
	k, err := tg.store.Get(ctx, id)
	if err != nil || k.Name != "deploy" || k.ExpiresAt.Year() != 2099 {
		t.Errorf("store after updates: %+v, %v", k, err)
	}
	tg.fails(t, 1, "already has a key with that name", "keys", "update", id, "--workspace", "acme", "--name", "other")
	tg.fails(t, 1, "no such key", "keys", "update", id, "--workspace", "beta", "--name", "x")

	// Usage and requests in 30 days.
	now := time.Now().UTC()
	var c [apikey.NumOutcomes]int64
	c[apikey.OutcomeAllowed], c[apikey.OutcomeRateLimited] = 4, 1
	if err := tg.store.AddUsage(ctx, []apikey.Usage{{KeyID: id, Hour: now.Truncate(time.Hour).Add(-2 * time.Hour), Counts: c}}); err != nil {
		t.Fatal(err)
	}
	u := decode[admin.Usage](t, tg.cmd(t, "keys", "usage", id, "--workspace", "acme", "--json"))
	if u.Granularity != "hour" || len(u.Buckets) != 25 || u.Totals.Allowed != 4 || u.Totals.Denied.RateLimited != 1 {
		t.Errorf("keys usage = %s, %d buckets, totals %+v", u.Granularity, len(u.Buckets), u.Totals)
	}
	out = tg.cmd(t, "keys", "usage", id, "--workspace", "acme", "--granularity", "day")
	if !strings.Contains(out, "by day") || !strings.Contains(out, "TOTAL") || !strings.Contains(out, now.Format("2006-01-02")) {
		t.Errorf("keys usage by day:\n%s", out)
	}
	keys := decode[struct{ Items []admin.View }](t, tg.cmd(t, "keys", "list", "--workspace", "acme", "--json"))
	got := map[string]int64{}
	for _, kv := range keys.Items {
		got[kv.Name] = kv.Requests30d
	}
	if got["deploy"] != 5 || got["other"] != 0 || len(got) != 2 {
		t.Errorf("requests_30d = %v", got)
	}
	if out := tg.cmd(t, "keys", "list", "--workspace", "acme"); !strings.Contains(out, "LAST USED  REQUESTS 30D") || !strings.Contains(out, "  5  ") {
		t.Errorf("keys list table:\n%s", out)
	}
	// Every key was just created: none is unused for 30 days.
	if l := decode[struct{ Items []admin.View }](t, tg.cmd(t, "keys", "list", "--workspace", "acme", "--unused-for", "30d", "--json")); len(l.Items) != 0 {
		t.Errorf("--unused-for 30d lists %d keys, want 0", len(l.Items))
	}
	if remote {
		tg.fails(t, 2, "--workspace is required with --server", "keys", "update", id, "--name", "x")
		tg.fails(t, 2, "--workspace is required with --server", "keys", "usage", id)
	} else {
		tg.cmd(t, "keys", "usage", id) // locally, the workspace is optional
	}
}

// Bad flags are refused with one clear line, before any store or server is touched.
func TestNewCommandsRefuseBadFlags(t *testing.T) {
	tg := target{flags: []string{"--store", "sqlite://" + filepath.Join(t.TempDir(), "none.db")}}
	secret := "kz_" + strings.Repeat("A", 40)
	for _, c := range []struct {
		want string
		args []string
	}{
		{"takes one workspace id WS", []string{"workspaces", "get"}},
		{"takes one workspace id WS", []string{"workspaces", "set", "a", "b"}},
		{"takes no arguments", []string{"workspaces", "list", "x"}},
		{"--workspace", []string{"workspaces", "get", ".."}},
		{"--rate-limit", []string{"workspaces", "set", "acme", "--rate-limit", "fast"}},
		{"--max-keys", []string{"workspaces", "set", "acme", "--max-keys", "-1"}},
		{"--grant", []string{"workspaces", "set", "acme", "--grant", "a//b"}},
		{"not both", []string{"workspaces", "set", "acme", "--disable", "--enable"}},
		{"takes one KEY_ID", []string{"keys", "update", "--name", "x"}},
		{"nothing to change", []string{"keys", "update", "key_x"}},
		{"give one of --expires-in, --expires-at and --no-expiry", []string{"keys", "update", "key_x", "--expires-in", "1h", "--no-expiry"}},
		{"--expires-at", []string{"keys", "update", "key_x", "--expires-at", "tomorrow"}},
		{"--expires-at: must be in the future", []string{"keys", "update", "key_x", "--expires-at", "0001-01-01T00:00:00Z"}},
		{"--meta: want key=value", []string{"keys", "update", "key_x", "--meta", secret}},
		{"--meta: a key appears twice", []string{"keys", "update", "key_x", "--meta", "a=1", "--meta", "a=2"}},
		{"not both", []string{"keys", "update", "key_x", "--meta", "a=1", "--no-meta"}},
		{"not both", []string{"keys", "update", "key_x", "--disable", "--enable"}},
		{"--name", []string{"keys", "update", "key_x", "--name", "a\u202eb"}},
		{"--unused-for", []string{"keys", "list", "--workspace", "acme", "--unused-for", "soon"}},
		{"--unused-for", []string{"keys", "list", "--workspace", "acme", "--unused-for", "0d"}},
		{"--granularity", []string{"keys", "usage", "key_x", "--granularity", "week"}},
		{"--from", []string{"keys", "usage", "key_x", "--from", "yesterday"}},
		{"--from: must be before to", []string{"keys", "usage", "key_x", "--from", "2030-01-02T00:00:00Z", "--to", "2030-01-01T00:00:00Z"}},
		{"flag provided but not defined", []string{"workspaces", "set", "acme", "--colour", "red"}},
		{"flag provided but not defined", []string{"keys", "usage", "key_x", "--bogus"}},
	} {
		errOut := tg.fails(t, map[bool]int{true: 1, false: 2}[c.want == "--workspace" || c.want == "--name"], c.want, c.args...)
		if strings.Count(strings.TrimSpace(errOut), "\n") > 1 {
			t.Errorf("%q: more than an error line and the help hint: %q", c.args, errOut)
		}
		if strings.Contains(errOut, secret) {
			t.Errorf("%q: stderr echoes the value", c.args)
		}
	}
	if _, err := os.Stat(strings.TrimPrefix(tg.flags[1], "sqlite://")); !os.IsNotExist(err) {
		t.Errorf("a refused command touched the store: %v", err)
	}
	for _, args := range [][]string{{"workspaces"}, {"workspaces", "nope"}} {
		if _, errOut, code := run(args...); code != 2 || !strings.Contains(errOut, "keyauthz workspaces COMMAND") {
			t.Errorf("%q: exit %d, %q", args, code, errOut)
		}
	}
	if out, _, code := run("workspaces", "--help"); code != 0 || !strings.Contains(out, "keyauthz workspaces COMMAND") {
		t.Errorf("workspaces --help: exit %d, %q", code, out)
	}
}

// A token limited to other workspaces gets the server's 403 message.
func TestScopedTokenThroughCLI(t *testing.T) {
	tg, files := remoteTarget(t, admin.Token{Name: "team", Secret: []byte("team-token-0123456789abcdef"), Workspaces: []string{"acme"}})
	tg.cmd(t, "workspaces", "set", "other")
	tg.cmd(t, "workspaces", "set", "acme")
	team := target{flags: []string{"--server", tg.flags[1], "--token-file", files["team"]}}
	team.fails(t, 1, "token not allowed for this workspace", "workspaces", "get", "other")
	team.fails(t, 1, "token not allowed for this workspace", "keys", "list", "--workspace", "other")
	team.fails(t, 1, "token not allowed for this workspace", "workspaces", "set", "other", "--disable")
	l := decode[struct{ Items []admin.WorkspaceView }](t, team.cmd(t, "workspaces", "list", "--json"))
	if len(l.Items) != 1 || l.Items[0].ID != "acme" {
		t.Errorf("scoped workspaces list = %+v", l.Items)
	}
}
