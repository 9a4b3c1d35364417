package tlsconf

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons is the closed set of the reason label of
// keyauthz_tls_handshake_failures_total.
var Reasons = []string{ReasonNoClientCert, ReasonUnknownCA, ReasonBadCertificate, ReasonNoALPN, ReasonPlaintext, ReasonSANNotAllowed, ReasonOther}

// Handshake failure reasons.
const (
	ReasonNoClientCert   = "no_client_cert"  // mutual TLS and the client sent no certificate
	ReasonUnknownCA      = "unknown_ca"      // a certificate signed by a CA the other side does not trust
	ReasonBadCertificate = "bad_certificate" // expired, not yet valid, wrong usage, unparsable
	ReasonNoALPN         = "no_alpn"         // the client did not negotiate h2 (gRPC needs it)
	ReasonPlaintext      = "plaintext"       // the client spoke plaintext (HTTP/2 or HTTP/1) to the TLS port
	ReasonSANNotAllowed  = "san_not_allowed" // the client certificate's SANs are outside client_sans
	ReasonOther          = "other"           // anything else (protocol version, cipher, timeout, reset)
)

// Metrics are the TLS metrics of every listener.
type Metrics struct {
	expiry    *prometheus.GaugeVec
	notBefore *prometheus.GaugeVec
	failures  *prometheus.CounterVec
	reloads   *prometheus.CounterVec
}

// NewMetrics registers the TLS metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keyauthz_tls_cert_expiry_seconds",
			Help: "Unix time the listener's serving certificate expires (its NotAfter)."}, []string{"listener"}),
		notBefore: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keyauthz_tls_cert_not_before_seconds",
			Help: "Unix time the listener's serving certificate becomes valid (its NotBefore)."}, []string{"listener"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyauthz_tls_handshake_failures_total",
			Help: "TLS handshakes the listener failed, by reason: no_client_cert, unknown_ca, bad_certificate, no_alpn, plaintext, san_not_allowed, other. Connections closed before sending anything are not counted."},
			[]string{"listener", "reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyauthz_tls_reloads_total",
			Help: "Changed certificate files read by the listener: result ok (new handshakes use them) or error (the previous certificate is kept)."},
			[]string{"listener", "result"}),
	}
	for _, c := range []prometheus.Collector{m.expiry, m.notBefore, m.failures, m.reloads} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// initListener makes every series of listener visible at 0.
func (m *Metrics) initListener(l string) {
	if m == nil {
		return
	}
	for _, r := range Reasons {
		m.failures.WithLabelValues(l, r)
	}
	m.reloads.WithLabelValues(l, "ok")
	m.reloads.WithLabelValues(l, "error")
}

func (m *Metrics) setValidity(l string, c *x509.Certificate) {
	if m == nil {
		return
	}
	m.expiry.WithLabelValues(l).Set(float64(c.NotAfter.Unix()))
	m.notBefore.WithLabelValues(l).Set(float64(c.NotBefore.Unix()))
}

func (m *Metrics) failed(l, reason string) {
	if m != nil {
		m.failures.WithLabelValues(l, reason).Inc()
	}
}

func (m *Metrics) reloaded(l, result string) {
	if m != nil {
		m.reloads.WithLabelValues(l, result).Inc()
	}
}
