package fastgrpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// serve starts a gRPC server on an in-memory listener with the Check service
// (fast: Register, else the generated registration) and the health service,
// and returns a client connection; both are stopped at cleanup.
func serve(t testing.TB, fx *fixture, fast bool, opts ...grpc.ServerOption) authv3.AuthorizationClient {
	return authv3.NewAuthorizationClient(serveConn(t, fx, fast, opts...))
}

func serveConn(t testing.TB, fx *fixture, fast bool, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(opts...)
	if fast {
		Register(s, fx.svc)
	} else {
		authv3.RegisterAuthorizationServer(s, fx.svc)
	}
	hs := health.NewServer()
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() { _ = s.Serve(lis); close(done) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		s.Stop()
		<-done
	})
	return conn
}

// seen records what a unary interceptor was given.
type seen struct {
	mu      sync.Mutex
	methods []string
	reqs    []string
}

func (s *seen) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	s.mu.Lock()
	s.methods = append(s.methods, info.FullMethod)
	switch req.(type) {
	case *extauthz.Request:
		s.reqs = append(s.reqs, "wire")
	case *authv3.CheckRequest:
		s.reqs = append(s.reqs, "proto")
	default:
		s.reqs = append(s.reqs, "other")
	}
	s.mu.Unlock()
	return h(ctx, req)
}

func (s *seen) last() (string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.methods) == 0 {
		return "", ""
	}
	return s.methods[len(s.methods)-1], s.reqs[len(s.reqs)-1]
}

// protoCases are CheckRequests a generated client sends, with the HTTP status expected.
func protoCases(fx *fixture) []struct {
	name string
	req  *authv3.CheckRequest
	code int
} {
	withHeaders := func(h map[string]string, path string, ext map[string]string) *authv3.CheckRequest {
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request:           &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: path, Headers: h}},
			ContextExtensions: ext,
		}}
	}
	withMap := func(hv ...*corev3.HeaderValue) *authv3.CheckRequest {
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Path: "/", HeaderMap: &corev3.HeaderMap{Headers: hv}}},
		}}
	}
	large := envoyRequest(fx.valid, 15)
	for i := 0; i < 100; i++ {
		large.Attributes.Request.Http.Headers["x-extra-"+strings.Repeat("z", i)] = strings.Repeat("v", 1000)
	}
	return []struct {
		name string
		req  *authv3.CheckRequest
		code int
	}{
		{"allowed", envoyRequest(fx.valid, 15), 200},
		{"allowed with metadata", envoyRequest(fx.meta, 15), 200},
		{"allowed with some metadata", withHeaders(map[string]string{"x-api-key": fx.partial, "x-keyauthz-meta-team": "spoofed"}, "/", nil), 200},
		{"unknown key", withHeaders(map[string]string{"x-api-key": fx.unknown}, "/", nil), 401},
		{"missing key", withHeaders(map[string]string{"accept": "*/*"}, "/", nil), 401},
		{"forbidden", withHeaders(map[string]string{"x-api-key": fx.valid}, "/organizations/other", nil), 403},
		{"forbidden by extension", withHeaders(map[string]string{"x-api-key": fx.valid}, "/", map[string]string{"resource": "other"}), 403},
		{"conflict", withHeaders(map[string]string{"x-api-key": fx.valid, "salad-api-key": fx.unknown}, "/", nil), 400},
		{"rate limited", withHeaders(map[string]string{"x-api-key": fx.limited}, "/", nil), 429},
		{"header_map raw_value", withMap(&corev3.HeaderValue{Key: "x-api-key", RawValue: []byte(fx.valid)}), 200},
		{"header_map repeated conflict", withMap(&corev3.HeaderValue{Key: "x-api-key", Value: fx.valid}, &corev3.HeaderValue{Key: "X-Api-Key", Value: fx.unknown}), 400},
		{"large request over many frames", large, 200},
		{"empty request", &authv3.CheckRequest{}, 401},
	}
}

