package app

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/config"
)

// TestGRPCNoFlowControlPingPerCall speaks raw HTTP/2 to the gRPC listener the
// way Envoy does (one call at a time, PINGs acknowledged) and checks that the
// server answers each call after the first with nothing but the call's frames:
// no BDP PING, no WINDOW_UPDATE (the first may raise the connection window). With grpc-go's dynamic window every call below saturation would
// draw both, and the peer's PING ACK would wake the server once more per call.
func TestGRPCNoFlowControlPingPerCall(t *testing.T) {
	c := config.Default().GRPC
	srv, err := newGRPC(&c)
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); <-done }()

	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	pings, updates := 0, 0
	const calls = 5
	for i := range calls {
		id := uint32(2*i + 1)
		hdr.Reset()
		for _, f := range []hpack.HeaderField{
			{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
			{Name: ":path", Value: "/grpc.health.v1.Health/Check"}, {Name: ":authority", Value: "keyauthz"},
			{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		} {
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hdr.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		// An empty HealthCheckRequest: uncompressed, length 0.
		if err := fr.WriteData(id, true, []byte{0, 0, 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		for answered := false; !answered; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("call %d: %v (pings %d, window updates %d so far)", i, err, pings, updates)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					if err := fr.WriteSettingsAck(); err != nil {
						t.Fatal(err)
					}
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					if i > 0 {
						pings++
					}
					if err := fr.WritePing(true, f.Data); err != nil {
						t.Fatal(err)
					}
				}
			case *http2.WindowUpdateFrame:
				if i > 0 { // the first may raise the connection window once
					updates++
				}
			case *http2.HeadersFrame:
				answered = f.StreamID == id && f.StreamEnded()
			case *http2.GoAwayFrame, *http2.RSTStreamFrame:
				t.Fatalf("call %d: server sent %v", i, f)
			}
		}
	}
	if pings != 0 || updates != 0 {
		t.Errorf("calls 2-%d drew %d PINGs and %d WINDOW_UPDATEs from the server; want none", calls, pings, updates)
	}
}
