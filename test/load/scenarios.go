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
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// Scenario titles, as the report shows them.
const (
	titleA      = "(a) valid key, cache hit, local limiter"
	titleA1M    = "(a@1M) valid key, cache hit, 1M-key store"
	titleB      = "(b) cache miss, SQLite store with 1M keys"
	titleBPG    = "(b-pg) cache miss, PostgreSQL store with 10M keys"
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

// measureReads is measure that also wants every answer to be code and
// returns the store reads keyauthz made meanwhile.
func (r *runner) measureReads(ctx context.Context, s *Server, key, title string, src Source, seq *atomic.Uint64, code int32) (Measurement, float64, error) {
	reads, err := metricDelta(s, "keyauthz_cache_store_reads_total")
	if err != nil {
		return Measurement{}, 0, err
	}
	m, err := r.measure(ctx, s, key, title, src, seq)
	if err != nil {
		return m, 0, err
	}
	if err := wantAll(&m, code); err != nil {
		return m, 0, err
	}
	n, err := reads()
	return m, n, err
}

func (r *runner) scenarioA(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "a", KeyauthzConfig{Pprof: r.profiling("a")})
	if err != nil {
		return err
	}
	defer s.Stop()
	m, n, err := r.measureReads(ctx, s, "a", titleA, r.hit, nil, 0)
	if err != nil {
		return err
	}
	m.Notes = append(m.Notes, fmt.Sprintf("%d hot keys; store reads during the run: %.0f (the first miss of each key)", HitKeys, n))
	r.add(m)
	return nil
}

// profile takes CPU profiles of keyauthz with the scenario's requests,
// saturated and at the fixed rate, in windows of their own (profiling never
// touches a measured window).
func (r *runner) profile(ctx context.Context, s *Server, key string, src Source, seq *atomic.Uint64) error {
	d := r.o.Load.Duration
	c, err := Dial(s.GRPC, r.o.Load.Conns, r.o.Load.Transport)
	if err != nil {
		return err
	}
	defer c.Close()
	for i, w := range []struct {
		mode string
		run  func()
	}{
		{"saturated", func() { c.Closed(ctx, src, r.o.Load.Workers, d+500*time.Millisecond, seq) }},
		{fmt.Sprintf("fixed rate %.0f/s", r.o.Load.Rate), func() { c.Open(ctx, src, r.o.Load.Rate, d+500*time.Millisecond, r.o.Load.Open, seq) }},
	} {
		file := filepath.Join(r.o.Work, fmt.Sprintf("%s.cpu.%d.pprof", key, i))
		errc := make(chan error, 1)
		go func() { errc <- fetchProfile(s.HTTP, d, file) }()
		w.run()
		if err := <-errc; err != nil {
			return err
		}
		cmd := exec.Command("go", "tool", "pprof", "-top", "-nodecount=30", file)
		cmd.Dir = r.o.Root
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go tool pprof: %v: %s", err, out)
		}
		r.res.Profiles = append(r.res.Profiles, Profile{Scenario: key, Mode: w.mode, File: file, Top: string(out)})
	}
	return nil
}

// fetchProfile saves keyauthz's /debug/pprof/profile over d into file.
func fetchProfile(httpAddr string, d time.Duration, file string) error {
	resp, err := (&http.Client{Timeout: d + 10*time.Second}).Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", httpAddr, int(d.Seconds()+0.5)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("/debug/pprof/profile: %s: %s (is http.pprof on?)", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	return errors.Join(err, f.Close())
}

