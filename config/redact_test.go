package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"postgres://u:s3cret@db:5432/k?sslmode=disable", "postgres://u:xxxxx@db:5432/k?sslmode=disable"},
		{"postgresql://u:p%40ss@db/k", "postgresql://u:xxxxx@db/k"},
		{"postgres://u@db/k", "postgres://u@db/k"},
		{"postgres://db/k?user=u&password=s3cret&sslmode=require", "postgres://db/k?user=u&password=xxxxx&sslmode=require"},
		{"postgres://db/k?PASSWORD=s3cret", "postgres://db/k?PASSWORD=xxxxx"},
		{"postgres://db/k?pass%77ord=s3cret", "postgres://db/k?pass%77ord=xxxxx"},
		{"postgres://db/k?sslpassword=s3cret;password=two", "postgres://db/k?sslpassword=xxxxx;password=xxxxx"},
		{"postgres://db/k?password=s3cret#frag", "postgres://db/k?password=xxxxx#xxxxx"},
		{"postgres://u:pw@db?password=a@b", "postgres://u:xxxxx@db?password=xxxxx"},
		{"sqlite:///data/a@b.db", "sqlite:///data/a@b.db"},
		{"postgres://u:pw@h1:5432,h2:5433/k", "postgres://u:xxxxx@h1:5432,h2:5433/k"},
		{"postgres://u:pw@[::1]:5432/k", "postgres://u:xxxxx@[::1]:5432/k"},
		{"sqlite://./keyauthz.db", "sqlite://./keyauthz.db"},
		{"sqlite:///var/lib/keyauthz/keys.db", "sqlite:///var/lib/keyauthz/keys.db"},
		{"file:///etc/keyauthz/keys.yaml", "file:///etc/keyauthz/keys.yaml"},
		{"host=db user=u password=s3cret dbname=k", "host=db user=u password=xxxxx dbname=k"},
		{"host=db password='s3 cret' dbname=k", "host=db password=xxxxx dbname=k"},
		{"host=db password = 's3 \\' cret'", "host=db password = xxxxx"},
		// Unparsable: never echoed, whatever they hold.
		{"postgres://u:ab/s3cret@db/k", "postgres://(unparsable URL, not shown)"},
		{"postgres://u:s3cret%zz@db/k", "postgres://(unparsable URL, not shown)"},
		{"postgres://u:s3cret@db:port/k", "postgres://(unparsable URL, not shown)"},
		{"postgres://u:s3#cret@db/k", "postgres://(unparsable URL, not shown)"},
		// Go and libpq would split these differently: a part of the password would show as a host.
		{"postgres://u:s3@cret@db/k", "postgres://(unparsable URL, not shown)"},
		{"postgres://db?password=s3@cret", "postgres://(unparsable URL, not shown)"},
		{"po stgres://u:s3cret@db/k", "(unparsable URL, not shown)"},
		{"host=db password='s3cret", "(unparsable connection string, not shown)"},
		{"u:s3cret@db/k", "(unparsable connection string, not shown)"},
	}
	for _, c := range cases {
		if got := RedactURL(c.in); got != c.want {
			t.Errorf("RedactURL(%q) = %q, want %q", c.in, got, c.want)
		}
		if strings.Contains(RedactURL(c.in), "s3") || strings.Contains(RedactURL(c.in), "two") {
			t.Errorf("RedactURL(%q) shows a secret", c.in)
		}
	}
}

func TestURLSecrets(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"postgres://u:p%40ss@db/k", []string{"p%40ss", "p@ss"}},
		{"postgres://db/k?password=a+b", []string{"a+b", "a b"}},
		{"host=db password='s3 \\' cret'", []string{"'s3 \\' cret'", "s3 ' cret"}},
		{"postgres://u@db/k", nil},
	} {
		got, ok := URLSecrets(c.in)
		if !ok || strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("URLSecrets(%q) = %q, %v; want %q, true", c.in, got, ok, c.want)
		}
	}
	if _, ok := URLSecrets("postgres://u:ab/cd@db/k"); ok {
		t.Error("URLSecrets of an unparsable URL says ok")
	}
}

// A store URL url.Parse rejects is reported without url.Parse's message, which
// quotes the URL with its password.
func TestValidateHidesStoreURLPassword(t *testing.T) {
	for _, u := range []string{
		"postgres://u:ab/Sup3rS3cret@db/k",
		"postgres://u:Sup3rS3cret%zz@db/k",
		"postgres://u:Sup3rS3cret@db:port/k",
		"postgres://u:x@Sup3rS3cret@db/k",
	} {
		c := Default()
		c.Store.URL = u
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "store.url") {
			t.Fatalf("Validate(%q) = %v, want a store.url error", u, err)
		}
		if strings.Contains(err.Error(), "Sup3rS3cret") {
			t.Errorf("Validate(%q) shows the password: %v", u, err)
		}
	}
}

func TestRedisPasswordFileAndEnvExclusive(t *testing.T) {
	const redis = "ratelimit: {backend: redis, redis: {addrs: ['127.0.0.1:6379'], %s}}"
	_, err := Parse([]byte(fmt.Sprintf(redis, "password_file: /run/secrets/redis, password_env: REDIS_PASSWORD")))
	if err == nil || !strings.Contains(err.Error(), "ratelimit.redis.password_env") || !strings.Contains(err.Error(), "ratelimit.redis.password_file") {
		t.Fatalf("Parse with both password_file and password_env = %v, want an error naming both", err)
	}
	for yaml, want := range map[string]Secret{
		"password_env: REDIS_PASSWORD":         {Env: "REDIS_PASSWORD"},
		"password_file: /run/secrets/redis":    {File: "/run/secrets/redis"},
		"password: {env: REDIS_PASSWORD}":      {Env: "REDIS_PASSWORD"},
		"password: {file: /run/secrets/redis}": {File: "/run/secrets/redis"},
	} {
		c, err := Parse([]byte(fmt.Sprintf(redis, yaml)))
		if err != nil || c.RateLimit.Redis.Password != want {
			t.Errorf("Parse with %s: %+v, %v; want password %+v", yaml, c.RateLimit.Redis.Password, err, want)
		}
	}
	for _, yaml := range []string{
		"password: {file: /p, env: P}", "password: {env: P}, password_env: Q",
	} {
		if _, err := Parse([]byte(fmt.Sprintf(redis, yaml))); err == nil || !strings.Contains(err.Error(), "ratelimit.redis.password") {
			t.Errorf("Parse with %s = %v, want an error naming ratelimit.redis.password", yaml, err)
		}
	}
}

func TestMigrateLockTimeout(t *testing.T) {
	c, err := Parse([]byte("store: {migrate_lock_timeout: 90s}\n"))
	if err != nil || c.Store.MigrateLockTimeout.Seconds() != 90 {
		t.Fatalf("Parse migrate_lock_timeout: %v, %v", c.Store.MigrateLockTimeout, err)
	}
	if Default().Store.MigrateLockTimeout.Seconds() != 60 {
		t.Errorf("default migrate_lock_timeout = %v, want 1m", Default().Store.MigrateLockTimeout)
	}
	if _, err := Parse([]byte("store: {migrate_lock_timeout: 0s}\n")); err == nil || !strings.Contains(err.Error(), "store.migrate_lock_timeout") {
		t.Errorf("Parse migrate_lock_timeout 0s = %v, want an error naming store.migrate_lock_timeout", err)
	}
}
