// Package testenv starts the real processes the e2e, integration, binary and
// load tests talk to (Envoy, keyauthz, an upstream HTTP server, Redis,
// PostgreSQL, any child process) and stops them, keeping their logs.
//
// Functions taking a testing.TB fail the test and clean up in t.Cleanup; their
// Try variants return errors instead, for code that runs outside go test (the
// load harness, test/load/cmd/kzload).
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// LogDirEnv names the environment variable of a directory where the logs of the
// processes of a failed test are copied (for CI artifacts); unset keeps them only
// in the test output.
const LogDirEnv = "E2E_LOG_DIR"

// pollEvery is how often Eventually retries.
const pollEvery = 20 * time.Millisecond

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := TryFreePort()
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return p
}

// TryFreePort returns a loopback TCP port that was free a moment ago, chosen
// below the kernel's ephemeral range (32768 and up on Linux): a port the
// kernel hands out for port 0 is also what it picks for the local end of
// outgoing connections, so between this call and a server's bind another
// process's client could take it ("address already in use").
func TryFreePort() (int, error) {
	for range 100 {
		port := minPort + rand.IntN(maxPort-minPort)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// minPort and maxPort bound the ports TryFreePort picks from (below the
// ephemeral range, above the well-known and most registered service ports).
const minPort, maxPort = 12000, 32000 // freePortPair needs maxPort-minPort >= 2×10000

// FreeAddr returns "127.0.0.1:PORT" for a port that was free a moment ago
// (nothing listens on it: a connection is refused).
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := TryFreeAddr()
	if err != nil {
		t.Fatalf("free address: %v", err)
	}
	return a
}

// TryFreeAddr returns "127.0.0.1:PORT" for a port that was free a moment ago.
func TryFreeAddr() (string, error) {
	p, err := TryFreePort()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(p), nil
}

// freePortPair returns a loopback port that is free now together with
// port+10000 (a Redis cluster node's bus port).
func freePortPair() (int, error) {
	for range 50 {
		port := minPort + rand.IntN((maxPort-minPort)/2) // both below the ephemeral range
		a, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		a.Close()
		if err != nil {
			continue
		}
		b.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair for a cluster node")
}

// Eventually calls f until it returns nil, failing the test with f's last error
// when timeout passes first; it returns how long that took.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	if err := Poll(timeout, f); err != nil {
		t.Fatalf("%s: not within %v: %v", what, timeout, err)
	}
	return time.Since(start)
}

// Until waits until cond holds, as Eventually does.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return Eventually(t, timeout, what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// Poll calls f until it returns nil or timeout passes, and returns f's last error.
func Poll(timeout time.Duration, f func() error) error {
	return PollContext(context.Background(), timeout, f)
}

// PollContext is Poll that also gives up when ctx ends.
func PollContext(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(pollEvery)
	}
}

// WaitReady polls url (e.g. keyauthz's /readyz) until it answers 200, giving
// up when p exits, ctx ends or timeout passes.
func WaitReady(ctx context.Context, p *Proc, url string, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	defer c.CloseIdleConnections()
	return PollContext(ctx, timeout, func() error {
		if done, err := p.Exited(); done {
			return fmt.Errorf("%s exited: %v", p.Name, err)
		}
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
		}
		return nil
	})
}

// RepoRoot returns the module root: the nearest directory above the working
// directory that holds go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := TryRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TryRepoRoot returns the module root: the nearest directory above the
// working directory that holds go.mod.
func TryRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getwd: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", errors.New("no go.mod above the working directory: run from the keyauthz module")
		}
		dir = up
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
