package app

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// gatedStore fails Ping until opened, and can hold Lookups until released.
type gatedStore struct {
	apikey.Store
	ready   atomic.Bool
	hold    atomic.Bool
	release chan struct{}
	entered chan struct{}
}

func (g *gatedStore) Ping(ctx context.Context) error {
	if !g.ready.Load() {
		return errors.New("not yet")
	}
	return g.Store.Ping(ctx)
}

func (g *gatedStore) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	if g.hold.Load() {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.Store.Lookup(ctx, d)
}

func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.GRPC.Listen, cfg.HTTP.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Store.URL = "sqlite://" + filepath.Join(t.TempDir(), "keys.db")
	cfg.GRPC.DrainTimeout = 5 * time.Second
	return cfg
}

// waitFor waits until cond holds, for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Until(t, 5*time.Second, what, cond)
}

func TestHealthTransitionsAndDrain(t *testing.T) {
	cfg := testConfig(t)
	p, _ := sqlitePath(cfg.Store.URL)
	st, err := sqlite.Open(context.Background(), p, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: st, release: make(chan struct{}), entered: make(chan struct{}, 1)}
	a, err := New(context.Background(), cfg, zap.NewNop(), Options{Embedded: true, Store: g})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()

	conn, err := grpc.NewClient(a.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	status := func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return r.GetStatus()
	}
	readyz := func() int {
		r, err := http.Get("http://" + a.HTTPAddr().String() + "/readyz")
		if err != nil {
			return 0
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode
	}
	waitFor(t, "gRPC up", func() bool { return status("") != healthpb.HealthCheckResponse_UNKNOWN })
	if s := status(""); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("before the store answers: %v, want NOT_SERVING", s)
	}
	if c := readyz(); c != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before the store answers: %d", c)
	}

	g.ready.Store(true)
	waitFor(t, "SERVING", func() bool {
		return status("") == healthpb.HealthCheckResponse_SERVING && status(authv3.Authorization_ServiceDesc.ServiceName) == healthpb.HealthCheckResponse_SERVING
	})
	if c := readyz(); c != http.StatusOK {
		t.Fatalf("/readyz when serving: %d", c)
	}

	// A Check in flight when shutdown starts is drained, not cut off.
	m, err := apikey.NewManager(st, a.format, a.hasher, maxKeys(&cfg))
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := m.Create(context.Background(), apikey.Spec{Workspace: "acme", Name: "drain"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	g.hold.Store(true)
	checked := make(chan *authv3.CheckResponse, 1)
	go func() {
		r, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Path: "/", Headers: map[string]string{"x-api-key": secret}}},
		}})
		if err != nil {
			t.Errorf("in-flight check failed during drain: %v", err)
		}
		checked <- r
	}()
	<-g.entered
	wctx, unwatch := context.WithCancel(context.Background())
	defer unwatch()
	w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	stop()
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("on shutdown health says %v (%v), want NOT_SERVING", r.GetStatus(), err)
	}
	unwatch()
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v with a check in flight", err)
	default:
	}
	close(g.release)
	if r := <-checked; r.GetOkResponse() == nil {
		t.Fatalf("drained check: %v", r)
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
