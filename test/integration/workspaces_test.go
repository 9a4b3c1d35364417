//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jackc/pgx/v5"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// The runtime workspace contract of issue 16 on three replicas sharing one
// PostgreSQL and one Redis: workspace grants, hierarchical resources, workspace
// rate limits, key updates and usage counts reach every replica within 1 s.

// bound is how soon a change made through one replica's admin API must show on all of them.
const bound = time.Second

// hierarchy is the organization → project → container group template of the seeds.
const hierarchy = "/organizations/{organization}/projects/{project}/containers/{container_group}"

// runtimeCluster starts three replicas on PostgreSQL and Redis with the admin
// API on (token returned), the hierarchy template and extra YAML.
func runtimeCluster(t *testing.T, extra string) ([]*replica, string) {
	t.Helper()
	pg := testenv.StartPostgres(t)
	rd := testenv.StartRedis(t)
	token := "admin-token-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := redisConfig([]string{rd.Addr()}, false, "deny", 500*time.Millisecond) +
		fmt.Sprintf("ownership:\n  path_templates: [%q]\nadmin:\n  tokens: [{name: ops, file: %q}]\n", hierarchy, tf) + extra
	return cluster(t, 3, pg.URL(), cfg), token
}

// decision is the part of a CheckResponse these tests read.
type decision struct {
	code    int
	headers map[string]string // response headers to the client, lower-case names
}

// decide asks r about key on path.
func (r *replica) decide(t testing.TB, key, path string) decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := r.client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: path, Headers: map[string]string{"x-api-key": key}},
	}}})
	if err != nil {
		t.Fatalf("check %s: %v", path, err)
	}
	d := decision{headers: map[string]string{}}
	if ok := resp.GetOkResponse(); ok != nil {
		d.code = 200
		for _, h := range ok.GetResponseHeadersToAdd() {
			d.headers[strings.ToLower(h.GetHeader().GetKey())] = h.GetHeader().GetValue()
		}
		return d
	}
	d.code = int(resp.GetDeniedResponse().GetStatus().GetCode())
	for _, h := range resp.GetDeniedResponse().GetHeaders() {
		d.headers[strings.ToLower(h.GetHeader().GetKey())] = h.GetHeader().GetValue()
	}
	return d
}

