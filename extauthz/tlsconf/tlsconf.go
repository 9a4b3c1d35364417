// Package tlsconf serves TLS from certificate files that change while the
// process runs, as cert-manager and Kubernetes secret volumes change them:
// the certificate, key and client CA are re-read when their content changes
// (a `..data` symlink swap included) and on demand (SIGHUP), new handshakes
// use the new files, connections already open keep theirs, and a bad new file
// is logged and the previous pair kept. It also checks client certificate SANs
// against an allow-list, exposes the serving certificate's validity as metrics
// and counts failed handshakes by reason.
package tlsconf

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
)

// DefaultInterval is how often Run re-reads the files: a change is served
// within this interval plus one handshake.
const DefaultInterval = time.Second

// ErrSANNotAllowed is the handshake error of a client certificate whose SANs
// are all outside the configured allow-list (client_sans).
var ErrSANNotAllowed = errors.New("client certificate SAN not allowed")

// Options are a Source's listener name and files.
type Options struct {
	Listener string     // metric label and log field: "grpc" or "http"
	Path     string     // YAML path of the tls block, for errors: "grpc.tls"
	Files    config.TLS // the files and the SAN allow-list
	// Interval is how often Run checks the files (DefaultInterval when 0).
	Interval time.Duration
	// ALPN is the protocols offered (["h2"] for gRPC, which grpc-go adds itself).
	ALPN []string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Source holds the current certificate, key and client CA of one listener.
type Source struct {
	opt     Options
	log     *zap.Logger
	metrics *Metrics
	cur     atomic.Pointer[state]
	limit   logLimiter

	mu      sync.Mutex // serializes loads; guards lastSum
	lastSum [sha256.Size]byte
}

// state is one loaded set of files.
type state struct {
	leaf *x509.Certificate
	conf *tls.Config
	sum  [sha256.Size]byte
}

// Info describes the serving certificate a Source holds.
type Info struct {
	Serial    *big.Int
	Subject   string
	NotBefore time.Time
	NotAfter  time.Time
}

// New reads and checks the files of o. The errors are *config.FieldError
// naming the file's YAML path (grpc.tls.cert_file, grpc.tls.key_file,
// grpc.tls.client_ca_file). m may be nil (no metrics).
func New(o Options, m *Metrics, log *zap.Logger) (*Source, error) {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Source{opt: o, log: log.With(zap.String("listener", o.Listener)), metrics: m}
	s.limit.perSec = handshakeLogsPerSecond
	raw, err := s.read()
	if err != nil {
		return nil, err
	}
	st, err := s.build(raw)
	if err != nil {
		return nil, err
	}
	s.lastSum = st.sum
	s.cur.Store(st)
	m.initListener(o.Listener)
	s.installed(st, "loaded TLS certificate")
	return s, nil
}

// Config is the server tls.Config: every handshake takes the current files
// through GetConfigForClient.
func (s *Source) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: s.opt.ALPN,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load().conf, nil
		},
	}
}

// Info returns the serving certificate now in use.
func (s *Source) Info() Info {
	l := s.cur.Load().leaf
	return Info{Serial: l.SerialNumber, Subject: l.Subject.String(), NotBefore: l.NotBefore, NotAfter: l.NotAfter}
}

// Listener is the listener name the Source was built with ("grpc", "http").
func (s *Source) Listener() string { return s.opt.Listener }

// Valid returns an error when the serving certificate is outside its
// validity period at the Source's clock, nil when it is within it.
func (s *Source) Valid() error {
	return validity(s.cur.Load().leaf, s.opt.Now())
}

