package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

// TestHTTPAuthzServesAndDrains: http_authz answers with the Check decision,
// and on shutdown stops accepting while a decision in flight still gets its answer.
func TestHTTPAuthzServesAndDrains(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTPAuthz.Listen = "127.0.0.1:0"
	cfg.HTTPAuthz.PathPrefix = "/authz"
	p, _ := sqlitePath(cfg.Store.URL)
	st, err := sqlite.Open(context.Background(), p, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: st, release: make(chan struct{}), entered: make(chan struct{}, 1)}
	g.ready.Store(true)
	a, err := New(context.Background(), cfg, zap.NewNop(), Options{Embedded: true, Store: g})
	if err != nil {
		t.Fatal(err)
	}
	addr := a.authz.lis.Addr().String()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()

	m, err := apikey.NewManager(st, a.format, a.hasher, maxKeys(&cfg))
	if err != nil {
		t.Fatal(err)
	}
	rec, secret, err := m.Create(context.Background(), apikey.Spec{Workspace: "acme", Name: "http"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	_, other, err := m.Create(context.Background(), apikey.Spec{Workspace: "acme", Name: "drain"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	get := func(key string) (*http.Response, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/authz/v1/things", nil)
		if key != "" {
			req.Header.Set("X-Api-Key", key)
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		r, err := c.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, r.Body)
			r.Body.Close()
		}
		return r, err
	}
	r, err := get(secret)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode != 200 || r.Header.Get("X-Keyauthz-Key-Id") != rec.ID || r.Header.Get("X-Ratelimit-Limit") != "240" {
		t.Fatalf("allow: %d %v", r.StatusCode, r.Header)
	}
	if r, err = get(""); err != nil || r.StatusCode != 401 || r.Header.Get("Www-Authenticate") == "" {
		t.Fatalf("no key: %v %v", r, err)
	}

	g.hold.Store(true) // the next store read waits: a decision in flight
	inflight := make(chan *http.Response, 1)
	go func() {
		r, err := get(other)
		if err != nil {
			t.Errorf("in-flight request failed during drain: %v", err)
		}
		inflight <- r
	}()
	<-g.entered
	stop()
	waitFor(t, "http_authz to stop accepting", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v with a decision in flight", err)
	default:
	}
	close(g.release)
	if r := <-inflight; r == nil || r.StatusCode != 200 {
		t.Fatalf("drained decision: %v", r)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after drain")
	}
}

// TestHTTPAuthzOffByDefault: no listener unless http_authz.listen is set.
func TestHTTPAuthzOffByDefault(t *testing.T) {
	a, err := New(context.Background(), testConfig(t), zap.NewNop(), Options{Embedded: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.closeAll()
	if a.authz.lis != nil || a.authz.srv != nil || a.authz.addr() != "off" {
		t.Fatalf("http_authz on without http_authz.listen: %v", a.authz.addr())
	}
}