func (r *runner) scenarioB(ctx context.Context) error {
	path, err := r.largeStore(ctx)
	if err != nil {
		return err
	}
	s, err := r.keyauthz(ctx, "b", KeyauthzConfig{Store: path, Pprof: true})
	if err != nil {
		return err
	}
	defer s.Stop()
	if err := r.memFacts(s, "b_idle"); err != nil {
		return err
	}
	// The same hot keys against keyauthz on the small store, in windows
	// interleaved with the 1M-store ones: store size is the only difference.
	small, err := r.keyauthz(ctx, "a-small", KeyauthzConfig{})
	if err != nil {
		return err
	}
	m, err := r.measurePeer(ctx, s, small, "a@1M", titleA1M, r.hit, nil)
	if serr := small.Stop(); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if err := wantAll(&m, 0); err != nil {
		return err
	}
	r.add(m)
	seq := new(atomic.Uint64)
	src := &fresh{t: r.tmpl, gen: r.gen, stream: streamStored, base: SmallStore, mod: uint64(r.o.StoreKeys - SmallStore)}
	if err := r.processBytesPerKey(ctx, s, src, seq); err != nil {
		return err
	}
	first := seq.Load()
	m, n, err := r.measureReads(ctx, s, "b", titleB, src, seq, 0)
	if err != nil {
		return err
	}
	r.res.Facts["b_store_reads"] = n
	r.res.Facts["b_checks"] = float64(seq.Load() - first)
	m.Notes = append(m.Notes, fmt.Sprintf("%d checks, each a key not yet cached; store reads: %.0f", seq.Load()-first, n))
	r.add(m)
	return r.memFacts(s, "b_after")
}

// scenarioBPG is scenario b on PostgreSQL: keyauthz (on the server CPU) with
// a PostgreSQL store of PGKeys keys (on the client's CPU, as Redis in c),
// every request a stored key not asked before, so every check is a cache
// miss and one store read (one round trip).
func (r *runner) scenarioBPG(ctx context.Context) error {
	if r.o.PGKeys <= SmallStore || r.o.PGKeys >= 1<<32 {
		return fmt.Errorf("b-pg: -pg-keys %d: want more than %d and fewer than 2^32", r.o.PGKeys, SmallStore)
	}
	pg, url, err := r.pgStore(ctx)
	if err != nil {
		return err
	}
	defer pg.stop()
	s, startNote, err := r.startBPG(ctx, url)
	if err != nil {
		return err
	}
	defer s.Stop()
	seq := new(atomic.Uint64)
	src := &fresh{t: r.tmpl, gen: r.gen, stream: streamStored, base: SmallStore, mod: uint64(r.o.PGKeys - SmallStore)}
	m, n, err := r.measureReads(ctx, s, "b-pg", titleBPG, src, seq, 0)
	if err != nil {
		return err
	}
	checks := float64(seq.Load())
	if checks > float64(r.o.PGKeys-SmallStore) {
		return fmt.Errorf("b-pg: %.0f checks but only %d keys: keys were repeated", checks, r.o.PGKeys-SmallStore)
	}
	f := r.res.Facts
	f["bpg_keys"] = float64(r.o.PGKeys)
	f["bpg_store_reads"] = n
	f["bpg_checks"] = checks
	m.Notes = append(m.Notes, fmt.Sprintf("%.0f checks, each a key not yet cached; store reads: %.0f (%.3f per miss)", checks, n, ratio(n, checks)))
	seeded := "reused from the cache directory"
	if v := f["bpg_seed_seconds"]; v > 0 {
		seeded = fmt.Sprintf("seeded in this run in %.0f s (initdb, start and `keyauthz migrate` %.0f s; COPY … FREEZE of both tables %.0f s; index builds %.0f s; VACUUM ANALYZE %.0f s)",
			v, f["bpg_seed_setup_seconds"], f["bpg_seed_load_seconds"], f["bpg_seed_index_seconds"], f["bpg_seed_analyze_seconds"])
	} else if v := f["bpg_seed_seconds_earlier"]; v > 0 {
		seeded = fmt.Sprintf("reused from the cache directory (seeded in %.0f s by an earlier run)", v)
	}
	m.Notes = append(m.Notes, startNote)
	m.Notes = append(m.Notes, fmt.Sprintf("PostgreSQL %s on 127.0.0.1 (%s), the harness's own server: %s; %d keys, %s. Schema by `keyauthz migrate` of the binary under test.",
		pgVersionOf(pg), r.pgPlacement(), pgSettingsNote(), r.o.PGKeys, seeded))
	r.add(m)
	return nil
}

// bpgStatementTimeout is the store.statement_timeout b-pg falls back to when
// keyauthz cannot start on the large store with the default one.
const bpgStatementTimeout = 3 * time.Minute

