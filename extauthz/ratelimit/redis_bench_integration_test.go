//go:build integration

package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// cpuTime is this process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRedisAllow measures one Redis decision against a real redis-server:
// one caller at a time, and many concurrent callers (as a loaded server has),
// reporting this process's CPU per decision (cpu-µs/op) next to wall time, and
// how many decisions shared a pipeline. Redis's own CPU is another process and
// not counted. Run it as the server runs, on one CPU:
//
//	go test -tags integration -run '^$' -bench RedisAllow -cpu 1 ./extauthz/ratelimit/
func BenchmarkRedisAllow(b *testing.B) {
	_, c := singleClient(b)
	r := newRedis(b, c, zap.NewNop(), RedisOptions{Timeout: time.Second}) // a loaded machine must not fail the run
	loadScript(b, c)
	rate := apikey.Rate{N: 1 << 30, Per: time.Second} // always allowed: every decision reaches Redis
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("id_%06d", i)
	}
	ctx := context.Background()
	for _, par := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("callers=%d", par), func(b *testing.B) {
			var next, errs atomic.Int64
			var wg sync.WaitGroup
			n := int64(b.N)
			cpu0, cmds0, pipes0 := cpuTime(b), r.Calls(), r.batch.pipes.Load()
			b.ResetTimer()
			for g := range par {
				wg.Go(func() {
					for j := g * 7919; next.Add(1) <= n; j++ {
						if _, err := r.Allow(ctx, keys[j%len(keys)], rate); err != nil {
							errs.Add(1)
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(r.Calls()-cmds0)/float64(max(1, r.batch.pipes.Load()-pipes0)), "cmds/pipeline")
			if e := errs.Load(); e > 0 {
				b.Fatalf("%d of %d decisions failed", e, b.N)
			}
		})
	}
}
