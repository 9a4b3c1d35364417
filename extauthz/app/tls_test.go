package app

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/tlsconf/tlstest"
)

// tlsFixture is an App serving gRPC over mutual TLS (client_sans set) and
// its admin port over TLS, from secret volumes.
type tlsFixture struct {
	a    *App
	ca   *tlstest.CA
	gvol *tlstest.Volume
	hvol *tlstest.Volume
	logs *observer.ObservedLogs
	lvl  zap.AtomicLevel
}

const envoySAN = "spiffe://cluster.local/ns/default/sa/envoy"

func startTLSApp(t *testing.T, serving tlstest.Spec, mutate func(*config.Config)) *tlsFixture {
	t.Helper()
	f := &tlsFixture{ca: tlstest.NewCA(t, "ca"), lvl: zap.NewAtomicLevelAt(zap.InfoLevel)}
	sc := f.ca.Server(t)
	if !serving.NotAfter.IsZero() {
		serving.CN, serving.DNS = "keyauthz", []string{"localhost"}
		sc = f.ca.Issue(t, serving)
	}
	f.gvol = tlstest.NewVolume(t, t.TempDir(), sc, f.ca.CertPEM)
	f.hvol = tlstest.NewVolume(t, t.TempDir(), f.ca.Server(t), f.ca.CertPEM) // always valid: /readyz stays reachable
	cfg := testConfig(t)
	cfg.GRPC.TLS = config.TLS{CertFile: f.gvol.Path(tlstest.CertName), KeyFile: f.gvol.Path(tlstest.KeyName),
		ClientCA: f.gvol.Path(tlstest.CAName), ClientSANs: []string{envoySAN}}
	cfg.HTTP.TLS = config.TLS{CertFile: f.hvol.Path(tlstest.CertName), KeyFile: f.hvol.Path(tlstest.KeyName)}
	if mutate != nil {
		mutate(&cfg)
	}
	core, logs := observer.New(zap.DebugLevel)
	f.logs = logs
	log := zap.New(core)
	a, err := New(context.Background(), cfg, log, Options{Embedded: true, Level: &f.lvl})
	if err != nil {
		t.Fatal(err)
	}
	f.a = a
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "store ready", func() bool { return a.state.Load() == stateReady })
	return f
}

// dial returns a gRPC connection presenting a client certificate with uri as its SAN.
func (f *tlsFixture) dial(t *testing.T, uri string) *grpc.ClientConn {
	t.Helper()
	cc := f.ca.Issue(t, tlstest.Spec{CN: "envoy", URIs: []string{uri}, Client: true}).TLSCertificate(t)
	creds := credentials.NewTLS(&tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cc}})
	conn, err := grpc.NewClient(f.a.GRPCAddr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// https is a client of the admin port trusting the test CA.
func (f *tlsFixture) https() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"}}}
}

func (f *tlsFixture) readyz(t *testing.T) (int, map[string]string) {
	t.Helper()
	hc := f.https()
	defer hc.CloseIdleConnections()
	r, err := hc.Get("https://" + f.a.HTTPAddr().String() + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz over TLS: %v", err)
	}
	defer r.Body.Close()
	var body map[string]string
	_ = json.NewDecoder(r.Body).Decode(&body)
	return r.StatusCode, body
}

