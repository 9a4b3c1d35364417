package config

import (
	"strings"
	"testing"
)

// A config error is one line naming the YAML path (and, for decoding errors, the line).
func TestParseErrorsNameYAMLPath(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"ratelimit:\n  backend: local\n  defualt: 5/m\n", "ratelimit.defualt: unknown field (line 3)"},
		{"workspaces:\n  acme:\n    rate_limit: abc\n", `workspaces.acme.rate_limit: rate "abc": `},
		{"grpc:\n  max_conns: lots\n", "grpc.max_conns: cannot unmarshal !!str `lots` into int (line 2)"},
		{"grpc:\n  codec: slow\n", `grpc.codec: "slow": want one of fast, standard (line 2)`},
		{"pepper: {versions: [{version: 1, fil: x}]}\n", "pepper.versions[0].fil: unknown field (line 1)"},
		{"admin: {tokens: [{name: a, file: x, extra: 1}]}\n", "admin.tokens[0].extra: unknown field (line 1)"},
		{"store: {url: \"sqlite://\"}\n", "store.url: sqlite://: want a file path"},
	} {
		_, err := Parse([]byte(c.yaml))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q) = %v; want one line starting %q", c.yaml, err, c.want)
		}
	}
}