// admin sends an admin API request to r and returns the status and body.
func (r *replica) admin(t testing.TB, token, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+r.kz.HTTPAddr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// mustAdmin is admin failing the test unless the status is want.
func (r *replica) mustAdmin(t testing.TB, token, method, path string, body any, want int) []byte {
	t.Helper()
	code, b := r.admin(t, token, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
	}
	return b
}

// within asserts that, within bound of now, every replica answers key on path
// as ok says, and returns how long the slowest took.
func within(t *testing.T, rs []*replica, what, key, path string, ok func(decision) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	took := make([]time.Duration, len(rs))
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d := r.decide(t, key, path)
				if ok(d) {
					took[i] = time.Since(start)
					return
				}
				if time.Since(start) > bound {
					t.Errorf("%s: replica %d still answers %d %v after %v", what, i, d.code, d.headers, bound)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	worst := took[0]
	for _, d := range took {
		worst = max(worst, d)
	}
	t.Logf("%s: all replicas in %v", what, worst)
	return worst
}

func is(code int) func(decision) bool { return func(d decision) bool { return d.code == code } }

func TestWorkspaceGrantsAtRuntime(t *testing.T) {
	rs, token := runtimeCluster(t, "")
	a := rs[0]
	k := a.kz.CreateKey(t, "team", "ci")
	web := "/organizations/acme/projects/web/containers/gpu-1"
	api := "/organizations/acme/projects/api/containers/cpu-1"
	for i, r := range rs {
		if d := r.decide(t, k.Secret, web); d.code != 403 {
			t.Fatalf("replica %d before any grant: %d, want 403", i, d.code)
		}
		if d := r.decide(t, k.Secret, "/organizations/team/projects/x"); d.code != 200 {
			t.Fatalf("replica %d, own workspace: %d, want 200", i, d.code)
		}
	}

	// A grant on the organization covers every project and container group below it.
	a.mustAdmin(t, token, "PUT", "/v1/workspaces/team", map[string]any{"grants": []string{"acme"}}, http.StatusCreated)
	within(t, rs, "organization grant added", k.Secret, web, is(200))
	within(t, rs, "organization grant covers another project", k.Secret, api, is(200))

	// A grant on one project covers that project only.
	rs[1].mustAdmin(t, token, "PATCH", "/v1/workspaces/team", map[string]any{"grants": []string{"acme/web"}}, http.StatusOK)
	within(t, rs, "narrowed to project web: sibling project", k.Secret, api, is(403))
	within(t, rs, "narrowed to project web: web", k.Secret, web, is(200))
	if d := a.decide(t, k.Secret, "/organizations/acme"); d.code != 403 {
		t.Fatalf("project grant reached the organization itself: %d", d.code)
	}

	// Removing the grant denies every key of the workspace.
	other := a.kz.CreateKey(t, "team", "other")
	rs[2].mustAdmin(t, token, "PATCH", "/v1/workspaces/team", map[string]any{"grants": nil}, http.StatusOK)
	within(t, rs, "grant removed", k.Secret, web, is(403))
	within(t, rs, "grant removed, other key", other.Secret, web, is(403))
}

func TestWorkspaceRateAndKeyUpdateAtRuntime(t *testing.T) {
	rs, token := runtimeCluster(t, "")
	a := rs[0]
	k := a.kz.CreateKey(t, "rates", "ci")
	limit := func(n string) func(decision) bool {
		return func(d decision) bool { return d.code == 200 && d.headers["x-ratelimit-limit"] == n }
	}
	within(t, rs, "default rate", k.Secret, "/v1/x", limit("240"))

	a.mustAdmin(t, token, "PUT", "/v1/workspaces/rates", map[string]any{"rate_limit": "600/m"}, http.StatusCreated)
	within(t, rs, "workspace rate_limit 600/m", k.Secret, "/v1/x", limit("600"))

	// The key's own rate wins over the workspace record.
	path := "/v1/workspaces/rates/api-keys/" + k.ID
	rs[1].mustAdmin(t, token, "PATCH", path, map[string]any{"rate_limit": "50/m"}, http.StatusOK)
	within(t, rs, "key rate_limit 50/m over the workspace's", k.Secret, "/v1/x", limit("50"))
	rs[2].mustAdmin(t, token, "PATCH", path, map[string]any{"rate_limit": nil}, http.StatusOK)
	within(t, rs, "key rate_limit cleared: the workspace's again", k.Secret, "/v1/x", limit("600"))

	// Disable one key: 401 everywhere within the bound, its neighbour unaffected; enable again.
	other := a.kz.CreateKey(t, "rates", "other")
	a.mustAdmin(t, token, "PATCH", path, map[string]any{"disabled": true}, http.StatusOK)
	within(t, rs, "key disabled", k.Secret, "/v1/x", is(401))
	within(t, rs, "neighbour of the disabled key", other.Secret, "/v1/x", is(200))
	rs[1].mustAdmin(t, token, "PATCH", path, map[string]any{"disabled": false}, http.StatusOK)
	within(t, rs, "key enabled", k.Secret, "/v1/x", is(200))

	// Disable the workspace: all its keys refused at once; enable again.
	a.mustAdmin(t, token, "PATCH", "/v1/workspaces/rates", map[string]any{"disabled": true}, http.StatusOK)
	within(t, rs, "workspace disabled", other.Secret, "/v1/x", is(401))
	a.mustAdmin(t, token, "PATCH", "/v1/workspaces/rates", map[string]any{"disabled": false}, http.StatusOK)
	within(t, rs, "workspace enabled", other.Secret, "/v1/x", is(200))
}

// usageTotals reads the usage API's totals for key id of ws over the last day.
func usageTotals(t *testing.T, r *replica, token, ws, id string) (int64, map[string]int64) {
	t.Helper()
	b := r.mustAdmin(t, token, "GET", "/v1/workspaces/"+ws+"/api-keys/"+id+"/usage?granularity=hour", nil, http.StatusOK)
	var u struct {
		Totals struct {
			Allowed int64            `json:"allowed"`
			Denied  map[string]int64 `json:"denied"`
		} `json:"totals"`
	}
	if err := json.Unmarshal(b, &u); err != nil {
		t.Fatalf("usage: %v: %s", err, b)
	}
	return u.Totals.Allowed, u.Totals.Denied
}

// usageWrites returns the rows PostgreSQL has inserted or updated in key_usage.
func usageWrites(t *testing.T, url string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	// Backends report their counts to the statistics system when they exit;
	// callers stop the replicas (closing their connections) before reading.
	if err := conn.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'key_usage'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestUsageAcrossReplicas(t *testing.T) {
	pg := testenv.StartPostgres(t)
	rd := testenv.StartRedis(t)
	token := "admin-token-usage-0123456789"
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	// A flush interval longer than the test: the only flush is the one at shutdown.
	cfg := redisConfig([]string{rd.Addr()}, false, "deny", 500*time.Millisecond) +
		fmt.Sprintf("admin:\n  tokens: [{name: ops, file: %q}]\nusage:\n  flush_interval: 1h\n", tf)
	rs := cluster(t, 3, pg.URL(), cfg)
	keys := []testenv.Key{
		rs[0].kz.CreateKey(t, "usage", "limited", "--rate-limit", "300/h"),
		rs[0].kz.CreateKey(t, "usage", "free", "--rate-limit", "100000/m"),
	}
	before := usageWrites(t, pg.URL())
	var allowed, limited [2]int64
	for i := 0; i < 1000; i++ {
		k := i % 2
		switch c := rs[i%3].mustCheck(t, keys[k].Secret); c {
		case 200:
			allowed[k]++
		case 429:
			limited[k]++
		default:
			t.Fatalf("check %d: %d", i, c)
		}
	}
	if limited[0] == 0 || limited[1] != 0 {
		t.Fatalf("test setup: limited %v, want denials for the 300/h key only", limited)
	}
	for _, r := range rs {
		r.kz.Stop(t) // flushes its counts
	}
	writes := usageWrites(t, pg.URL()) - before
	// Each replica wrote at most one row per key and hour: 3 replicas × 2 keys (× 2 if an hour turned).
	t.Logf("1000 checks over 3 replicas: allowed %v, rate limited %v; key_usage rows written: %d", allowed, limited, writes)
	if writes > 3*2*2 {
		t.Fatalf("key_usage rows written %d, want at most one per key per replica per flush (6, or 12 across an hour)", writes)
	}
	rs[0].kz.Start(t)
	for k, key := range keys {
		got, denied := usageTotals(t, rs[0], token, "usage", key.ID)
		if got != allowed[k] || denied["rate_limited"] != limited[k] {
			t.Fatalf("key %d usage: allowed %d rate_limited %d, want %d and %d (exact)", k, got, denied["rate_limited"], allowed[k], limited[k])
		}
	}
}
