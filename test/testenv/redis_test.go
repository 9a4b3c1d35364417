package testenv

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// fatalTB records the first Fatal and ends the calling goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatal(a ...any) { f.msg = fmt.Sprint(a...); runtime.Goexit() }

func (f *fatalTB) Fatalf(format string, a ...any) {
	f.msg = fmt.Sprintf(format, a...)
	runtime.Goexit()
}

// fatalOf runs fn against a recording TB and returns its Fatal message.
func fatalOf(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	<-done
	return tb.msg
}

func TestStartRedisMissingBinaryFails(t *testing.T) {
	t.Setenv(RedisServerEnv, "/nonexistent/redis-server")
	for name, fn := range map[string]func(testing.TB){
		"single":  func(tb testing.TB) { StartRedis(tb) },
		"cluster": func(tb testing.TB) { StartRedisCluster(tb, 3) },
	} {
		t.Run(name, func(t *testing.T) {
			msg := fatalOf(t, fn)
			if !strings.Contains(msg, "apt-get install -y redis-server") {
				t.Fatalf("fatal message %q does not say how to install redis-server", msg)
			}
		})
	}
}
