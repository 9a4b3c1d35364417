package config

import (
	"fmt"
	"net/url"
	"strings"
)

// Enabled reports whether the listener serves TLS (cert_file and key_file set).
func (t *TLS) Enabled() bool { return t.CertFile != "" }

// validate checks the shape of a tls: block at path (grpc.tls, http.tls); the
// files themselves are read and checked when the server starts
// (extauthz/tlsconf), before any store is opened.
func (t *TLS) validate(p *problems, path string) {
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		p.add(path+".key_file", "required with cert_file")
	case t.CertFile == "" && t.KeyFile != "":
		p.add(path+".cert_file", "required with key_file")
	}
	if t.ClientCA != "" && t.CertFile == "" {
		p.add(path+".client_ca_file", "needs cert_file and key_file")
	}
	if len(t.ClientSANs) > 0 && t.ClientCA == "" {
		p.add(path+".client_sans", "needs client_ca_file: client certificates are only asked for with mutual TLS")
	}
	for i, san := range t.ClientSANs {
		if err := checkSAN(san); err != nil {
			p.add(fmt.Sprintf("%s.client_sans[%d]", path, i), "%v", err)
		}
	}
}

// checkSAN accepts a URI SAN (scheme://…, e.g. spiffe://cluster.local/ns/x/sa/envoy)
// or a DNS SAN (envoy.default.svc); wildcards are not matched, so they are refused.
func checkSAN(s string) error {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return fmt.Errorf("%q: want a URI such as spiffe://cluster.local/ns/default/sa/envoy", s)
		}
		return nil
	}
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
		return fmt.Errorf("%q: want a DNS name such as envoy.default.svc or a URI", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("%q: want a DNS name (letters, digits, '-', '.'; no wildcards) or a URI", s)
		}
	}
	return nil
}
