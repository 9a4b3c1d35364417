package app

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/grpclog"
)

// grpcLogger is grpc-go's logger (grpclog.LoggerV2), writing to zap: grpc's
// info lines (connection churn, resolver and transport chatter) at debug,
// warnings at warn, errors at error, at most grpcLogsPerSecond lines a second
// (fatal lines always). Failed TLS handshakes are logged by extauthz/tlsconf,
// with their reason, at warn.
type grpcLogger struct {
	target atomic.Pointer[zap.Logger]

	mu         sync.Mutex
	window     time.Time
	n, dropped int
}

// grpcLogsPerSecond bounds the lines grpc-go may log a second.
const grpcLogsPerSecond = 20

var grpcLog = newGRPCLogger()

// The logger is installed once, before any goroutine runs (grpclog.SetLoggerV2
// is not safe to call while gRPC is in use); New points it at its logger.
func init() { grpclog.SetLoggerV2(grpcLog) }

func newGRPCLogger() *grpcLogger {
	g := &grpcLogger{}
	g.target.Store(zap.NewNop())
	return g
}

// setGRPCLogger sends grpc-go's log lines to log from now on.
func setGRPCLogger(log *zap.Logger) {
	grpcLog.target.Store(log.WithOptions(zap.AddCallerSkip(2)))
}

func (g *grpcLogger) write(lvl zapcore.Level, msg func() string) {
	l := g.target.Load()
	if !l.Core().Enabled(lvl) {
		return
	}
	dropped, ok := g.allow(lvl)
	if !ok {
		return
	}
	m := strings.TrimSpace(msg())
	var fields []zap.Field
	if dropped > 0 {
		fields = append(fields, zap.Int("suppressed", dropped))
	}
	switch lvl {
	case zapcore.DebugLevel:
		l.Debug(m, fields...)
	case zapcore.WarnLevel:
		l.Warn(m, fields...)
	case zapcore.ErrorLevel:
		l.Error(m, fields...)
	default:
		l.Fatal(m, fields...)
	}
}

// allow applies the rate limit (never to fatal lines) and returns how many
// lines were dropped since the last one written.
func (g *grpcLogger) allow(lvl zapcore.Level) (int, bool) {
	if lvl >= zapcore.FatalLevel {
		return 0, true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if now := time.Now(); now.Sub(g.window) >= time.Second {
		g.window, g.n = now, 0
	}
	if g.n >= grpcLogsPerSecond {
		g.dropped++
		return 0, false
	}
	g.n++
	d := g.dropped
	g.dropped = 0
	return d, true
}

func sprint(args []any) func() string   { return func() string { return fmt.Sprint(args...) } }
func sprintln(args []any) func() string { return func() string { return fmt.Sprintln(args...) } }
func sprintf(f string, args []any) func() string {
	return func() string { return fmt.Sprintf(f, args...) }
}

func (g *grpcLogger) Info(args ...any)               { g.write(zapcore.DebugLevel, sprint(args)) }
func (g *grpcLogger) Infoln(args ...any)             { g.write(zapcore.DebugLevel, sprintln(args)) }
func (g *grpcLogger) Infof(f string, args ...any)    { g.write(zapcore.DebugLevel, sprintf(f, args)) }
func (g *grpcLogger) Warning(args ...any)            { g.write(zapcore.WarnLevel, sprint(args)) }
func (g *grpcLogger) Warningln(args ...any)          { g.write(zapcore.WarnLevel, sprintln(args)) }
func (g *grpcLogger) Warningf(f string, args ...any) { g.write(zapcore.WarnLevel, sprintf(f, args)) }
func (g *grpcLogger) Error(args ...any)              { g.write(zapcore.ErrorLevel, sprint(args)) }
func (g *grpcLogger) Errorln(args ...any)            { g.write(zapcore.ErrorLevel, sprintln(args)) }
func (g *grpcLogger) Errorf(f string, args ...any)   { g.write(zapcore.ErrorLevel, sprintf(f, args)) }
func (g *grpcLogger) Fatal(args ...any)              { g.write(zapcore.FatalLevel, sprint(args)) }
func (g *grpcLogger) Fatalln(args ...any)            { g.write(zapcore.FatalLevel, sprintln(args)) }
func (g *grpcLogger) Fatalf(f string, args ...any)   { g.write(zapcore.FatalLevel, sprintf(f, args)) }

// V reports whether grpc-go's verbose lines of level l are wanted: level 0
// always, levels up to 2 when the logger writes debug lines.
func (g *grpcLogger) V(l int) bool {
	return l <= 0 || l <= 2 && g.target.Load().Core().Enabled(zapcore.DebugLevel)
}
