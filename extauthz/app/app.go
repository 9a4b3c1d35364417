// Package app is the one place that wires configuration into keyauthz's
// components, runs them, and stops them in order.
package app

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/fastgrpc"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
	"github.com/keyauthz/keyauthz/extauthz/store/postgres"
	"github.com/keyauthz/keyauthz/extauthz/ui"
	"github.com/keyauthz/keyauthz/extauthz/usage"
)

// Options carry what a caller may inject instead of what the config names.
type Options struct {
	Embedded bool                 // no config file: create the pepper beside the SQLite file
	Store    apikey.Store         // use this store instead of opening cfg.Store.URL
	Registry *prometheus.Registry // metrics registry; a fresh one when nil
	// CheckPeppers, for NewManager, refuses a store holding live keys under a
	// pepper version the config lacks, as serve always does (the commands
	// that hash secrets set it; list, audit and delete do not need it).
	CheckPeppers bool
	// Level, when set, is the process's log level: SIGHUP applies log.level to it.
	Level *zap.AtomicLevel
	// Reload, when set, loads the configuration again (as serve did, flags
	// applied) for SIGHUP; nil reloads only certificates and the key file.
	Reload func() (config.Config, error)
}

// App is a running keyauthz: gRPC Check + health, HTTP health, metrics and admin.
type App struct {
	cfg      config.Config
	log      *zap.Logger
	store    apikey.Store
	hasher   *apikey.Hasher
	format   *apikey.Format
	cache    *keycache.Cache
	follower *keycache.Follower
	limiter  interface{ Close() error }
	check    *extauthz.Service
	usage    *usage.Recorder
	admin    *admin.Handler
	health   *health.Server
	grpc     *grpc.Server
	http     *http.Server
	glis     net.Listener
	hlis     net.Listener
	hot      hotState  // what SIGHUP reloads: certificates, admin tokens, log level
	authz    authzHTTP // http_authz: the decision over plain HTTP; zero when off
	reg      *prometheus.Registry
	state    atomic.Int32 // stateStarting, stateReady, stateDegraded, stateStopping
	bg       *background

	feedGrace time.Duration // how long change-feed polls may fail before /readyz says degraded
}

const (
	stateStarting int32 = iota
	stateReady
	stateDegraded
	stateStopping
)

