// Package tlstest makes certificate authorities and certificates for tests
// with crypto/x509, and lays files out as a Kubernetes secret volume does
// (files are symlinks through ..data into a timestamped directory) so a test
// can rotate them the way the kubelet does.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// Cert is an issued certificate and its key.
type Cert struct {
	Leaf    *x509.Certificate
	CertPEM []byte // the certificate (no chain: issued directly by the CA)
	KeyPEM  []byte
}

// Spec shapes an issued certificate; zero fields take defaults.
type Spec struct {
	CN        string
	DNS       []string  // DNS SANs
	IPs       []net.IP  // IP SANs
	URIs      []string  // URI SANs (spiffe://…)
	NotBefore time.Time // default: an hour ago
	NotAfter  time.Time // default: a day from now
	Client    bool      // client auth usage (default: server auth)
}

var serial atomic.Int64

func init() { serial.Store(time.Now().UnixNano()) }

// NewCA returns a fresh self-signed CA named cn.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &CA{Cert: c, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Issue signs a certificate to s.
func (ca *CA) Issue(t testing.TB, s Spec) Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if s.NotBefore.IsZero() {
		s.NotBefore = time.Now().Add(-time.Hour)
	}
	if s.NotAfter.IsZero() {
		s.NotAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: s.CN},
		NotBefore: s.NotBefore, NotAfter: s.NotAfter, DNSNames: s.DNS, IPAddresses: s.IPs,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if s.Client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, u := range s.URIs {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return Cert{Leaf: leaf, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})}
}

// Server issues a serving certificate for localhost and 127.0.0.1.
func (ca *CA) Server(t testing.TB) Cert {
	return ca.Issue(t, Spec{CN: "keyauthz", DNS: []string{"localhost", "keyauthz"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
}

// Pool returns a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// TLSCertificate returns c as a tls.Certificate (a client's).
func (c Cert) TLSCertificate(t testing.TB) tls.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// Volume is a directory laid out like a Kubernetes secret volume: tls.crt,
// tls.key and ca.crt are symlinks to ..data/NAME, ..data is a symlink to a
// timestamped directory, and Swap replaces them all at once by renaming a new
// ..data symlink over the old one, as the kubelet does.
type Volume struct {
	Dir string
	n   int
}

// Volume file names (the keys of a cert-manager Secret).
const (
	CertName = "tls.crt"
	KeyName  = "tls.key"
	CAName   = "ca.crt"
)

// NewVolume creates the volume in dir (made if missing) holding c and the CA certificate caPEM.
func NewVolume(t testing.TB, dir string, c Cert, caPEM []byte) *Volume {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &Volume{Dir: dir}
	v.Swap(t, c, caPEM)
	for _, name := range []string{CertName, KeyName, CAName} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// Path returns the path of a file of the volume (CertName, KeyName, CAName).
func (v *Volume) Path(name string) string { return filepath.Join(v.Dir, name) }

// Swap writes c and caPEM into a new timestamped directory and points ..data
// at it with one rename, then removes the previous directory.
func (v *Volume) Swap(t testing.TB, c Cert, caPEM []byte) {
	t.Helper()
	v.n++
	ts := "..2026_01_01_00_00_00." + strconv.Itoa(v.n)
	dir := filepath.Join(v.Dir, ts)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{CertName: c.CertPEM, KeyName: c.KeyPEM, CAName: caPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(v.Dir, "..data"))
	tmp := filepath.Join(v.Dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.Dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		_ = os.RemoveAll(filepath.Join(v.Dir, old))
	}
}
