package extauthz

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Answer is the storage of one allowed CheckResponse: the response and every
// message it points to, in one value that can be reused once the response has
// been marshalled. The zero value is ready to use.
type Answer struct {
	resp  authv3.CheckResponse
	oneof authv3.CheckResponse_OkResponse
	ok    authv3.OkHttpResponse
	rate  rateBlock

	// Upstream identity headers (key id, workspace).
	idVals [2]corev3.HeaderValue
	idOpts [2]corev3.HeaderValueOption
	idPtrs [2]*corev3.HeaderValueOption

	// Dynamic metadata: the map is made once and keeps pointing at vals, whose
	// strings change per answer, so reuse allocates nothing.
	meta  structpb.Struct
	vals  [2]structpb.Value
	kinds [2]structpb.Value_StringValue
}

// Response returns the response a holds (meaningful after DecideInto allowed a request).
func (a *Answer) Response() *authv3.CheckResponse { return &a.resp }

// fill builds the allowed response in a and returns it.
func (a *Answer) fill(s *Service, id, workspace string, rate []*corev3.HeaderValueOption) *authv3.CheckResponse {
	for i, kv := range [2][2]string{{s.opt.KeyIDHeader, id}, {s.opt.WorkspaceHeader, workspace}} {
		a.idVals[i] = corev3.HeaderValue{Key: kv[0], Value: kv[1]}
		a.idOpts[i] = corev3.HeaderValueOption{Header: &a.idVals[i], AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
		a.idPtrs[i] = &a.idOpts[i]
	}
	if a.meta.Fields == nil {
		a.meta.Fields = map[string]*structpb.Value{MetadataKeyID: &a.vals[0], MetadataWorkspace: &a.vals[1]}
		a.vals[0].Kind, a.vals[1].Kind = &a.kinds[0], &a.kinds[1]
	}
	a.kinds[0].StringValue, a.kinds[1].StringValue = id, workspace

	a.ok = authv3.OkHttpResponse{Headers: a.idPtrs[:], HeadersToRemove: s.remove, ResponseHeadersToAdd: rate}
	a.oneof.OkResponse = &a.ok
	a.resp = authv3.CheckResponse{Status: okStatus, HttpResponse: &a.oneof, DynamicMetadata: &a.meta}
	return &a.resp
}