// startBPG starts b-pg's keyauthz on the PostgreSQL store at url with the
// default configuration; when a statement of its start-up times out there
// (a whole-table query), it records that and starts it again with
// store.statement_timeout bpgStatementTimeout, which the Check path (bounded
// by store.timeout) never reaches. It returns a note for the report.
func (r *runner) startBPG(ctx context.Context, url string) (*Server, string, error) {
	c := KeyauthzConfig{StoreURL: url, Pprof: r.profiling("b-pg"), ReadyTimeout: 2 * time.Minute}
	start := time.Now()
	s, err := r.keyauthz(ctx, "b-pg", c)
	if err == nil {
		d := time.Since(start)
		r.res.Facts["bpg_start_seconds"] = d.Seconds()
		return s, fmt.Sprintf("`keyauthz serve` was ready %.1f s after its start, with the default store settings.", d.Seconds()), nil
	}
	if !strings.Contains(err.Error(), "statement timeout") {
		return nil, "", err
	}
	failed := time.Since(start)
	why := firstLine(err.Error())
	if i := strings.Index(err.Error(), "keyauthz: "); i >= 0 {
		why = firstLine(err.Error()[i:])
	}
	r.logf("  keyauthz serve did not start with the default store.statement_timeout (%s); again with %v", why, bpgStatementTimeout)
	c.StatementTimeout, c.ReadyTimeout = bpgStatementTimeout, bpgStatementTimeout+time.Minute
	start = time.Now()
	if s, err = r.keyauthz(ctx, "b-pg", c); err != nil {
		return nil, "", err
	}
	d := time.Since(start)
	r.res.Facts["bpg_start_seconds"] = d.Seconds()
	r.res.Facts["bpg_default_start_failed"] = 1
	r.logf("  keyauthz serve ready after %.1f s with store.statement_timeout %v", d.Seconds(), bpgStatementTimeout)
	return s, fmt.Sprintf("**With the default store settings `keyauthz serve` does not start on this store**: it exited after %.1f s with `%s`. Measured with `store.statement_timeout: %v` (the Check path is bounded by `store.timeout`, 250 ms, and never reaches it); it was then ready %.1f s after its start.",
		failed.Seconds(), strings.ReplaceAll(why, "`", "'"), bpgStatementTimeout, d.Seconds()), nil
}

// pgPlacement says where the harness's PostgreSQL runs during measurements.
func (r *runner) pgPlacement() string {
	if r.cpuCli == "" {
		return "not pinned"
	}
	return "on CPU " + r.cpuCli + " with the load client"
}

// processKeys is how many distinct keys processBytesPerKey sends: well under
// cache.size (100,000), so none is evicted.
const processKeys = 50_000

