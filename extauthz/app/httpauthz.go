package app

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/httpauthz"
)

// authzHTTP is the HTTP authorization listener (http_authz) and its server;
// the zero value is off.
type authzHTTP struct {
	lis net.Listener
	srv *http.Server
}

// bindAuthz binds http_authz.listen when it is set.
func bindAuthz(c *config.HTTPAuthz) (authzHTTP, error) {
	if c.Listen == "" {
		return authzHTTP{}, nil
	}
	l, err := listen(c.Listen)
	if err != nil {
		return authzHTTP{}, &config.FieldError{Path: "http_authz.listen", Msg: err.Error()}
	}
	return authzHTTP{lis: l}, nil
}

// setupAuthz builds the handler over a's Check service and caps the
// listener's connections (http_authz.max_conns, within a quarter of the
// open-file limit, as the HTTP listener).
func (a *App) setupAuthz() error {
	if a.authz.lis == nil {
		return nil
	}
	c := &a.cfg.HTTPAuthz
	names := append([]string(nil), a.cfg.Headers.APIKey...)
	if a.cfg.Headers.Bearer {
		names = append(names, "authorization")
	}
	h, err := httpauthz.New(a.check, httpauthz.Options{KeyHeaders: names, PathPrefix: c.PathPrefix, Body: a.cfg.Response.Body}, a.log.Named("httpauthz"))
	if err != nil {
		return &config.FieldError{Path: "http_authz", Msg: err.Error()}
	}
	n := connLimit(c.MaxConns, openFileLimit(), httpFileShare)
	if n != c.MaxConns {
		a.log.Warn("open-file limit lowers the connection limit", zap.String("listener", "http_authz"), zap.Int("max_conns", n))
	}
	a.authz.lis = netutil.LimitListener(a.authz.lis, n)
	a.authz.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(5*time.Second, c.ReadTimeout),
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       time.Minute,
		ErrorLog:          zap.NewStdLog(a.log.Named("httpauthz")),
	}
	return nil
}

// serve serves the listener, if any, reporting a failure other than a shutdown to errc.
func (z *authzHTTP) serve(errc chan<- error) {
	if z.srv == nil {
		return
	}
	go func() {
		if err := z.srv.Serve(z.lis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
}

// addr is the listener's address for the log, "off" without one.
func (z *authzHTTP) addr() string {
	if z.lis == nil {
		return "off"
	}
	return z.lis.Addr().String()
}

// drain stops accepting, lets the requests under way finish within d, then
// closes what is left; the returned channel is closed when it is done.
func (z *authzHTTP) drain(d time.Duration, log *zap.Logger) <-chan struct{} {
	done := make(chan struct{})
	if z.srv == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		if err := z.srv.Shutdown(ctx); err != nil {
			log.Warn("http_authz drain deadline passed, closing connections")
			_ = z.srv.Close()
		}
	}()
	return done
}

// close closes the listener (a start that failed before serving).
func (z *authzHTTP) close() {
	if z.lis != nil {
		_ = z.lis.Close()
	}
}
