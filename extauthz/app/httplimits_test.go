package app

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// slowClient sends a request's headers promising a body, then trickles the
// body a byte per gap until the server closes the connection, and reports how
// long after connecting that was (or an error when it did not within limit).
func slowClient(addr, path string, gap, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: keyauthz\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{", path); err != nil {
		return 0, err
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(gap)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	_ = c.SetReadDeadline(start.Add(limit))
	if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
		return time.Since(start), fmt.Errorf("%s: connection still open after %v: %w", path, time.Since(start).Round(time.Millisecond), err)
	}
	return time.Since(start), nil
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// TestHTTPSlowBodyCut: 300 clients send headers and trickle a body on the
// HTTP port, on every kind of route; each is cut within 10 s (http.read_timeout
// is 5 s by default) and gRPC Checks keep answering meanwhile.
func TestHTTPSlowBodyCut(t *testing.T) {
	const clients = 300
	cfg := testConfig(t)
	cfg.HTTP.MaxConns = clients + 10 // all connected at once: each is timed from its accept
	cfg.RateLimit.Default = apikey.Rate{N: 1_000_000, Per: time.Minute}
	a := startApp(t, cfg)
	secret := newSecret(t, a)
	good := dialGRPC(t, a.GRPCAddr())

	paths := []string{"/healthz", "/readyz", "/metrics", "/v1/keys", "/nope"}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var worst time.Duration
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			took, err := slowClient(a.HTTPAddr().String(), paths[i%len(paths)], 200*time.Millisecond, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			worst = max(worst, took)
			mu.Unlock()
		}()
	}
	start := time.Now()
	checks := 0
	for time.Since(start) < cfg.HTTP.ReadTimeout*3/4 {
		if err := checkAllowed(good, secret); err != nil {
			t.Fatalf("check %d with slow HTTP clients connected: %v", checks, err)
		}
		if checks%20 == 0 {
			if err := checkAllowed(dialGRPC(t, a.GRPCAddr()), secret); err != nil {
				t.Fatalf("check on a new connection with slow HTTP clients connected: %v", err)
			}
		}
		checks++
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d slow clients, the last cut %v after connecting; %d checks answered meanwhile", clients, worst.Round(time.Millisecond), checks)
}
