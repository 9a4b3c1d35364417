package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/tlsconf/tlstest"
)

// fixture is a Source over a secret volume, served by a gRPC-style handshake
// loop (Credentials().ServerHandshake) that echoes what it reads.
type fixture struct {
	ca   *tlstest.CA
	vol  *tlstest.Volume
	src  *Source
	reg  *prometheus.Registry
	m    *Metrics
	logs *observer.ObservedLogs
	addr string
}

func newFixture(t *testing.T, sans ...string) *fixture {
	t.Helper()
	f := &fixture{ca: tlstest.NewCA(t, "test-ca"), reg: prometheus.NewRegistry()}
	f.vol = tlstest.NewVolume(t, t.TempDir(), f.ca.Server(t), f.ca.CertPEM)
	var err error
	if f.m, err = NewMetrics(f.reg); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	f.logs = logs
	f.src, err = New(Options{Listener: "grpc", Path: "grpc.tls", Files: config.TLS{
		CertFile: f.vol.Path(tlstest.CertName), KeyFile: f.vol.Path(tlstest.KeyName),
		ClientCA: f.vol.Path(tlstest.CAName), ClientSANs: sans,
	}}, f.m, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	f.src.limit.perSec = 100 // every failure logged (TestLogLimiter checks the limit)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	creds := f.src.Credentials()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				conn, _, err := creds.ServerHandshake(c)
				if err != nil {
					c.Close()
					return
				}
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return f
}

// client is a client certificate of the fixture's CA.
func (f *fixture) client(t *testing.T, spec tlstest.Spec) tls.Certificate {
	spec.Client = true
	return f.ca.Issue(t, spec).TLSCertificate(t)
}

// dial completes a handshake (and one echo, so a refusal after the client's
// Finished is seen) and returns the served certificate's serial.
func (f *fixture) dial(t *testing.T, cert *tls.Certificate, protos ...string) (*tls.Conn, error) {
	t.Helper()
	if protos == nil {
		protos = []string{"h2"}
	}
	cfg := &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost", NextProtos: protos}
	if cert != nil { // sent whatever CAs the server names, as Envoy does
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", f.addr, cfg)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		c.Close()
		return nil, err
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func (f *fixture) failures(reason string) float64 {
	var d dto.Metric
	_ = f.m.failures.WithLabelValues("grpc", reason).Write(&d)
	return d.Counter.GetValue()
}

// waitFailure polls until the reason's counter reaches want: the server
// counts after the client already saw its alert.
func (f *fixture) waitFailure(t *testing.T, reason string, want float64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for f.failures(reason) < want {
		if time.Now().After(deadline) {
			t.Fatalf("keyauthz_tls_handshake_failures_total{reason=%q} = %v, want %v", reason, f.failures(reason), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := f.logs.FilterMessage("TLS handshake failed").FilterField(zap.String("reason", reason)).Len(); n == 0 {
		t.Errorf("no \"TLS handshake failed\" log line with reason %s", reason)
	}
}

func TestErrorsNameTheFile(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	good := ca.Server(t)
	other := ca.Server(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, key, caf := write("c", good.CertPEM), write("k", good.KeyPEM), write("ca", ca.CertPEM)
	for _, tc := range []struct {
		name  string
		files config.TLS
		path  string
	}{
		{"missing cert", config.TLS{CertFile: filepath.Join(dir, "nope"), KeyFile: key}, "grpc.tls.cert_file"},
		{"cert not PEM", config.TLS{CertFile: write("junk", []byte("junk")), KeyFile: key}, "grpc.tls.cert_file"},
		{"missing key", config.TLS{CertFile: cert, KeyFile: filepath.Join(dir, "nope")}, "grpc.tls.key_file"},
		{"key not PEM", config.TLS{CertFile: cert, KeyFile: write("junk2", []byte("junk"))}, "grpc.tls.key_file"},
		{"key of another cert", config.TLS{CertFile: cert, KeyFile: write("k2", other.KeyPEM)}, "grpc.tls.key_file"},
		{"missing CA", config.TLS{CertFile: cert, KeyFile: key, ClientCA: filepath.Join(dir, "nope")}, "grpc.tls.client_ca_file"},
		{"CA not PEM", config.TLS{CertFile: cert, KeyFile: key, ClientCA: write("junk3", []byte("junk"))}, "grpc.tls.client_ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Options{Listener: "grpc", Path: "grpc.tls", Files: tc.files}, nil, zap.NewNop())
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.Path != tc.path {
				t.Fatalf("err = %v, want a FieldError at %s", err, tc.path)
			}
		})
	}
	if _, err := New(Options{Listener: "grpc", Path: "grpc.tls", Files: config.TLS{CertFile: cert, KeyFile: key, ClientCA: caf}}, nil, zap.NewNop()); err != nil {
		t.Fatalf("good files: %v", err)
	}
}

// TestDataSwap rotates the files as the kubelet does: new handshakes present
// the new certificate within 2 s, a connection opened before keeps working.
func TestDataSwap(t *testing.T) {
	f := newFixture(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	ctx := ctxUntil(stop)
	go func() { defer close(done); f.src.Run(ctx) }()
	t.Cleanup(func() { close(stop); <-done })

	cc := f.client(t, tlstest.Spec{CN: "envoy"})
	before, err := f.dial(t, &cc)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	oldSerial := before.ConnectionState().PeerCertificates[0].SerialNumber

	next := f.ca.Server(t)
	f.vol.Swap(t, next, f.ca.CertPEM)
	swapped := time.Now()
	for {
		c, err := f.dial(t, &cc)
		if err != nil {
			t.Fatalf("dial after swap: %v", err)
		}
		got := c.ConnectionState().PeerCertificates[0].SerialNumber
		c.Close()
		if got.Cmp(next.Leaf.SerialNumber) == 0 {
			break
		}
		if got.Cmp(oldSerial) != 0 {
			t.Fatalf("served serial %v: neither the old nor the new certificate", got)
		}
		if time.Since(swapped) > 2*time.Second {
			t.Fatalf("new handshakes still present the old certificate %v after 2s", oldSerial)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("new certificate served %v after the swap", time.Since(swapped).Round(time.Millisecond))
	// The connection made before the swap still works.
	if _, err := before.Write([]byte("y")); err != nil {
		t.Fatalf("old connection: %v", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(before, b); err != nil || b[0] != 'y' {
		t.Fatalf("old connection echo: %q %v", b, err)
	}
	if got := value(t, f.m.expiry.WithLabelValues("grpc")); got != float64(next.Leaf.NotAfter.Unix()) {
		t.Errorf("expiry metric %v, want the new certificate's %v", got, next.Leaf.NotAfter.Unix())
	}
}

// TestBadNewFilesKeepTheOldPair swaps in a key that does not match: the old
// certificate stays in use and the failure is logged and counted.
func TestBadNewFilesKeepTheOldPair(t *testing.T) {
	f := newFixture(t)
	old := f.src.Info().Serial
	a, b := f.ca.Server(t), f.ca.Server(t)
	f.vol.Swap(t, tlstest.Cert{CertPEM: a.CertPEM, KeyPEM: b.KeyPEM}, f.ca.CertPEM)
	changed, err := f.src.Reload()
	if changed || err == nil || !strings.Contains(err.Error(), "grpc.tls.key_file") {
		t.Fatalf("Reload = %v, %v; want unchanged and an error naming grpc.tls.key_file", changed, err)
	}
	if f.src.Info().Serial.Cmp(old) != 0 {
		t.Fatalf("serving serial changed to %v after a bad reload", f.src.Info().Serial)
	}
	if f.logs.FilterMessage("TLS files not reloaded; keeping the previous certificate").Len() != 1 {
		t.Errorf("want one error log line for the bad files")
	}
	if got := value(t, f.m.reloads.WithLabelValues("grpc", "error")); got != 1 {
		t.Errorf("reloads{result=error} = %v, want 1", got)
	}
	// The poll does not log the same bad files again.
	if changed, _ := f.src.reload(false); changed || f.logs.FilterMessage("TLS files not reloaded; keeping the previous certificate").Len() != 1 {
		t.Errorf("the same bad files were reloaded or logged again")
	}
	cc := f.client(t, tlstest.Spec{CN: "envoy"})
	c, err := f.dial(t, &cc)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(old) != 0 {
		t.Fatal("handshake served another certificate")
	}
	// Fixed files are picked up.
	f.vol.Swap(t, a, f.ca.CertPEM)
	if changed, err := f.src.Reload(); !changed || err != nil {
		t.Fatalf("Reload of good files = %v, %v", changed, err)
	}
	if f.src.Info().Serial.Cmp(a.Leaf.SerialNumber) != 0 {
		t.Fatal("good files not served")
	}
}

func TestHandshakeFailureReasons(t *testing.T) {
	f := newFixture(t, "spiffe://cluster.local/ns/default/sa/envoy", "envoy.default.svc")

	allowedURI := f.client(t, tlstest.Spec{CN: "envoy", URIs: []string{"spiffe://cluster.local/ns/default/sa/envoy"}})
	allowedDNS := f.client(t, tlstest.Spec{CN: "envoy", DNS: []string{"Envoy.default.svc"}})
	for _, cc := range []tls.Certificate{allowedURI, allowedDNS} {
		c, err := f.dial(t, &cc)
		if err != nil {
			t.Fatalf("allowed client: %v", err)
		}
		c.Close()
	}

	t.Run("san_not_allowed", func(t *testing.T) {
		cc := f.client(t, tlstest.Spec{CN: "other", URIs: []string{"spiffe://cluster.local/ns/default/sa/other"}, DNS: []string{"other.default.svc"}})
		if _, err := f.dial(t, &cc); err == nil {
			t.Fatal("client outside client_sans was admitted")
		}
		f.waitFailure(t, ReasonSANNotAllowed, 1)
	})
	t.Run("no_client_cert", func(t *testing.T) {
		if _, err := f.dial(t, nil); err == nil {
			t.Fatal("client without certificate was admitted")
		}
		f.waitFailure(t, ReasonNoClientCert, 1)
	})
	t.Run("unknown_ca", func(t *testing.T) {
		other := tlstest.NewCA(t, "other-ca").Issue(t, tlstest.Spec{CN: "envoy", Client: true,
			URIs: []string{"spiffe://cluster.local/ns/default/sa/envoy"}}).TLSCertificate(t)
		if _, err := f.dial(t, &other); err == nil {
			t.Fatal("client of another CA was admitted")
		}
		f.waitFailure(t, ReasonUnknownCA, 1)
	})
	t.Run("bad_certificate", func(t *testing.T) {
		expired := f.client(t, tlstest.Spec{CN: "envoy", URIs: []string{"spiffe://cluster.local/ns/default/sa/envoy"},
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
		if _, err := f.dial(t, &expired); err == nil {
			t.Fatal("expired client certificate was admitted")
		}
		f.waitFailure(t, ReasonBadCertificate, 1)
	})
	t.Run("no_alpn", func(t *testing.T) {
		if _, err := f.dial(t, &allowedURI, []string{}...); err == nil {
			t.Fatal("client without ALPN was admitted")
		}
		f.waitFailure(t, ReasonNoALPN, 1)
	})
	t.Run("plaintext", func(t *testing.T) {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		_, _ = io.Copy(io.Discard, c) // the server closes
		f.waitFailure(t, ReasonPlaintext, 1)
	})
	t.Run("closed before sending is not a failure", func(t *testing.T) {
		before := 0.0
		for _, r := range Reasons {
			before += f.failures(r)
		}
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		// A handshake that follows is counted after it: once it is, the probe was seen.
		if _, err := f.dial(t, nil); err == nil {
			t.Fatal("client without certificate was admitted")
		}
		f.waitFailure(t, ReasonNoClientCert, 2)
		after := 0.0
		for _, r := range Reasons {
			after += f.failures(r)
		}
		if after != before+1 {
			t.Errorf("failures went %v → %v, want only the handshake without certificate counted", before, after)
		}
	})
}

func TestClassify(t *testing.T) {
	for msg, want := range map[string]string{
		"tls: first record does not look like a TLS handshake":                                 ReasonPlaintext,
		"tls: client didn't provide a certificate":                                             ReasonNoClientCert,
		"tls: failed to verify certificate: x509: certificate signed by unknown authority":     ReasonUnknownCA,
		"remote error: tls: unknown certificate authority":                                     ReasonUnknownCA,
		"remote error: tls: bad certificate":                                                   ReasonBadCertificate,
		"tls: failed to verify certificate: x509: certificate has expired or is not yet valid": ReasonBadCertificate,
		"credentials: cannot check peer: missing selected ALPN property":                       ReasonNoALPN,
		"tls: client requested unsupported application protocols ([http/1.1])":                 ReasonNoALPN,
		"client certificate SAN not allowed: certificate has \"x\"":                            ReasonSANNotAllowed,
		"tls: client offered only unsupported versions: [301]":                                 ReasonOther,
		"read tcp 127.0.0.1:9001->127.0.0.1:5555: i/o timeout":                                 ReasonOther,
		"EOF": "",
	} {
		if got := classifyText(msg); got != want {
			t.Errorf("classifyText(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestValidity(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	for _, tc := range []struct {
		name     string
		from, to time.Time
		wantErr  string
	}{
		{"expired", time.Now().Add(-48 * time.Hour), time.Now().Add(-time.Hour), "expired at"},
		{"not yet valid", time.Now().Add(time.Hour), time.Now().Add(48 * time.Hour), "not valid before"},
		{"valid", time.Now().Add(-time.Hour), time.Now().Add(time.Hour), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ca.Issue(t, tlstest.Spec{CN: "k", NotBefore: tc.from, NotAfter: tc.to})
			vol := tlstest.NewVolume(t, t.TempDir(), c, ca.CertPEM)
			reg := prometheus.NewRegistry()
			m, _ := NewMetrics(reg)
			core, logs := observer.New(zap.InfoLevel)
			s, err := New(Options{Listener: "http", Path: "http.tls", Files: config.TLS{CertFile: vol.Path(tlstest.CertName), KeyFile: vol.Path(tlstest.KeyName)}}, m, zap.New(core))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Valid()
			errLogs := logs.FilterLevelExact(zap.ErrorLevel).Len()
			if tc.wantErr == "" {
				if err != nil || errLogs != 0 {
					t.Fatalf("Valid() = %v, %d error lines; want valid", err, errLogs)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errLogs != 1 {
				t.Fatalf("Valid() = %v, %d error lines; want %q and one error line", err, errLogs, tc.wantErr)
			}
			if got := value(t, m.expiry.WithLabelValues("http")); got != float64(tc.to.Unix()) {
				t.Errorf("expiry metric %v, want %v", got, tc.to.Unix())
			}
			if got := value(t, m.notBefore.WithLabelValues("http")); got != float64(tc.from.Unix()) {
				t.Errorf("not-before metric %v, want %v", got, tc.from.Unix())
			}
		})
	}
}

func TestLogLimiter(t *testing.T) {
	l := logLimiter{perSec: 2}
	now := time.Unix(1000, 0)
	for i, want := range []bool{true, true, false, false} {
		if ok, _ := l.allow(now); ok != want {
			t.Fatalf("call %d: allow = %v, want %v", i, ok, want)
		}
	}
	ok, dropped := l.allow(now.Add(time.Second))
	if !ok || dropped != 2 {
		t.Fatalf("next second: allow = %v, dropped %d; want true, 2", ok, dropped)
	}
}

// ctxUntil is a context done when stop is closed.
func ctxUntil(stop <-chan struct{}) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	return ctx
}

// value reads a gauge's or counter's current value.
func value(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}
