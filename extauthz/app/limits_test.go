package app

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// startApp serves cfg with its own SQLite store until the test ends, and
// returns it once health says SERVING.
func startApp(t *testing.T, cfg config.Config) *App {
	t.Helper()
	a, err := New(context.Background(), cfg, zap.NewNop(), Options{Embedded: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "ready", func() bool { return a.state.Load() == stateReady })
	return a
}

// newSecret creates a key in a's store and returns the secret.
func newSecret(t *testing.T, a *App) string {
	t.Helper()
	m, err := apikey.NewManager(a.store, a.format, a.hasher, maxKeys(&a.cfg))
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := m.Create(context.Background(), apikey.Spec{Workspace: "acme", Name: "limits"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// checkAllowed runs one Envoy-like Check (with a deadline) and reports why it
// was not allowed, or nil.
func checkAllowed(conn *grpc.ClientConn, secret string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Path: "/", Headers: map[string]string{"x-api-key": secret}}},
	}})
	if err != nil {
		return err
	}
	if r.GetOkResponse() == nil {
		return fmt.Errorf("denied: %v", r.GetStatus())
	}
	return nil
}

func dialGRPC(t *testing.T, addr net.Addr) *grpc.ClientConn {
	t.Helper()
	return dialGRPCAddr(t, addr.String())
}

func dialGRPCAddr(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rawConn speaks HTTP/2 to the gRPC port as a hostile client would: it opens
// call streams with headers and never sends their request.
type rawConn struct {
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // guards fr's writing side and the encoder
	hbuf bytes.Buffer
	enc  *hpack.Encoder
	next uint32

	pong    chan struct{} // an acknowledged PING
	ended   atomic.Int64  // streams the server ended with trailers
	first   atomic.Int64  // unix ns of the first stream ended
	refused atomic.Int64  // streams refused with RST_STREAM(REFUSED_STREAM)
	codes   sync.Map      // grpc-status of the ended streams → *atomic.Int64
	lastEnd atomic.Int64  // unix ns of the last stream ended
	done    chan struct{} // the reader stopped
}

func dialRaw(t *testing.T, addr net.Addr) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c := &rawConn{conn: nc, fr: http2.NewFramer(nc, nc), next: 1, pong: make(chan struct{}, 1), done: make(chan struct{})}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	t.Cleanup(func() { nc.Close(); <-c.done })
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	go c.read()
	return c
}

func (c *rawConn) read() {
	defer close(c.done)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				_ = c.fr.WriteSettingsAck()
				c.wmu.Unlock()
			}
		case *http2.PingFrame:
			if f.IsAck() {
				c.pong <- struct{}{}
			} else {
				c.wmu.Lock()
				_ = c.fr.WritePing(true, f.Data)
				c.wmu.Unlock()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				n, _ := c.codes.LoadOrStore(f.PseudoValue("status")+"/"+grpcStatus(f), new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				now := time.Now().UnixNano()
				c.first.CompareAndSwap(0, now)
				c.ended.Add(1)
				c.lastEnd.Store(now)
			}
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				c.refused.Add(1)
			}
		}
	}
}

func grpcStatus(f *http2.MetaHeadersFrame) string {
	for _, h := range f.RegularFields() {
		if h.Name == "grpc-status" {
			return h.Value
		}
	}
	return ""
}

