package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyauthz/keyauthz/config"
)

// tlsFlags are check's TLS flags.
type tlsFlags struct {
	caFile, certFile, keyFile, serverName string
}

// pool reads a PEM CA file for --ca-file.
func pool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--ca-file %s: no PEM certificate found", path)
	}
	return p, nil
}

// checkCreds returns the transport credentials of `keyauthz check`: plaintext
// unless the config's grpc.tls is set or a TLS flag is given. The server is
// trusted through --ca-file, else grpc.tls.client_ca_file (one CA commonly
// issues both sides), else the system roots. The client certificate is
// --cert-file/--key-file, else, when the server asks for one (mutual TLS),
// grpc.tls.cert_file/key_file.
func checkCreds(g *config.GRPC, f tlsFlags, server string) (credentials.TransportCredentials, error) {
	if !g.TLS.Enabled() && f == (tlsFlags{}) {
		return insecure.NewCredentials(), nil
	}
	if (f.certFile == "") != (f.keyFile == "") {
		return nil, usageError("check: --cert-file and --key-file go together")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.serverName}
	switch ca := f.caFile; {
	case ca != "":
	case g.TLS.ClientCA != "":
		f.caFile = g.TLS.ClientCA
	}
	if f.caFile != "" {
		p, err := pool(f.caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = p
	}
	cert, key := f.certFile, f.keyFile
	if cert == "" && g.TLS.ClientCA != "" {
		cert, key = g.TLS.CertFile, g.TLS.KeyFile
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s: %w", cert, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	if tc.ServerName == "" && !strings.HasPrefix(server, "unix:") {
		if host, _, err := net.SplitHostPort(server); err == nil {
			tc.ServerName = host
		}
	}
	if tc.ServerName == "" {
		return nil, errors.New("check: name the server's certificate with --server-name (a unix socket has no host name)")
	}
	return credentials.NewTLS(tc), nil
}

// adminHTTPClient is the --server client: --ca-file, when given, is the CA
// the https:// server's certificate must chain to.
func adminHTTPClient(caFile string) (*http.Client, error) {
	hc := &http.Client{Timeout: 30 * time.Second}
	if caFile == "" {
		return hc, nil
	}
	p, err := pool(caFile)
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p}
	hc.Transport = t
	return hc, nil
}
