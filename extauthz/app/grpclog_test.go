package app

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/grpclog"
)

// grpc-go's logging reaches zap at the mapped levels, rate limited. It uses
// its own grpcLogger, not the process-wide one other tests' servers log to.
func TestGRPCLogger(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	g := newGRPCLogger()
	g.target.Store(zap.New(core))
	var _ grpclog.LoggerV2 = g

	g.Infof("transport: %s", "closing")
	g.Warningln("warn", 1)
	g.Error("boom")
	want := []struct {
		lvl zapcore.Level
		msg string
	}{{zapcore.DebugLevel, "transport: closing"}, {zapcore.WarnLevel, "warn 1"}, {zapcore.ErrorLevel, "boom"}}
	got := logs.TakeAll()
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Level != w.lvl || got[i].Message != w.msg {
			t.Errorf("line %d = %v %q, want %v %q", i, got[i].Level, got[i].Message, w.lvl, w.msg)
		}
	}
	if !g.V(0) || !g.V(2) || g.V(3) {
		t.Errorf("V(0), V(2), V(3) = %v %v %v with debug on, want true true false", g.V(0), g.V(2), g.V(3))
	}

	for i := 0; i < 3*grpcLogsPerSecond; i++ {
		g.Warning("flood")
	}
	if n := logs.Len(); n > grpcLogsPerSecond {
		t.Errorf("%d lines of a flood got through in under a second, want at most %d", n, grpcLogsPerSecond)
	}

	info, _ := observer.New(zapcore.InfoLevel)
	g.target.Store(zap.New(info))
	if g.V(1) {
		t.Error("V(1) true with debug off")
	}
}

// The process-wide grpc-go logger is this package's.
func TestGRPCLoggerInstalled(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	prev := grpcLog.target.Load()
	defer grpcLog.target.Store(prev)
	grpcLog.target.Store(zap.New(core))
	grpclog.Component("keyauthz-test").Warning("through grpclog")
	if logs.FilterMessageSnippet("through grpclog").Len() != 1 {
		t.Fatalf("grpclog's warning did not reach zap: %v", logs.All())
	}
}
