package binary

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// startupConfig writes a config (private pepper, loopback port-0 listeners,
// the given store URL) into dir and returns its path.
func startupConfig(t *testing.T, dir, storeURL string) string {
	t.Helper()
	pepper := filepath.Join(dir, "pepper")
	if err := os.WriteFile(pepper, []byte(strings.Repeat("startup-pepper-", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "keyauthz.yaml")
	yaml := fmt.Sprintf("grpc: {listen: \"127.0.0.1:0\", drain_timeout: 2s}\nhttp: {listen: \"127.0.0.1:0\"}\n"+
		"store: {url: %q}\npepper: {current: 1, versions: [{version: 1, file: %q}]}\n", storeURL, pepper)
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return conf
}

// noPanic fails the test if the output shows a Go panic or crash dump.
func noPanic(t *testing.T, out string) {
	t.Helper()
	for _, s := range []string{"panic:", "goroutine ", "SIGSEGV", "nil pointer"} {
		if strings.Contains(out, s) {
			t.Fatalf("output shows %q:\n%s", s, out)
		}
	}
}

// A store that cannot be opened ends serve with exit 1 and the real error, never a panic.
func TestServeBadStoreExits(t *testing.T) {
	const pw = "Sup3rS3cret"
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database\n", 300)), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ url, want string }{
		"sqlite file is not a database": {"sqlite://" + garbage, "file is not a database"},
		"sqlite path is a directory":    {"sqlite://" + dir, "is a directory"},
		"sqlite dir missing":            {"sqlite://" + filepath.Join(dir, "no", "keys.db"), "no such file or directory"},
		"file store missing":            {"file://" + filepath.Join(dir, "missing.yaml"), "no such file or directory"},
		"postgres bad option":           {"postgres://u:" + pw + "@127.0.0.1:1/k?pool_max_conns=x", "pool_max_conns"},
		"postgres malformed url":        {"postgres://u:ab/" + pw + "@127.0.0.1/k", "store.url"},
		"postgres malformed query":      {"postgres://u@127.0.0.1:x/k?password=" + pw, "store.url"},
	} {
		t.Run(name, func(t *testing.T) {
			p := startServe(t, "", "--config", startupConfig(t, t.TempDir(), c.url))
			code := exitCode(t, p, 20*time.Second)
			out := p.Output()
			noPanic(t, out)
			if code != 1 || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, want 1 with %q in:\n%s", code, c.want, out)
			}
			if strings.Contains(out, pw) {
				t.Fatalf("output shows the password:\n%s", out)
			}
		})
	}
}

// PostgreSQL refusing connections at start: serve does not exit; it answers
// /readyz 503 and gRPC health NOT_SERVING, logs the real error (without the
// URL's password), and stops cleanly on SIGTERM.
func TestServeWaitsForUnreachablePostgres(t *testing.T) {
	const pw = "Sup3rS3cret"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connections are refused
	p := startServe(t, "", "--config", startupConfig(t, t.TempDir(), "postgres://u@"+addr+"/k?sslmode=disable&password="+pw))
	waitingForStore(t, p)
	p.Signal(syscall.SIGTERM)
	code := exitCode(t, p, 15*time.Second)
	out := p.Output()
	noPanic(t, out)
	if code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	if !strings.Contains(out, "connection refused") || strings.Contains(out, pw) {
		t.Fatalf("output should show the real error and not the password:\n%s", out)
	}
}

// SIGTERM while the store is being opened (here: a PostgreSQL server that
// accepts the connection and never answers) is a clean stop: exit 0.
func TestServeSIGTERMWhileOpeningStore(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	p := startServe(t, "", "--config", startupConfig(t, t.TempDir(), "postgres://u:pw@"+l.Addr().String()+"/k?sslmode=disable&connect_timeout=30"))
	select {
	case c := <-accepted:
		defer c.Close()
	case <-p.Done():
		t.Fatalf("serve exited before connecting: %v", p.Err())
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not connect to the store")
	}
	p.Signal(syscall.SIGTERM)
	code := exitCode(t, p, 10*time.Second)
	noPanic(t, p.Output())
	if code != 0 {
		t.Fatalf("exit %d after SIGTERM while opening the store, want 0:\n%s", code, p.Output())
	}
}

// SIGTERM at any moment of a SQLite start is a clean stop: exit 0 (or, before
// the Go runtime installed its handler, death by SIGTERM), never a panic.
func TestServeSIGTERMRightAfterStart(t *testing.T) {
	for _, d := range []time.Duration{0, 5 * time.Millisecond, 15 * time.Millisecond, 30 * time.Millisecond, 60 * time.Millisecond, 100 * time.Millisecond} {
		dir := t.TempDir()
		p := startServe(t, "", "--config", startupConfig(t, dir, "sqlite://"+filepath.Join(dir, "keys.db")))
		time.Sleep(d) // the delay under test, not a wait for an event
		p.Signal(syscall.SIGTERM)
		code := exitCode(t, p, 15*time.Second)
		noPanic(t, p.Output())
		var ee *exec.ExitError
		killed := errors.As(p.Err(), &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM
		if code != 0 && !killed {
			t.Fatalf("SIGTERM %v after start: exit %d, want 0:\n%s", d, code, p.Output())
		}
	}
}

// waitingForStore checks that p, started with PostgreSQL down, serves and
// retries without exiting: several retries in, gRPC health says NOT_SERVING
// and /readyz 503. It returns the probes.
func waitingForStore(t *testing.T, p *testenv.Proc) (func() healthpb.HealthCheckResponse_ServingStatus, func() int) {
	t.Helper()
	health, readyz := startupProbes(t, serving(t, p))
	poll(t, "gRPC health answers", 10*time.Second, func() bool { return health() != healthpb.HealthCheckResponse_UNKNOWN })
	poll(t, "a retry logged", 10*time.Second, func() bool { return strings.Contains(p.Output(), "store still not reachable") })
	if h, r := health(), readyz(); h != healthpb.HealthCheckResponse_NOT_SERVING || r != http.StatusServiceUnavailable {
		t.Fatalf("PostgreSQL down: health %v, /readyz %d; want NOT_SERVING, 503", h, r)
	}
	return health, readyz
}

// startupProbes returns gRPC health and /readyz probes of a server at addrs.
func startupProbes(t *testing.T, addrs [2]string) (func() healthpb.HealthCheckResponse_ServingStatus, func() int) {
	t.Helper()
	conn, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	hcl := &http.Client{Timeout: 2 * time.Second}
	t.Cleanup(hcl.CloseIdleConnections)
	return func() healthpb.HealthCheckResponse_ServingStatus {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return healthpb.HealthCheckResponse_UNKNOWN
			}
			return r.GetStatus()
		}, func() int {
			r, err := hcl.Get("http://" + addrs[1] + "/readyz")
			if err != nil {
				return 0
			}
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
			return r.StatusCode
		}
}
