package binary

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/tlsconf/tlstest"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// tlsServer is `keyauthz serve` with gRPC over mutual TLS and the admin port
// over TLS, from secret volumes.
type tlsServer struct {
	p          *testenv.Proc
	dir, conf  string
	token      string
	grpc, http string
	ca         *tlstest.CA
	gvol       *tlstest.Volume
	https      *http.Client
}

// startTLS serves with a gRPC certificate valid from notBefore to notAfter
// (zero: the defaults of tlstest) and waits for the "serving" line.
func startTLS(t *testing.T, grpcCert tlstest.Spec) *tlsServer {
	t.Helper()
	s := &tlsServer{dir: t.TempDir(), ca: tlstest.NewCA(t, "ca")}
	grpcCert.CN, grpcCert.DNS, grpcCert.IPs = "keyauthz", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
	s.gvol = tlstest.NewVolume(t, filepath.Join(s.dir, "grpc-tls"), s.ca.Issue(t, grpcCert), s.ca.CertPEM)
	hvol := tlstest.NewVolume(t, filepath.Join(s.dir, "http-tls"), s.ca.Server(t), s.ca.CertPEM)
	pepper := filepath.Join(s.dir, "pepper")
	s.token = filepath.Join(s.dir, "admin-token")
	os.WriteFile(pepper, []byte(strings.Repeat("p", 40)), 0o600)
	os.WriteFile(s.token, []byte("admin-token-for-tests-0123456789\n"), 0o600)
	s.conf = filepath.Join(s.dir, "keyauthz.yaml")
	cfg := fmt.Sprintf(`grpc:
  listen: 127.0.0.1:0
  tls: {cert_file: %q, key_file: %q, client_ca_file: %q, client_sans: [spiffe://cluster.local/ns/default/sa/envoy]}
http:
  listen: 127.0.0.1:0
  tls: {cert_file: %q, key_file: %q}
store: {url: "sqlite://%s"}
pepper: {current: 1, versions: [{version: 1, file: %q}]}
admin: {tokens: [{name: portal, file: %q}]}
`, s.gvol.Path(tlstest.CertName), s.gvol.Path(tlstest.KeyName), s.gvol.Path(tlstest.CAName),
		hvol.Path(tlstest.CertName), hvol.Path(tlstest.KeyName), filepath.Join(s.dir, "keys.db"), pepper, s.token)
	if err := os.WriteFile(s.conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "ca.crt"), s.ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	s.p = startServe(t, s.dir, "--config", s.conf)
	a := serving(t, s.p)
	s.grpc, s.http = a[0], a[1]
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.ca.Pool(), ServerName: "localhost"}}
	t.Cleanup(tr.CloseIdleConnections)
	s.https = &http.Client{Timeout: 2 * time.Second, Transport: tr}
	return s
}

