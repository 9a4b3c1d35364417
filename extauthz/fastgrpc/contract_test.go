package fastgrpc

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"
)

// upgradeHint ends every failure of TestGRPCExperimentalAPIs.
const upgradeHint = "; a grpc-go upgrade changed an EXPERIMENTAL API the fast codec relies on " +
	"(see the package doc in codec.go): fix fastgrpc, or run with grpc.codec: standard until then"

// TestGRPCExperimentalAPIs pins the grpc-go behaviour the fast codec relies on
// (the EXPERIMENTAL APIs listed in the package doc), so that an upgrade that
// changes it fails here, loudly, instead of silently turning the fast path off
// or handing the codec buffers it must not keep.
func TestGRPCExperimentalAPIs(t *testing.T) {
	t.Run("standard codec registered", func(t *testing.T) {
		if _, missing := newCodec().std.(missingCodec); missing {
			t.Fatal(`encoding.GetCodecV2("proto") is nil: every message but Check would fail` + upgradeHint)
		}
	})

	// ForceServerCodecV2 makes the codec the server's for every method: Check
	// requests reach Unmarshal as the handler's *rawRequest and the handler's
	// pooled reply reaches Marshal as it is; health keeps working through the
	// delegation to the standard codec.
	t.Run("server uses the codec for Check", func(t *testing.T) {
		fx := newFixture(t, nil)
		sh := &payloads{}
		conn := serveConn(t, fx, true, ServerOption(), grpc.StatsHandler(sh))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client := authv3.NewAuthorizationClient(conn)
		for _, tc := range []struct {
			name, secret, out string
		}{
			{"allowed", fx.valid, fmt.Sprintf("%T", &exchange{})}, // the pooled answer, marshalled by the codec
			{"denied", fx.unknown, fmt.Sprintf("%T", &authv3.CheckResponse{})},
		} {
			req := envoyRequest(tc.secret, 15)
			want, err := fx.svc.Check(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			sh.reset()
			got, err := client.Check(ctx, req)
			if err != nil || !proto.Equal(got, want) {
				t.Fatalf("%s: Check = %v, %v; want %v", tc.name, got, err, want)
			}
			in, out := sh.seen()
			if wantIn := fmt.Sprintf("%T", &rawRequest{}); in != wantIn || out != tc.out {
				t.Fatalf("%s: the server decoded a %s and encoded a %s, want %s and %s: Check did not go through the fast codec%s",
					tc.name, in, out, wantIn, tc.out, upgradeHint)
			}
		}
		hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
		if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health through the fast codec: %v, %v%s", hr, err, upgradeHint)
		}
	})

	// The codec pools response buffers: gRPC must free what Marshal returns
	// once it is written, through the Buffer's pool.
	t.Run("server frees marshalled buffers", func(t *testing.T) {
		fx := newFixture(t, nil)
		pool := &countingPool{}
		client := serve(t, fx, true, grpc.ForceServerCodecV2(repool{codec: newCodec(), pool: pool}))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const n = 20
		for range n {
			if _, err := client.Check(ctx, envoyRequest(fx.valid, 15)); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(5 * time.Second) // the transport frees after its write, asynchronously
		for pool.puts.Load() < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if gets, puts := pool.gets.Load(), pool.puts.Load(); gets != n || puts != n {
			t.Fatalf("after %d calls the response pool lent %d buffers and got %d back, want %d and %d%s",
				n, gets, puts, n, n, upgradeHint)
		}
	})

	// Unmarshal keeps the request by reference: MaterializeToBuffer of a
	// one-buffer slice must take a reference to that buffer (no copy) that
	// outlives gRPC's own, and a pooled buffer goes back to its pool only when
	// the last reference is freed.
	t.Run("request buffers are reference counted", func(t *testing.T) {
		pool := &countingPool{}
		b := pool.Get(2048)
		for i := range *b {
			(*b)[i] = byte(i)
		}
		data := mem.BufferSlice{mem.NewBuffer(b, pool)}
		var raw rawRequest
		if err := newCodec().Unmarshal(data, &raw); err != nil {
			t.Fatal(err)
		}
		data.Free() // as gRPC does once Unmarshal returns
		if got := raw.bytes(); len(got) != len(*b) || &got[0] != &(*b)[0] {
			t.Fatalf("the codec kept a copy of a one-buffer request, want a reference%s", upgradeHint)
		}
		if p := pool.puts.Load(); p != 0 {
			t.Fatalf("the request buffer went back to its pool while the codec held it%s", upgradeHint)
		}
		for i, c := range raw.bytes() {
			if c != byte(i) {
				t.Fatalf("kept request byte %d changed%s", i, upgradeHint)
			}
		}
		raw.free()
		if p := pool.puts.Load(); p != 1 {
			t.Fatalf("the request buffer went back to its pool %d times after the last free, want once%s", p, upgradeHint)
		}
	})

	// Response buffers are respBufSize: above gRPC's pooling threshold, so
	// mem.NewBuffer makes them pooled Buffers, returned to respBufs on Free.
	t.Run("response buffers are pooled", func(t *testing.T) {
		if mem.IsBelowBufferPoolingThreshold(respBufSize) {
			t.Fatalf("respBufSize %d is below gRPC's pooling threshold: responses would not return to the pool%s", respBufSize, upgradeHint)
		}
		pool := &countingPool{}
		mem.NewBuffer(pool.Get(100), pool).Free()
		if p := pool.puts.Load(); p != 1 {
			t.Fatalf("a %d-byte-capacity Buffer freed %d times into its pool, want once%s", respBufSize, p, upgradeHint)
		}
	})
}

// payloads is a stats handler recording the Go types of the last message the
// server decoded and encoded.
type payloads struct {
	mu      sync.Mutex
	in, out string
}

func (p *payloads) reset() {
	p.mu.Lock()
	p.in, p.out = "", ""
	p.mu.Unlock()
}

func (p *payloads) seen() (in, out string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.in, p.out
}

func (p *payloads) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// HandleRPC records payload types only: the values may be pooled and reused.
func (p *payloads) HandleRPC(_ context.Context, s stats.RPCStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch s := s.(type) {
	case *stats.InPayload:
		p.in = fmt.Sprintf("%T", s.Payload)
	case *stats.OutPayload:
		p.out = fmt.Sprintf("%T", s.Payload)
	}
}

func (p *payloads) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (p *payloads) HandleConn(context.Context, stats.ConnStats) {}

// countingPool is a mem.BufferPool of respBufSize buffers that counts Gets and Puts.
type countingPool struct{ gets, puts atomic.Int64 }

func (p *countingPool) Get(n int) *[]byte {
	p.gets.Add(1)
	b := make([]byte, n, max(n, respBufSize))
	return &b
}

func (p *countingPool) Put(*[]byte) { p.puts.Add(1) }

// repool is the codec with each marshalled CheckResponse copied into a buffer
// of pool, so a test sees whether gRPC frees what Marshal returns.
type repool struct {
	codec
	pool *countingPool
}

func (r repool) Marshal(v any) (mem.BufferSlice, error) {
	out, err := r.codec.Marshal(v)
	if _, ok := v.(*exchange); !ok || err != nil {
		return out, err
	}
	b := r.pool.Get(out.Len())
	out.CopyTo(*b)
	out.Free()
	return mem.BufferSlice{mem.NewBuffer(b, r.pool)}, nil
}