func TestGRPCFastPath(t *testing.T) {
	fx := newFixture(t, nil)
	var rec seen
	conn := serveConn(t, fx, true, ServerOption(), grpc.ChainUnaryInterceptor(rec.intercept))
	client := authv3.NewAuthorizationClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, compress := range []bool{false, true} {
		for _, tc := range protoCases(fx) {
			name := tc.name
			var callOpts []grpc.CallOption
			if compress {
				name += " gzip"
				callOpts = append(callOpts, grpc.UseCompressor(gzip.Name))
			}
			t.Run(name, func(t *testing.T) {
				got, err := client.Check(ctx, tc.req, callOpts...)
				if err != nil {
					t.Fatal(err)
				}
				want, err := fx.svc.Check(ctx, tc.req)
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(got, want) {
					t.Fatalf("got %v\nwant %v", got, want)
				}
				if c := httpCode(got); c != tc.code {
					t.Fatalf("answered %d, want %d", c, tc.code)
				}
				if m, r := rec.last(); m != authv3.Authorization_Check_FullMethodName || r != "wire" {
					t.Fatalf("interceptor saw %q with a %s request, want %q with a wire request", m, r, authv3.Authorization_Check_FullMethodName)
				}
			})
		}
	}

	t.Run("health through the delegated codec", func(t *testing.T) {
		hc := healthpb.NewHealthClient(conn)
		for _, svc := range []string{"", authv3.Authorization_ServiceDesc.ServiceName} {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health %q: %v %v", svc, resp, err)
			}
		}
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
			t.Fatalf("unknown service: %v, want NotFound", err)
		}
	})

	t.Run("malformed bytes are InvalidArgument", func(t *testing.T) {
		for _, b := range [][]byte{{0x80}, {0x0a, 0x05, 0x01}, {0x0c}} {
			in, out := b, []byte(nil)
			err := conn.Invoke(ctx, authv3.Authorization_Check_FullMethodName, &in, &out, grpc.ForceCodecV2(rawCodec{}))
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("%x: %v, want InvalidArgument", b, err)
			}
		}
	})

	t.Run("store down is Unavailable", func(t *testing.T) {
		fx.keys.mu.Lock()
		fx.keys.err = errors.New("down")
		fx.keys.mu.Unlock()
		defer func() { fx.keys.mu.Lock(); fx.keys.err = nil; fx.keys.mu.Unlock() }()
		_, err := client.Check(ctx, envoyRequest(fx.valid, 15))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%v, want Unavailable", err)
		}
	})

	t.Run("concurrent calls", func(t *testing.T) {
		reqs := protoCases(fx)
		parallel(t, 8, 50, func(w, i int) error {
			tc := reqs[(w+i)%len(reqs)]
			got, err := client.Check(ctx, tc.req)
			if err == nil && httpCode(got) != tc.code {
				err = errors.New(tc.name + ": wrong answer")
			}
			return err
		})
	})
}

// TestRegisterWithoutServerOption: Register on a server with the default codec
// falls back to proto decoding and Check, with the same answers.
func TestRegisterWithoutServerOption(t *testing.T) {
	fx := newFixture(t, nil)
	var rec seen
	client := serve(t, fx, true, grpc.ChainUnaryInterceptor(rec.intercept))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wantCodes(t, ctx, client, fx, func() {
		if m, r := rec.last(); m != authv3.Authorization_Check_FullMethodName || r != "proto" {
			t.Fatalf("interceptor saw %q with a %s request", m, r)
		}
	})
}

// wantCodes fails t unless client answers every protoCases request with its
// HTTP status; then, after runs, if set.
func wantCodes(t *testing.T, ctx context.Context, client authv3.AuthorizationClient, fx *fixture, after func()) {
	t.Helper()
	for _, tc := range protoCases(fx) {
		got, err := client.Check(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c := httpCode(got); c != tc.code {
			t.Fatalf("%s: answered %d, want %d", tc.name, c, tc.code)
		}
		if after != nil {
			after()
		}
	}
}

// TestStandardRegistration: the generated registration keeps working, with
// and without this package's codec on the server.
func TestStandardRegistration(t *testing.T) {
	fx := newFixture(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, opts := range [][]grpc.ServerOption{nil, {ServerOption()}} {
		wantCodes(t, ctx, serve(t, fx, false, opts...), fx, nil)
	}
}

// TestInterceptorMayReplaceRequest: an interceptor handing the handler a
// CheckRequest of its own gets it answered by Check.
func TestInterceptorMayReplaceRequest(t *testing.T) {
	fx := newFixture(t, nil)
	replace := func(ctx context.Context, _ any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Headers: map[string]string{"x-api-key": fx.valid}}}}})
	}
	client := serve(t, fx, true, ServerOption(), grpc.UnaryInterceptor(replace))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := client.Check(ctx, &authv3.CheckRequest{})
	if err != nil || httpCode(got) != 200 {
		t.Fatalf("%v %v, want allowed", got, err)
	}
}

