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
		c.Store.FollowInterval != 500*time.Millisecond || c.Response.RateHeaders != RateHeadersBoth {
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
		{"response: {realm: ''}", "response.realm"},
		{"ownership: {path_templates: ['/orgs/{org}/x/{org}']}", "ownership.path_templates[0]"},
		{"ownership: {path_templates: ['/orgs/{or-g}']}", "ownership.path_templates[0]"},
		{"ownership: {path_templates: ['/orgs/org}']}", "ownership.path_templates[0]"},
		{"usage: {flush_interval: 0.5s}", "usage.flush_interval"},
		{"usage: {retention: 24h}", "usage.retention"},
		{"headers: {metadata: [team, Team]}", "headers.metadata[1]"},
		{"headers: {metadata: ['x y']}", "headers.metadata[0]"},
		{"admin: {tokens: [{name: a, env: A, workspaces: []}]}", "admin.tokens[0].workspaces"},
		{"admin: {tokens: [{name: a, env: A, workspaces: ['a/b']}]}", "admin.tokens[0].workspaces[0]"},
		{"admin: {tokens: [{file: /t}]}", "admin.tokens[0].name"},
		{"keys: {prefix: 'a b'}", "keys.prefix"},
		{"workspaces: {acme: {max_keys: -1}}", "workspaces.acme.max_keys"},
		{"workspaces: {'..': {max_keys: 1}}", "workspaces: every workspace id must be"}, // issue 10 item 12
		{"cache: {size: 0}", "cache.size"},
		{"runtime: {gc_percent: 0}", "runtime.gc_percent"},
		{"runtime: {memory_limit: lots}", "runtime.memory_limit"},
		{"runtime: {memory_limit: 512MB}", "runtime.memory_limit"},
		{"runtime: {memory_limit: 1Mi}", "runtime.memory_limit"},
		{"runtime: {memory_limit_ratio: 1.5}", "runtime.memory_limit_ratio"},
		{"runtime: {memory_limit_ratio: 0}", "runtime.memory_limit_ratio"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: error %v does not name %s", tc.yaml, err, tc.path)
		}
	}
}

func TestRuntime(t *testing.T) {
	if r := Default().Runtime; r.GCPercent != 100 || r.MemoryLimit != MemoryLimitAuto || r.MemoryLimitRatio != 0.9 {
		t.Fatalf("runtime defaults = %+v, want Go's GOGC 100 and a limit at 90%% of the container's", r)
	}
	c, err := Parse([]byte("runtime: {gc_percent: 400, memory_limit: 768MiB}"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Runtime.GCPercent != 400 || c.Runtime.MemoryLimit != "768MiB" || c.Runtime.MemoryLimitRatio != 0.9 {
		t.Fatalf("parsed %+v", c.Runtime)
	}
	if _, err := Parse([]byte("runtime: {memory_limit: off}")); err != nil {
		t.Fatalf("memory_limit off: %v", err)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1048576": 1 << 20, "64KiB": 64 << 10, "512MiB": 512 << 20, "512Mi": 512 << 20,
		"1GiB": 1 << 30, "1 Gi": 1 << 30, "2TiB": 2 << 40, "100B": 100, " 768MiB ": 768 << 20, "8388607TiB": 8388607 << 40,
		"9223372036854775807": 1<<63 - 1,
	} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "1GB", "1 G", "9999999999TiB", "99999999999999999999",
		"1,024", "1gib", "512MB", "1e9", "0x10", "8388608TiB"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
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
