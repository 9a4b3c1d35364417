package testenv

import (
	"strings"
	"testing"
)

func TestStartRedisMissingBinaryFails(t *testing.T) {
	t.Setenv(RedisServerEnv, "/nonexistent/redis-server")
	for name, fn := range map[string]func() error{
		"single":  func() error { _, err := TryStartRedis(t.TempDir(), ""); return err },
		"cluster": func() error { _, err := redisCLI(); return err },
	} {
		t.Run(name, func(t *testing.T) {
			err := fn()
			if err == nil || !strings.Contains(err.Error(), "apt-get install -y redis-server") {
				t.Fatalf("error %v does not say how to install redis-server", err)
			}
		})
	}
}
