// Package fastgrpc serves envoy.service.auth.v3.Authorization without the
// generic protobuf codec on the request path: a gRPC codec keeps the request's
// bytes, a small protowire decoder reads only the fields the decision needs
// (path, headers or header_map, context_extensions) straight from them while
// checking the rest as proto.Unmarshal would (so both codecs reject the same
// requests and decide the others alike), and the response is marshalled with
// vtprotobuf's generated code when the binary is built with -tags vtprotobuf. Responses are the same as extauthz.Service.Check
// gives; every other service on the server (health) keeps the standard codec.
//
// # grpc-go EXPERIMENTAL APIs
//
// The fast codec is the default (grpc.codec: fast) and rests on grpc-go APIs
// marked EXPERIMENTAL, which a minor grpc-go release may change:
//
//   - grpc.ForceServerCodecV2, which makes the codec the server's codec for
//     every service and method, whatever the request's content-subtype;
//   - package encoding: CodecV2, and GetCodecV2 for the standard proto codec
//     the codec delegates every other message to;
//   - package mem: BufferSlice, Buffer, BufferPool, NewBuffer, SliceBuffer,
//     DefaultBufferPool and BufferSlice.MaterializeToBuffer.
//
// It also relies on how the server uses them: the handler's request value
// (*rawRequest) reaches Unmarshal and its reply value (a pooled exchange) reaches
// Marshal unchanged; a one-buffer request is kept by reference (a
// MaterializeToBuffer reference that outlives the server's own, freed after
// the decision); and the server frees what Marshal returns once written, which
// returns pooled response buffers. TestGRPCExperimentalAPIs (contract_test.go)
// checks each of these and fails loudly when an upgrade changes one; until
// fastgrpc is fixed, grpc.codec: standard serves Check with the generated code
// and grpc-go's own codec.
package fastgrpc

import (
	"fmt"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// ServerOption makes the server use this package's codec: Check requests
// registered with Register are kept as bytes, everything else goes to gRPC's
// standard proto codec.
func ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(newCodec())
}

// codec is the server codec; it handles *rawRequest and *authv3.CheckResponse
// and delegates every other message to the standard proto codec.
type codec struct {
	std encoding.CodecV2
}

var _ encoding.CodecV2 = codec{}

func newCodec() codec {
	std := encoding.GetCodecV2(protocodec.Name)
	if std == nil { // registered by grpc's own import of encoding/proto; never nil in practice
		std = missingCodec{}
	}
	return codec{std: std}
}

// Name is "proto": the wire format is unchanged.
func (codec) Name() string { return protocodec.Name }

// Unmarshal keeps a reference to a Check request's bytes (a copy only when the
// message spans several buffers) and decodes any other message with proto.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawRequest); ok {
		r.free()
		r.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
		return nil
	}
	return c.std.Unmarshal(data, v)
}

// vtMarshaler is implemented by go-control-plane messages built with -tags vtprotobuf.
type vtMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVTStrict(b []byte) (int, error)
	MarshalVTStrict() ([]byte, error)
}

// Marshal encodes a CheckResponse with vtprotobuf when it is compiled in (with
// proto otherwise) into a pooled buffer that gRPC frees once it is written, and
// anything else with the standard codec. A reply that is a pooled exchange (an
// allowed answer from Register's handler) is marshalled and then released.
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *exchange: // an allowed answer held by a pooled exchange: marshal, then release it
		defer m.release()
		return c.marshal(m.out)
	case *authv3.CheckResponse:
		if m != nil {
			return c.marshal(m)
		}
	}
	return c.std.Marshal(v)
}

// marshal encodes one CheckResponse.
func (c codec) marshal(m *authv3.CheckResponse) (mem.BufferSlice, error) {
	if vt, ok := any(m).(vtMarshaler); ok {
		n := vt.SizeVT()
		if n > respBufSize {
			b, err := vt.MarshalVTStrict()
			if err != nil {
				return nil, err
			}
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
		buf := respBufs.Get(n)
		if w, err := vt.MarshalToSizedBufferVTStrict(*buf); err != nil || w != n {
			respBufs.Put(buf)
			if err == nil {
				err = fmt.Errorf("fastgrpc: CheckResponse marshalled to %d bytes, sized %d", w, n)
			}
			return nil, err
		}
		return mem.BufferSlice{mem.NewBuffer(buf, respBufs)}, nil
	}
	// As the standard codec does, but into a pooled buffer even when small.
	if n := proto.Size(m); n > respBufSize {
		return c.std.Marshal(m)
	}
	buf := respBufs.Get(0)
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(*buf, m)
	if err != nil || cap(b) != respBufSize {
		respBufs.Put(buf)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil // grew; not ours to pool
	}
	*buf = b
	return mem.BufferSlice{mem.NewBuffer(buf, respBufs)}, nil
}

// respBufSize is the size of pooled response buffers: above gRPC's pooling
// threshold (1 KiB), so mem.NewBuffer makes them reference-counted buffers gRPC
// returns to the pool after writing, and well above a CheckResponse's size.
const respBufSize = 4096

// respBufs pools response buffers. They are not zeroed: the marshaller writes
// every byte of the length it is handed.
var respBufs = &bufPool{}

// bufPool is a mem.BufferPool of respBufSize buffers.
type bufPool struct{ p sync.Pool }

var _ mem.BufferPool = (*bufPool)(nil)

// Get returns a buffer of length n (at most respBufSize).
func (b *bufPool) Get(n int) *[]byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	s := make([]byte, n, respBufSize)
	return &s
}

// Put takes back a buffer from Get.
func (b *bufPool) Put(v *[]byte) {
	if cap(*v) == respBufSize {
		b.p.Put(v)
	}
}

// rawRequest is what the Check handler asks the codec to fill: with this
// package's codec, a reference to the request bytes; with any other codec
// (ServerOption not used) the embedded CheckRequest, decoded as usual.
type rawRequest struct {
	*authv3.CheckRequest
	buf mem.Buffer // non-nil when this package's codec kept the bytes
}

// bytes returns the kept request bytes; valid until free.
func (r *rawRequest) bytes() []byte { return r.buf.ReadOnlyData() }

// free releases the kept bytes.
func (r *rawRequest) free() {
	if r.buf != nil {
		r.buf.Free()
		r.buf = nil
	}
}

// missingCodec fails every call; it stands in if gRPC's proto codec is not registered.
type missingCodec struct{}

func (missingCodec) Marshal(v any) (mem.BufferSlice, error) {
	return nil, fmt.Errorf("fastgrpc: no proto codec registered to marshal %T", v)
}

func (missingCodec) Unmarshal(_ mem.BufferSlice, v any) error {
	return fmt.Errorf("fastgrpc: no proto codec registered to unmarshal %T", v)
}

func (missingCodec) Name() string { return protocodec.Name }
