package app

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"

	"github.com/keyauthz/keyauthz/config"
)

// callBound cuts gRPC calls whose request is slow to arrive, so that streams
// opened and left waiting cannot pile up goroutines and memory. It runs as the
// server's tap handle, on the connection's reader before the call's goroutine
// starts. A unary call gets a deadline of timeout from its headers unless the
// client's own is sooner (Envoy always sends one: its calls cost a clock read).
// A streaming call (health Watch) may last, so only the wait for its first
// request is bounded: the stream interceptor sees the request arrive.
type callBound struct {
	timeout   time.Duration
	srv       *grpc.Server
	once      sync.Once
	streaming map[string]bool // full method names of streaming methods, read once serving
}

// pendingKey is the context key of a streaming call's *pending.
type pendingKey struct{}

// pending is a streaming call that has not yet delivered its request.
type pending struct {
	got   atomic.Bool
	timer *time.Timer
}

func (p *pending) arrived() {
	if !p.got.Swap(true) {
		p.timer.Stop()
	}
}

func newCallBound(timeout time.Duration) *callBound { return &callBound{timeout: timeout} }

// maxHeaderList is the largest header list a call may send (uncompressed):
// grpc-go's default, 16 MiB, times grpc.max_concurrent_streams waiting calls
// would be no bound at all. Envoy sends a few hundred bytes; the request's own
// headers travel in the message.
const maxHeaderList = 64 << 10

// options are the server options that bound the calls of c: streams per
// connection, header size, and b when grpc.request_timeout is set.
func (b *callBound) options(c *config.GRPC) []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.MaxHeaderListSize(maxHeaderList)}
	if c.MaxStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(c.MaxStreams))
	}
	if b.timeout > 0 {
		opts = append(opts, grpc.InTapHandle(b.tap), grpc.ChainStreamInterceptor(b.intercept))
	}
	return opts
}

// isStreaming reports whether method is a registered streaming method. The
// services are all registered before the first call reaches the tap handle.
func (b *callBound) isStreaming(method string) bool {
	b.once.Do(func() {
		b.streaming = map[string]bool{}
		for name, svc := range b.srv.GetServiceInfo() {
			for _, m := range svc.Methods {
				if m.IsClientStream || m.IsServerStream {
					b.streaming["/"+name+"/"+m.Name] = true
				}
			}
		}
	})
	return b.streaming[method]
}

func (b *callBound) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if b.isStreaming(info.FullMethodName) {
		ctx, cancel := context.WithCancel(ctx)
		p := new(pending)
		p.timer = time.AfterFunc(b.timeout, func() {
			if !p.got.Load() {
				cancel()
			}
		})
		return context.WithValue(ctx, pendingKey{}, p), nil
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= b.timeout {
		return ctx, nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	_ = cancel // released with the call: gRPC cancels the parent when the call ends
	return ctx, nil
}

func (b *callBound) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if p, ok := ss.Context().Value(pendingKey{}).(*pending); ok {
		ss = &arrivalStream{ServerStream: ss, p: p}
	}
	return h(srv, ss)
}

// arrivalStream tells its pending call when a request has arrived.
type arrivalStream struct {
	grpc.ServerStream
	p *pending
}

func (s *arrivalStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.p.arrived()
	}
	return err
}

// Shares of the open-file limit each listener may hold at most, leaving the
// rest to the store, Redis, files and the other listener.
const (
	grpcFileShare = 2 // half
	httpFileShare = 4 // a quarter
)

// connLimit is configured, lowered to nofile/share when the open-file limit
// nofile is known (non-zero) and smaller.
func connLimit(configured int, nofile uint64, share uint64) int {
	if m := nofile / share; nofile > 0 && uint64(configured) > m {
		return int(max(m, 1))
	}
	return configured
}

// limitListeners caps the open connections of the gRPC and HTTP listeners
// (grpc.max_conns, http.max_conns), within the process's open-file limit so
// that neither port can take the descriptors the other one needs.
func limitListeners(g, h net.Listener, cfg *config.Config, log *zap.Logger) (net.Listener, net.Listener) {
	nofile := openFileLimit()
	gn := connLimit(cfg.GRPC.MaxConns, nofile, grpcFileShare)
	hn := connLimit(cfg.HTTP.MaxConns, nofile, httpFileShare)
	if gn != cfg.GRPC.MaxConns || hn != cfg.HTTP.MaxConns {
		log.Warn("open-file limit lowers the connection limits", zap.Uint64("nofile", nofile),
			zap.Int("grpc_max_conns", gn), zap.Int("http_max_conns", hn))
	}
	return netutil.LimitListener(g, gn), netutil.LimitListener(h, hn)
}

// newHTTPServer is the health, metrics and admin server with its deadlines:
// a request must arrive within http.read_timeout (headers within at most 5s)
// and be answered within http.write_timeout.
func newHTTPServer(c *config.HTTP, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(5*time.Second, c.ReadTimeout),
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       time.Minute,
	}
}
