package app

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
	"github.com/keyauthz/keyauthz/extauthz/usage"
)

// registerCacheMetrics exposes the key cache's counters and sizes, read at scrape time.
func registerCacheMetrics(reg prometheus.Registerer, c *keycache.Cache, f *keycache.Follower) error {
	counter := func(name, help string, get func(keycache.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(get(c.Stats())) })
	}
	gauge := func(name, help string, get func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, get)
	}
	return register(reg,
		counter("keyauthz_cache_hits_total", "Lookups answered from a fresh positive cache entry.", func(s keycache.Stats) uint64 { return s.Hits }),
		counter("keyauthz_cache_negative_hits_total", "Lookups answered from a negative (unknown key) entry.", func(s keycache.Stats) uint64 { return s.NegativeHits }),
		counter("keyauthz_cache_misses_total", "Lookups not answered from a fresh entry.", func(s keycache.Stats) uint64 { return s.Misses }),
		counter("keyauthz_cache_lookups_total", "Cache lookups: hits + negative hits + misses (hit ratio: keyauthz_cache_hits_total / keyauthz_cache_lookups_total).",
			func(s keycache.Stats) uint64 { return s.Hits + s.NegativeHits + s.Misses }),
		counter("keyauthz_cache_store_reads_total", "Store lookups made by the cache.", func(s keycache.Stats) uint64 { return s.StoreReads }),
		counter("keyauthz_cache_store_errors_total", "Store lookups that failed.", func(s keycache.Stats) uint64 { return s.StoreErrors }),
		counter("keyauthz_cache_stale_serves_total", "Stale entries served during a store outage.", func(s keycache.Stats) uint64 { return s.StaleServes }),
		gauge("keyauthz_cache_entries", "Positive cache entries.", func() float64 { return float64(c.Len()) }),
		gauge("keyauthz_cache_negative_entries", "Negative cache entries.", func() float64 { return float64(c.NegativeLen()) }),
		gauge("keyauthz_change_feed_seq", "Last change-feed sequence applied.", func() float64 { return float64(f.Seq()) }),
		gauge("keyauthz_change_feed_lag_seconds", "Seconds since the change feed was last read successfully (since start before the first read): key changes made on other replicas within this window may not have reached this replica's cache yet. Normally below store.follow_interval.",
			func() float64 { return time.Since(f.LastPolled()).Seconds() }),
	)
}

// registerUsageMetrics exposes the usage recorder's counters, read at scrape time.
func registerUsageMetrics(reg prometheus.Registerer, r *usage.Recorder) error {
	counter := func(name, help string, v func(usage.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v(r.Stats())) })
	}
	return register(reg,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyauthz_usage_pending_keys", Help: "Key and hour buckets of usage counts and last-use times waiting for the next write to the store."},
			func() float64 { return float64(r.Stats().Pending) }),
		counter("keyauthz_usage_flushes_total", "Flushes that wrote every usage count and last-use time they took.", func(s usage.Stats) uint64 { return s.Flushes }),
		counter("keyauthz_usage_flush_failures_total", "Flushes the store failed to write (kept for the next flush).", func(s usage.Stats) uint64 { return s.Failures }),
		counter("keyauthz_usage_rows_written_total", "Hourly usage rows written to the store (at most one per key and hour per flush).", func(s usage.Stats) uint64 { return s.RowsWritten }),
		counter("keyauthz_usage_dropped_total", "Uses not counted because too many key and hour buckets were pending (store outage).", func(s usage.Stats) uint64 { return s.Dropped }),
		counter("keyauthz_usage_pruned_total", "Hourly usage rows dropped after usage.retention.", func(s usage.Stats) uint64 { return s.Pruned }),
	)
}

// registerRedisMetrics exposes the Redis limiter's counters, read at scrape time.
func registerRedisMetrics(reg prometheus.Registerer, r *ratelimit.Redis) error {
	return register(reg,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyauthz_ratelimit_redis_calls_total", Help: "Commands sent to Redis: one per decision that reached it, two when it had to load the script."},
			func() float64 { return float64(r.Calls()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyauthz_ratelimit_deny_cache_hits_total", Help: "Decisions the local deny cache answered without Redis (a key known to be over its limit)."},
			func() float64 { return float64(r.CacheHits()) }),
	)
}

// register registers cols with reg, stopping at the first error.
func register(reg prometheus.Registerer, cols ...prometheus.Collector) error {
	for _, c := range cols {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
