package load

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// echoAuth answers by the request's API key: "kz_…A" ends → Unauthenticated
// deny, anything else OK; a key "fail" is a gRPC error.
type echoAuth struct {
	authv3.UnimplementedAuthorizationServer
	seen atomic.Int64
}

func (e *echoAuth) Check(_ context.Context, r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	e.seen.Add(1)
	k := r.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-api-key"]
	switch {
	case k == "":
		return nil, status.Error(codes.InvalidArgument, "no key")
	case k[len(k)-1] == 'A':
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.Unauthenticated)}}, nil
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 0}}, nil
}

func startEcho(t testing.TB) (string, *echoAuth) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	e := &echoAuth{}
	authv3.RegisterAuthorizationServer(srv, e)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return l.Addr().String(), e
}

func TestTemplateIsAValidRequest(t *testing.T) {
	g := keyGen{prefix: "kz", seed: 3}
	k := g.key(streamStored, 9)
	tp, err := newTemplate("x-api-key", len(k))
	if err != nil {
		t.Fatal(err)
	}
	b, err := tp.fill(nil, []byte(k))
	if err != nil {
		t.Fatal(err)
	}
	var r authv3.CheckRequest
	if err := proto.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	h := r.GetAttributes().GetRequest().GetHttp()
	if got := h.GetHeaders()["x-api-key"]; got != k {
		t.Fatalf("x-api-key = %q, want the key", got)
	}
	if n := len(h.GetHeaders()); n != 15 {
		t.Fatalf("%d headers, want 15 (Envoy-like)", n)
	}
	if h.GetPath() == "" || h.GetMethod() != "GET" || r.GetAttributes().GetSource() == nil {
		t.Fatalf("request lacks Envoy's fields: %v", h)
	}
	if _, err := tp.fill(nil, []byte(k+"x")); err == nil {
		t.Fatal("fill accepted a key of the wrong length")
	}
}

func TestStatusCode(t *testing.T) {
	for _, c := range []struct {
		resp *authv3.CheckResponse
		want int32
	}{
		{&authv3.CheckResponse{}, 0},
		{&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 8, Message: "Rate limit exceeded"}}, 8},
		{&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 16}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "x"}}}, 16},
	} {
		b, err := proto.Marshal(c.resp)
		if err != nil {
			t.Fatal(err)
		}
		got, err := statusCode(b)
		if err != nil || got != c.want {
			t.Fatalf("statusCode(%v) = %d, %v; want %d", c.resp, got, err, c.want)
		}
	}
	if _, err := statusCode([]byte{0x0a, 0x05, 0x08}); err == nil {
		t.Fatal("truncated response parsed")
	}
}

func TestClientTransports(t *testing.T) {
	addr, echo := startEcho(t)
	g := keyGen{prefix: "kz", seed: 3}
	tp, err := newTemplate("x-api-key", len(g.key(streamStored, 0)))
	if err != nil {
		t.Fatal(err)
	}
	// One request the echo server denies (key ending in 'A'), one it allows.
	var deny, allow []byte
	for i := uint64(0); deny == nil || allow == nil; i++ {
		k := g.key(streamStored, i)
		b, err := tp.fill(nil, []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		if k[len(k)-1] == 'A' {
			deny = b
		} else if allow == nil {
			allow = b
		}
	}
	mix := cycle{deny, allow}
	src := &fresh{t: tp, gen: g, stream: streamStored}
	for _, tr := range []string{TransportH2, TransportGRPC} {
		t.Run(tr, func(t *testing.T) {
			c, err := Dial(addr, 2, tr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			before := echo.seen.Load()
			seq := new(atomic.Uint64)
			o := c.Closed(context.Background(), mix, 16, 300*time.Millisecond, seq)
			if o.Errors > 0 || o.Done < 2 {
				t.Fatalf("closed loop: %d done, %d errors: %v", o.Done, o.Errors, o.FirstErr)
			}
			if got := uint64(echo.seen.Load() - before); got != o.Done {
				t.Fatalf("server saw %d checks, client counted %d", got, o.Done)
			}
			// Requests alternate between the two keys: both codes, half each (±1).
			if d := int64(o.Codes[16]) - int64(o.Codes[0]); d < -1 || d > 1 || o.Codes[16]+o.Codes[0] != o.Done {
				t.Fatalf("codes %v", o.Codes)
			}
			o = c.Open(context.Background(), src, 500, 400*time.Millisecond, 8, seq)
			if o.Errors > 0 || o.Done != 200 {
				t.Fatalf("open loop: %d done (want 200), %d errors: %v", o.Done, o.Errors, o.FirstErr)
			}
			if len(o.Lat) != 200 || o.Pct(50) <= 0 || o.Pct(99) < o.Pct(50) || o.Pct(100) != o.Lat[199] {
				t.Fatalf("latencies: %d, p50 %v p99 %v", len(o.Lat), o.Pct(50), o.Pct(99))
			}
		})
	}
}

func TestClosedEndsWhenABoundedSourceRunsOut(t *testing.T) {
	addr, _ := startEcho(t)
	g := keyGen{prefix: "kz", seed: 3}
	tp, err := newTemplate("x-api-key", len(g.key(streamStored, 0)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(addr, 1, TransportH2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seq := new(atomic.Uint64)
	seq.Store(7)
	start := time.Now()
	o := c.Closed(context.Background(), bounded{src: &fresh{t: tp, gen: g, stream: streamStored}, start: 7, n: 300}, 8, time.Minute, seq)
	if o.Done != 300 || o.Errors != 0 {
		t.Fatalf("%d done, %d errors, want exactly 300 and none", o.Done, o.Errors)
	}
	if el := time.Since(start); el > 30*time.Second {
		t.Fatalf("took %v: the loop waited for its duration after the source ran out", el)
	}
}

func TestClientReportsGRPCErrors(t *testing.T) {
	addr, _ := startEcho(t)
	for _, tr := range []string{TransportH2, TransportGRPC} {
		t.Run(tr, func(t *testing.T) {
			c, err := Dial(addr, 1, tr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A request without the key header: the server answers a gRPC error.
			b, err := proto.Marshal(&authv3.CheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			o := c.Closed(context.Background(), cycle{b}, 2, 100*time.Millisecond, new(atomic.Uint64))
			if o.Errors == 0 || o.Done != 0 || o.FirstErr == nil {
				t.Fatalf("want only errors, got %d done %d errors", o.Done, o.Errors)
			}
		})
	}
}

// BenchmarkClientCall measures a client call round trip against an in-process
// grpc-go server (client and server CPU together).
func BenchmarkClientCall(b *testing.B) {
	addr, _ := startEcho(b)
	g := keyGen{prefix: "kz", seed: 3}
	tp, err := newTemplate("x-api-key", len(g.key(streamStored, 0)))
	if err != nil {
		b.Fatal(err)
	}
	req, err := tp.fill(nil, []byte(g.key(streamStored, 0)))
	if err != nil {
		b.Fatal(err)
	}
	for _, tr := range []string{TransportH2, TransportGRPC} {
		b.Run(tr, func(b *testing.B) {
			c, err := Dial(addr, 1, tr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.RunParallel(func(pb *testing.PB) {
				call := c.caller(0)
				for pb.Next() {
					if _, err := call(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
