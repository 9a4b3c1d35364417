package load

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// Server is a running ext_authz server under test: keyauthz or the no-op.
type Server struct {
	Name string
	Proc *testenv.Proc
	GRPC string // host:port
	HTTP string // host:port of keyauthz's health/metrics listener; "" for the no-op
}

// KeyauthzConfig is what a scenario changes in keyauthz's configuration.
type KeyauthzConfig struct {
	Store    string // SQLite file
	StoreURL string // store.url as is (e.g. postgres://…); overrides Store
	// StatementTimeout is store.statement_timeout (postgres); 0 keeps the default.
	StatementTimeout time.Duration
	// ReadyTimeout bounds the wait for /readyz; 0 means 20 s.
	ReadyTimeout time.Duration
	Pepper       string   // pepper file
	Redis        string   // host:port: use the Redis limiter
	NegativeSize int      // cache.negative_size; 0 keeps the default
	CacheSize    int      // cache.size; 0 keeps the default
	Pprof        bool     // serve /debug/pprof
	Env          []string // extra environment, e.g. GOMAXPROCS=1
	GRPCListen   string   // grpc.listen, e.g. unix:///path; "" picks a free loopback port
	Throttle     string   // throttle.unknown_keys_per_source, e.g. 20/h; "" leaves the throttle off
	HTTPAuthz    string   // http_authz.listen, host:port; "" leaves the HTTP authorization listener off
}

// DefaultRate is the scenarios' ratelimit.default: high enough that no
// hot key is ever limited, so the limiter runs its full path and allows.
const DefaultRate = "1000000000/s"

func (c KeyauthzConfig) yaml(grpcAddr, httpAddr string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "grpc:\n  listen: %q\n  drain_timeout: 2s\n", grpcAddr)
	fmt.Fprintf(&b, "http:\n  listen: %q\n  pprof: %v\n", httpAddr, c.Pprof)
	store := "sqlite://" + c.Store
	if c.StoreURL != "" {
		store = c.StoreURL
	}
	fmt.Fprintf(&b, "store:\n  url: %q\n", store)
	if c.StatementTimeout > 0 {
		fmt.Fprintf(&b, "  statement_timeout: %s\n", c.StatementTimeout)
	}
	fmt.Fprintf(&b, "pepper:\n  current: 1\n  versions: [{version: 1, file: %q}]\n", c.Pepper)
	fmt.Fprintf(&b, "ratelimit:\n  default: %q\n", DefaultRate)
	if c.Redis != "" {
		fmt.Fprintf(&b, "  backend: redis\n  redis:\n    addrs: [%q]\n", c.Redis)
	}
	if c.NegativeSize > 0 || c.CacheSize > 0 {
		b.WriteString("cache:\n")
		if c.CacheSize > 0 {
			fmt.Fprintf(&b, "  size: %d\n", c.CacheSize)
		}
		if c.NegativeSize > 0 {
			fmt.Fprintf(&b, "  negative_size: %d\n", c.NegativeSize)
		}
	}
	if c.HTTPAuthz != "" {
		fmt.Fprintf(&b, "http_authz:\n  listen: %q\n", c.HTTPAuthz)
	}
	if c.Throttle != "" {
		fmt.Fprintf(&b, "throttle:\n  unknown_keys_per_source: %q\n", c.Throttle)
	}
	b.WriteString("log:\n  level: info\n")
	return b.String()
}

// StartKeyauthz writes the config into dir, runs `keyauthz serve` on cpus and
// waits for /readyz.
func StartKeyauthz(ctx context.Context, name, dir, bin, cpus string, c KeyauthzConfig) (*Server, error) {
	g := c.GRPCListen
	if g == "" {
		var err error
		if g, err = testenv.TryFreeAddr(); err != nil {
			return nil, err
		}
	}
	h, err := testenv.TryFreeAddr()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(cfg, []byte(c.yaml(g, h)), 0o600); err != nil {
		return nil, err
	}
	p, err := start(testenv.ProcOptions{Name: name, Log: filepath.Join(dir, name+".log"), CPUs: cpus, Env: c.Env, Bin: bin, Args: []string{"serve", "--config", cfg}})
	if err != nil {
		return nil, err
	}
	wait := c.ReadyTimeout
	if wait <= 0 {
		wait = 20 * time.Second
	}
	// Stop waiting as soon as keyauthz exits (WaitReady alone polls on until its timeout).
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.Done():
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := testenv.WaitReady(wctx, p, "http://"+h+"/readyz", wait); err != nil {
		if done, perr := p.Exited(); done {
			err = fmt.Errorf("exited: %v", perr)
		}
		_ = p.Stop(5 * time.Second)
		return nil, fmt.Errorf("keyauthz %s not ready: %v\n%s", name, err, p.Tail(4000))
	}
	return &Server{Name: name, Proc: p, GRPC: g, HTTP: h}, nil
}

// StartNoop runs the no-op server on cpus and waits until it answers a Check.
func StartNoop(ctx context.Context, dir, bin, cpus string, probe []byte) (*Server, error) {
	g, err := testenv.TryFreeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"-listen", g}, strings.Fields(os.Getenv("KZLOAD_NOOP_ARGS"))...) // experiments only
	p, err := start(testenv.ProcOptions{Name: "noop", Log: filepath.Join(dir, "noop.log"), CPUs: cpus, Bin: bin, Args: args})
	if err != nil {
		return nil, err
	}
	s := &Server{Name: "noop", Proc: p, GRPC: g}
	if err := s.waitCheck(ctx, probe); err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, fmt.Errorf("noop not answering: %v\n%s", err, p.Tail(4000))
	}
	return s, nil
}

// waitCheck polls until one Check call is answered.
func (s *Server) waitCheck(ctx context.Context, probe []byte) error {
	return testenv.PollContext(ctx, 20*time.Second, func() error {
		if done, err := s.Proc.Exited(); done {
			return fmt.Errorf("exited: %v", err)
		}
		c, err := Dial(s.GRPC, 1, TransportH2)
		if err != nil {
			return err
		}
		defer c.Close()
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err = c.caller(0)(cctx, probe)
		return err
	})
}

// Metrics scrapes keyauthz's /metrics.
func (s *Server) Metrics() (Samples, error) {
	if s.HTTP == "" {
		return Samples{}, nil
	}
	return Scrape("http://" + s.HTTP + "/metrics")
}

// Stop ends the server; a keyauthz that does not exit cleanly is an error.
func (s *Server) Stop() error { return s.Proc.Stop(10 * time.Second) }