func metricValue(t *testing.T, a *App, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
	next:
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			return metricNumber(m)
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

func metricNumber(m *dto.Metric) float64 {
	if m.Gauge != nil {
		return m.GetGauge().GetValue()
	}
	return m.GetCounter().GetValue()
}

func TestGRPCMutualTLS(t *testing.T) {
	f := startTLSApp(t, tlstest.Spec{}, nil)
	secret := newSecret(t, f.a)
	if err := checkAllowed(f.dial(t, envoySAN), secret); err != nil {
		t.Fatalf("Check over mTLS with the allowed SAN: %v", err)
	}
	if err := checkAllowed(f.dial(t, "spiffe://cluster.local/ns/default/sa/intruder"), secret); err == nil {
		t.Fatal("Check with a client SAN outside grpc.tls.client_sans succeeded")
	}
	waitFor(t, "san_not_allowed counted", func() bool {
		return metricValue(t, f.a, "keyauthz_tls_handshake_failures_total", map[string]string{"listener": "grpc", "reason": "san_not_allowed"}) >= 1
	})
	if f.logs.FilterMessage("TLS handshake failed").FilterField(zap.String("reason", "san_not_allowed")).Len() == 0 {
		t.Error("no log line for the refused SAN")
	}
	if code, body := f.readyz(t); code != http.StatusOK || body["status"] != "ready" {
		t.Fatalf("/readyz over TLS = %d %v, want 200 ready", code, body)
	}
}

// An expired gRPC serving certificate is logged as an error at start, its expiry
// metric is in the past and /readyz is 503 until a valid one is swapped in.
func TestExpiredServingCertificate(t *testing.T) {
	f := startTLSApp(t, tlstest.Spec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, nil)
	if f.logs.FilterLevelExact(zap.ErrorLevel).FilterMessageSnippet("outside its validity period").Len() == 0 {
		t.Error("no error log line for the expired certificate at start")
	}
	if exp := metricValue(t, f.a, "keyauthz_tls_cert_expiry_seconds", map[string]string{"listener": "grpc"}); exp >= float64(time.Now().Unix()) {
		t.Errorf("keyauthz_tls_cert_expiry_seconds = %v, want in the past", exp)
	}
	code, body := f.readyz(t)
	if code != http.StatusServiceUnavailable || !strings.Contains(body["reason"], "grpc.tls: serving certificate expired") {
		t.Fatalf("/readyz = %d %v, want 503 naming the expired certificate", code, body)
	}
	// cert-manager renews it: ready again without a restart.
	f.gvol.Swap(t, f.ca.Server(t), f.ca.CertPEM)
	waitFor(t, "ready after renewal", func() bool { code, _ := f.readyz(t); return code == http.StatusOK })
}

// Reload (SIGHUP) applies new admin tokens and log level, names what needs a
// restart, and keeps serving.
func TestReloadTokensAndLevel(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte("first-token-0123456789abcdef0123"), 0o600); err != nil {
		t.Fatal(err)
	}
	var base config.Config
	f := startTLSApp(t, tlstest.Spec{}, func(c *config.Config) {
		c.Admin.Tokens = []config.Token{{Name: "ops", Secret: config.Secret{File: tokFile}}}
		base = *c
	})
	hc := f.https()
	defer hc.CloseIdleConnections()
	status := func(tok string) int {
		req, _ := http.NewRequest(http.MethodGet, "https://"+f.a.HTTPAddr().String()+"/v1/workspaces", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		r, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if got := status("first-token-0123456789abcdef0123"); got != http.StatusOK {
		t.Fatalf("first token: %d", got)
	}
	if err := os.WriteFile(tokFile, []byte("second-token-0123456789abcdef012"), 0o600); err != nil {
		t.Fatal(err)
	}
	next := base
	next.Log.Level = "debug"
	next.Cache.Size = 7
	f.a.Reload(func() (config.Config, error) { return next, nil })
	if got := status("second-token-0123456789abcdef012"); got != http.StatusOK {
		t.Errorf("new token after reload: %d", got)
	}
	if got := status("first-token-0123456789abcdef0123"); got != http.StatusUnauthorized {
		t.Errorf("old token after reload: %d, want 401", got)
	}
	if f.lvl.Level() != zap.DebugLevel {
		t.Errorf("log level %v after reload, want debug", f.lvl.Level())
	}
	lines := f.logs.FilterMessage("SIGHUP: reloaded").All()
	if len(lines) != 1 {
		t.Fatalf("want one \"SIGHUP: reloaded\" line, got %d", len(lines))
	}
	ctx := lines[0].ContextMap()
	for _, want := range []string{"grpc.tls", "http.tls", "log.level (info → debug)", "admin.tokens (1)"} {
		if !strings.Contains(fmt.Sprint(ctx["reloaded"]), want) {
			t.Errorf("reloaded = %v, want it to name %q", ctx["reloaded"], want)
		}
	}
	if fmt.Sprint(ctx["needs_restart"]) != "[cache]" {
		t.Errorf("needs_restart = %v, want [cache]", ctx["needs_restart"])
	}
	// A config that fails to load keeps everything and says so.
	f.a.Reload(func() (config.Config, error) { return config.Config{}, errors.New("broken yaml") })
	if f.logs.FilterMessageSnippet("SIGHUP: reloaded what could be").Len() != 1 {
		t.Error("no error line for the failed reload")
	}
	if got := status("second-token-0123456789abcdef012"); got != http.StatusOK {
		t.Errorf("token after a failed reload: %d", got)
	}
}

func TestTLSFilesCheckedBeforeTheStore(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.GRPC.TLS = config.TLS{CertFile: junk, KeyFile: junk}
	_, err := New(context.Background(), cfg, zap.NewNop(), Options{Embedded: true})
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Path != "grpc.tls.cert_file" {
		t.Fatalf("New = %v, want an error at grpc.tls.cert_file", err)
	}
	p, _ := sqlitePath(cfg.Store.URL)
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("store %s exists after a bad certificate file (stat: %v)", p, err)
	}
	if _, err := os.Stat(defaultPepperPath(&cfg)); !os.IsNotExist(err) {
		t.Errorf("a pepper was created before the bad certificate file was refused")
	}
}
