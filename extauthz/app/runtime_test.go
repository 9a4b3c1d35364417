package app

import (
	"errors"
	"runtime/debug"
	"testing"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
)

func TestPlanRuntime(t *testing.T) {
	const gib = 1 << 30
	limit := func(n int64, ok bool, err error) func() (int64, bool, error) {
		return func() (int64, bool, error) { return n, ok, err }
	}
	def := config.Default().Runtime
	sized := def
	sized.MemoryLimit, sized.GCPercent = "768MiB", 300
	off := def
	off.MemoryLimit = config.MemoryLimitOff
	tests := []struct {
		name    string
		cfg     config.Runtime
		env     map[string]string
		cgroup  func() (int64, bool, error)
		want    runtimePlan
		wantErr bool
	}{
		{"defaults in a 1GiB container", def, nil, limit(gib, true, nil),
			runtimePlan{gcPercent: 100, gcFrom: "config", memoryLimit: gib * 9 / 10, limitFrom: "cgroup"}, false},
		{"defaults without a container limit", def, nil, limit(0, false, nil),
			runtimePlan{gcPercent: 100, gcFrom: "config", limitFrom: "none"}, false},
		{"sizes from the config", sized, nil, limit(gib, true, nil),
			runtimePlan{gcPercent: 300, gcFrom: "config", memoryLimit: 768 << 20, limitFrom: "config"}, false},
		{"limit off", off, nil, limit(gib, true, nil),
			runtimePlan{gcPercent: 100, gcFrom: "config", limitFrom: "none"}, false},
		{"environment wins", sized, map[string]string{"GOGC": "50", "GOMEMLIMIT": "2GiB"}, limit(gib, true, nil),
			runtimePlan{gcFrom: "env", limitFrom: "env"}, false},
		{"empty variables do not count", def, map[string]string{"GOGC": "", "GOMEMLIMIT": ""}, limit(gib, true, nil),
			runtimePlan{gcPercent: 100, gcFrom: "config", memoryLimit: gib * 9 / 10, limitFrom: "cgroup"}, false},
		{"unreadable cgroups", def, nil, limit(0, false, errors.New("boom")),
			runtimePlan{gcPercent: 100, gcFrom: "config", limitFrom: "none"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			got, err := planRuntime(tc.cfg, env, tc.cgroup)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("plan = %+v, %v; want %+v (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestApplyRuntime(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	oldGC, oldLimit := debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(oldGC); debug.SetMemoryLimit(oldLimit) })

	cfg := config.Default().Runtime
	cfg.GCPercent, cfg.MemoryLimit = 250, "64MiB"
	applyRuntime(cfg, zap.NewNop())
	if gc, limit := runtimeGC(); gc != 250 || limit != 64<<20 {
		t.Fatalf("after applyRuntime: gc percent %d, memory limit %d; want 250, %d", gc, limit, 64<<20)
	}

	// The environment wins over the config.
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "1GiB")
	debug.SetGCPercent(150)
	debug.SetMemoryLimit(1 << 30)
	applyRuntime(cfg, zap.NewNop())
	if gc, limit := runtimeGC(); gc != 150 || limit != 1<<30 {
		t.Fatalf("with GOGC and GOMEMLIMIT set: gc percent %d, memory limit %d; want 150, %d", gc, limit, 1<<30)
	}
}
