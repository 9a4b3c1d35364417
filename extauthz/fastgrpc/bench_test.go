package fastgrpc

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

// envoyRequest is a CheckRequest shaped like Envoy's: peers, time, and n request
// headers (the API key among them) in the headers map.
func envoyRequest(secret string, n int) *authv3.CheckRequest {
	peer := func(ip string, port uint32) *authv3.AttributeContext_Peer {
		return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}},
		}}}
	}
	all := [][2]string{
		{":authority", "api.example.com"}, {":method", "GET"}, {":path", "/organizations/acme/jobs?limit=50"},
		{":scheme", "https"}, {"accept", "application/json"}, {"accept-encoding", "gzip, deflate, br"},
		{"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"},
		{"x-api-key", secret}, {"x-forwarded-for", "203.0.113.7"}, {"x-forwarded-proto", "https"},
		{"x-request-id", "6f1c2a7e-3b9d-4c8e-9a51-0d2f7b4e8c13"}, {"x-envoy-expected-rq-timeout-ms", "15000"},
		{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"accept-language", "en-US,en;q=0.9"}, {"content-type", "application/json"},
	}
	h := map[string]string{}
	for i := 0; i < n; i++ {
		if i < len(all) {
			h[all[i][0]] = all[i][1]
		} else {
			h[fmt.Sprintf("x-extra-%d", i)] = "some header value"
		}
	}
	if _, ok := h["x-api-key"]; !ok {
		h["x-api-key"] = secret
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      peer("203.0.113.7", 51234),
		Destination: peer("10.0.3.4", 8443),
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(fixedNow),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: "10912834756123984756", Method: "GET", Headers: h, Path: "/organizations/acme/jobs?limit=50",
				Host: "api.example.com", Scheme: "https", Protocol: "HTTP/2",
			},
		},
	}}
}

// benchFixture is the fixture with the real local limiter and a key whose rate
// the benchmark never exhausts; it returns the key and the request bytes.
func benchFixture(b *testing.B) (*fixture, []byte) { return benchFixtureWith(b, nil, nil) }

// benchFixtureWith is benchFixture forwarding the metadata fields fields, the
// key holding metadata meta.
func benchFixtureWith(b *testing.B, fields []string, meta map[string]string) (*fixture, []byte) {
	lim, err := ratelimit.NewLocal(1000, ratelimit.WithSweepInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lim.Close() })
	fx := newFixtureWith(b, lim, fields)
	fx.keys.m[fx.hasher.Sum(fx.valid).Sum] = apikey.Key{ID: "key_bench", Workspace: "acme",
		RateLimit: apikey.Rate{N: 1 << 30, Per: time.Second}, CreatedAt: fixedNow.Add(-time.Hour), Metadata: meta}
	wire, err := proto.Marshal(envoyRequest(fx.valid, 15))
	if err != nil {
		b.Fatal(err)
	}
	return fx, wire
}

// BenchmarkStandardPath is what the generated handler and default codec do:
// proto.Unmarshal, Check, proto.Marshal.
func BenchmarkStandardPath(b *testing.B) {
	fx, wire := benchFixture(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		req := new(authv3.CheckRequest)
		if err := proto.Unmarshal(wire, req); err != nil {
			b.Fatal(err)
		}
		resp, err := fx.svc.Check(ctx, req)
		if err != nil || resp.GetOkResponse() == nil {
			b.Fatalf("not allowed: %v %v", resp, err)
		}
		if _, err := proto.Marshal(resp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFastPath runs the registered handler over this package's codec:
// codec Unmarshal, wire decode, Decide, codec Marshal.
func BenchmarkFastPath(b *testing.B) {
	fx, wire := benchFixture(b)
	fastPath(b, fx, wire)
}

// BenchmarkFastPathMetadata is BenchmarkFastPath forwarding two metadata
// fields the key holds (one escaped) and removing a third it lacks.
func BenchmarkFastPathMetadata(b *testing.B) {
	fx, wire := benchFixtureWith(b, []string{"team", "plan", "region"}, map[string]string{"team": "ml", "plan": "pro plan\n"})
	fastPath(b, fx, wire)
}

func fastPath(b *testing.B, fx *fixture, wire []byte) {
	ctx := context.Background()
	h := &handler{svc: fx.svc}
	h.invoke = h.call
	c := newCodec()
	data := mem.BufferSlice{mem.SliceBuffer(wire)}
	dec := func(v any) error { return c.Unmarshal(data, v) }
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		resp, err := h.check(fx.svc, ctx, dec, nil)
		if c, ok := resp.(*exchange); err != nil || !ok || c.out.GetOkResponse() == nil {
			b.Fatalf("not allowed: %v %v", resp, err)
		}
		out, err := c.Marshal(resp)
		if err != nil {
			b.Fatal(err)
		}
		out.Free()
	}
}

// BenchmarkParts splits the two paths into their steps.
func BenchmarkParts(b *testing.B) {
	fx, wire := benchFixture(b)
	resp, err := fx.svc.Check(context.Background(), envoyRequest(fx.valid, 15))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("proto.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(wire, new(authv3.CheckRequest)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		var r request
		b.ReportAllocs()
		for b.Loop() {
			if err := r.decode(wire); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode_header_map", func(b *testing.B) {
		req := envoyRequest(fx.valid, 15)
		hm := &corev3.HeaderMap{}
		for k, v := range req.Attributes.Request.Http.Headers {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
		}
		req.Attributes.Request.Http.Headers, req.Attributes.Request.Http.HeaderMap = nil, hm
		w, err := proto.Marshal(req)
		if err != nil {
			b.Fatal(err)
		}
		var r request
		b.ReportAllocs()
		for b.Loop() {
			if err := r.decode(w); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := proto.Marshal(resp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec.Marshal", func(b *testing.B) {
		c := newCodec()
		b.ReportAllocs()
		for b.Loop() {
			out, err := c.Marshal(resp)
			if err != nil {
				b.Fatal(err)
			}
			out.Free()
		}
	})
	// How the codec keeps the bytes: a reference to gRPC's buffer (what it does)
	// against a copy into a pooled buffer.
	pool := mem.DefaultBufferPool()
	big := make([]byte, 2048) // above the pooling threshold, as gRPC's read buffers are
	copy(big, wire)
	b.Run("keep_ref", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			in := mem.BufferSlice{mem.Copy(big, pool)}
			kept := in.MaterializeToBuffer(pool)
			in.Free()
			kept.Free()
		}
	})
	b.Run("keep_copy", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			in := mem.BufferSlice{mem.Copy(big, pool)}
			buf := pool.Get(in.Len())
			in.CopyTo(*buf)
			in.Free()
			pool.Put(buf)
		}
	})
}

// BenchmarkGRPC is one Check round trip over an in-memory connection.
func BenchmarkGRPC(b *testing.B) {
	fx, _ := benchFixture(b)
	req := envoyRequest(fx.valid, 15)
	for _, bc := range []struct {
		name string
		fast bool
	}{{"standard", false}, {"fast", true}} {
		b.Run(bc.name, func(b *testing.B) {
			var opts []grpc.ServerOption
			if bc.fast {
				opts = append(opts, ServerOption())
			}
			client := serve(b, fx, bc.fast, opts...)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				resp, err := client.Check(ctx, req)
				if err != nil || resp.GetOkResponse() == nil {
					b.Fatalf("not allowed: %v %v", resp, err)
				}
			}
		})
	}
}