// New builds every component from cfg and binds the listeners; Run serves.
func New(ctx context.Context, cfg config.Config, log *zap.Logger, opt Options) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, reg: opt.Registry, feedGrace: feedGrace}
	defer func() {
		if err != nil {
			a.closeAll()
		}
	}()
	if a.reg == nil {
		a.reg = prometheus.NewRegistry()
		a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if a.format, err = apikey.NewFormat(cfg.Keys.Prefix, cfg.Keys.MaxLength, cfg.Keys.Imported); err != nil {
		return nil, &config.FieldError{Path: "keys.prefix", Msg: err.Error()}
	}
	setGRPCLogger(log.Named("grpc"))
	a.hot.lvl, a.hot.level = opt.Level, cfg.Log.Level
	if err = a.loadTLS(&cfg); err != nil { // certificate files first: nothing is created before they are checked
		return nil, err
	}
	// Everything the config names is checked, and the listeners bound, before
	// the store or the embedded default's pepper is created on disk.
	if _, err = usesDefaultPepper(&cfg, opt.Embedded); err != nil {
		return nil, err
	}
	if err = readPeppersFirst(&cfg); err != nil {
		return nil, err
	}
	var toks []admin.Token
	if len(cfg.Admin.Tokens) > 0 {
		if toks, err = adminTokens(cfg.Admin.Tokens); err != nil {
			return nil, err
		}
	}
	if a.grpc, err = newGRPC(&cfg.GRPC, a.grpcTLS()...); err != nil {
		return nil, err
	}
	if a.glis, err = listen(cfg.GRPC.Listen); err != nil {
		return nil, &config.FieldError{Path: "grpc.listen", Msg: err.Error()}
	}
	if a.hlis, err = listen(cfg.HTTP.Listen); err != nil {
		return nil, &config.FieldError{Path: "http.listen", Msg: err.Error()}
	}
	if a.authz, err = bindAuthz(&cfg.HTTPAuthz); err != nil {
		return nil, err
	}
	a.store = opt.Store
	if a.store == nil {
		if a.store, err = openStoreAtStart(ctx, &cfg, log.Named("store")); err != nil {
			return nil, err
		}
	}
	if p, ok := a.store.(*pendingStore); ok { // PostgreSQL, opened later: check the peppers then
		if a.hasher, err = peppers(&cfg, opt.Embedded, log); err != nil {
			return nil, err
		}
		open, h := p.open, a.hasher
		p.open = func(ctx context.Context) (apikey.Store, error) {
			s, err := open(ctx)
			if err != nil {
				return nil, err
			}
			if err := checkPeppers(ctx, s, h); err != nil {
				s.Close()
				return nil, err
			}
			return s, nil
		}
	} else if a.hasher, err = storeHasher(ctx, &cfg, opt.Embedded, true, true, a.store, log); err != nil {
		return nil, err
	}
	lat, err := newLatency(a.reg)
	if err != nil {
		return nil, err
	}
	a.cache, err = keycache.New(cacheSource(a.store), keycache.Options{
		Size: cfg.Cache.Size, TTL: cfg.Cache.TTL, NegativeSize: cfg.Cache.NegativeSize,
		NegativeTTL: cfg.Cache.NegativeTTL, MaxStaleness: cfg.Store.MaxStaleness, ReadTimeout: cfg.Store.Timeout,
		ObserveRead: lat.storeRead, Metadata: cfg.Headers.Metadata,
	}, log.Named("cache"))
	if err != nil {
		return nil, err
	}
	if a.follower, err = keycache.NewFollower(a.store, a.cache, cfg.Store.FollowInterval, log.Named("follower")); err != nil {
		return nil, err
	}
	if err = registerCacheMetrics(a.reg, a.cache, a.follower); err != nil {
		return nil, err
	}
	lim, err := newLimiter(&cfg, log.Named("ratelimit"))
	if err != nil {
		return nil, err
	}
	a.limiter = lim
	if r, ok := lim.(*redisLimiter); ok {
		if err = registerRedisMetrics(a.reg, r.Redis); err != nil {
			return nil, err
		}
	}
	metrics, err := extauthz.NewMetrics(a.reg)
	if err != nil {
		return nil, err
	}
	a.bg = newBackground(a.store, a.cache, a.hasher, log.Named("bg"))
	if a.usage, err = usage.New(a.store, cfg.Usage.FlushInterval, cfg.Usage.Retention, log.Named("usage")); err != nil {
		return nil, err
	}
	if err = registerUsageMetrics(a.reg, a.usage); err != nil {
		return nil, err
	}
	if len(toks) > 0 {
		mgr, err := apikey.NewManager(a.store, a.format, a.hasher, maxKeys(&cfg))
		if err != nil {
			return nil, err
		}
		a.hot.mgr, a.hot.adminOpt = mgr, admin.Options{MaxBody: cfg.Admin.MaxBody, OnChange: a.follower.Poll, Observe: lat.admin}
		if a.admin, err = admin.New(mgr, toks, a.hot.adminOpt, log.Named("admin")); err != nil {
			return nil, err
		}
		a.hot.admin.Store(a.admin)
	} else {
		log.Named("admin").Info(adminOff)
	}
	wsRate := map[string]apikey.Rate{}
	for name, w := range cfg.Workspaces {
		wsRate[name] = w.RateLimit
	}
	a.check, err = extauthz.New(a.format, a.hasher, a.cache, lim, metrics, extauthz.Options{
		Headers: cfg.Headers.APIKey, Bearer: cfg.Headers.Bearer,
		KeyIDHeader: cfg.Headers.KeyID, WorkspaceHeader: cfg.Headers.Workspace,
		Templates: cfg.Ownership.PathTemplates, DefaultRate: cfg.RateLimit.Default, WorkspaceRate: wsRate,
		Body: cfg.Response.Body, Realm: cfg.Response.Realm, RateHeaders: cfg.Response.RateHeaders, Reset: cfg.Response.Reset,
		RevokedUse: a.bg.revokedUse, Rehash: a.bg.rehash, Used: a.usage.Used, Metadata: cfg.Headers.Metadata,
		ReportOnly: cfg.Mode == config.ModeReportOnly,
		Throttle: extauthz.ThrottleOptions{UnknownKeys: cfg.Throttle.UnknownKeysPerSource,
			TrustedProxies: cfg.Throttle.TrustedProxies, Sources: cfg.Throttle.Sources},
	}, log.Named("check"))
	if err != nil {
		return nil, err
	}
	a.health = health.NewServer()
	a.setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	if cfg.GRPC.Codec == config.CodecFast {
		fastgrpc.Register(a.grpc, a.check)
	} else {
		authv3.RegisterAuthorizationServer(a.grpc, a.check)
	}
	healthpb.RegisterHealthServer(a.grpc, a.health)
	a.glis, a.hlis = limitListeners(a.glis, a.hlis, &cfg, log)
	if err = a.setupAuthz(); err != nil {
		return nil, err
	}
	a.http = newHTTPServer(&cfg.HTTP, a.routes())
	a.hlis = a.httpTLS(a.hlis, a.http) // http.tls: admin, health and metrics over TLS
	return a, nil
}

