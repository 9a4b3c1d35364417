//go:build vtprotobuf

package fastgrpc

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// With -tags vtprotobuf the codec must marshal responses with vtprotobuf.
func TestVTProtobufCompiledIn(t *testing.T) {
	if _, ok := any(&authv3.CheckResponse{}).(vtMarshaler); !ok {
		t.Fatal("built with -tags vtprotobuf but CheckResponse has no MarshalVTStrict")
	}
}
