package extauthz

import (
	"errors"
	"time"

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
	reasonDisabled  = "disabled"
	reasonForbidden = "forbidden"
	reasonLimited   = "rate_limited"
	reasonStore     = "store"
	reasonLimiter   = "limiter"
)

// reasonLimiterDown is a limiter outage answered 503 under on_error: deny.
const reasonLimiterDown = "limiter_unavailable"

// reasonThrottled is a request from a source over throttle.unknown_keys_per_source.
const reasonThrottled = "throttled"

var denyReasons = []string{reasonMissing, reasonConflict, reasonTooLong, reasonAlphabet, reasonPrefix,
	reasonChecksum, reasonUnknown, reasonRevoked, reasonExpired, reasonNotYet, reasonDisabled, reasonForbidden, reasonLimited, reasonLimiterDown,
	reasonThrottled}

// mode is how a Check's decision is applied: enforced, or only reported.
type mode uint8

const (
	modeEnforce mode = iota // denies are answered as denies
	modeReport              // report_only: every request allowed, would-be denials marked
	nModes
)

// modeLabels are the mode label values of keyauthz_checks_total, by mode.
var modeLabels = [nModes]string{modeEnforce: "enforce", modeReport: "report_only"}

// checkResult is how a Check ended, for the duration histogram.
type checkResult uint8

const (
	resAllowed checkResult = iota
	resDenied
	resError
)

// Results of a Check, the result label of keyauthz_checks_total and keyauthz_check_duration_seconds.
const (
	resultAllowed = "allowed"
	resultDenied  = "denied"
	resultError   = "error"
)

// LatencyBuckets are the upper bounds, in seconds, of keyauthz's latency
// histograms: from 10µs (a Check answered from the cache takes about 1µs) to 5s
// (a store or Redis read that runs into its timeout).
var LatencyBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// Metrics counts Check outcomes and times Checks and limiter calls; counters
// and observers are resolved once so the hot path does no label lookups.
type Metrics struct {
	by       [nModes]modeCounters // keyauthz_checks_total, by mode
	limitErr prometheus.Counter
	avoided  prometheus.Counter // keyauthz_throttle_store_reads_avoided_total

	checkAllowed, checkDenied, checkError prometheus.Observer // keyauthz_check_duration_seconds by result
	limitOK, limitFailed                  prometheus.Observer // keyauthz_ratelimit_duration_seconds by result
}

// NewMetrics registers the Check counters with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyauthz_checks_total",
		Help: "Check decisions by result (allowed, denied, error), reason and mode (enforce, or report_only: the request was allowed and a denied or error result is a would-be one).",
	}, []string{"result", "reason", "mode"})
	avoided := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyauthz_throttle_store_reads_avoided_total",
		Help: "Throttled requests (reason throttled) whose key was not in the negative cache: store reads the throttle saved.",
	})
	limitErr := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyauthz_ratelimit_errors_total",
		Help: "Limiter failures answered with the configured on_error policy.",
	})
	checkDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keyauthz_check_duration_seconds",
		Help:    "Time to decide a Check, from the decoded request to the answer, by result (allowed, denied, error).",
		Buckets: LatencyBuckets,
	}, []string{"result"})
	limitDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keyauthz_ratelimit_duration_seconds",
		Help:    "Time of one rate-limiter decision as a Check waits for it (a Redis round trip with the redis backend), by result (ok, error).",
		Buckets: LatencyBuckets,
	}, []string{"result"})
	for _, c := range []prometheus.Collector{checks, limitErr, checkDur, limitDur, avoided} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &Metrics{
		limitErr: limitErr,
		avoided:  avoided,

		checkAllowed: checkDur.WithLabelValues(resultAllowed),
		checkDenied:  checkDur.WithLabelValues(resultDenied),
		checkError:   checkDur.WithLabelValues(resultError),
		limitOK:      limitDur.WithLabelValues("ok"),
		limitFailed:  limitDur.WithLabelValues(resultError),
	}
	for md, label := range modeLabels {
		c := &m.by[md]
		c.allowed = checks.WithLabelValues(resultAllowed, "", label)
		c.denied = map[string]prometheus.Counter{}
		c.faults = map[string]prometheus.Counter{}
		for _, r := range denyReasons {
			c.denied[r] = checks.WithLabelValues(resultDenied, r, label)
		}
		for _, r := range []string{reasonStore, reasonLimiter} {
			c.faults[r] = checks.WithLabelValues(resultError, r, label)
		}
	}
	return m, nil
}

// modeCounters are one mode's series of keyauthz_checks_total.
type modeCounters struct {
	allowed prometheus.Counter
	denied  map[string]prometheus.Counter
	faults  map[string]prometheus.Counter
}

// checkTook records how long a Check took, by its result (a would-be one in report-only mode).
func (m *Metrics) checkTook(d time.Duration, r checkResult) {
	switch r {
	case resError:
		m.checkError.Observe(d.Seconds())
	case resAllowed:
		m.checkAllowed.Observe(d.Seconds())
	default:
		m.checkDenied.Observe(d.Seconds())
	}
}

// limiterTook records how long a limiter decision took.
func (m *Metrics) limiterTook(d time.Duration, err error) {
	if err != nil {
		m.limitFailed.Observe(d.Seconds())
		return
	}
	m.limitOK.Observe(d.Seconds())
}

func (m *Metrics) allow(md mode)                { m.by[md].allowed.Inc() }
func (m *Metrics) deny(md mode, reason string)  { m.by[md].denied[reason].Inc() }
func (m *Metrics) fault(md mode, reason string) { m.by[md].faults[reason].Inc() }
func (m *Metrics) limiterError()                { m.limitErr.Inc() }
func (m *Metrics) readAvoided()                 { m.avoided.Inc() }

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

// validReason maps a Key.Valid error to its metric reason and usage outcome.
func validReason(err error) (string, apikey.Outcome) {
	switch {
	case errors.Is(err, apikey.ErrRevoked):
		return reasonRevoked, apikey.OutcomeRevoked
	case errors.Is(err, apikey.ErrDisabled):
		return reasonDisabled, apikey.OutcomeDisabled
	case errors.Is(err, apikey.ErrExpired):
		return reasonExpired, apikey.OutcomeExpired
	}
	return reasonNotYet, apikey.OutcomeNotYetValid
}
