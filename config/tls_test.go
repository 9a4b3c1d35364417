package config

import (
	"strings"
	"testing"
)

func TestTLSValidationNamesTheField(t *testing.T) {
	for yaml, want := range map[string]string{
		"grpc: {tls: {cert_file: /c}}":                                                                    "grpc.tls.key_file: required with cert_file",
		"grpc: {tls: {key_file: /k}}":                                                                     "grpc.tls.cert_file: required with key_file",
		"grpc: {tls: {client_ca_file: /ca}}":                                                              "grpc.tls.client_ca_file: needs cert_file and key_file",
		"grpc: {tls: {cert_file: /c, key_file: /k, client_sans: [envoy.default.svc]}}":                    "grpc.tls.client_sans: needs client_ca_file",
		"grpc: {tls: {cert_file: /c, key_file: /k, client_ca_file: /ca, client_sans: ['*.default.svc']}}": "grpc.tls.client_sans[0]:",
		"grpc: {tls: {cert_file: /c, key_file: /k, client_ca_file: /ca, client_sans: ['spiffe://']}}":     "grpc.tls.client_sans[0]:",
		"http: {tls: {cert_file: /c}}":                                                                    "http.tls.key_file: required with cert_file",
	} {
		_, err := Parse([]byte(yaml))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", yaml, err, want)
		}
	}
	c, err := Parse([]byte(`grpc: {tls: {cert_file: /c, key_file: /k, client_ca_file: /ca,
  client_sans: [spiffe://cluster.local/ns/default/sa/envoy, envoy.default.svc]}}
http: {tls: {cert_file: /c, key_file: /k}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.GRPC.TLS.ClientSANs) != 2 || !c.HTTP.TLS.Enabled() {
		t.Errorf("decoded %+v %+v", c.GRPC.TLS, c.HTTP.TLS)
	}
	if _, err := Parse([]byte("grpc: {tls: {cert_file: /c, key_file: /k, client_san: [x]}}")); err == nil {
		t.Error("unknown field client_san accepted")
	}
}
