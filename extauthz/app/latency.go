package app

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// latency holds the histograms and counters the app passes to its parts as
// hooks (keycache.Options.ObserveRead, admin.Options.Observe), so that those
// packages need no metrics library. Every label value comes from a closed set:
// a result word, an admin route pattern, a status code.
type latency struct {
	readFound, readNotFound, readError prometheus.Observer
	adminReqs                          *prometheus.CounterVec
	adminDur                           *prometheus.HistogramVec
}

// newLatency registers keyauthz_store_read_duration_seconds,
// keyauthz_admin_requests_total and keyauthz_admin_request_duration_seconds with reg.
func newLatency(reg prometheus.Registerer) (*latency, error) {
	reads := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keyauthz_store_read_duration_seconds",
		Help:    "Key store reads made by the cache on a miss, by result (found, not_found, error).",
		Buckets: extauthz.LatencyBuckets,
	}, []string{"result"})
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyauthz_admin_requests_total",
		Help: `Admin API requests by route (the pattern matched, e.g. "GET /v1/workspaces/{ws}/api-keys", or "unmatched") and status code.`,
	}, []string{"route", "code"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keyauthz_admin_request_duration_seconds",
		Help:    "Admin API request durations by route (as in keyauthz_admin_requests_total).",
		Buckets: extauthz.LatencyBuckets,
	}, []string{"route"})
	if err := register(reg, reads, reqs, dur); err != nil {
		return nil, err
	}
	return &latency{
		readFound:    reads.WithLabelValues("found"),
		readNotFound: reads.WithLabelValues("not_found"),
		readError:    reads.WithLabelValues("error"),
		adminReqs:    reqs,
		adminDur:     dur,
	}, nil
}

// storeRead is keycache.Options.ObserveRead.
func (l *latency) storeRead(took time.Duration, err error) {
	switch {
	case err == nil:
		l.readFound.Observe(took.Seconds())
	case errors.Is(err, apikey.ErrNotFound):
		l.readNotFound.Observe(took.Seconds())
	default:
		l.readError.Observe(took.Seconds())
	}
}

// admin is admin.Options.Observe.
func (l *latency) admin(route string, code int, took time.Duration) {
	l.adminReqs.WithLabelValues(route, strconv.Itoa(code)).Inc()
	l.adminDur.WithLabelValues(route).Observe(took.Seconds())
}
