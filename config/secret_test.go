package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Read drops every trailing \r and \n and nothing else; a missing file, an
// unset or empty variable and an empty secret are errors at path.file or
// path.env that never quote the secret.
func TestSecretRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("KEYAUTHZ_TEST_SECRET", " s3cret value\r\n")
	t.Setenv("KEYAUTHZ_TEST_EMPTY", "")
	for _, tc := range []struct {
		s    Secret
		want string
	}{
		{Secret{File: write("crlf", "s3cret\r\n")}, "s3cret"},
		{Secret{File: write("lines", "s3cret\n\n")}, "s3cret"},
		{Secret{File: write("inner", " s3\ncret \n")}, " s3\ncret "},
		{Secret{Env: "KEYAUTHZ_TEST_SECRET"}, " s3cret value"},
	} {
		if got, err := tc.s.Read("x"); err != nil || string(got) != tc.want {
			t.Errorf("Read(%+v) = %q, %v; want %q", tc.s, got, err, tc.want)
		}
	}
	if b, err := (Secret{}).Read("x"); b != nil || err != nil {
		t.Errorf("Read of a zero Secret = %q, %v; want nothing", b, err)
	}
	for _, tc := range []struct {
		s    Secret
		path string
	}{
		{Secret{File: filepath.Join(dir, "missing")}, "a.b.file"},
		{Secret{File: write("empty", "\r\n")}, "a.b.file"},
		{Secret{Env: "KEYAUTHZ_TEST_UNSET_VARIABLE"}, "a.b.env"},
		{Secret{Env: "KEYAUTHZ_TEST_EMPTY"}, "a.b.env"},
	} {
		_, err := tc.s.Read("a.b")
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Path != tc.path {
			t.Errorf("Read(%+v) = %v, want an error at %s", tc.s, err, tc.path)
		}
	}
}

// Pepper versions and admin tokens keep their YAML shapes ({version, file},
// {name, env}); each needs exactly one of file or env.
func TestSecretShapes(t *testing.T) {
	c, err := Parse([]byte(`
pepper: {current: 2, versions: [{version: 1, file: /p1}, {version: 2, env: P2}]}
admin: {tokens: [{name: portal, file: /t}, {name: ci, env: T}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if v := c.Pepper.Versions; v[0].Secret != (Secret{File: "/p1"}) || v[1].Secret != (Secret{Env: "P2"}) {
		t.Errorf("pepper versions: %+v", v)
	}
	if tk := c.Admin.Tokens; tk[0].Secret != (Secret{File: "/t"}) || tk[1].Name != "ci" || tk[1].Secret != (Secret{Env: "T"}) {
		t.Errorf("admin tokens: %+v", tk)
	}
	for yaml, path := range map[string]string{
		"pepper: {current: 1, versions: [{version: 1, file: /p, env: P}]}": "pepper.versions[0]",
		"admin: {tokens: [{name: a}]}":                                     "admin.tokens[0]",
		"admin: {tokens: [{name: a, file: /t, env: T}]}":                   "admin.tokens[0]",
	} {
		if _, err := Parse([]byte(yaml)); err == nil || !strings.Contains(err.Error(), path+": set exactly one of file or env") {
			t.Errorf("%s: error %v, want one at %s", yaml, err, path)
		}
	}
}

// store.password is optional, for a postgres:// URL that holds no password.
func TestStorePassword(t *testing.T) {
	c, err := Parse([]byte("store: {url: 'postgres://keyauthz@db/keys', password: {env: PGPASSWORD}}"))
	if err != nil || c.Store.Password != (Secret{Env: "PGPASSWORD"}) {
		t.Fatalf("Parse store.password: %+v, %v", c.Store.Password, err)
	}
	for _, yaml := range []string{
		"store: {password: {env: PGPASSWORD}}", // sqlite
		"store: {url: 'postgres://u:Sup3rS3cret@db/keys', password: {env: PGPASSWORD}}",
		"store: {url: 'postgres://u@db/keys?password=Sup3rS3cret', password: {file: /p}}",
		"store: {url: 'postgres://u@db/keys', password: {file: /p, env: P}}",
	} {
		_, err := Parse([]byte(yaml))
		if err == nil || !strings.Contains(err.Error(), "store.password") {
			t.Errorf("%s: error %v, want one at store.password", yaml, err)
		} else if strings.Contains(err.Error(), "Sup3rS3cret") {
			t.Errorf("%s: error shows the password: %v", yaml, err)
		}
	}
}

// Every option word decodes to its value and back; an unknown word is an error
// at the option's YAML path listing the words.
func TestOptionWords(t *testing.T) {
	c, err := Parse([]byte(`
grpc: {codec: standard}
response: {body: problem, rate_headers: ietf, reset: unix}
ratelimit: {backend: redis, on_error: allow, redis: {addrs: ['127.0.0.1:6379']}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.GRPC.Codec != CodecStandard || c.Response.Body != BodyProblem || c.Response.RateHeaders != RateHeadersIETF ||
		c.Response.Reset != ResetUnix || c.RateLimit.Backend != BackendRedis || c.RateLimit.OnError != OnErrorAllow {
		t.Fatalf("parsed %+v %+v %+v", c.GRPC, c.Response, c.RateLimit)
	}
	for _, s := range []interface{ MarshalText() ([]byte, error) }{
		CodecFast, CodecStandard, BackendLocal, BackendRedis, OnErrorAllow, OnErrorDeny, BodyJSON, BodyProblem,
		RateHeadersLegacy, RateHeadersIETF, RateHeadersBoth, ResetSeconds, ResetUnix,
	} {
		if b, err := s.MarshalText(); err != nil || string(b) != s.(interface{ String() string }).String() {
			t.Errorf("%v: MarshalText = %s, %v", s, b, err)
		}
	}
	for yaml, want := range map[string]string{
		"grpc: {codec: slow}":            `grpc.codec: "slow": want one of fast, standard`,
		"ratelimit: {backend: memcache}": `ratelimit.backend: "memcache": want one of local, redis`,
		"ratelimit: {on_error: maybe}":   `ratelimit.on_error: "maybe": want one of allow, deny`,
		"response: {body: xml}":          `response.body: "xml": want one of json, problem`,
		"response: {rate_headers: all}":  `response.rate_headers: "all": want one of legacy, ietf, both`,
		"response: {reset: ms}":          `response.reset: "ms": want one of seconds, unix`,
		"response: {body: ''}":           `response.body: "": want one of json, problem`,
	} {
		_, err := Parse([]byte(yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %s", yaml, err, want)
		}
	}
	var zero Config // options left at zero in a Config built in Go
	err = zero.Validate()
	for _, path := range []string{"grpc.codec", "ratelimit.backend", "ratelimit.on_error", "response.body", "response.rate_headers", "response.reset"} {
		if err == nil || !strings.Contains(err.Error(), path+": ") {
			t.Errorf("Validate of a zero Config = %v, want an error at %s", err, path)
		}
	}
}
