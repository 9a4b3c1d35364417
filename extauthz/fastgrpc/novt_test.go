//go:build !vtprotobuf

package fastgrpc

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Without -tags vtprotobuf the codec falls back to the standard proto codec.
func TestVTProtobufNotCompiledIn(t *testing.T) {
	if _, ok := any(&authv3.CheckResponse{}).(vtMarshaler); ok {
		t.Fatal("CheckResponse has MarshalVTStrict without -tags vtprotobuf")
	}
}
