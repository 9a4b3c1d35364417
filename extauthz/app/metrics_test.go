package app

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// /metrics carries the last-use recorder's counters and, with the Redis
// limiter, the Redis command and deny-cache counters.
func TestMetricsExposed(t *testing.T) {
	usage := []string{"keyauthz_usage_pending_keys", "keyauthz_usage_flushes_total", "keyauthz_usage_flush_failures_total"}
	redis := []string{"keyauthz_ratelimit_redis_calls_total", "keyauthz_ratelimit_deny_cache_hits_total"}
	for _, backend := range []config.Backend{config.BackendLocal, config.BackendRedis} {
		t.Run(backend.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.RateLimit.Backend = backend
			cfg.RateLimit.Redis.Addrs = []string{testenv.FreeAddr(t)} // nothing listens: the limiter starts anyway
			a := startApp(t, cfg)
			r, err := http.Get("http://" + a.HTTPAddr().String() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(r.Body)
			r.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			want, absent := usage, redis
			if backend == config.BackendRedis {
				want, absent = append(usage, redis...), nil
			}
			for _, m := range want {
				if !strings.Contains(string(b), "\n"+m+" ") {
					t.Errorf("/metrics lacks %s", m)
				}
			}
			for _, m := range absent {
				if strings.Contains(string(b), m) {
					t.Errorf("/metrics has %s without the Redis limiter", m)
				}
			}
		})
	}
}
