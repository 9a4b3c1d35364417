package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Scenario titles, as the report shows them.
const (
	titleA      = "(a) valid key, cache hit, local limiter"
	titleA1M    = "(a@1M) valid key, cache hit, 1M-key store"
	titleB      = "(b) cache miss, SQLite store with 1M keys"
	titleC      = "(c) valid key, cache hit, Redis limiter"
	titleD      = "(d) flood of unknown well-formed keys, 5,000 distinct (negative cache)"
	titleDFresh = "(d-fresh) flood of unknown well-formed keys, every key new"
	titleE      = "(e) malformed keys (checksum)"
	titleF      = "(f) 30% of checks over the limit (429)"
)

// Scenario (d)'s negative cache size and repeated pool of unknown keys.
const (
	dNegativeSize = 10_000
	dPool         = 5_000
)

func (r *runner) add(m Measurement) { r.res.Scenarios = append(r.res.Scenarios, m) }

// metricDelta scrapes s before and after fn and returns after-before of the
// summed series.
func metricDelta(s *Server, name string, match ...string) (func() (float64, error), error) {
	before, err := s.Metrics()
	if err != nil {
		return nil, err
	}
	if !before.Has(name) {
		return nil, fmt.Errorf("keyauthz /metrics has no %s", name)
	}
	return func() (float64, error) {
		after, err := s.Metrics()
		if err != nil {
			return 0, err
		}
		return after.Sum(name, match...) - before.Sum(name, match...), nil
	}, nil
}

func wantAll(m *Measurement, code int32) error {
	for _, p := range []Phase{m.Sat, m.Fixed} {
		if p.Out.Done > 0 && share(p.Out, code) != 1 {
			return fmt.Errorf("%s: want every answer %s, got %s", m.Key, codeNames[code], codeSummary(p.Out))
		}
	}
	return nil
}

func (r *runner) scenarioA(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "a", KeyauthzConfig{Pprof: r.o.Profile})
	if err != nil {
		return err
	}
	defer s.Stop()
	reads, err := metricDelta(s, "keyauthz_cache_store_reads_total")
	if err != nil {
		return err
	}
	m, err := r.measure(ctx, s, "a", titleA, r.hit, nil)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 0); err != nil {
		return err
	}
	n, err := reads()
	if err != nil {
		return err
	}
	m.Notes = append(m.Notes, fmt.Sprintf("%d hot keys; store reads during the run: %.0f (the first miss of each key)", HitKeys, n))
	r.add(m)
	if r.o.Profile {
		if err := r.profile(ctx, s); err != nil {
			r.logf("  profile: %v", err)
			r.res.Errors = append(r.res.Errors, "profile: "+err.Error())
		}
	}
	return nil
}

// profile takes a CPU profile of keyauthz under saturation with the hot keys
// (a separate window, so profiling does not touch the measured one).
func (r *runner) profile(ctx context.Context, s *Server) error {
	d := r.o.Load.Duration
	file := filepath.Join(r.o.Work, "a.cpu.pprof")
	errc := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: d + 10*time.Second}).Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.HTTP, int(d.Seconds()+0.5)))
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			errc <- fmt.Errorf("/debug/pprof/profile: %s: %s (is http.pprof on?)", resp.Status, strings.TrimSpace(string(b)))
			return
		}
		f, err := os.Create(file)
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		errc <- errors.Join(err, f.Close())
	}()
	c, err := Dial(s.GRPC, r.o.Load.Conns, r.o.Load.Transport)
	if err != nil {
		return err
	}
	c.Closed(ctx, r.hit, r.o.Load.Workers, d+500*time.Millisecond, new(atomic.Uint64))
	c.Close()
	if err := <-errc; err != nil {
		return err
	}
	r.res.ProfileFile = file
	cmd := exec.Command("go", "tool", "pprof", "-top", "-nodecount=35", file)
	cmd.Dir = r.o.Root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go tool pprof: %v: %s", err, out)
	}
	r.res.Profile = string(out)
	return nil
}