// TestCodecMarshal: the codec's bytes decode to the response it was given, for
// allow and deny answers, whether or not vtprotobuf is compiled in.
func TestCodecMarshal(t *testing.T) {
	fx := newFixture(t, nil)
	c := newCodec()
	ctx := context.Background()
	big := &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_DeniedResponse{
		DeniedResponse: &authv3.DeniedHttpResponse{Body: strings.Repeat("b", 3*respBufSize)}}}
	for _, tc := range append(protoCases(fx), struct {
		name string
		req  *authv3.CheckRequest
		code int
	}{name: "larger than a pooled buffer"}) {
		resp, err := fx.svc.Check(ctx, tc.req)
		if tc.req == nil {
			resp, err = big, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		var back authv3.CheckResponse
		if err := proto.Unmarshal(out.Materialize(), &back); err != nil {
			t.Fatal(err)
		}
		out.Free()
		if !proto.Equal(&back, resp) {
			t.Fatalf("%s: round trip %v, want %v", tc.name, &back, resp)
		}
	}
	// Other messages go to the standard codec both ways.
	out, err := c.Marshal(&healthpb.HealthCheckRequest{Service: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var h healthpb.HealthCheckRequest
	if err := c.Unmarshal(out, &h); err != nil || h.GetService() != "x" {
		t.Fatalf("health request round trip: %v %v", &h, err)
	}
	if _, err := c.Marshal(struct{}{}); err == nil {
		t.Fatal("marshalling a non-proto value succeeded")
	}
}

// rawCodec sends and receives *[]byte as they are (malformed-input tests).
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestCodecKeepsBytes: the request bytes stay valid after gRPC frees its own
// references, whether they arrive in one buffer (kept by reference) or several
// (copied).
func TestCodecKeepsBytes(t *testing.T) {
	fx := newFixture(t, nil)
	req := envoyRequest(fx.valid, 15)
	for i := 0; i < 20; i++ {
		req.Attributes.Request.Http.Headers["x-pad-"+strings.Repeat("p", i)] = strings.Repeat("v", 200)
	}
	wire, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	pool := mem.DefaultBufferPool()
	third := len(wire) / 3
	for _, parts := range [][][]byte{{wire}, {wire[:third], wire[third : 2*third], wire[2*third:]}} {
		var data mem.BufferSlice
		for _, p := range parts {
			data = append(data, mem.Copy(p, pool))
		}
		var raw rawRequest
		if err := newCodec().Unmarshal(data, &raw); err != nil {
			t.Fatal(err)
		}
		data.Free()               // as gRPC does once Unmarshal returns
		for i := 0; i < 10; i++ { // reuse whatever went back to the pool
			b := pool.Get(len(wire))
			for j := range *b {
				(*b)[j] = 0xAA
			}
			defer pool.Put(b)
		}
		var r request
		if err := r.decode(raw.bytes()); err != nil {
			t.Fatalf("%d buffers: %v", len(parts), err)
		}
		if r.path != req.Attributes.Request.Http.Path || len(r.headers) != len(req.Attributes.Request.Http.Headers) {
			t.Fatalf("%d buffers: decoded %q with %d headers", len(parts), r.path, len(r.headers))
		}
		raw.free()
	}
}

// TestPooledAnswers: without interceptors, allowed answers are built in pooled
// calls and released after marshalling; under concurrency every caller still
// gets its own key's answer, identical to Check's, never another call's.
func TestPooledAnswers(t *testing.T) {
	fx := newFixture(t, nil)
	format, err := apikey.NewFormat("kz", 256, false)
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		req  *authv3.CheckRequest
		want *authv3.CheckResponse
	}
	var cases []tc
	fx.keys.mu.Lock()
	for i := range 32 {
		secret, err := format.Generate()
		if err != nil {
			t.Fatal(err)
		}
		var meta map[string]string // answers with and without forwarded metadata share the pool
		switch i % 3 {
		case 0:
			meta = map[string]string{"team": fmt.Sprintf("team %02d", i), "Plan": "p\n" + fmt.Sprint(i)}
		case 1:
			meta = map[string]string{"Plan": fmt.Sprint(i)}
		}
		fx.keys.m[fx.hasher.Sum(secret).Sum] = apikey.Key{ID: fmt.Sprintf("key_%02d", i), Workspace: "acme", Metadata: meta}
		cases = append(cases, tc{req: envoyRequest(secret, 15)})
	}
	fx.keys.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range cases {
		want, err := fx.svc.Check(ctx, cases[i].req)
		if err != nil || want.GetOkResponse() == nil {
			t.Fatalf("key %d: %v %v", i, want, err)
		}
		cases[i].want = want
	}
	cases = append(cases, tc{req: envoyRequest(fx.unknown, 15)}) // a shared deny in the mix
	if cases[len(cases)-1].want, err = fx.svc.Check(ctx, cases[len(cases)-1].req); err != nil {
		t.Fatal(err)
	}

	client := serve(t, fx, true, ServerOption())
	parallel(t, 8, 200, func(w, i int) error {
		c := cases[(w*7+i)%len(cases)]
		got, err := client.Check(ctx, c.req)
		if err == nil && !proto.Equal(got, c.want) {
			err = fmt.Errorf("call %d: got %v\nwant %v", i, got, c.want)
		}
		return err
	})
}

// parallel runs call(w, i) for i < n on each of workers goroutines (w is the
// worker's number); a worker stops at its first error, and t fails with one.
func parallel(t *testing.T, workers, n int, call func(w, i int) error) {
	t.Helper()
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			for i := range n {
				if err := call(w, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}
