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

// decider is what the Check handler needs; *extauthz.Service implements it.
type decider interface {
	Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)
	Decide(ctx context.Context, req *extauthz.Request) (*authv3.CheckResponse, error)
	DecideInto(ctx context.Context, req *extauthz.Request, a *extauthz.Answer) (*authv3.CheckResponse, error)
}

var _ decider = (*extauthz.Service)(nil)

// Register registers svc on s as envoy.service.auth.v3.Authorization, in place
// of authv3.RegisterAuthorizationServer (registering both is a duplicate service).
// With ServerOption on s, requests are decoded straight from their bytes and
// answered by svc.DecideInto (svc.Decide when unary interceptors run); without
// it they are decoded by the standard codec and answered by svc.Check. Unary
// interceptors run as for the generated handler, with
// authv3.Authorization_Check_FullMethodName; on the fast path their request is
// an *extauthz.Request whose strings alias the request buffer, so an
// interceptor must not keep it (nor the request it sees otherwise) after it
// returns. Without interceptors, an allowed answer is built in pooled storage
// that the codec reuses once the answer is marshalled: a stats handler given
// such a server sees the reply as an opaque value and must not read it after
// the send.
func Register(s *grpc.Server, svc *extauthz.Service) {
	h := &handler{svc: svc}
	h.invoke = h.call
	desc := authv3.Authorization_ServiceDesc // the generated names and metadata
	desc.HandlerType = (*decider)(nil)
	desc.Methods = []grpc.MethodDesc{{MethodName: desc.Methods[0].MethodName, Handler: h.check}}
	s.RegisterService(&desc, svc)
}

// handler serves Check for one registered service.
type handler struct {
	svc    decider
	invoke grpc.UnaryHandler // h.call, made once so interceptors cost no allocation
}

// exchange is one Check call's reusable state, request in and answer out. On
// the fast path without interceptors the handler hands gRPC the exchange
// itself as the reply, holding an allowed response built in ans; the codec
// marshals that response and then releases the exchange, so the answer costs
// no allocation.
type exchange struct {
	raw  rawRequest
	req  request
	wire extauthz.Request
	info grpc.UnaryServerInfo
	ans  extauthz.Answer
	out  *authv3.CheckResponse // the reply, while gRPC holds the exchange
}

var exchanges = sync.Pool{New: func() any {
	return &exchange{raw: rawRequest{CheckRequest: new(authv3.CheckRequest)}}
}}

// done drops the request: its bytes and everything decoded from them.
func (c *exchange) done() {
	if c.raw.buf == nil {
		c.raw.CheckRequest.Reset()
	}
	c.raw.free()
	c.req.reset()
	c.wire = extauthz.Request{}
	c.info = grpc.UnaryServerInfo{}
}

// release returns c to the pool once nothing of the exchange is in use.
func (c *exchange) release() {
	c.done()
	c.out = nil
	exchanges.Put(c)
}

// check is the grpc.MethodDesc handler.
func (h *handler) check(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
	c := exchanges.Get().(*exchange)
	if err := dec(&c.raw); err != nil {
		c.release()
		return nil, err
	}
	if c.raw.buf != nil && ic == nil {
		return h.fast(ctx, c)
	}
	defer c.release()
	var req any
	if c.raw.buf != nil {
		if err := c.req.decode(c.raw.bytes()); err != nil {
			return nil, status.Error(codes.InvalidArgument, "malformed CheckRequest")
		}
		c.wire = extauthz.NewWireRequest(c.req.path, c.req.headers, c.req.ext)
		c.wire.Source = c.req.source
		req = &c.wire
	} else {
		if ic == nil {
			return h.svc.Check(ctx, c.raw.CheckRequest)
		}
		req = c.raw.CheckRequest
	}
	c.info = grpc.UnaryServerInfo{Server: srv, FullMethod: authv3.Authorization_Check_FullMethodName}
	return ic(ctx, req, &c.info, h.invoke)
}

// fast decides a request the codec kept as bytes. An allowed answer is built
// in c and c itself is the reply (the codec marshals c.out, then releases c);
// denies and errors are shared responses, and c is released at once.
func (h *handler) fast(ctx context.Context, c *exchange) (any, error) {
	if err := c.req.decode(c.raw.bytes()); err != nil {
		c.release()
		return nil, status.Error(codes.InvalidArgument, "malformed CheckRequest")
	}
	c.wire = extauthz.NewWireRequest(c.req.path, c.req.headers, c.req.ext)
	c.wire.Source = c.req.source
	resp, err := h.svc.DecideInto(ctx, &c.wire, &c.ans)
	c.done() // the answer never points into the request
	if err != nil || resp != c.ans.Response() {
		c.release()
		return resp, err
	}
	c.out = resp
	return c, nil
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
