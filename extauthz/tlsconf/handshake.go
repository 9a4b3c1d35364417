package tlsconf

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// handshakeLogsPerSecond bounds the failed-handshake log lines of one
// listener; the metric counts every failure.
const handshakeLogsPerSecond = 5

// Classify names the reason of a failed server handshake, one of Reasons, or
// "" for a connection closed before it sent anything (a TCP probe), which is
// not a failure.
func Classify(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return ""
	}
	if errors.Is(err, ErrSANNotAllowed) {
		return ReasonSANNotAllowed
	}
	return classifyText(err.Error())
}

// classifyText is Classify on an error's text (net/http logs only the text).
func classifyText(msg string) string {
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(msg, s) {
				return true
			}
		}
		return false
	}
	switch {
	case msg == "EOF" || strings.HasSuffix(msg, ": EOF"):
		return ""
	case has(ErrSANNotAllowed.Error()):
		return ReasonSANNotAllowed
	case has("does not look like a TLS handshake", "client sent an HTTP request to an HTTPS server"):
		return ReasonPlaintext
	case has("ALPN", "application protocol"):
		return ReasonNoALPN
	case has("didn't provide a certificate", "certificate required"):
		return ReasonNoClientCert
	case has("unknown authority", "unknown certificate authority"):
		return ReasonUnknownCA
	case has("certificate", "x509:"):
		return ReasonBadCertificate
	}
	return ReasonOther
}

// observe counts a failed handshake and logs it, rate limited.
func (s *Source) observe(remote net.Addr, err error) {
	s.observeText(addr(remote), Classify(err), err.Error())
}

func (s *Source) observeText(remote, reason, msg string) {
	if reason == "" {
		s.log.Debug("TLS client closed the connection before the handshake", zap.String("remote", remote))
		return
	}
	if ok, dropped := s.limit.allow(time.Now()); ok {
		fields := []zap.Field{zap.String("reason", reason), zap.String("remote", remote), zap.String("error", msg)}
		if dropped > 0 {
			fields = append(fields, zap.Int("suppressed", dropped))
		}
		s.log.Warn("TLS handshake failed", fields...)
	}
	s.metrics.failed(s.opt.Listener, reason) // after the log line: a test that sees the count finds the line
}

func addr(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// Credentials returns gRPC server transport credentials serving the
// Source's current files (grpc-go adds h2 to ALPN and requires it); every
// failed handshake is counted and logged.
func (s *Source) Credentials() credentials.TransportCredentials {
	return &observed{TransportCredentials: credentials.NewTLS(s.Config()), src: s}
}

// observed is TLS transport credentials that report failed server handshakes.
type observed struct {
	credentials.TransportCredentials
	src *Source
}

func (o *observed) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := o.TransportCredentials.ServerHandshake(c)
	if err != nil {
		o.src.observe(c.RemoteAddr(), err)
	}
	return conn, info, err
}

func (o *observed) Clone() credentials.TransportCredentials {
	return &observed{TransportCredentials: o.TransportCredentials.Clone(), src: o.src}
}

// WrapListener returns l serving TLS with the Source's current files (for an
// http.Server, whose failed handshakes reach ErrorLog).
func (s *Source) WrapListener(l net.Listener) net.Listener { return tls.NewListener(l, s.Config()) }

// ErrorLog is the http.Server error log of a listener WrapListener wrapped:
// failed TLS handshakes are counted and logged like gRPC's, other messages
// are logged as warnings.
func (s *Source) ErrorLog() *log.Logger { return log.New(httpErrors{s}, "", 0) }

type httpErrors struct{ s *Source }

// httpTLSPrefix starts net/http's log line for a failed handshake:
// "http: TLS handshake error from 1.2.3.4:5678: tls: …".
const httpTLSPrefix = "http: TLS handshake error from "

func (h httpErrors) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if rest, ok := strings.CutPrefix(line, httpTLSPrefix); ok {
		remote, msg, _ := strings.Cut(rest, ": ")
		h.s.observeText(remote, classifyText(msg), msg)
		return len(p), nil
	}
	h.s.log.Warn("http server", zap.String("error", line))
	return len(p), nil
}

// logLimiter lets perSec lines through per second and counts the rest.
type logLimiter struct {
	perSec int

	mu         sync.Mutex
	window     time.Time
	n, dropped int
}

// allow reports whether a line may be logged now and, if so, how many were
// dropped since the last one logged.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= l.perSec {
		l.dropped++
		return false, 0
	}
	l.n++
	d := l.dropped
	l.dropped = 0
	return true, d
}