func validity(leaf *x509.Certificate, now time.Time) error {
	switch {
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("serving certificate not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		return fmt.Errorf("serving certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Run re-reads the files every interval until ctx is done: a changed set is
// loaded and served to new handshakes; a bad one is logged once and the
// previous set kept.
func (s *Source) Run(ctx context.Context) {
	t := time.NewTicker(s.opt.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = s.reload(false)
		}
	}
}

// Reload re-reads the files now (SIGHUP), whether or not they changed, and
// reports whether a different set is now served. On error the previous set
// stays in use.
func (s *Source) Reload() (changed bool, err error) { return s.reload(true) }

func (s *Source) reload(force bool) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, err := s.read()
	if err != nil {
		sum := sha256.Sum256([]byte(err.Error()))
		if force || sum != s.lastSum { // log a missing file once, not every second
			s.lastSum = sum
			s.failed(err)
		}
		return false, err
	}
	sum := raw.sum()
	if !force && sum == s.lastSum {
		return false, nil
	}
	s.lastSum = sum
	if sum == s.cur.Load().sum {
		s.checkValidity(s.cur.Load().leaf) // on SIGHUP, say again when it is expired
		return false, nil
	}
	st, err := s.build(raw)
	if err != nil {
		s.failed(err)
		return false, err
	}
	s.cur.Store(st)
	s.metrics.reloaded(s.opt.Listener, "ok")
	s.installed(st, "reloaded TLS certificate")
	return true, nil
}

func (s *Source) failed(err error) {
	s.metrics.reloaded(s.opt.Listener, "error")
	s.log.Error("TLS files not reloaded; keeping the previous certificate", zap.Error(err))
}

// installed logs the new serving certificate, sets the validity metrics and
// logs an error when it is outside its validity period.
func (s *Source) installed(st *state, msg string) {
	s.metrics.setValidity(s.opt.Listener, st.leaf)
	s.log.Info(msg, zap.String("subject", st.leaf.Subject.String()), zap.String("serial", st.leaf.SerialNumber.Text(16)),
		zap.Time("not_before", st.leaf.NotBefore), zap.Time("not_after", st.leaf.NotAfter),
		zap.Bool("client_ca", st.conf.ClientCAs != nil), zap.Strings("client_sans", s.opt.Files.ClientSANs))
	s.checkValidity(st.leaf)
}

func (s *Source) checkValidity(leaf *x509.Certificate) {
	if err := validity(leaf, s.opt.Now()); err != nil {
		s.log.Error("TLS serving certificate is outside its validity period: clients will refuse the handshake; /readyz says not ready",
			zap.String("cert_file", s.opt.Files.CertFile), zap.Error(err))
	}
}

// raw is the content of the files, as read.
type raw struct{ cert, key, ca []byte }

func (r raw) sum() [sha256.Size]byte {
	h := sha256.New()
	for _, b := range [][]byte{r.cert, r.key, r.ca} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

func (s *Source) fieldErr(file string, err error) error {
	return &config.FieldError{Path: s.opt.Path + "." + file, Msg: err.Error()}
}

// read reads the three files (through any symlinks: a ..data swap is a
// content change like any other).
func (s *Source) read() (raw, error) {
	var r raw
	var err error
	f := s.opt.Files
	if r.cert, err = os.ReadFile(f.CertFile); err != nil {
		return r, s.fieldErr("cert_file", err)
	}
	if r.key, err = os.ReadFile(f.KeyFile); err != nil {
		return r, s.fieldErr("key_file", err)
	}
	if f.ClientCA != "" {
		if r.ca, err = os.ReadFile(f.ClientCA); err != nil {
			return r, s.fieldErr("client_ca_file", err)
		}
	}
	return r, nil
}

// build parses r into a serving configuration; the error names the file at fault.
func (s *Source) build(r raw) (*state, error) {
	leaf, err := firstCert(r.cert)
	if err != nil {
		return nil, s.fieldErr("cert_file", err)
	}
	pair, err := tls.X509KeyPair(r.cert, r.key)
	if err != nil { // the certificate parsed: the key is missing, bad or not the certificate's
		return nil, s.fieldErr("key_file", keyError(err))
	}
	pair.Leaf = leaf
	conf := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		NextProtos:   s.opt.ALPN,
	}
	if r.ca != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(r.ca) {
			return nil, s.fieldErr("client_ca_file", errors.New("no PEM certificate found"))
		}
		conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
		if sans := s.opt.Files.ClientSANs; len(sans) > 0 {
			conf.VerifyConnection = func(cs tls.ConnectionState) error { return checkSANs(cs, sans) }
		}
	}
	return &state{leaf: leaf, conf: conf, sum: r.sum()}, nil
}

// firstCert parses the first certificate of a PEM file: the serving certificate.
func firstCert(b []byte) (*x509.Certificate, error) {
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, errors.New("no PEM CERTIFICATE block found")
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse certificate: %w", err)
			}
			return c, nil
		}
	}
}

// keyError rewords tls.X509KeyPair's errors for the key file.
func keyError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "tls: ")
	if strings.Contains(msg, "does not match") {
		return errors.New("the private key does not match the certificate in cert_file")
	}
	return errors.New(msg)
}

// checkSANs admits a client certificate carrying one of sans as a URI or DNS SAN.
func checkSANs(cs tls.ConnectionState, sans []string) error {
	if len(cs.PeerCertificates) == 0 {
		return ErrSANNotAllowed
	}
	c := cs.PeerCertificates[0]
	for _, u := range c.URIs {
		if slices.Contains(sans, u.String()) {
			return nil
		}
	}
	for _, d := range c.DNSNames {
		if slices.ContainsFunc(sans, func(s string) bool { return strings.EqualFold(s, d) }) {
			return nil
		}
	}
	var got []string
	for _, u := range c.URIs {
		got = append(got, u.String())
	}
	got = append(got, c.DNSNames...)
	return fmt.Errorf("%w: certificate has %s", ErrSANNotAllowed, strings.Join(quoteAll(got), ", "))
}

func quoteAll(ss []string) []string {
	if len(ss) == 0 {
		return []string{"no URI or DNS SAN"}
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}
