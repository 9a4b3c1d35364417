//go:build integration

package binary

import (
	"context"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// serve started before PostgreSQL: it waits NOT_SERVING (/readyz 503), then
// becomes ready once PostgreSQL is up, in the same process, and answers Checks
// with keys from the store.
func TestServeStartsBeforePostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Stop() // the database exists; the server is down
	dir := t.TempDir()
	conf := startupConfig(t, dir, pg.URL())
	p := startServe(t, "", "--config", conf)
	health, readyz := waitingForStore(t, p)

	pg.Start()
	up := time.Now()
	poll(t, "/readyz 200 after PostgreSQL started", 15*time.Second, func() bool { return readyz() == http.StatusOK })
	t.Logf("ready %v after PostgreSQL accepted connections (retry backoff capped at 2 s)", time.Since(up).Round(time.Millisecond))
	if h := health(); h != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v once ready, want SERVING", h)
	}
	if done, err := p.Exited(); done {
		t.Fatalf("serve exited: %v", err)
	}

	out, errOut, code := cli(t, dir, "keys", "create", "--config", conf, "--workspace", "w", "--name", "n", "--json")
	if code != 0 {
		t.Fatalf("keys create: exit %d: %s", code, errOut)
	}
	key := mustJSON(t, out).Key
	conn, err := grpc.NewClient(serving(t, p)[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Path: "/", Headers: map[string]string{"x-api-key": key}}},
	}})
	if err != nil || r.GetOkResponse() == nil {
		t.Fatalf("Check with a key from the store: %v, %v", r, err)
	}
	p.Signal(syscall.SIGTERM)
	if code := exitCode(t, p, 15*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	noPanic(t, p.Output())
	if strings.Contains(p.Output(), testenv.PGPassword) {
		t.Fatal("the log shows the database password")
	}
}

// A refused login is not something to wait for: serve exits 1 with the
// server's error, without the password.
func TestServeWrongPostgresPasswordExits(t *testing.T) {
	pg := testenv.StartPostgres(t)
	const pw = "n0t-the-Passw0rd"
	p := startServe(t, "", "--config", startupConfig(t, t.TempDir(), strings.Replace(pg.URL(), testenv.PGPassword, pw, 1)))
	code := exitCode(t, p, 20*time.Second)
	out := p.Output()
	noPanic(t, out)
	if code != 1 || !strings.Contains(out, "password authentication failed") || strings.Contains(out, pw) {
		t.Fatalf("exit %d, want 1 with the server's error and without the password:\n%s", code, out)
	}
}