// count is how many streams ended 200 with grpc-status code.
func (c *rawConn) count(code string) int64 {
	if n, ok := c.codes.Load("200/" + code); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

// open starts n calls to method with headers only, and waits until the server
// has read them all (it acknowledges a PING sent after them).
func (c *rawConn) open(t *testing.T, method string, n int) {
	t.Helper()
	c.wmu.Lock()
	for range n {
		c.hbuf.Reset()
		for _, f := range []hpack.HeaderField{
			{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
			{Name: ":path", Value: method}, {Name: ":authority", Value: "keyauthz"},
			{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		} {
			_ = c.enc.WriteField(f)
		}
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: c.next, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
			c.wmu.Unlock()
			t.Fatal(err)
		}
		c.next += 2
	}
	err := c.fr.WritePing(false, [8]byte{'f', 'l', 'o', 'o', 'd'})
	c.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.pong:
	case <-time.After(20 * time.Second):
		t.Fatal("no PING ACK after the streams")
	}
}

// memInUse is the heap and the goroutine stacks in use after a collection.
func memInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestGRPCWaitingStreamsBounded opens 20,000 Check streams on one connection
// that never send their request: the server holds at most
// grpc.max_concurrent_streams of them (the rest are refused), in bounded
// memory, cuts them DEADLINE_EXCEEDED grpc.request_timeout after their
// headers, and answers other clients' Checks meanwhile. Under both codecs.
func TestGRPCWaitingStreamsBounded(t *testing.T) {
	for _, codec := range []config.Codec{config.CodecFast, config.CodecStandard} {
		t.Run(codec.String(), func(t *testing.T) {
			const (
				attempts = 20_000
				timeout  = 2 * time.Second
				maxMem   = 32 << 20
			)
			cfg := testConfig(t)
			cfg.GRPC.Codec = codec
			cfg.GRPC.RequestTimeout = timeout
			cfg.RateLimit.Default = apikey.Rate{N: 1_000_000, Per: time.Minute}
			a := startApp(t, cfg)
			secret := newSecret(t, a)
			good := dialGRPC(t, a.GRPCAddr())
			if err := checkAllowed(good, secret); err != nil {
				t.Fatal(err)
			}

			goroutines, mem := runtime.NumGoroutine(), memInUse()
			c := dialRaw(t, a.GRPCAddr())
			start := time.Now()
			c.open(t, authv3.Authorization_Check_FullMethodName, attempts)
			sent := time.Now()
			dg, dm := runtime.NumGoroutine()-goroutines, int64(memInUse())-int64(mem)
			held, refused, early := int64(cfg.GRPC.MaxStreams), c.refused.Load(), c.ended.Load()
			t.Logf("%d streams attempted in %v: %d refused, +%d goroutines, %+.1f MiB (heap+stacks)",
				attempts, sent.Sub(start).Round(time.Millisecond), refused, dg, float64(dm)/(1<<20))
			// Streams cut while the others were still being opened (a slow
			// machine) free their slots for later ones.
			if refused > attempts-held || refused < attempts-held-early {
				t.Errorf("refused %d streams, want %d (all beyond %d), less the %d already cut", refused, attempts-held, held, early)
			}
			if dg > int(held)+100 {
				t.Errorf("+%d goroutines for %d streams held", dg, held)
			}
			if dm > maxMem {
				t.Errorf("memory grew by %.1f MiB, want under %d MiB", float64(dm)/(1<<20), maxMem>>20)
			}

			// Other clients are answered while the streams wait.
			for i := 0; i < 200 && time.Since(start) < timeout*3/4; i++ {
				if err := checkAllowed(good, secret); err != nil {
					t.Fatalf("check %d while streams wait: %v", i, err)
				}
			}
			if err := checkAllowed(dialGRPC(t, a.GRPCAddr()), secret); err != nil {
				t.Fatalf("check on a new connection while streams wait: %v", err)
			}

			// Every held stream is cut, DEADLINE_EXCEEDED, within the bound and not before.
			accepted := attempts - c.refused.Load()
			deadline := time.Now().Add(timeout + 5*time.Second)
			for c.ended.Load() < accepted {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d waiting streams cut %v after the last was opened", c.ended.Load(), accepted, time.Since(sent))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n := c.count(fmt.Sprint(int(codes.DeadlineExceeded))); n != accepted {
				t.Errorf("%d of %d streams ended DEADLINE_EXCEEDED", n, accepted)
			}
			if first := time.Unix(0, c.first.Load()).Sub(start); first < timeout*9/10 {
				t.Errorf("first stream cut %v after the first was opened, before request_timeout %v", first, timeout)
			}
			if last := time.Unix(0, c.lastEnd.Load()).Sub(sent); last > timeout+2*time.Second {
				t.Errorf("last stream cut %v after the last was opened, want within %v", last, timeout)
			}
			waitFor(t, "goroutines back", func() bool { return runtime.NumGoroutine() < goroutines+50 })
			if err := checkAllowed(good, secret); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestGRPCWatchWaitingForRequestCut: a health Watch whose request never comes is
// cancelled after grpc.request_timeout, while a Watch that sent its request
// outlives it.
func TestGRPCWatchWaitingForRequestCut(t *testing.T) {
	const timeout = time.Second
	cfg := testConfig(t)
	cfg.GRPC.RequestTimeout = timeout
	a := startApp(t, cfg)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := healthpb.NewHealthClient(dialGRPC(t, a.GRPCAddr())).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	recvd := make(chan error, 1)
	go func() { _, err := w.Recv(); recvd <- err }()

	raw := dialRaw(t, a.GRPCAddr())
	start := time.Now()
	raw.open(t, "/grpc.health.v1.Health/Watch", 1)
	waitFor(t, "waiting watch cut", func() bool { return raw.ended.Load() == 1 })
	if took := time.Since(start); took < timeout*9/10 || took > timeout+2*time.Second {
		t.Errorf("waiting watch cut after %v, want about %v", took, timeout)
	}
	if n := raw.count(fmt.Sprint(int(codes.Canceled))); n != 1 {
		t.Errorf("waiting watch not ended CANCELLED: %+v", &raw.codes)
	}
	time.Sleep(timeout) // the live watch is now past the bound twice over
	select {
	case err := <-recvd:
		t.Fatalf("watch with its request ended: %v", status.Convert(err))
	default:
	}
}

func TestConnLimit(t *testing.T) {
	for _, tc := range []struct {
		configured   int
		nofile       uint64
		share, wants int
	}{
		{4096, 0, 2, 4096},       // unknown limit
		{4096, 1 << 20, 2, 4096}, // plenty of files
		{256, 256, 4, 64},        // a quarter of 256
		{4096, 256, 2, 128},      // half of 256
		{10, 3, 4, 1},            // never zero
		{100, 1_000_000, 4, 100}, // configured wins
		{1 << 30, 1 << 40, 2, 1 << 30},
	} {
		if got := connLimit(tc.configured, tc.nofile, uint64(tc.share)); got != tc.wants {
			t.Errorf("connLimit(%d, %d, %d) = %d, want %d", tc.configured, tc.nofile, tc.share, got, tc.wants)
		}
	}
}

// BenchmarkGRPCCallBound is a unary call round trip (health Check, so that the
// transport dominates) with grpc.request_timeout on and off, for a client that
// sends a deadline as Envoy does and for one that sends none.
func BenchmarkGRPCCallBound(b *testing.B) {
	for _, bound := range []time.Duration{0, 10 * time.Second} {
		for _, deadline := range []bool{true, false} {
			b.Run(fmt.Sprintf("request_timeout=%v/client_deadline=%v", bound, deadline), func(b *testing.B) {
				c := config.Default().GRPC
				c.RequestTimeout = bound
				srv, err := newGRPC(&c)
				if err != nil {
					b.Fatal(err)
				}
				hs := health.NewServer()
				healthpb.RegisterHealthServer(srv, hs)
				lis := bufconn.Listen(1 << 20)
				go func() { _ = srv.Serve(lis) }()
				defer srv.Stop()
				conn, err := grpc.NewClient("passthrough:///bufnet",
					grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
					grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				hc := healthpb.NewHealthClient(conn)
				req := &healthpb.HealthCheckRequest{}
				b.ReportAllocs()
				for b.Loop() {
					ctx, cancel := context.Background(), context.CancelFunc(func() {})
					if deadline {
						ctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
					}
					_, err := hc.Check(ctx, req)
					cancel()
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestGRPCHeaderListBounded: a call may not bring more than 64 KiB of headers,
// which a waiting stream would otherwise hold (grpc-go's default is 16 MiB).
func TestGRPCHeaderListBounded(t *testing.T) {
	a := startApp(t, testConfig(t))
	hc := healthpb.NewHealthClient(dialGRPC(t, a.GRPCAddr()))
	call := func(n int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-pad", strings.Repeat("a", n))
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := call(1 << 10); err != nil {
		t.Fatalf("1 KiB of headers: %v", err)
	}
	if err := call(100 << 10); err == nil {
		t.Fatal("100 KiB of headers accepted")
	}
	if err := call(1 << 10); err != nil {
		t.Fatalf("1 KiB of headers after a refused call: %v", err)
	}
}
