// Package load is keyauthz's load and performance harness: a lean gRPC
// ext_authz load client, the scenarios of test/load/README.md, a no-op reference
// server measured in the same run, Envoy + wrk end to end, memory per cached
// key, and the report with a PASS/FAIL line per target (RESULTS.md).
//
// Absolute numbers on a small shared machine are noise, so every figure is also
// given as a ratio to the no-op server measured the same way in the same run.
package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Options configure a harness run.
type Options struct {
	Root        string        // module root (holds go.mod)
	Scenarios   []string      // noop a b c d e f envoy memory bench; "all"
	Load        Load          // how each gRPC measurement drives its server
	EnvoyRate   int           // wrk's fixed rate through Envoy
	StoreKeys   int           // keys in the large store of scenario b (1,000,000)
	Seed        uint64        // key and pepper seed
	Pin         bool          // servers on CPU 0, client (this process), Redis and wrk on CPU 1
	KeyauthzBin string        // built keyauthz; built like test/run.sh when empty
	EnvoyBin    string        // Envoy binary; found in .venv when empty
	Work        string        // scratch directory (logs, configs, small stores, profiles)
	Cache       string        // directory keeping the seeded large store between runs
	Out         string        // RESULTS.md to write; "" prints only
	Command     string        // the command line, for the report
	Log         io.Writer     // progress
	Profile     bool          // CPU profile of keyauthz during scenario a
	Timeout     time.Duration // bound on the whole run
}

// runner holds one run's state.
type runner struct {
	o       Options
	gen     keyGen
	pepper  string // pepper file
	small   string // store with SmallStore keys
	large   string // store with StoreKeys keys
	noopBin string
	tmpl    *template
	hit     cycle   // requests with the hot valid keys
	noopSrv *Server // the no-op reference, running during the gRPC scenarios
	cpuSrv  string
	cpuCli  string
	res     Results
}

// Results is everything a run measured, for the report.
type Results struct {
	Started     time.Time
	Duration    time.Duration
	GoVersion   string
	EnvoyVer    string
	Keyauthz    string
	Pinning     string
	Load        Load
	Noop        []Measurement
	Scenarios   []Measurement
	Facts       map[string]float64 // named extra figures (store reads, RSS, ...)
	Envoy       *EnvoyResult
	Memory      []MemoryResult
	Bench       []BenchResult
	BenchCmd    string
	Profile     string // pprof -top of keyauthz during a
	ProfileFile string
	Targets     []Target
	Errors      []string
}

func (r *runner) logf(format string, a ...any) { fmt.Fprintf(r.o.Log, format+"\n", a...) }

func (r *runner) want(s string) bool {
	for _, x := range r.o.Scenarios {
		if x == s || x == "all" {
			return true
		}
	}
	return false
}

// Run executes the selected scenarios and returns the results; it writes the
// report to o.Out when set. Every child process is stopped before it returns.
func Run(ctx context.Context, o Options) (*Results, error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	defer StopAll()
	r := &runner{o: o, gen: keyGen{prefix: "kz", seed: o.Seed}}
	r.res.Started = time.Now()
	r.res.Load = o.Load
	r.res.Facts = map[string]float64{}
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	type step struct {
		name string
		fn   func(context.Context) error
	}
	steps := []step{
		{"noop", r.noop}, {"a", r.scenarioA}, {"b", r.scenarioB}, {"c", r.scenarioC},
		{"d", r.scenarioD}, {"e", r.scenarioE}, {"f", r.scenarioF}, {"noop", r.noop},
		{"envoy", r.envoy}, {"memory", r.memory}, {"bench", r.bench},
	}
	for _, s := range steps {
		if !r.want(s.name) {
			continue
		}
		if ctx.Err() != nil {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("%s: not run: %v", s.name, ctx.Err()))
			continue
		}
		r.logf("== %s", s.name)
		if s.name == "envoy" || s.name == "memory" || s.name == "bench" {
			r.stopNoop()
		}
		if err := s.fn(ctx); err != nil {
			r.logf("   %s FAILED: %v", s.name, err)
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("%s: %v", s.name, err))
		}
	}
	r.stopNoop()
	r.res.Duration = time.Since(r.res.Started)
	r.res.Targets = evaluate(&r.res)
	for _, t := range r.res.Targets {
		r.logf("%s", t.Line())
	}
	if o.Out != "" {
		if err := os.WriteFile(o.Out, []byte(Report(&r.res, o.Command)), 0o644); err != nil {
			return &r.res, err
		}
		r.logf("wrote %s", o.Out)
	}
	if len(r.res.Errors) > 0 {
		return &r.res, errors.New(strings.Join(r.res.Errors, "; "))
	}
	return &r.res, nil
}