// Run serves until ctx is done, then drains: health NOT_SERVING, GracefulStop with
// the drain deadline (http_authz drained alongside, within it), HTTP shutdown,
// background flushes, then caches and stores close.
func (a *App) Run(ctx context.Context) error {
	log := a.log.Named("app")
	errc := make(chan error, 4) // gRPC, HTTP, http_authz, a store that fails to open late
	a.authz.serve(errc)
	go func() { errc <- a.grpc.Serve(a.glis) }()
	go func() {
		if err := a.http.Serve(a.hlis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	bgctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(bgctx) }()
	}
	run(a.watchStore)
	run(func(ctx context.Context) { _ = a.follower.Run(ctx) })
	listen := func(ctx context.Context, pg *postgres.Store) { // push: evict on NOTIFY; polling stays the backstop
		_ = pg.ListenState(ctx, func() {
			if err := a.follower.Poll(ctx); err != nil && ctx.Err() == nil {
				log.Debug("poll after notify", zap.Error(err))
			}
		}, a.follower.SetPushed) // LISTEN down: the follower polls fast meanwhile
	}
	if pg, ok := a.store.(*postgres.Store); ok {
		run(func(ctx context.Context) { listen(ctx, pg) })
	}
	if p, ok := a.store.(*pendingStore); ok { // PostgreSQL not reachable at start: open it, then listen
		run(func(ctx context.Context) {
			s, err := p.openLoop(ctx)
			if err != nil {
				errc <- err
			}
			if pg, ok := s.(*postgres.Store); ok {
				listen(ctx, pg)
			}
		})
	}
	run(a.bg.run)
	a.runTLS(run) // certificate files re-read every second
	run(a.usage.Run)
	log.Info("serving", zap.String("grpc", a.glis.Addr().String()), zap.String("http", a.hlis.Addr().String()), zap.String("http_authz", a.authz.addr()),
		zap.String("store", config.RedactURL(a.cfg.Store.URL)), zap.Stringer("ratelimit", a.cfg.RateLimit.Backend),
		zap.Stringer("codec", a.cfg.GRPC.Codec))

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error("serving failed", zap.Error(err))
	}
	log.Info("draining", zap.Duration("deadline", a.cfg.GRPC.DrainTimeout))
	a.state.Store(stateStopping)
	a.health.Shutdown() // NOT_SERVING for every service, and stays so
	// The HTTP decisions (http_authz) drain alongside gRPC's, within the same deadline.
	authzDone := a.authz.drain(a.cfg.GRPC.DrainTimeout, log)
	done := make(chan struct{})
	go func() { a.grpc.GracefulStop(); close(done) }()
	t := time.NewTimer(a.cfg.GRPC.DrainTimeout)
	select {
	case <-done:
		t.Stop()
	case <-t.C:
		log.Warn("drain deadline passed, closing remaining streams")
		a.grpc.Stop()
		<-done
	}
	<-authzDone
	hctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = a.http.Shutdown(hctx)
	cancel()
	stop()
	wg.Wait()
	a.bg.flush()
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := a.usage.Flush(fctx); err != nil {
		log.Warn("flush last-used times", zap.Error(err))
	}
	cancel()
	a.closeAll()
	log.Info("stopped")
	return err
}

func (a *App) closeAll() {
	if a.cache != nil {
		_ = a.cache.Close()
	}
	if a.limiter != nil {
		_ = a.limiter.Close()
	}
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.log.Warn("close store", zap.Error(err))
		}
	}
	if a.glis != nil {
		_ = a.glis.Close()
	}
	if a.hlis != nil {
		_ = a.hlis.Close()
	}
	a.authz.close()
}

// setHealth sets the gRPC health of the server ("") and of the ext_authz service.
func (a *App) setHealth(s healthpb.HealthCheckResponse_ServingStatus) {
	a.health.SetServingStatus("", s)
	a.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, s)
}

