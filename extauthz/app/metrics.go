package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// registerCacheMetrics exposes the key cache's counters and sizes, read at scrape time.
func registerCacheMetrics(reg prometheus.Registerer, c *keycache.Cache, f *keycache.Follower) error {
	counter := func(name, help string, get func(keycache.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(get(c.Stats())) })
	}
	gauge := func(name, help string, get func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, get)
	}
	for _, col := range []prometheus.Collector{
		counter("keyauthz_cache_hits_total", "Lookups answered from a fresh positive cache entry.", func(s keycache.Stats) uint64 { return s.Hits }),
		counter("keyauthz_cache_negative_hits_total", "Lookups answered from a negative (unknown key) entry.", func(s keycache.Stats) uint64 { return s.NegativeHits }),
		counter("keyauthz_cache_misses_total", "Lookups not answered from a fresh entry.", func(s keycache.Stats) uint64 { return s.Misses }),
		counter("keyauthz_cache_store_reads_total", "Store lookups made by the cache.", func(s keycache.Stats) uint64 { return s.StoreReads }),
		counter("keyauthz_cache_store_errors_total", "Store lookups that failed.", func(s keycache.Stats) uint64 { return s.StoreErrors }),
		counter("keyauthz_cache_stale_serves_total", "Stale entries served during a store outage.", func(s keycache.Stats) uint64 { return s.StaleServes }),
		gauge("keyauthz_cache_entries", "Positive cache entries.", func() float64 { return float64(c.Len()) }),
		gauge("keyauthz_cache_negative_entries", "Negative cache entries.", func() float64 { return float64(c.NegativeLen()) }),
		gauge("keyauthz_change_feed_seq", "Last change-feed sequence applied.", func() float64 { return float64(f.Seq()) }),
	} {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}