// setup builds the binaries, writes the pepper and the small store, and
// prepares the request templates.
func (r *runner) setup(ctx context.Context) error {
	r.cpuSrv, r.cpuCli = "", ""
	r.res.Pinning = "none: servers, client, Redis share both CPUs"
	if r.o.Pin {
		if OnlineCPUs() < 2 {
			r.logf("fewer than 2 CPUs: not pinning")
		} else if _, err := exec.LookPath("taskset"); err != nil {
			r.logf("taskset not found: not pinning")
		} else if err := PinSelf(1); err != nil {
			r.logf("pin self: %v: not pinning", err)
		} else {
			r.cpuSrv, r.cpuCli = "0", "1"
			r.res.Pinning = "server under test (keyauthz or no-op) on CPU 0 (GOMAXPROCS 1); load client (GOMAXPROCS 1) and Redis on CPU 1"
		}
	}
	if err := os.MkdirAll(r.o.Work, 0o755); err != nil {
		return err
	}
	r.res.GoVersion = strings.TrimSpace(output(r.o.Root, "go", "version"))
	if r.o.KeyauthzBin == "" {
		r.o.KeyauthzBin = filepath.Join(r.o.Work, "keyauthz")
		r.logf("build keyauthz (test/run.sh's command)")
		if out, err := goBuild(r.o.Root, r.o.KeyauthzBin, "-ldflags", "-s -w -X github.com/keyauthz/keyauthz/extauthz/app.Version=test", "./cmd/keyauthz"); err != nil {
			return fmt.Errorf("build keyauthz: %v\n%s", err, out)
		}
	}
	r.res.Keyauthz = r.o.KeyauthzBin
	r.noopBin = filepath.Join(r.o.Work, "noop")
	if out, err := goBuild(r.o.Root, r.noopBin, "./test/load/cmd/noop"); err != nil {
		return fmt.Errorf("build noop: %v\n%s", err, out)
	}
	r.pepper = filepath.Join(r.o.Work, "pepper")
	if err := os.WriteFile(r.pepper, Pepper(r.o.Seed), 0o600); err != nil {
		return err
	}
	r.small = filepath.Join(r.o.Work, "small.db")
	if err := Seed(ctx, r.small, SmallStore, r.gen, Pepper(r.o.Seed)); err != nil {
		return fmt.Errorf("seed small store: %w", err)
	}
	var err error
	if r.tmpl, err = newTemplate("x-api-key", len(r.gen.key(streamStored, 0))); err != nil {
		return err
	}
	if r.hit, err = r.requests(streamStored, 0, HitKeys, false); err != nil {
		return err
	}
	return nil
}

// requests pre-marshals the requests for keys [from, from+n) of a stream.
func (r *runner) requests(stream, from uint64, n int, bad bool) (cycle, error) {
	out := make(cycle, n)
	for i := range out {
		k := r.gen.key(stream, from+uint64(i))
		if bad {
			k = malformed(k)
		}
		b, err := r.tmpl.fill(nil, []byte(k))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// largeStore returns the StoreKeys-key store, seeding it into the cache
// directory unless a verified copy from an earlier run is there.
func (r *runner) largeStore(ctx context.Context) (string, error) {
	if r.large != "" {
		return r.large, nil
	}
	if err := os.MkdirAll(r.o.Cache, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(r.o.Cache, fmt.Sprintf("store-%d-seed%d.db", r.o.StoreKeys, r.o.Seed))
	if err := CheckSeeded(ctx, path, r.o.StoreKeys, r.gen, Pepper(r.o.Seed)); err == nil {
		r.logf("  reusing seeded store %s", path)
	} else {
		r.logf("  seeding %d keys into %s (cached for later runs)", r.o.StoreKeys, path)
		start := time.Now()
		if err := Seed(ctx, path, r.o.StoreKeys, r.gen, Pepper(r.o.Seed)); err != nil {
			return "", fmt.Errorf("seed large store: %w", err)
		}
		r.logf("  seeded in %v", time.Since(start).Round(time.Millisecond))
		r.res.Facts["seed_seconds"] = time.Since(start).Seconds()
	}
	r.large = path
	return path, nil
}

func goBuild(root, out string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", out}, args...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}

func output(dir, name string, args ...string) string {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(%s: %v)", name, err)
	}
	return string(b)
}

// ---------------------------------------------------------------- scenarios

func (r *runner) keyauthz(ctx context.Context, name string, c KeyauthzConfig) (*Server, error) {
	c.Pepper = r.pepper
	if c.Store == "" {
		c.Store = r.small
	}
	return StartKeyauthz(ctx, name, r.o.Work, r.o.KeyauthzBin, r.cpuSrv, c)
}

func (r *runner) measure(ctx context.Context, s *Server, key, title string, src Source, seq *atomic.Uint64) (Measurement, error) {
	if seq == nil {
		seq = new(atomic.Uint64)
	}
	ref, err := r.noopServer(ctx)
	if err != nil {
		return Measurement{}, err
	}
	return Measure(ctx, Endpoint{S: s, Src: src, Seq: seq}, &Endpoint{S: ref, Src: r.hit, Seq: new(atomic.Uint64)}, key, title, r.o.Load, r.logf)
}

// noopServer starts the no-op reference server on the server CPU, once.
func (r *runner) noopServer(ctx context.Context) (*Server, error) {
	if r.noopSrv != nil {
		return r.noopSrv, nil
	}
	s, err := StartNoop(ctx, r.o.Work, r.noopBin, r.cpuSrv, r.hit[0])
	if err != nil {
		return nil, err
	}
	r.noopSrv = s
	return s, nil
}

func (r *runner) stopNoop() {
	if r.noopSrv != nil {
		_ = r.noopSrv.Stop()
		r.noopSrv = nil
	}
}

// noop measures the no-op reference server alone (run first and last): its
// fixed-rate latency is the reference of every scenario's.
func (r *runner) noop(ctx context.Context) error {
	s, err := r.noopServer(ctx)
	if err != nil {
		return err
	}
	m, err := Measure(ctx, Endpoint{S: s, Src: r.hit, Seq: new(atomic.Uint64)}, nil, "noop", "no-op server (reference)", r.o.Load, r.logf)
	if err != nil {
		return err
	}
	r.res.Noop = append(r.res.Noop, m)
	return nil
}