// watchStore turns SERVING once the store answers, then keeps probing it:
// a store outage while the cache serves is "degraded", not down.
func (a *App) watchStore(ctx context.Context) {
	log := a.log.Named("health")
	tick := 100 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := a.store.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		prev := a.state.Load()
		switch {
		case err == nil && prev != stateReady:
			if a.state.CompareAndSwap(prev, stateReady) {
				a.setHealth(healthpb.HealthCheckResponse_SERVING)
				log.Info("store ready")
			}
			tick = 2 * time.Second
		case err != nil && prev == stateReady:
			if a.state.CompareAndSwap(prev, stateDegraded) {
				log.Warn("store unreachable, serving cached keys", zap.Error(err))
			}
			tick = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(tick):
		}
	}
}

// adminOff is the log line at start, and the /v1 answer, when no admin token is configured.
const adminOff = "admin api off: set admin.tokens to enable"

// feedGrace is how long the change feed's polls may fail before /readyz says
// degraded: a blip is retried on the next poll, a lasting failure is reported.
const feedGrace = 5 * time.Second

// feedFailing reports whether the change feed's polls have failed for at least
// a.feedGrace: keys changed on other replicas (revoked, rotated) may then stay
// cached here, up to cache.ttl.
func (a *App) feedFailing() bool {
	if a.follower.Healthy() {
		return false
	}
	since := a.follower.FailingSince()
	return !since.IsZero() && time.Since(since) >= a.feedGrace
}

func (a *App) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if p := a.tlsProblem(); p != "" && a.state.Load() != stateStopping { // clients refuse the handshake
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not_ready", "reason": p})
			return
		}
		switch a.state.Load() {
		case stateReady:
			if a.feedFailing() {
				writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "reason": "change feed failing; keys changed on other replicas may stay cached here"})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		case stateDegraded:
			writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "reason": "store unreachable; serving cached keys"})
		case stateStopping:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "stopping"})
		default:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting", "reason": "store not reachable yet"})
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	if a.admin != nil {
		mux.Handle("/v1/", a.adminHandler()) // SIGHUP may swap in new tokens
		// The API Access page (extauthz/ui), served only with the admin API it uses.
		if page, err := ui.New(a.log.Named("ui")); err != nil {
			a.log.Error("api access page off", zap.Error(err))
		} else {
			mux.Handle(ui.Prefix, page)
		}
	} else {
		mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusNotFound, map[string]string{"code": "admin_off", "field": "admin.tokens", "message": adminOff})
		})
	}
	if a.cfg.HTTP.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// grpcWindow is the HTTP/2 stream and connection flow-control window of the
// gRPC listener (test/load/cmd/noop uses the same).
const grpcWindow = 1 << 20

// newGRPC builds the gRPC server of c; extra adds options (TLS credentials).
func newGRPC(c *config.GRPC, extra ...grpc.ServerOption) (*grpc.Server, error) {
	var opts []grpc.ServerOption
	if c.Codec == config.CodecFast {
		if err := fastgrpc.Supported(); err != nil {
			return nil, &config.FieldError{Path: "grpc.codec", Msg: err.Error()}
		}
		opts = append(opts, fastgrpc.ServerOption())
	}
	opts = append(opts,
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: c.KeepaliveTime, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Fixed flow-control windows. grpc-go's default dynamic window estimates the
		// bandwidth-delay product with a PING (plus a WINDOW_UPDATE) on the first
		// request after each PING ACK: below saturation that is every Check, one
		// more frame out and one more wakeup for the peer's ACK. A CheckRequest is
		// a few KiB, far under these windows.
		grpc.StaticStreamWindowSize(grpcWindow),
		grpc.StaticConnWindowSize(grpcWindow),
	)
	bound := newCallBound(c.RequestTimeout)
	opts = append(opts, bound.options(c)...) // streams per connection, header size, slow requests
	opts = append(opts, extra...)            // TLS (extauthz/tlsconf) when grpc.tls is set
	srv := grpc.NewServer(opts...)
	bound.srv = srv
	return srv, nil
}

// listen binds host:port or unix:///path (a stale socket file is replaced).
func listen(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(p)
		}
		return net.Listen("unix", p)
	}
	return net.Listen("tcp", addr)
}

func newLimiter(cfg *config.Config, log *zap.Logger) (interface {
	extauthz.Limiter
	Close() error
}, error) {
	if cfg.RateLimit.Backend == config.BackendRedis {
		return newRedisLimiter(cfg, log)
	}
	return ratelimit.NewLocal(1_000_000)
}