// processBytesPerKey measures keyauthz's whole per-key memory (key cache and
// whatever else keeps per-key state: response parts, limiter, usage): live
// heap after a forced GC (/debug/pprof/heap?gc=1), before and after
// processKeys distinct valid keys have been checked once each.
func (r *runner) processBytesPerKey(ctx context.Context, s *Server, src Source, seq *atomic.Uint64) error {
	live := func(name string) (float64, error) {
		resp, err := httpClient.Get("http://" + s.HTTP + "/debug/pprof/heap?gc=1")
		if err != nil {
			return 0, err
		}
		f, err := os.Create(filepath.Join(r.o.Work, name))
		if err != nil {
			resp.Body.Close()
			return 0, err
		}
		_, err = io.Copy(f, resp.Body)
		resp.Body.Close()
		if err := errors.Join(err, f.Close()); err != nil {
			return 0, err
		}
		ms, err := s.Metrics()
		if err != nil {
			return 0, err
		}
		if !ms.Has("go_memstats_heap_alloc_bytes") {
			return 0, errors.New("keyauthz /metrics has no go_memstats_heap_alloc_bytes")
		}
		return ms.Sum("go_memstats_heap_alloc_bytes"), nil
	}
	c, err := Dial(s.GRPC, r.o.Load.Conns, r.o.Load.Transport)
	if err != nil {
		return err
	}
	defer c.Close()
	// Warm the process (connections, buffers, pools) with keys of their own first.
	if o := c.Closed(ctx, bounded{src: src, start: seq.Load(), n: 5000}, r.o.Load.Workers, time.Minute, seq); o.Errors > 0 {
		return fmt.Errorf("warm-up: %d errors: %v", o.Errors, o.FirstErr)
	}
	before, err := live("b.heap.before.pprof")
	if err != nil {
		return err
	}
	o := c.Closed(ctx, bounded{src: src, start: seq.Load(), n: processKeys}, r.o.Load.Workers, time.Minute, seq)
	if o.Errors > 0 || o.Done != processKeys || o.Codes[0] != processKeys {
		return fmt.Errorf("process memory: %d of %d keys answered OK (%d errors: %v)", o.Codes[0], processKeys, o.Errors, o.FirstErr)
	}
	after, err := live("b.heap.after.pprof")
	if err != nil {
		return err
	}
	// Where the growth went, by allocation site (sampled heap profile).
	cmd := exec.Command("go", "tool", "pprof", "-sample_index=inuse_space", "-top", "-nodecount=20",
		"-base", filepath.Join(r.o.Work, "b.heap.before.pprof"), filepath.Join(r.o.Work, "b.heap.after.pprof"))
	cmd.Dir = r.o.Root
	if out, err := cmd.CombinedOutput(); err == nil {
		r.res.HeapGrowth = string(out)
	} else {
		r.logf("  heap profile diff: %v: %s", err, out)
	}
	r.res.Facts["process_keys"] = processKeys
	r.res.Facts["process_bytes_per_key"] = (after - before) / processKeys
	r.logf("  keyauthz serve: %.0f bytes of live heap per key checked (%d distinct keys)", (after-before)/processKeys, processKeys)
	return nil
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

// cCountChecks is how many checks the round-trip count of scenario (c) sends.
const cCountChecks = 20_000

func (r *runner) scenarioC(ctx context.Context) error {
	addr, rdb, err := r.startRedis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := r.countRedisRoundTrips(ctx, addr, rdb); err != nil {
		return err
	}
	// The measured server talks to Redis directly (no counting proxy in its path).
	s, err := r.keyauthz(ctx, "c", KeyauthzConfig{Redis: addr, Pprof: r.profiling("c")})
	if err != nil {
		return err
	}
	defer s.Stop()
	var peer *Server // -c-peer: another build on the same Redis, in interleaved windows
	if r.o.CPeerBin != "" {
		bin := r.o.KeyauthzBin
		r.o.KeyauthzBin = r.o.CPeerBin
		peer, err = r.keyauthz(ctx, "c-peer", KeyauthzConfig{Redis: addr})
		r.o.KeyauthzBin = bin
		if err != nil {
			return err
		}
		defer peer.Stop()
	}
	limErrs, err := metricDelta(s, "keyauthz_ratelimit_errors_total")
	if err != nil {
		return err
	}
	m, err := r.measurePeer(ctx, s, peer, "c", titleC, r.hit, nil)
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
	f := r.res.Facts
	m.Notes = append(m.Notes, fmt.Sprintf("Round trips, counted on a second keyauthz that reaches the same Redis through a counting proxy: %.0f checks sent, %.0f decisions, %.0f commands sent to Redis (%.3f per decision), EVALSHA/EVAL run %.0f (INFO commandstats)",
		f["c_count_sent"], f["c_checks"], f["c_redis_calls"], ratio(f["c_redis_calls"], f["c_checks"]), f["c_redis_evals"]))
	r.add(m)
	return nil
}

// countRedisRoundTrips runs cCountChecks checks through a keyauthz whose
// Redis limiter reaches Redis through a proxy that counts the commands it
// sends (INFO commandstats alone also counts the commands the Lua script runs
// inside Redis). The measured scenario uses another keyauthz without the proxy.
func (r *runner) countRedisRoundTrips(ctx context.Context, addr string, rdb *redis.Client) error {
	proxy, err := startCmdProxy(addr)
	if err != nil {
		return err
	}
	defer proxy.Close()
	s, err := r.keyauthz(ctx, "c-count", KeyauthzConfig{Redis: proxy.Addr()})
	if err != nil {
		return err
	}
	defer s.Stop()
	c, err := Dial(s.GRPC, r.o.Load.Conns, r.o.Load.Transport)
	if err != nil {
		return err
	}
	defer c.Close()
	// Warm up first: connection set-up commands (HELLO, CLIENT SETINFO, the
	// script load) are not per decision.
	if o := c.Closed(ctx, bounded{src: r.hit, n: 2000}, r.o.Load.Workers, time.Minute, new(atomic.Uint64)); o.Errors > 0 {
		return fmt.Errorf("c-count warm-up: %d errors: %v", o.Errors, o.FirstErr)
	}
	checks, err := metricDelta(s, "keyauthz_checks_total")
	if err != nil {
		return err
	}
	_, eval0, err := RedisCalls(ctx, rdb)
	if err != nil {
		return err
	}
	sent0 := proxy.Commands()
	o := c.Closed(ctx, bounded{src: r.hit, n: cCountChecks}, r.o.Load.Workers, time.Minute, new(atomic.Uint64))
	if o.Errors > 0 || o.Done != cCountChecks {
		return fmt.Errorf("c-count: %d of %d answered (%d errors: %v)", o.Done, cCountChecks, o.Errors, o.FirstErr)
	}
	_, eval1, err := RedisCalls(ctx, rdb)
	if err != nil {
		return err
	}
	sent := proxy.Commands() - sent0
	n, err := checks()
	if err != nil {
		return err
	}
	r.res.Facts["c_count_sent"] = cCountChecks
	r.res.Facts["c_checks"] = n
	r.res.Facts["c_redis_calls"] = float64(sent)
	r.res.Facts["c_redis_evals"] = float64(eval1 - eval0)
	r.logf("  c-count: %d commands sent to Redis for %.0f decisions; EVALSHA/EVAL run %d", sent, n, eval1-eval0)
	return nil
}

// startRedis runs a redis-server without persistence on a free port (on the
// client's CPU when pinning; stopped by StopAll) and returns its address and a client.
func (r *runner) startRedis(ctx context.Context) (string, *redis.Client, error) {
	dir := filepath.Join(r.o.Work, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	p, err := testenv.TryStartRedis(dir, r.cpuCli)
	if err != nil {
		return "", nil, err
	}
	onStopAll(p.Stop)
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr()})
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return "", nil, fmt.Errorf("redis-server not answering: %v", err)
	}
	return p.Addr(), rdb, nil
}