func (s *tlsServer) get(t *testing.T, path string) (int, string) {
	t.Helper()
	r, err := s.https.Get("https://" + s.http + path)
	if err != nil {
		t.Fatalf("GET %s over TLS: %v", path, err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// metric reads one sample of /metrics, e.g. `keyauthz_tls_cert_expiry_seconds{listener="grpc"}`.
func (s *tlsServer) metric(t *testing.T, series string) float64 {
	t.Helper()
	_, body := s.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", series)
	return 0
}

// writeClient writes a client certificate with uri as its SAN and returns its paths.
func (s *tlsServer) writeClient(t *testing.T, uri string) (cert, key string) {
	c := s.ca.Issue(t, tlstest.Spec{CN: "envoy", URIs: []string{uri}, Client: true})
	cert, key = filepath.Join(s.dir, "client.crt"), filepath.Join(s.dir, "client.key")
	os.WriteFile(cert, c.CertPEM, 0o600)
	os.WriteFile(key, c.KeyPEM, 0o600)
	return cert, key
}

// TestTLSAdminAndCheck: the admin API over TLS through the CLI's
// --server https:// with --ca-file, `keyauthz check` over mutual TLS with its
// flags, and SIGHUP reloading without stopping the process.
func TestTLSAdminAndCheck(t *testing.T) {
	s := startTLS(t, tlstest.Spec{})
	if code, body := s.get(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz over TLS: %d %s", code, body)
	}
	remote := []string{"--server", "https://localhost:" + portOf(t, s.http), "--token-file", s.token}
	out, errOut, code := cli(t, s.dir, append([]string{"keys", "create", "--workspace", "acme", "--name", "tls", "--json", "--ca-file", "ca.crt"}, remote...)...)
	if code != 0 {
		t.Fatalf("keys create over https: exit %d: %s", code, errOut)
	}
	k := mustJSON(t, out)
	if _, errOut, code := cli(t, s.dir, append([]string{"keys", "list", "--workspace", "acme"}, remote...)...); code == 0 || !strings.Contains(errOut, "certificate") {
		t.Errorf("keys list over https without --ca-file: exit %d %q, want a certificate error", code, errOut)
	}

	cert, key := s.writeClient(t, "spiffe://cluster.local/ns/default/sa/envoy")
	check := []string{"check", "--config", s.conf, "--server", s.grpc, "--ca-file", "ca.crt", "--server-name", "localhost",
		"--cert-file", cert, "--key-file", key, "--key", k.Key}
	out, errOut, code = cli(t, s.dir, check...)
	if code != 0 || !strings.Contains(out, `"allowed": true`) {
		t.Fatalf("check over mTLS: exit %d\n%s\n%s", code, out, errOut)
	}
	cert, key = s.writeClient(t, "spiffe://cluster.local/ns/default/sa/intruder")
	check[len(check)-5], check[len(check)-3] = cert, key
	if _, errOut, code := cli(t, s.dir, check...); code == 0 {
		t.Errorf("check with a client SAN outside client_sans succeeded: %s", errOut)
	}
	testenv.Until(t, 5*time.Second, "san_not_allowed counted", func() bool {
		return s.metric(t, `keyauthz_tls_handshake_failures_total{listener="grpc",reason="san_not_allowed"}`) >= 1
	})

	// SIGHUP: the process stays up and says what it reloaded.
	for i := 0; i < 3; i++ {
		if err := s.p.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Until(t, 5*time.Second, "SIGHUP reload logged", func() bool {
		return strings.Contains(s.p.Output(), `"SIGHUP: reloaded"`)
	})
	if exited, _ := s.p.Exited(); exited {
		t.Fatalf("keyauthz exited on SIGHUP: %v", s.p.Err())
	}
	if code, _ := s.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after SIGHUP: %d", code)
	}
	for _, line := range strings.Split(s.p.Output(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "SIGHUP: reloaded" {
			got := fmt.Sprint(m["reloaded"])
			for _, want := range []string{"grpc.tls", "http.tls", "log.level", "admin.tokens (1)"} {
				if !strings.Contains(got, want) {
					t.Errorf("reloaded %s, want it to name %s", got, want)
				}
			}
			break
		}
	}
	if err := s.p.Stop(15 * time.Second); err != nil {
		t.Fatalf("SIGTERM after SIGHUP: %v", err)
	}
}

// TestExpiredServingCertificate: keyauthz starts, logs the expired gRPC
// certificate as an error, exposes its expiry (in the past) and keeps
// /readyz not ready.
func TestExpiredServingCertificate(t *testing.T) {
	s := startTLS(t, tlstest.Spec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	found := false
	for _, line := range strings.Split(s.p.Output(), "\n") {
		if strings.Contains(line, `"level":"error"`) && strings.Contains(line, "outside its validity period") {
			found = true
		}
	}
	if !found {
		t.Errorf("no error line for the expired certificate:\n%s", s.p.Output())
	}
	if exp := s.metric(t, `keyauthz_tls_cert_expiry_seconds{listener="grpc"}`); exp >= float64(time.Now().Unix()) {
		t.Errorf("keyauthz_tls_cert_expiry_seconds = %v, want in the past", exp)
	}
	if code, body := s.get(t, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "expired") {
		t.Errorf("/readyz = %d %s, want 503 naming the expired certificate", code, body)
	}
}

// TestBadCertificateFileRefusedFirst: a bad grpc.tls.cert_file is one clear
// line naming the field, and nothing (store, pepper) is created before it.
func TestBadCertificateFileRefusedFirst(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("junk"), 0o600)
	conf := filepath.Join(dir, "keyauthz.yaml")
	os.WriteFile(conf, []byte(`grpc: {listen: 127.0.0.1:0, tls: {cert_file: junk.pem, key_file: junk.pem}}
http: {listen: 127.0.0.1:0}
store: {url: "sqlite://keys.db"}
`), 0o600)
	_, errOut, code := cli(t, dir, "serve", "--config", conf)
	if code == 0 || !strings.Contains(errOut, "grpc.tls.cert_file:") {
		t.Fatalf("serve with a bad cert_file: exit %d %q, want an error naming grpc.tls.cert_file", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys.db")); !os.IsNotExist(err) {
		t.Errorf("keys.db exists after the refused start (stat: %v)", err)
	}
}

func portOf(t *testing.T, addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
