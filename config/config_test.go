package config

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.GRPC.Listen != "127.0.0.1:9001" || c.HTTP.Listen != "127.0.0.1:9002" || c.Store.URL != "sqlite://./keyauthz.db" ||
		c.RateLimit.Default.N != 240 || c.RateLimit.Default.Per != time.Minute || c.Keys.MaxPerWorkspace != 10 ||
		c.Store.FollowInterval != 500*time.Millisecond || c.Response.RateHeader != "both" {
		t.Fatalf("defaults drifted from DESIGN.md: %+v", c)
	}
}

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`
grpc: {listen: "unix:///tmp/kz.sock"}
headers: {api_key: [X-Api-Key, Custom-Key]}
ratelimit: {default: 600/m, backend: local}
workspaces: {acme: {rate_limit: 10/s, max_keys: 3}}
store: {url: "sqlite:///var/lib/keyauthz/keys.db", follow_interval: 250ms}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Headers.APIKey[0] != "x-api-key" || c.Headers.APIKey[1] != "custom-key" {
		t.Fatalf("header names not lower-cased as Envoy sends them: %v", c.Headers.APIKey)
	}
	if c.RateLimit.Default.N != 600 || c.Workspaces["acme"].RateLimit.Per != time.Second || c.Store.FollowInterval != 250*time.Millisecond {
		t.Fatalf("parsed %+v", c)
	}
	if c.HTTP.Listen != "127.0.0.1:9002" {
		t.Fatal("unset fields must keep defaults")
	}
	if c, err := Parse(nil); err != nil || c.GRPC.Listen != "127.0.0.1:9001" {
		t.Fatalf("empty file: %v", err)
	}
}

func TestErrorsNameThePath(t *testing.T) {
	tests := []struct{ yaml, path string }{
		{"grpc: {listen: nope}", "grpc.listen"},
		{"grpc: {lisen: 1}", "lisen"},
		{"ratelimit: {on_error: maybe}", "ratelimit.on_error"},
		{"ratelimit: {default: fast}", "fast"},
		{"ratelimit: {backend: redis}", "ratelimit.redis.addrs"},
		{"store: {url: 'mysql://x'}", "store.url"},
		{"store: {follow_interval: -1s}", "store.follow_interval"},
		{"pepper: {current: 2, versions: [{version: 1, file: /p}]}", "pepper.current"},
		{"pepper: {current: 1, versions: [{version: 1}]}", "pepper.versions[0]"},
		{"headers: {api_key: ['bad header']}", "headers.api_key[0]"},
		{"response: {rate_headers: all}", "response.rate_headers"},
		{"ownership: {path_templates: ['/orgs/{org}']}", "ownership.path_templates[0]"},
		{"admin: {tokens: [{file: /t}]}", "admin.tokens[0].name"},
		{"keys: {prefix: 'a b'}", "keys.prefix"},
		{"workspaces: {acme: {max_keys: -1}}", "workspaces.acme.max_keys"},
		{"cache: {size: 0}", "cache.size"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: error %v does not name %s", tc.yaml, err, tc.path)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("grpc: {listen: 127.0.0.1:1}"))
	f.Add([]byte("ratelimit: {default: 1/s}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config Validate rejects: %v", verr)
			}
		}
	})
}