func (r *runner) scenarioB(ctx context.Context) error {
	path, err := r.largeStore(ctx)
	if err != nil {
		return err
	}
	s, err := r.keyauthz(ctx, "b", KeyauthzConfig{Store: path})
	if err != nil {
		return err
	}
	defer s.Stop()
	if err := r.memFacts(s, "b_idle"); err != nil {
		return err
	}
	m, err := r.measure(ctx, s, "a@1M", titleA1M, r.hit, nil)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 0); err != nil {
		return err
	}
	r.add(m)
	reads, err := metricDelta(s, "keyauthz_cache_store_reads_total")
	if err != nil {
		return err
	}
	seq := new(atomic.Uint64)
	src := &fresh{t: r.tmpl, gen: r.gen, stream: streamStored, base: SmallStore, mod: uint64(r.o.StoreKeys - SmallStore)}
	m, err = r.measure(ctx, s, "b", titleB, src, seq)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 0); err != nil {
		return err
	}
	n, err := reads()
	if err != nil {
		return err
	}
	r.res.Facts["b_store_reads"] = n
	r.res.Facts["b_checks"] = float64(seq.Load())
	m.Notes = append(m.Notes, fmt.Sprintf("%d checks, each a key not yet cached; store reads: %.0f", seq.Load(), n))
	r.add(m)
	return r.memFacts(s, "b_after")
}

// memFacts records keyauthz's RSS, Go heap in use and cache entries under prefix.
func (r *runner) memFacts(s *Server, prefix string) error {
	rss, err := RSS(s.Proc.PID())
	if err != nil {
		return err
	}
	ms, err := s.Metrics()
	if err != nil {
		return err
	}
	r.res.Facts[prefix+"_rss"] = float64(rss)
	r.res.Facts[prefix+"_heap_inuse"] = ms.Sum("go_memstats_heap_inuse_bytes")
	r.res.Facts[prefix+"_cache_entries"] = ms.Sum("keyauthz_cache_entries")
	r.res.Facts[prefix+"_negative_entries"] = ms.Sum("keyauthz_cache_negative_entries")
	return nil
}

func (r *runner) scenarioC(ctx context.Context) error {
	addr, rdb, err := r.startRedis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	s, err := r.keyauthz(ctx, "c", KeyauthzConfig{Redis: addr})
	if err != nil {
		return err
	}
	defer s.Stop()
	checks, err := metricDelta(s, "keyauthz_checks_total")
	if err != nil {
		return err
	}
	all0, eval0, err := RedisCalls(ctx, rdb)
	if err != nil {
		return err
	}
	limErrs, err := metricDelta(s, "keyauthz_ratelimit_errors_total")
	if err != nil {
		return err
	}
	m, err := r.measure(ctx, s, "c", titleC, r.hit, nil)
	if err != nil {
		return err
	}
	all1, eval1, err := RedisCalls(ctx, rdb)
	if err != nil {
		return err
	}
	n, err := checks()
	if err != nil {
		return err
	}
	le, err := limErrs()
	if err != nil {
		return err
	}
	var denied uint64
	for _, p := range []Phase{m.Sat, m.Fixed} {
		denied += p.Out.Done - p.Out.Codes[0]
	}
	if float64(denied) > le { // a 429 without a limiter error would be a wrong decision
		return fmt.Errorf("c: %d checks denied but only %.0f limiter errors: %s", denied, le, codeSummary(m.Sat.Out))
	}
	if le > 0 {
		m.Notes = append(m.Notes, fmt.Sprintf("%.0f limiter errors (Redis slower than ratelimit.timeout 20ms on this loaded machine), answered by ratelimit.on_error: deny", le))
	}
	r.res.Facts["c_limiter_errors"] = le
	r.res.Facts["c_checks"] = n
	r.res.Facts["c_redis_calls"] = float64(all1 - all0)
	r.res.Facts["c_redis_evals"] = float64(eval1 - eval0)
	m.Notes = append(m.Notes, fmt.Sprintf("Redis commands: %d for %.0f decisions (%.3f per decision; EVALSHA/EVAL %d)",
		all1-all0, n, float64(all1-all0)/max(n, 1), eval1-eval0))
	r.add(m)
	return nil
}

