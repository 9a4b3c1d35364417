package load

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// template is a marshalled CheckRequest with a fixed-length slot holding the API
// key, so a request for any key of that length is a copy and an overwrite: the
// client never runs the protobuf encoder on the hot path.
type template struct {
	b       []byte
	off, n  int // the key slot
	keyName string
}

// envoyRequest builds a CheckRequest shaped like the one Envoy's ext_authz filter
// sends for a plain HTTP/1.1 GET with a browser-ish header set (15 headers with
// the API key), the source and destination peers, and the request metadata.
func envoyRequest(header, key string) *authv3.CheckRequest {
	sock := func(addr string, port uint32) *authv3.AttributeContext_Peer {
		return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}},
		}}}
	}
	path := "/organizations/acme/jobs?limit=20&cursor=eyJpZCI6MTIzNH0"
	h := map[string]string{
		":authority":                     "api.example.com",
		":method":                        "GET",
		":path":                          path,
		":scheme":                        "http",
		"user-agent":                     "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		"accept":                         "application/json, text/plain, */*",
		"accept-encoding":                "gzip, deflate, br",
		"accept-language":                "en-US,en;q=0.9",
		"x-forwarded-proto":              "http",
		"x-request-id":                   "0f9b7c9e-3c1e-4d8e-9a51-6f1f0d7b2a44",
		"x-envoy-expected-rq-timeout-ms": "15000",
		"traceparent":                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"content-type":                   "application/json",
		"cache-control":                  "no-cache",
		header:                           key,
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      sock("10.1.2.3", 53124),
		Destination: sock("10.1.2.4", 10000),
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:       "11390283485728339231",
				Method:   "GET",
				Headers:  h,
				Path:     path,
				Host:     "api.example.com",
				Scheme:   "http",
				Protocol: "HTTP/1.1",
			},
		},
	}}
}

// newTemplate marshals an Envoy-shaped request whose key slot is n bytes long.
func newTemplate(header string, n int) (*template, error) {
	placeholder := strings.Repeat("\x01", n) // a byte no other field holds
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(envoyRequest(header, placeholder))
	if err != nil {
		return nil, fmt.Errorf("marshal check request: %w", err)
	}
	off := bytes.Index(b, []byte(placeholder))
	if off < 0 || bytes.Count(b, []byte(placeholder)) != 1 {
		return nil, fmt.Errorf("check request template: key slot not found exactly once")
	}
	return &template{b: b, off: off, n: n, keyName: header}, nil
}

// fill writes the request for key into dst (reused when large enough) and returns it.
func (t *template) fill(dst []byte, key []byte) ([]byte, error) {
	if len(key) != t.n {
		return nil, fmt.Errorf("key of %d bytes does not fit the %d-byte slot", len(key), t.n)
	}
	dst = append(dst[:0], t.b...)
	copy(dst[t.off:], key)
	return dst, nil
}
