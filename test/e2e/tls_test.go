//go:build e2e

package e2e

import (
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/tlsconf/tlstest"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// envoySAN is the identity of the Envoy sidecar keyauthz admits (grpc.tls.client_sans).
const envoySAN = "spiffe://cluster.local/ns/default/sa/envoy"

// envoyTLSDir is the directory the envoy/tls/ files read their certificates from.
const envoyTLSDir = "/etc/envoy/keyauthz-tls/"

// tlsKeyauthz is keyauthz serving gRPC over mutual TLS from a secret volume.
type tlsKeyauthz struct {
	kz  *testenv.Keyauthz
	ca  *tlstest.CA
	vol *tlstest.Volume
	app *testenv.Upstream
}

// keyauthzCert is a serving certificate carrying the SNI and SAN envoy/tls/ asks for.
func keyauthzCert(t *testing.T, ca *tlstest.CA) tlstest.Cert {
	return ca.Issue(t, tlstest.Spec{CN: "keyauthz", DNS: []string{"keyauthz.default.svc", "localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
}

func startTLSKeyauthz(t *testing.T) *tlsKeyauthz {
	t.Helper()
	k := &tlsKeyauthz{ca: tlstest.NewCA(t, "mesh-ca")}
	k.vol = tlstest.NewVolume(t, t.TempDir(), keyauthzCert(t, k.ca), k.ca.CertPEM)
	grpcTLS := fmt.Sprintf("  tls:\n    cert_file: %q\n    key_file: %q\n    client_ca_file: %q\n    client_sans: [%q]\n",
		k.vol.Path(tlstest.CertName), k.vol.Path(tlstest.KeyName), k.vol.Path(tlstest.CAName), envoySAN)
	k.kz = testenv.StartKeyauthz(t, testenv.KeyauthzOptions{GRPCExtra: grpcTLS,
		Extra: sidecarConfig + "ratelimit:\n  default: 1000000/m\n"})
	k.app = testenv.StartUpstream(t, "app")
	return k
}

// envoy runs envoy/tls/<conf> trusting keyauthz's CA and presenting client
// (none when nil) as its certificate.
func (k *tlsKeyauthz) envoy(t *testing.T, conf string, client *tlstest.Cert) *stack {
	t.Helper()
	dir := t.TempDir() + "/"
	files := map[string][]byte{"ca.crt": k.ca.CertPEM}
	if client != nil {
		files["tls.crt"], files["tls.key"] = client.CertPEM, client.KeyPEM
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := testenv.StartEnvoy(t, testenv.EnvoyOptions{
		Config: "tls/" + conf, Keyauthz: k.kz.GRPCAddr,
		Ports:   map[int]int{testenv.DefaultAppPort: k.app.Port},
		Replace: map[string]string{envoyTLSDir: dir},
	})
	return &stack{kz: k.kz, envoy: e, app: k.app, client: newClient(t), conf: "tls/" + conf}
}

func (k *tlsKeyauthz) clientCert(t *testing.T, ca *tlstest.CA, uri string) *tlstest.Cert {
	c := ca.Issue(t, tlstest.Spec{CN: "envoy", URIs: []string{uri}, Client: true})
	return &c
}

// failures reads keyauthz_tls_handshake_failures_total{listener="grpc",reason}.
func (k *tlsKeyauthz) failures(t *testing.T, reason string) float64 {
	t.Helper()
	prefix := `keyauthz_tls_handshake_failures_total{listener="grpc",reason="` + reason + `"} `
	for _, line := range strings.Split(k.kz.Metrics(t), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", prefix)
	return 0
}

// servedSerial completes a TLS handshake with keyauthz's gRPC port as Envoy
// would and returns the serial of the certificate it presented.
func (k *tlsKeyauthz) servedSerial(t *testing.T, client *tlstest.Cert) *big.Int {
	t.Helper()
	cc := client.TLSCertificate(t)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", k.kz.GRPCAddr, &tls.Config{
		RootCAs: k.ca.Pool(), ServerName: "keyauthz.default.svc", NextProtos: []string{"h2"}, Certificates: []tls.Certificate{cc}})
	if err != nil {
		t.Fatalf("direct TLS dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestMutualTLSThroughEnvoy: with the right client certificate the seed
// contract holds over mutual TLS; no certificate, another CA's, or a SAN
// outside grpc.tls.client_sans is refused at the handshake (Envoy answers 503,
// failing closed), and each refusal is logged and counted by reason.
func TestMutualTLSThroughEnvoy(t *testing.T) {
	k := startTLSKeyauthz(t)
	good := k.envoy(t, "sidecar-mtls.yaml", k.clientCert(t, k.ca, envoySAN))
	wantInvalid(t, good.get(t, "/v1/things"), k.app)
	key := k.kz.CreateKey(t, workspace(t), "mtls")
	r := good.get(t, "/v1/things", "X-API-KEY", key.Secret)
	wantStatus(t, r, http.StatusOK)
	wantRateHeaders(t, r, 1000000)
	if flags := good.envoy.HealthFlags(t, "keyauthz"); len(flags) != 1 || flags[0] != "healthy" {
		t.Errorf("Envoy's gRPC health check over mTLS: %v, want healthy", flags)
	}

	other := tlstest.NewCA(t, "other-ca")
	for _, tc := range []struct {
		name, conf, reason string
		client             *tlstest.Cert
	}{
		{"no client certificate", "sidecar-tls.yaml", "no_client_cert", nil},
		{"another CA", "sidecar-mtls.yaml", "unknown_ca", k.clientCert(t, other, envoySAN)},
		{"SAN outside client_sans", "sidecar-mtls.yaml", "san_not_allowed", k.clientCert(t, k.ca, "spiffe://cluster.local/ns/default/sa/intruder")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := k.failures(t, tc.reason)
			s := k.envoy(t, tc.conf, tc.client)
			r := s.get(t, "/v1/things", "X-API-KEY", key.Secret)
			wantStatus(t, r, http.StatusServiceUnavailable)
			if len(seen(t, k.app)) != 0 {
				t.Errorf("a refused Envoy's request reached the app")
			}
			if after := k.failures(t, tc.reason); after <= before {
				t.Errorf("keyauthz_tls_handshake_failures_total{reason=%q} stayed at %v", tc.reason, after)
			}
			testenv.Until(t, 5*time.Second, "refusal logged", func() bool {
				for _, line := range strings.Split(k.kz.LogText(t), "\n") {
					if strings.Contains(line, `"TLS handshake failed"`) && strings.Contains(line, `"reason":"`+tc.reason+`"`) {
						return true
					}
				}
				return false
			})
		})
	}
}

// load sends GETs with key through s at about rps until stop is closed and
// returns the number sent and the failures (anything but 200).
type load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	first        []string
	stop         chan struct{}
	done         sync.WaitGroup
}

func startLoad(t *testing.T, s *stack, key string, rps int) *load {
	l := &load{stop: make(chan struct{})}
	const workers = 4
	gap := time.Second * workers / time.Duration(rps)
	for w := 0; w < workers; w++ {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			tick := time.NewTicker(gap)
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				l.sent.Add(1)
				r, err := s.tryGet(t, "/v1/things", "X-API-KEY", key)
				if err != nil || r.status != http.StatusOK {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.first) < 5 {
						l.first = append(l.first, fmt.Sprintf("%v %v", r, err))
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

func (l *load) finish(t *testing.T, d time.Duration, rps int) {
	t.Helper()
	close(l.stop)
	l.done.Wait()
	sent, failed := l.sent.Load(), l.failed.Load()
	t.Logf("%d requests in %v (%.0f/s), %d failed", sent, d.Round(time.Millisecond), float64(sent)/d.Seconds(), failed)
	if failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, sent, l.first)
	}
	if min := int64(float64(rps) * d.Seconds() / 2); sent < min {
		t.Errorf("only %d requests sent in %v, want at least %d: the load did not run", sent, d, min)
	}
}

// TestCertificateRotationAndSIGHUPUnderLoad rotates keyauthz's certificate
// with a Kubernetes ..data swap, then sends SIGHUP, under 200 requests/s
// through Envoy over mutual TLS: no request fails, new handshakes present the
// new certificate within 2 s, the process stays up and logs what it reloaded.
func TestCertificateRotationAndSIGHUPUnderLoad(t *testing.T) {
	const rps = 200
	k := startTLSKeyauthz(t)
	client := k.clientCert(t, k.ca, envoySAN)
	s := k.envoy(t, "sidecar-mtls.yaml", client)
	key := k.kz.CreateKey(t, workspace(t), "rotation")
	wantStatus(t, s.get(t, "/v1/things", "X-API-KEY", key.Secret), http.StatusOK)

	began := time.Now()
	l := startLoad(t, s, key.Secret, rps)
	time.Sleep(time.Second) // steady traffic before the swap: the load, not a wait for luck

	oldSerial := k.servedSerial(t, client)
	next := keyauthzCert(t, k.ca)
	k.vol.Swap(t, next, k.ca.CertPEM)
	swapped := time.Now()
	took := testenv.Until(t, 2*time.Second, "new handshakes present the new certificate", func() bool {
		got := k.servedSerial(t, client)
		if got.Cmp(next.Leaf.SerialNumber) != 0 && got.Cmp(oldSerial) != 0 {
			t.Fatalf("served serial %v is neither the old nor the new certificate", got)
		}
		return got.Cmp(next.Leaf.SerialNumber) == 0
	})
	t.Logf("new certificate served %v after the ..data swap", took.Round(time.Millisecond))
	if time.Since(swapped) > 2*time.Second {
		t.Errorf("new certificate served %v after the swap, want within 2s", time.Since(swapped))
	}

	k.kz.Signal(t, syscall.SIGHUP)
	testenv.Until(t, 5*time.Second, "SIGHUP reload logged", func() bool {
		return strings.Contains(k.kz.LogText(t), `"SIGHUP: reloaded"`)
	})
	time.Sleep(time.Second) // traffic after the reload
	l.finish(t, time.Since(began), rps)
	if !k.kz.Running() {
		t.Fatal("keyauthz exited after SIGHUP")
	}
	for _, line := range strings.Split(k.kz.LogText(t), "\n") {
		if strings.Contains(line, `"SIGHUP: reloaded"`) {
			if !strings.Contains(line, `grpc.tls (unchanged)`) || !strings.Contains(line, `log.level`) {
				t.Errorf("reload line does not say what was reloaded: %s", line)
			}
			t.Logf("reload line: %s", line)
		}
	}
}
