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
	"regexp"
	"strings"
	"sync/atomic"
	"time"
)

// Options configure a harness run.
type Options struct {
	Root        string        // module root (holds go.mod)
	Scenarios   []string      // noop a b b-pg c d e f envoy memory bench; "all"
	Load        Load          // how each gRPC measurement drives its server
	EnvoyRate   int           // wrk's fixed rate through Envoy
	StoreKeys   int           // keys in the large store of scenario b (1,000,000)
	PGKeys      int           // keys in the PostgreSQL store of scenario b-pg (10,000,000)
	Seed        uint64        // key and pepper seed
	Pin         bool          // servers on CPU 0, client (this process), Redis and wrk on CPU 1
	KeyauthzBin string        // built keyauthz; built like test/run.sh when empty
	CPeerBin    string        // optional second keyauthz measured in windows interleaved with (c)'s, on the same Redis (an A/B of Redis clients)
	EnvoyBin    string        // Envoy binary; found in .venv when empty
	Work        string        // scratch directory (logs, configs, small stores, profiles)
	Cache       string        // directory keeping the seeded large stores (SQLite file, PostgreSQL data directory) between runs
	Out         string        // RESULTS.md to write; "" prints only
	Command     string        // the command line, for the report
	Log         io.Writer     // progress
	Profile     []string      // scenarios (a, a@1M, b, b-pg, c, d, e, f) whose keyauthz is CPU-profiled in extra windows
	Timeout     time.Duration // bound on the whole run
}

// KeptMarker starts the hand-written part of a report (A/B records): a run
// that rewrites the report keeps everything from this line on.
const KeptMarker = "<!-- hand-written below: kept by kzload -->"

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

// Profile is a CPU profile of keyauthz in a scenario's extra window.
type Profile struct {
	Scenario string
	Mode     string // "saturated" or "fixed rate"
	File     string
	Top      string // go tool pprof -top
}

