//go:build integration

package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// stateListener runs s.ListenState and reports each state change on a channel.
func stateListener(t *testing.T, s *Store) <-chan bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	states := make(chan bool, 1000)
	done := make(chan error, 1)
	go func() {
		done <- s.ListenState(ctx, func() {}, func(up bool) { states <- up })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ListenState: %v", err)
		}
	})
	return states
}

// waitState waits for state want (skipping repeats of the other) and returns how long it took.
func waitState(t *testing.T, states <-chan bool, want bool, within time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	timeout := time.After(within)
	for {
		select {
		case got := <-states:
			if got == want {
				return time.Since(start)
			}
		case <-timeout:
			t.Fatalf("%s: state %v not reported within %v", what, want, within)
		}
	}
}

// TestListenStateAndBackoffCap reports LISTEN's state: down at once when its
// connection is terminated (pg_terminate_backend), up again within the minimum
// backoff; and after a 2.5 s outage, up within the backoff cap (1 s) of the
// server's return rather than the old 5 s cap.
func TestListenStateAndBackoffCap(t *testing.T) {
	p := testenv.StartPostgres(t)
	url := newDB(t, p)
	a, b := open(t, url, Options{}), open(t, url, Options{})
	states := stateListener(t, b)
	waitState(t, states, true, 5*time.Second, "first connection")

	for i := range 3 {
		var n int
		if err := a.pool.QueryRow(ctxT(t), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n); err != nil || n != 1 {
			t.Fatalf("terminate the listener: %d terminated, %v", n, err)
		}
		down := waitState(t, states, false, time.Second, "listener terminated")
		up := waitState(t, states, true, 2*time.Second, "listener back")
		t.Logf("termination %d: down reported after %v, listening again %v later", i, down, up)
		if up > 500*time.Millisecond {
			t.Fatalf("listening again %v after termination, want within 500ms", up)
		}
	}

	p.Stop()
	waitState(t, states, false, 5*time.Second, "server stopped")
	time.Sleep(2500 * time.Millisecond) // an outage long enough to reach the backoff cap
	p.Start()
	up := waitState(t, states, true, 10*time.Second, "server back")
	t.Logf("after a 2.5 s outage: listening again %v after the server was ready", up)
	if up > 1200*time.Millisecond {
		t.Fatalf("listening again %v after the server came back, want within the 1s backoff cap", up)
	}
}
