package fastgrpc

import (
	"context"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyauthz/keyauthz/extauthz"
)

// Names of the service and method, as the generated code registers them.
const (
	ServiceName = "envoy.service.auth.v3.Authorization"
	FullMethod  = "/" + ServiceName + "/Check"
)

// decider is what the Check handler needs; *extauthz.Service implements it.
type decider interface {
	Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)
	Decide(ctx context.Context, req *extauthz.Request) (*authv3.CheckResponse, error)
}

var _ decider = (*extauthz.Service)(nil)

// Register registers svc on s as envoy.service.auth.v3.Authorization, in place
// of authv3.RegisterAuthorizationServer (registering both is a duplicate service).
// With ServerOption on s, requests are decoded straight from their bytes and
// answered by svc.Decide; without it they are decoded by the standard codec and
// answered by svc.Check. Unary interceptors run as for the generated handler,
// with FullMethod; on the fast path their request is an *extauthz.Request whose
// strings alias the request buffer, so an interceptor must not keep it (nor the
// request it sees otherwise) after it returns.
func Register(s *grpc.Server, svc *extauthz.Service) {
	h := &handler{svc: svc}
	h.invoke = h.call
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*decider)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Check", Handler: h.check}},
		Metadata:    "envoy/service/auth/v3/external_auth.proto",
	}, svc)
}

// handler serves Check for one registered service.
type handler struct {
	svc    decider
	invoke grpc.UnaryHandler // h.call, made once so interceptors cost no allocation
}

// call is one Check call's reusable state.
type call struct {
	raw  rawRequest
	req  request
	wire extauthz.Request
	info grpc.UnaryServerInfo
}

var calls = sync.Pool{New: func() any {
	return &call{raw: rawRequest{CheckRequest: new(authv3.CheckRequest)}}
}}

// release returns c to the pool once nothing of the call is in use: the
// response gRPC marshals after the handler returns never points into it.
func (c *call) release() {
	if c.raw.buf == nil {
		c.raw.CheckRequest.Reset()
	}
	c.raw.free()
	c.req.reset()
	c.wire = extauthz.Request{}
	c.info = grpc.UnaryServerInfo{}
	calls.Put(c)
}

// check is the grpc.MethodDesc handler.
func (h *handler) check(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
	c := calls.Get().(*call)
	defer c.release()
	if err := dec(&c.raw); err != nil {
		return nil, err
	}
	var req any
	if c.raw.buf != nil {
		if err := c.req.decode(c.raw.bytes()); err != nil {
			return nil, status.Error(codes.InvalidArgument, "malformed CheckRequest")
		}
		c.wire = extauthz.NewWireRequest(c.req.path, c.req.headers, c.req.ext)
		if ic == nil {
			return h.svc.Decide(ctx, &c.wire)
		}
		req = &c.wire
	} else {
		if ic == nil {
			return h.svc.Check(ctx, c.raw.CheckRequest)
		}
		req = c.raw.CheckRequest
	}
	c.info = grpc.UnaryServerInfo{Server: srv, FullMethod: FullMethod}
	return ic(ctx, req, &c.info, h.invoke)
}

// call answers req after the interceptors; they may also pass a CheckRequest of their own.
func (h *handler) call(ctx context.Context, req any) (any, error) {
	switch r := req.(type) {
	case *extauthz.Request:
		return h.svc.Decide(ctx, r)
	case *authv3.CheckRequest:
		return h.svc.Check(ctx, r)
	}
	return nil, status.Errorf(codes.Internal, "fastgrpc: unexpected request type %T", req)
}
