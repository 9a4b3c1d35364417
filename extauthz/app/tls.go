package app

import (
	"context"
	"net"
	"net/http"

	"google.golang.org/grpc"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/tlsconf"
)

// loadTLS reads and checks the certificate files of grpc.tls and http.tls,
// first thing in New: a bad file is refused, naming its YAML path, before any
// pepper or store is created. The TLS metrics are registered only when a
// listener serves TLS.
func (a *App) loadTLS(cfg *config.Config) error {
	if !cfg.GRPC.TLS.Enabled() && !cfg.HTTP.TLS.Enabled() {
		return nil
	}
	m, err := tlsconf.NewMetrics(a.reg)
	if err != nil {
		return err
	}
	log := a.log.Named("tls")
	if cfg.GRPC.TLS.Enabled() {
		// grpc-go offers and requires h2 itself.
		if a.hot.gtls, err = tlsconf.New(tlsconf.Options{Listener: "grpc", Path: "grpc.tls", Files: cfg.GRPC.TLS}, m, log); err != nil {
			return err
		}
	}
	if cfg.HTTP.TLS.Enabled() {
		if a.hot.htls, err = tlsconf.New(tlsconf.Options{Listener: "http", Path: "http.tls", Files: cfg.HTTP.TLS, ALPN: []string{"http/1.1"}}, m, log); err != nil {
			return err
		}
	}
	return nil
}

// grpcTLS is the server option serving gRPC over TLS, none when plaintext.
func (a *App) grpcTLS() []grpc.ServerOption {
	if a.hot.gtls == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.Creds(a.hot.gtls.Credentials())}
}

// httpTLS wraps the HTTP listener in TLS when http.tls is set, and routes the
// server's failed handshakes to the TLS metrics and log.
func (a *App) httpTLS(l net.Listener, srv *http.Server) net.Listener {
	if a.hot.htls == nil {
		return l
	}
	srv.ErrorLog = a.hot.htls.ErrorLog()
	return a.hot.htls.WrapListener(l)
}

// tlsSources are the listeners' certificate sources in use.
func (a *App) tlsSources() []*tlsconf.Source {
	var out []*tlsconf.Source
	for _, s := range []*tlsconf.Source{a.hot.gtls, a.hot.htls} {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// runTLS starts watching the certificate files with run (Run's background group).
func (a *App) runTLS(run func(func(context.Context))) {
	for _, s := range a.tlsSources() {
		run(s.Run)
	}
}

// tlsProblem is why /readyz is not ready because of a serving certificate
// (expired or not yet valid), "" when there is none.
func (a *App) tlsProblem() string {
	for _, s := range a.tlsSources() {
		if err := s.Valid(); err != nil {
			return s.Listener() + ".tls: " + err.Error()
		}
	}
	return ""
}