// startRedis runs a redis-server without persistence on a free port (on the
// client's CPU when pinning) and returns its address and a client.
func (r *runner) startRedis(ctx context.Context) (string, *redis.Client, error) {
	bin := os.Getenv("KEYAUTHZ_REDIS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			return "", nil, fmt.Errorf("redis-server not found: apt-get install -y redis-server (or set KEYAUTHZ_REDIS_SERVER)")
		}
	}
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	dir := filepath.Join(r.o.Work, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	p, err := Start("redis", filepath.Join(r.o.Work, "redis.log"), r.cpuCli, nil, bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", "--daemonize", "no")
	if err != nil {
		return "", nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	err = poll(ctx, 10*time.Second, func() error {
		if done, err := p.Exited(); done {
			return fmt.Errorf("redis-server exited: %v", err)
		}
		return rdb.Ping(ctx).Err()
	})
	if err != nil {
		rdb.Close()
		return "", nil, fmt.Errorf("redis-server not answering: %v\n%s", err, p.Tail(2000))
	}
	return addr, rdb, nil
}

func (r *runner) scenarioD(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "d", KeyauthzConfig{NegativeSize: dNegativeSize})
	if err != nil {
		return err
	}
	defer s.Stop()
	pool, err := r.requests(streamUnknown, 0, dPool, false)
	if err != nil {
		return err
	}
	reads, err := metricDelta(s, "keyauthz_cache_store_reads_total")
	if err != nil {
		return err
	}
	m, err := r.measure(ctx, s, "d", titleD, pool, nil)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 16); err != nil {
		return err
	}
	n, err := reads()
	if err != nil {
		return err
	}
	r.res.Facts["d_store_reads"] = n
	r.res.Facts["d_distinct"] = dPool
	m.Notes = append(m.Notes, fmt.Sprintf("%d distinct unknown keys, %d checks; store reads: %.0f",
		dPool, m.Sat.Out.Done+m.Fixed.Out.Done, n))
	r.add(m)

	// Every key new: the negative cache must stay bounded.
	if err := r.memFacts(s, "d_before"); err != nil {
		return err
	}
	if reads, err = metricDelta(s, "keyauthz_cache_store_reads_total"); err != nil {
		return err
	}
	seq := new(atomic.Uint64)
	m, err = r.measure(ctx, s, "d-fresh", titleDFresh, &fresh{t: r.tmpl, gen: r.gen, stream: streamUnknown, base: dPool}, seq)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 16); err != nil {
		return err
	}
	if n, err = reads(); err != nil {
		return err
	}
	if err := r.memFacts(s, "d_after"); err != nil {
		return err
	}
	r.res.Facts["d_fresh_store_reads"] = n
	r.res.Facts["d_fresh_distinct"] = float64(seq.Load())
	r.res.Facts["d_negative_size"] = dNegativeSize
	m.Notes = append(m.Notes, fmt.Sprintf("%d distinct unknown keys (cache.negative_size %d); store reads: %.0f; negative entries after: %.0f; RSS %s → %s",
		seq.Load(), dNegativeSize, n, r.res.Facts["d_after_negative_entries"], mib(r.res.Facts["d_before_rss"]), mib(r.res.Facts["d_after_rss"])))
	r.add(m)
	return nil
}

func (r *runner) scenarioE(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "e", KeyauthzConfig{})
	if err != nil {
		return err
	}
	defer s.Stop()
	bad, err := r.requests(streamStored, 0, HitKeys, true)
	if err != nil {
		return err
	}
	reads, err := metricDelta(s, "keyauthz_cache_store_reads_total")
	if err != nil {
		return err
	}
	m, err := r.measure(ctx, s, "e", titleE, bad, nil)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 16); err != nil {
		return err
	}
	n, err := reads()
	if err != nil {
		return err
	}
	r.res.Facts["e_store_reads"] = n
	m.Notes = append(m.Notes, fmt.Sprintf("keys of the issued shape with a wrong checksum; store reads: %.0f", n))
	r.add(m)
	return nil
}

func (r *runner) scenarioF(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "f", KeyauthzConfig{})
	if err != nil {
		return err
	}
	defer s.Stop()
	// 3 of every 10 requests use one of the LimitedKeys keys (rate 1/h: over the
	// limit after their first request), the others a hot key with no limit in reach.
	mix := make(cycle, 1000)
	limited, err := r.requests(streamStored, HitKeys, LimitedKeys, false)
	if err != nil {
		return err
	}
	for j := range mix {
		if j%10 < 3 {
			mix[j] = limited[(j/10*3+j%10)%LimitedKeys]
		} else {
			mix[j] = r.hit[j%HitKeys]
		}
	}
	m, err := r.measure(ctx, s, "f", titleF, mix, nil)
	if err != nil {
		return err
	}
	for _, p := range []Phase{m.Sat, m.Fixed} {
		if got := share(p.Out, 8); got < 0.29 || got > 0.31 {
			return fmt.Errorf("f: %.1f%% answered 429, want 30%%: %s", 100*got, codeSummary(p.Out))
		}
	}
	m.Notes = append(m.Notes, "saturation answers: "+codeSummary(m.Sat.Out))
	r.add(m)
	return nil
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
