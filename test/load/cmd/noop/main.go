// Command noop is the load harness's reference ext_authz server: it answers
// every Check with OK and does nothing else. It runs the same grpc-go server with
// the same server options as keyauthz (extauthz/app newGRPC with the default
// config: keepalive time 1m / timeout 20s, enforcement min time 5s with
// PermitWithoutStream, fixed 1 MiB flow-control windows, no stream limit, no
// TLS) and the default protobuf codec, so its CPU per Check is the floor that
// gRPC and protobuf alone cost.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

type noop struct {
	authv3.UnimplementedAuthorizationServer
	ok *authv3.CheckResponse
}

// Check answers OK.
func (n *noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return n.ok, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:9101", "gRPC listen address")
	workers := flag.Uint("stream-workers", 0, "grpc.NumStreamWorkers (0: keyauthz's setting, a goroutine per stream); for experiments")
	flag.Parse()
	if err := run(*listen, uint32(*workers)); err != nil {
		fmt.Fprintln(os.Stderr, "noop:", err)
		os.Exit(1)
	}
}

func run(addr string, workers uint32) error {
	// The options of keyauthz's extauthz/app newGRPC with config.Default().GRPC.
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.StaticStreamWindowSize(1 << 20), // newGRPC's grpcWindow: fixed windows, no BDP PING per call
		grpc.StaticConnWindowSize(1 << 20),
		grpc.MaxHeaderListSize(64 << 10), // newGRPC's maxHeaderList
		grpc.MaxConcurrentStreams(1024),  // grpc.max_concurrent_streams
		// newGRPC's tap handle (grpc.request_timeout) is left out: for a call
		// that carries a grpc-timeout, as the load generator's do, it reads the clock.
	}
	if workers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(workers))
	}
	srv := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(srv, &noop{ok: &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: 0},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	srv.GracefulStop()
	return nil
}
