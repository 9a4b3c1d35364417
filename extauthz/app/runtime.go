package app

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
)

// runtimePlan is what applyRuntime sets: a zero field is left as the runtime has it.
type runtimePlan struct {
	gcPercent   int    // 0: leave (GOGC from the environment)
	gcFrom      string // "config" or "env"
	memoryLimit int64  // 0: leave (GOMEMLIMIT from the environment, or none)
	limitFrom   string // "config", "cgroup", "env" or "none"
}

// applyRuntime sets the garbage collector's percent and soft memory limit that
// cfg names; GOGC and GOMEMLIMIT set in the environment win. It logs the
// settings in force. Serve calls it before anything else starts.
func applyRuntime(cfg config.Runtime, log *zap.Logger) {
	p, err := planRuntime(cfg, os.LookupEnv, cgroupMemoryLimit)
	if err != nil {
		log.Warn("go memory limit not set", zap.Error(err))
	}
	if p.gcPercent > 0 {
		debug.SetGCPercent(p.gcPercent)
	}
	if p.memoryLimit > 0 {
		debug.SetMemoryLimit(p.memoryLimit)
	}
	gc, limit := runtimeGC()
	fields := []zap.Field{zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)), zap.Int64("gc_percent", gc),
		zap.String("gc_percent_from", p.gcFrom), zap.String("memory_limit_from", p.limitFrom)}
	if limit != math.MaxInt64 {
		fields = append(fields, zap.Int64("memory_limit_bytes", limit))
	}
	log.Info("go runtime settings", fields...)
}

// planRuntime decides what applyRuntime sets from cfg, the environment (env)
// and the container's memory limit (cgroup, read only for memory_limit: auto).
// A cgroup error is returned with a plan that sets no limit.
func planRuntime(cfg config.Runtime, env func(string) (string, bool), cgroup func() (int64, bool, error)) (runtimePlan, error) {
	set := func(name string) bool { v, ok := env(name); return ok && v != "" }
	p := runtimePlan{gcFrom: "env", limitFrom: "env"}
	if !set("GOGC") {
		p.gcPercent, p.gcFrom = cfg.GCPercent, "config"
	}
	if set("GOMEMLIMIT") {
		return p, nil
	}
	p.limitFrom = "none"
	switch cfg.MemoryLimit {
	case config.MemoryLimitOff:
	case config.MemoryLimitAuto:
		n, ok, err := cgroup()
		if err != nil {
			return p, fmt.Errorf("read the container memory limit: %w", err)
		}
		if ok {
			p.memoryLimit, p.limitFrom = int64(float64(n)*cfg.MemoryLimitRatio), "cgroup"
		}
	default:
		n, err := config.ParseByteSize(cfg.MemoryLimit)
		if err != nil { // Validate rejects it first
			return p, fmt.Errorf("runtime.memory_limit: %w", err)
		}
		p.memoryLimit, p.limitFrom = n, "config"
	}
	return p, nil
}

// runtimeGC reads the GC percent and memory limit in force.
func runtimeGC() (gcPercent int64, memoryLimit int64) {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		gcPercent = int64(s[0].Value.Uint64())
	}
	memoryLimit = math.MaxInt64
	if s[1].Value.Kind() == metrics.KindUint64 {
		memoryLimit = int64(min(s[1].Value.Uint64(), math.MaxInt64))
	}
	return gcPercent, memoryLimit
}

// cgroupMemoryLimit returns the container's memory limit as the cgroup (v1,
// v2 or hybrid) this process is in sets it; ok is false when none is set or
// the process is not in a cgroup.
func cgroupMemoryLimit() (limit int64, ok bool, err error) {
	n, err := memlimit.FromCgroup()
	switch {
	case errors.Is(err, memlimit.ErrNoLimit), errors.Is(err, memlimit.ErrNoCgroup), errors.Is(err, memlimit.ErrCgroupsNotSupported):
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	return int64(min(n, math.MaxInt64)), true, nil
}
