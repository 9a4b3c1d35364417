package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestListenerLimitDefaults(t *testing.T) {
	c := Default()
	if c.GRPC.MaxStreams != 1024 || c.GRPC.RequestTimeout != 10*time.Second || c.GRPC.MaxConns != 4096 {
		t.Errorf("grpc limits: %+v", c.GRPC)
	}
	if c.HTTP.ReadTimeout != 5*time.Second || c.HTTP.WriteTimeout != 30*time.Second || c.HTTP.MaxConns != 256 {
		t.Errorf("http limits: %+v", c.HTTP)
	}
	c2, err := Parse([]byte("grpc: {max_concurrent_streams: 64, request_timeout: 2s, max_conns: 10}\nhttp: {read_timeout: 1s, write_timeout: 3s, max_conns: 7}"))
	if err != nil {
		t.Fatal(err)
	}
	if c2.GRPC.MaxStreams != 64 || c2.GRPC.RequestTimeout != 2*time.Second || c2.GRPC.MaxConns != 10 ||
		c2.HTTP.ReadTimeout != time.Second || c2.HTTP.WriteTimeout != 3*time.Second || c2.HTTP.MaxConns != 7 {
		t.Errorf("parsed: %+v %+v", c2.GRPC, c2.HTTP)
	}
}

func TestListenerLimitErrorsNameThePath(t *testing.T) {
	for _, tc := range []struct{ yaml, path string }{
		{"grpc: {max_concurrent_streams: 0}", "grpc.max_concurrent_streams"},
		{"grpc: {max_concurrent_streams: 1000000}", "grpc.max_concurrent_streams"},
		{"grpc: {request_timeout: 0s}", "grpc.request_timeout"},
		{"grpc: {request_timeout: -1s}", "grpc.request_timeout"},
		{"grpc: {max_conns: 0}", "grpc.max_conns"},
		{"http: {read_timeout: 0s}", "http.read_timeout"},
		{"http: {write_timeout: -5s}", "http.write_timeout"},
		{"http: {max_conns: -1}", "http.max_conns"},
	} {
		_, err := Parse([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Path != tc.path || !strings.HasPrefix(err.Error(), tc.path+": ") {
			t.Errorf("%s: error %v, want one at %s", tc.yaml, err, tc.path)
		}
	}
}