func (r *runner) scenarioD(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "d", KeyauthzConfig{NegativeSize: dNegativeSize, Pprof: r.profiling("d") || r.profiling("d-fresh")})
	if err != nil {
		return err
	}
	defer s.Stop()
	pool, err := r.requests(streamUnknown, 0, dPool, false)
	if err != nil {
		return err
	}
	m, n, err := r.measureReads(ctx, s, "d", titleD, pool, nil, 16)
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
	seq := new(atomic.Uint64)
	m, n, err = r.measureReads(ctx, s, "d-fresh", titleDFresh, &fresh{t: r.tmpl, gen: r.gen, stream: streamUnknown, base: dPool}, seq, 16)
	if err != nil {
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
	s, err := r.keyauthz(ctx, "e", KeyauthzConfig{Pprof: r.profiling("e")})
	if err != nil {
		return err
	}
	defer s.Stop()
	bad, err := r.requests(streamStored, 0, HitKeys, true)
	if err != nil {
		return err
	}
	m, n, err := r.measureReads(ctx, s, "e", titleE, bad, nil, 16)
	if err != nil {
		return err
	}
	r.res.Facts["e_store_reads"] = n
	m.Notes = append(m.Notes, fmt.Sprintf("keys of the issued shape with a wrong checksum; store reads: %.0f", n))
	r.add(m)
	return nil
}

func (r *runner) scenarioF(ctx context.Context) error {
	s, err := r.keyauthz(ctx, "f", KeyauthzConfig{Pprof: r.profiling("f")})
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
