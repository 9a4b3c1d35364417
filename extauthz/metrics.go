package extauthz

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Reasons a Check ends the way it does, used as metric labels (never the key).
const (
	reasonMissing   = "missing"
	reasonConflict  = "conflict"
	reasonTooLong   = "too_long"
	reasonAlphabet  = "alphabet"
	reasonPrefix    = "prefix"
	reasonChecksum  = "checksum"
	reasonUnknown   = "unknown"
	reasonRevoked   = "revoked"
	reasonExpired   = "expired"
	reasonNotYet    = "not_yet_valid"
	reasonForbidden = "forbidden"
	reasonLimited   = "rate_limited"
	reasonStore     = "store"
	reasonLimiter   = "limiter"
)

// reasonLimiterDown is a limiter outage answered 503 under on_error: deny.
const reasonLimiterDown = "limiter_unavailable"

var denyReasons = []string{reasonMissing, reasonConflict, reasonTooLong, reasonAlphabet, reasonPrefix,
	reasonChecksum, reasonUnknown, reasonRevoked, reasonExpired, reasonNotYet, reasonForbidden, reasonLimited, reasonLimiterDown}

// Metrics counts Check outcomes; counters are resolved once so the hot path does no label lookups.
type Metrics struct {
	allowed  prometheus.Counter
	denied   map[string]prometheus.Counter
	faults   map[string]prometheus.Counter
	limitErr prometheus.Counter
}

// NewMetrics registers the Check counters with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyauthz_checks_total",
		Help: "Check decisions by result (allowed, denied, error) and reason.",
	}, []string{"result", "reason"})
	limitErr := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyauthz_ratelimit_errors_total",
		Help: "Limiter failures answered with the configured on_error policy.",
	})
	for _, c := range []prometheus.Collector{checks, limitErr} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &Metrics{
		allowed:  checks.WithLabelValues("allowed", ""),
		denied:   map[string]prometheus.Counter{},
		faults:   map[string]prometheus.Counter{},
		limitErr: limitErr,
	}
	for _, r := range denyReasons {
		m.denied[r] = checks.WithLabelValues("denied", r)
	}
	for _, r := range []string{reasonStore, reasonLimiter} {
		m.faults[r] = checks.WithLabelValues("error", r)
	}
	return m, nil
}

func (m *Metrics) allow()              { m.allowed.Inc() }
func (m *Metrics) deny(reason string)  { m.denied[reason].Inc() }
func (m *Metrics) fault(reason string) { m.faults[reason].Inc() }
func (m *Metrics) limiterError()       { m.limitErr.Inc() }

func formatReason(err error) string {
	switch {
	case errors.Is(err, apikey.ErrTooLong):
		return reasonTooLong
	case errors.Is(err, apikey.ErrAlphabet):
		return reasonAlphabet
	case errors.Is(err, apikey.ErrChecksum):
		return reasonChecksum
	case errors.Is(err, apikey.ErrEmpty):
		return reasonMissing
	}
	return reasonPrefix
}

func validReason(err error) string {
	switch {
	case errors.Is(err, apikey.ErrRevoked):
		return reasonRevoked
	case errors.Is(err, apikey.ErrExpired):
		return reasonExpired
	}
	return reasonNotYet
}