// Results is everything a run measured, for the report.
type Results struct {
	Started    time.Time
	Duration   time.Duration
	GoVersion  string
	EnvoyVer   string
	Keyauthz   string
	Pinning    string
	Load       Load
	Noop       []Measurement
	Scenarios  []Measurement
	Facts      map[string]float64 // named extra figures (store reads, RSS, ...)
	Envoy      *EnvoyResult
	Memory     []MemoryResult
	Bench      []BenchResult
	BenchCmd   string
	Profiles   []Profile
	HeapGrowth string // pprof -top -base: keyauthz's live heap growth over processKeys keys
	Targets    []Target
	Errors     []string
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
		{"noop", r.noop}, {"a", r.scenarioA}, {"b", r.scenarioB}, {"b-pg", r.scenarioBPG}, {"c", r.scenarioC},
		{"d", r.scenarioD}, {"d-throttle", r.scenarioDThrottle}, {"e", r.scenarioE}, {"f", r.scenarioF}, {"http", r.scenarioHTTP}, {"noop", r.noop},
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
		r.logf("== %s (at %s)", s.name, time.Since(r.res.Started).Round(time.Second))
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
	r.logf("== done (at %s)", r.res.Duration.Round(time.Second))
	r.res.Targets = evaluate(&r.res)
	for _, t := range r.res.Targets {
		r.logf("%s", t.Line())
	}
	if o.Out != "" {
		out := Report(&r.res, o.Command)
		if old, err := os.ReadFile(o.Out); err == nil { // keep the hand-written records below the marker
			if i := strings.Index(string(old), KeptMarker); i >= 0 {
				out += "\n" + string(old[i:])
			}
		}
		if err := os.WriteFile(o.Out, []byte(out), 0o644); err != nil {
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
		r.logf("build keyauthz with test/run.sh's build()")
		bin, how, err := buildLikeRunSh(r.o.Root, r.o.Work)
		if err != nil {
			return err
		}
		r.o.KeyauthzBin = bin
		r.res.Keyauthz = "built by test/run.sh's build(): `" + how + "`"
	} else {
		r.res.Keyauthz = r.o.KeyauthzBin + " (given)"
	}
	r.noopBin = filepath.Join(r.o.Work, "noop")
	args := []string{"./test/load/cmd/noop"}
	if m := buildTags.FindStringSubmatch(r.res.Keyauthz); m != nil { // the same build tags as keyauthz
		args = append([]string{"-tags", strings.Trim(m[1], `"'`)}, args...)
	}
	if out, err := goBuild(r.o.Root, r.noopBin, args...); err != nil {
		return fmt.Errorf("build noop: %v\n%s", err, out)
	}
	r.pepper = filepath.Join(r.o.Work, "pepper")
	if err := os.WriteFile(r.pepper, Pepper(r.o.Seed), 0o600); err != nil {
		return err
	}
	r.small = filepath.Join(r.o.Work, "small.db")
	if err := seed(ctx, r.small, SmallStore, r.gen, Pepper(r.o.Seed)); err != nil {
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
	if err := checkSeeded(ctx, path, r.o.StoreKeys, r.gen, Pepper(r.o.Seed)); err == nil {
		r.logf("  reusing seeded store %s", path)
	} else {
		r.logf("  seeding %d keys into %s (cached for later runs)", r.o.StoreKeys, path)
		start := time.Now()
		if err := seed(ctx, path, r.o.StoreKeys, r.gen, Pepper(r.o.Seed)); err != nil {
			return "", fmt.Errorf("seed large store: %w", err)
		}
		r.logf("  seeded in %v", time.Since(start).Round(time.Millisecond))
		r.res.Facts["seed_seconds"] = time.Since(start).Seconds()
	}
	r.large = path
	return path, nil
}

// buildLikeRunSh runs the build() function of test/run.sh itself with
// BIN_DIR=dir, so the binary under test is built exactly as the tests and the
// Dockerfile build it; it returns the binary and the go build command shown.
func buildLikeRunSh(root, dir string) (string, string, error) {
	const script = `set -euo pipefail
say() { :; }
eval "$(sed -n '/^build() {/,/^}/p' test/run.sh)"
declare -F build >/dev/null || { echo "test/run.sh has no build() function" >&2; exit 1; }
BIN_DIR=$1
build >/dev/null`
	cmd := exec.Command("bash", "-c", script, "kzload-build", dir)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build keyauthz with test/run.sh's build(): %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(root, "test", "run.sh"))
	if err != nil {
		return "", "", err
	}
	how := ""
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		if strings.Contains(lines[i], "go build") {
			how = strings.TrimSpace(lines[i])
			for strings.HasSuffix(how, "\\") && i+1 < len(lines) {
				i++
				how = strings.TrimSpace(strings.TrimSuffix(how, "\\")) + " " + strings.TrimSpace(lines[i])
			}
			break
		}
	}
	return filepath.Join(dir, "keyauthz"), how, nil
}

var buildTags = regexp.MustCompile(`-tags[= ]+(\S+)`)

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
	c.Env = append(c.Env, strings.Fields(os.Getenv("KZLOAD_KEYAUTHZ_ENV"))...) // experiments only
	return StartKeyauthz(ctx, name, r.o.Work, r.o.KeyauthzBin, r.cpuSrv, c)
}

func (r *runner) measure(ctx context.Context, s *Server, key, title string, src Source, seq *atomic.Uint64) (Measurement, error) {
	return r.measurePeer(ctx, s, nil, key, title, src, seq)
}

// measurePeer is measure with a second reference server (given the same
// requests) interleaved with the scenario and the no-op.
func (r *runner) measurePeer(ctx context.Context, s, peer *Server, key, title string, src Source, seq *atomic.Uint64) (Measurement, error) {
	if seq == nil {
		seq = new(atomic.Uint64)
	}
	ref, err := r.noopServer(ctx)
	if err != nil {
		return Measurement{}, err
	}
	var pe *Endpoint
	if peer != nil {
		pe = &Endpoint{S: peer, Src: src, Seq: new(atomic.Uint64)}
	}
	m, err := Measure(ctx, Endpoint{S: s, Src: src, Seq: seq}, &Endpoint{S: ref, Src: r.hit, Seq: new(atomic.Uint64)}, pe, key, title, r.o.Load, r.logf)
	if err == nil && r.profiling(key) {
		if perr := r.profile(ctx, s, key, src, seq); perr != nil {
			r.logf("  profile %s: %v", key, perr)
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("profile %s: %v", key, perr))
		}
	}
	return m, err
}

// profiling reports whether scenario key's keyauthz is to be profiled.
func (r *runner) profiling(key string) bool {
	for _, p := range r.o.Profile {
		if p == key {
			return true
		}
	}
	return false
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
	m, err := Measure(ctx, Endpoint{S: s, Src: r.hit, Seq: new(atomic.Uint64)}, nil, nil, "noop", "no-op server (reference)", r.o.Load, r.logf)
	if err != nil {
		return err
	}
	r.res.Noop = append(r.res.Noop, m)
	return nil
}
