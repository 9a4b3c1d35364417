package config

import (
	"strings"
	"testing"
	"time"
)

func TestHTTPAuthzConfig(t *testing.T) {
	c, err := Parse([]byte("http_authz: {listen: \"127.0.0.1:9003\", path_prefix: /authz}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := HTTPAuthz{Listen: "127.0.0.1:9003", PathPrefix: "/authz", ReadTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, MaxConns: 1024}
	if c.HTTPAuthz != want {
		t.Errorf("http_authz %+v, want %+v", c.HTTPAuthz, want)
	}
	if d := Default().HTTPAuthz; d.Listen != "" {
		t.Errorf("http_authz on by default: %q", d.Listen)
	}
	if _, err := Parse([]byte("http_authz: {listen: \"unix:///run/keyauthz/http.sock\"}\n")); err != nil {
		t.Errorf("unix socket: %v", err)
	}
	for in, path := range map[string]string{
		"http_authz: {listen: nohost}":           "http_authz.listen",
		"http_authz: {path_prefix: authz}":       "http_authz.path_prefix",
		"http_authz: {path_prefix: /authz/}":     "http_authz.path_prefix",
		"http_authz: {path_prefix: \"/a?b\"}":    "http_authz.path_prefix",
		"http_authz: {max_conns: 0}":             "http_authz.max_conns",
		"http_authz: {read_timeout: 0s}":         "http_authz.read_timeout",
		"http_authz: {write_timeout: -1s}":       "http_authz.write_timeout",
		"http_authz: {listen: \"x:1\", typo: 1}": "http_authz.typo",
	} {
		_, err := Parse([]byte(in + "\n"))
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v, want one naming %s", in, err, path)
		}
	}
}
