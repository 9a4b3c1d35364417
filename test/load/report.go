package load

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// Target is one of the performance targets and its verdict.
type Target struct {
	N      int
	Name   string
	Pass   bool
	Missed bool // not measured in this run
	Detail string
}

// Line renders the target's PASS/FAIL line.
func (t Target) Line() string {
	v := "FAIL"
	switch {
	case t.Missed:
		v = "SKIP"
	case t.Pass:
		v = "PASS"
	}
	return fmt.Sprintf("%s target %d: %s — %s", v, t.N, t.Name, t.Detail)
}

// ref is the no-op reference: the mean of its measurements in the run.
type ref struct {
	rate, p50, p99 float64
	cpu            time.Duration
	ok             bool
}

func reference(res *Results) ref {
	var r ref
	n := float64(len(res.Noop))
	for _, m := range res.Noop {
		r.rate += m.Sat.Out.Rate() / n
		r.cpu += time.Duration(float64(m.Sat.PerCheck()) / n)
		r.p50 += us(m.Fixed.Out.Pct(50)) / n
		r.p99 += us(m.Fixed.Out.Pct(99)) / n
	}
	r.ok = n > 0
	return r
}

func (res *Results) scenario(key string) *Measurement {
	for i := range res.Scenarios {
		if res.Scenarios[i].Key == key {
			return &res.Scenarios[i]
		}
	}
	return nil
}

// withCodec describes the handler benchmark that includes the codec, if it ran.
func withCodec(f *BenchResult) string {
	if f == nil {
		return ""
	}
	return fmt.Sprintf(" (with the codec's decode and marshal, FastPath: %.0f ns/op, %.0f allocs/op)", f.NsPerOp, f.AllocsPerOp)
}

func (res *Results) bench(name string) *BenchResult {
	for i := range res.Bench {
		if res.Bench[i].Name == name {
			return &res.Bench[i]
		}
	}
	return nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// evaluate judges every target from what the run measured.
func evaluate(res *Results) []Target {
	ref := reference(res)
	var ts []Target
	missed := func(n int, name, why string) { ts = append(ts, Target{N: n, Name: name, Missed: true, Detail: why}) }

	const n1 = "(a) CPU per Check ≤ 1.25× no-op, saturated throughput ≥ 0.85× no-op"
	if a := res.scenario("a"); a != nil && a.Ref.Out.Done > 0 {
		cr, tr := ratio(float64(a.Sat.PerCheck()), float64(a.Ref.PerCheck())), ratio(a.Sat.Out.Rate(), a.Ref.Out.Rate())
		ts = append(ts, Target{N: 1, Name: n1, Pass: cr <= 1.25 && tr >= 0.85,
			Detail: fmt.Sprintf("CPU/check %.1f µs = %.2f× no-op (%.1f µs); throughput %.0f/s = %.2f× no-op (%.0f/s)%s",
				us(a.Sat.PerCheck()), cr, us(a.Ref.PerCheck()), a.Sat.Out.Rate(), tr, a.Ref.Out.Rate(), busyCaveat(a))})
	} else {
		missed(1, n1, "scenario a not run")
	}

	const n2 = "(c) CPU per Check ≤ 1.6× no-op; one Redis round trip per decision"
	if c := res.scenario("c"); c != nil && c.Ref.Out.Done > 0 {
		cr := ratio(float64(c.Sat.PerCheck()), float64(c.Ref.PerCheck()))
		checks, calls, evals := res.Facts["c_checks"], res.Facts["c_redis_calls"], res.Facts["c_redis_evals"]
		perCall := ratio(calls, checks)
		ts = append(ts, Target{N: 2, Name: n2, Pass: cr <= 1.6 && calls <= checks*1.01 && evals >= checks*0.99,
			Detail: fmt.Sprintf("CPU/check %.1f µs = %.2f× no-op (%.1f µs); commands sent to Redis %.0f / decisions %.0f = %.3f per decision (EVALSHA/EVAL run %.0f)", us(c.Sat.PerCheck()), cr, us(c.Ref.PerCheck()), calls, checks, perCall, evals)})
	} else {
		missed(2, n2, "scenario c not run")
	}

	const n3 = "(b) cache-miss p99 ≤ 2 ms at the fixed rate; cache-hit path unaffected by store size (CPU/check with the 1M-key store ≤ 1.10× keyauthz on the small store, in interleaved windows)"
	if b, a1 := res.scenario("b"), res.scenario("a@1M"); b != nil && a1 != nil && a1.Peer.Out.Done > 0 {
		p99 := b.Fixed.Out.Pct(99)
		cr := ratio(float64(a1.Sat.PerCheck()), float64(a1.Peer.PerCheck()))
		tr := ratio(a1.Sat.Out.Rate(), a1.Peer.Out.Rate())
		noop := ""
		if ref.ok {
			noop = fmt.Sprintf(" (no-op p99 %.0f µs)", ref.p99)
		}
		ts = append(ts, Target{N: 3, Name: n3, Pass: p99 <= 2*time.Millisecond && cr <= 1.10,
			Detail: fmt.Sprintf("miss p99 %.0f µs at %.0f/s%s; cache hit on the 1M store vs the small one: CPU/check %.2f× (%.1f vs %.1f µs), throughput %.2f×",
				us(p99), b.Fixed.Out.Rate(), noop, cr, us(a1.Sat.PerCheck()), us(a1.Peer.PerCheck()), tr)})
	} else {
		missed(3, n3, "scenario b not run")
	}

	const n4 = "(d) store reads ≤ 1 per distinct unknown key per negative TTL; negative cache bounded (cache.negative_size, + per-shard rounding), RSS growth under the flood ≤ 32 MiB"
	if res.scenario("d") != nil && res.scenario("d-fresh") != nil {
		f := res.Facts
		grow := f["d_after_rss"] - f["d_before_rss"]
		pass := f["d_store_reads"] <= f["d_distinct"] && f["d_fresh_store_reads"] <= f["d_fresh_distinct"] &&
			f["d_after_negative_entries"] <= f["d_negative_size"]+31 && grow <= 32<<20
		ts = append(ts, Target{N: 4, Name: n4, Pass: pass,
			Detail: fmt.Sprintf("pool: %.0f reads for %.0f distinct keys; every key new: %.0f reads for %.0f distinct keys; negative entries %.0f (negative_size %.0f); RSS %+.1f MiB",
				f["d_store_reads"], f["d_distinct"], f["d_fresh_store_reads"], f["d_fresh_distinct"], f["d_after_negative_entries"], f["d_negative_size"], grow/(1<<20))})
	} else {
		missed(4, n4, "scenario d not run")
	}

	const n5 = "Check handler on a cache hit ≤ 2 µs/op and ≤ 30 allocs/op; hasher ≤ 600 ns/op (Go benchmarks)"
	if h, s := res.bench("BenchmarkCheckCacheHit"), res.bench("BenchmarkHasher"); h != nil && s != nil {
		ts = append(ts, Target{N: 5, Name: n5, Pass: h.NsPerOp <= 2000 && h.AllocsPerOp <= 30 && s.NsPerOp <= 600,
			Detail: fmt.Sprintf("CheckCacheHit %.0f ns/op, %.0f allocs/op; Hasher %.0f ns/op%s", h.NsPerOp, h.AllocsPerOp, s.NsPerOp, withCodec(res.bench("BenchmarkFastPath")))})
	} else {
		missed(5, n5, "benchmarks not run")
	}

	const n6 = "through Envoy at a fixed 1,000 rps: added p99 ≤ 1 ms versus Envoy without ext_authz"
	if e := res.Envoy; e != nil && e.Arm(ArmWith) != nil && e.Arm(ArmWithout) != nil {
		w, o := e.Arm(ArmWith), e.Arm(ArmWithout)
		add, lo, med, hi, _ := e.AddedP99(ArmWith)
		d := fmt.Sprintf("p99 %.0f µs with, %.0f µs without: %+.0f µs (%d × %s windows per arm pooled, %.0f / %.0f rps; round by round %+.0f…%+.0f µs, median %+.0f)",
			us(w.Lat.Pct(99)), us(o.Lat.Pct(99)), us(add), len(w.Runs), e.Window, w.RPS(), o.RPS(), us(lo), us(hi), us(med))
		for _, k := range []string{ArmUDS, ArmNoop} {
			if a, _, _, _, ok := e.AddedP99(k); ok {
				d += fmt.Sprintf("; %s: %+.0f µs", map[string]string{ArmUDS: "over a unix socket", ArmNoop: "no-op server instead of keyauthz"}[k], us(a))
			}
		}
		ts = append(ts, Target{N: 6, Name: n6, Pass: add <= time.Millisecond, Detail: d})
	} else {
		missed(6, n6, "Envoy part not run")
	}

	const n7 = "memory per cached key ≤ 400 bytes (the key cache; and keyauthz serve's whole per-key state)"
	if len(res.Memory) > 0 {
		pass := true
		var parts []string
		for _, m := range res.Memory {
			pass = pass && m.PerKey <= 400
			parts = append(parts, fmt.Sprintf("keycache with %d keys: %.0f B/key", m.Keys, m.PerKey))
		}
		if b := res.Facts["process_bytes_per_key"]; b > 0 {
			pass = pass && b <= 400
			parts = append(parts, fmt.Sprintf("keyauthz serve, %.0f keys checked: %.0f B/key of live heap", res.Facts["process_keys"], b))
		}
		ts = append(ts, Target{N: 7, Name: n7, Pass: pass, Detail: strings.Join(parts, "; ")})
	} else {
		missed(7, n7, "memory not measured")
	}

	const n8 = "(b-pg) cache-miss p99 ≤ 2 ms at the fixed rate on PostgreSQL with 10M keys; one store read per miss"
	if b := res.scenario("b-pg"); b != nil && b.Fixed.Out.Done > 0 {
		p99 := b.Fixed.Out.Pct(99)
		reads, checks := res.Facts["bpg_store_reads"], res.Facts["bpg_checks"]
		noop := " (no-op latency not measured: add scenario noop)"
		if ref.ok {
			noop = fmt.Sprintf(" (no-op p50 %.0f µs, p99 %.0f µs, same run)", ref.p50, ref.p99)
		}
		start := fmt.Sprintf("; keyauthz serve ready in %.1f s", res.Facts["bpg_start_seconds"])
		if res.Facts["bpg_default_start_failed"] > 0 {
			start = fmt.Sprintf("; NOTE: keyauthz serve does not start on this store with the default store.statement_timeout (a start-up query times out), measured with %v (ready in %.1f s)", bpgStatementTimeout, res.Facts["bpg_start_seconds"])
		}
		ts = append(ts, Target{N: 8, Name: n8, Pass: p99 <= 2*time.Millisecond && reads <= checks*1.01,
			Detail: fmt.Sprintf("miss p50 %.0f µs, p99 %.0f µs at %.0f/s%s, %.0f keys; store reads %.0f / misses %.0f = %.3f per miss%s",
				us(b.Fixed.Out.Pct(50)), us(p99), b.Fixed.Out.Rate(), noop, res.Facts["bpg_keys"], reads, checks, ratio(reads, checks), start)})
	} else {
		missed(8, n8, "scenario b-pg not run")
	}
	return ts
}

// busyCaveat flags a saturation measurement whose servers were not kept busy
// (other tenants on the server CPU, or a client bound): its throughput ratio
// then says less than its CPU ratio.
func busyCaveat(m *Measurement) string {
	if m.Sat.Busy() < 0.9 || m.Ref.Busy() < 0.9 {
		return fmt.Sprintf(" (servers busy %.2f / %.2f cores: the machine was shared, trust CPU/check over throughput)", m.Sat.Busy(), m.Ref.Busy())
	}
	return ""
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

// Report renders the results as RESULTS.md.
func Report(res *Results, command string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	ref := reference(res)
	p("# keyauthz load results")
	p("")
	p("Generated by the load harness (test/load, see README.md); every figure is also a ratio to the no-op ext_authz")
	p("server measured the same way in the same run, because absolute numbers on this shared machine are noise.")
	p("")
	p("| | |")
	p("| --- | --- |")
	p("| command | `%s` |", command)
	p("| date | %s (run took %s) |", res.Started.UTC().Format("2006-01-02 15:04 MST"), res.Duration.Round(time.Second))
	p("| Go | %s |", res.GoVersion)
	p("| Envoy | %s |", orNone(res.EnvoyVer))
	p("| keyauthz | %s |", res.Keyauthz)
	p("| machine | %d CPUs (%s), %s/%s |", runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH)
	p("| pinning | %s |", res.Pinning)
	p("| gRPC load | client: %s transport, %d connections; saturation: %d concurrent calls, closed loop, %s in %d windows alternating with as many no-op windows, after %s warm-up; latency: open loop at %.0f calls/s for %s (≤ %d in flight), counted from each call's due time when the client was behind |",
		orDefault(res.Load.Transport, TransportH2), res.Load.Conns, res.Load.Workers, res.Load.Duration, max(res.Load.Rounds, 1), res.Load.Warmup, res.Load.Rate, res.Load.Duration, res.Load.Open)
	p("| server CPU | utime+stime from /proc/PID/stat of the server process around each window ÷ checks answered |")
	p("")
	p("## Targets")
	p("")
	for _, t := range res.Targets {
		head, detail, _ := strings.Cut(t.Line(), " — ")
		p("- **%s** — %s", head, detail)
	}
	if len(res.Errors) > 0 {
		p("")
		p("Errors in this run:")
		p("")
		for _, e := range res.Errors {
			p("- `%s`", strings.ReplaceAll(firstLine(e), "`", "'"))
		}
	}
	p("")
	p("## gRPC scenarios (lean client → server, ratios to the no-op server)")
	p("")
	p("Saturation ratios are to the no-op windows interleaved with the scenario's (same server CPU, same minutes);")
	p("latency ratios are to the no-op's fixed-rate windows at the start and end of the run.")
	p("")
	p("| scenario | saturated checks/s | × no-op | server cores busy | server CPU µs/check | × no-op | p50 µs | × no-op | p99 µs | × no-op | answers |")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	row := func(m *Measurement) {
		rr, rc := ref.rate, float64(ref.cpu)
		if m.Ref.Out.Done > 0 {
			rr, rc = m.Ref.Out.Rate(), float64(m.Ref.PerCheck())
		}
		p("| %s | %.0f | %.2f | %.2f | %.1f | %.2f | %.0f | %.2f | %.0f | %.2f | %s |", m.Title,
			m.Sat.Out.Rate(), ratio(m.Sat.Out.Rate(), rr), m.Sat.Busy(),
			us(m.Sat.PerCheck()), ratio(float64(m.Sat.PerCheck()), rc),
			us(m.Fixed.Out.Pct(50)), ratio(us(m.Fixed.Out.Pct(50)), ref.p50),
			us(m.Fixed.Out.Pct(99)), ratio(us(m.Fixed.Out.Pct(99)), ref.p99), codeSummary(m.Sat.Out))
	}
	for i := range res.Noop {
		row(&res.Noop[i])
	}
	for i := range res.Scenarios {
		row(&res.Scenarios[i])
	}
	for i := range res.Scenarios {
		m := &res.Scenarios[i]
		p("")
		p("### %s", m.Title)
		p("")
		p("| window | calls | calls/s | server cores busy | server CPU µs/check | client CPU µs/call | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |")
		p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		p("| saturation (%d in flight, %d windows) | %d | %.0f | %.2f | %.1f | %.1f | | | | | |", res.Load.Workers, max(res.Load.Rounds, 1),
			m.Sat.Out.Done, m.Sat.Out.Rate(), m.Sat.Busy(), us(m.Sat.PerCheck()), us(m.Sat.ClientPerCall()))
		p("| no-op, interleaved | %d | %.0f | %.2f | %.1f | %.1f | | | | | |", m.Ref.Out.Done, m.Ref.Out.Rate(), m.Ref.Busy(), us(m.Ref.PerCheck()), us(m.Ref.ClientPerCall()))
		if m.Peer.Out.Done > 0 {
			peer := m.PeerOf + " (small store)"
			switch m.Key {
			case "c":
				peer = m.PeerOf + " (-c-peer binary)"
			case "http":
				peer = m.PeerOf + " (gRPC: the same keyauthz, same keys)"
			case "d-throttle":
				peer = m.PeerOf + " (throttle off: negative cache)"
			}
			p("| %s, interleaved | %d | %.0f | %.2f | %.1f | %.1f | | | | | |", peer, m.Peer.Out.Done, m.Peer.Out.Rate(), m.Peer.Busy(), us(m.Peer.PerCheck()), us(m.Peer.ClientPerCall()))
		}
		o := m.Fixed.Out
		p("| fixed %.0f/s | %d | %.0f | %.2f | %.1f | %.1f | %.0f | %.0f | %.0f | %.0f | %.0f |", res.Load.Rate, o.Done, o.Rate(), m.Fixed.Busy(), us(m.Fixed.PerCheck()), us(m.Fixed.ClientPerCall()),
			us(o.Pct(50)), us(o.Pct(90)), us(o.Pct(99)), us(o.Pct(99.9)), us(o.Pct(100)))
		for _, n := range m.Notes {
			p("")
			p("%s", n)
		}
	}
	if f := res.Facts; f["b_idle_rss"] > 0 {
		p("")
		p("### Memory of `keyauthz serve` with %s keys in the SQLite store", "1,000,000")
		p("")
		p("| when | RSS | Go heap in use | cached keys |")
		p("| --- | ---: | ---: | ---: |")
		p("| after start, before traffic | %s | %s | %.0f |", mib(f["b_idle_rss"]), mib(f["b_idle_heap_inuse"]), f["b_idle_cache_entries"])
		p("| after scenarios a@1M and b | %s | %s | %.0f |", mib(f["b_after_rss"]), mib(f["b_after_heap_inuse"]), f["b_after_cache_entries"])
		p("")
		p("Go heap in use (`go_memstats_heap_inuse_bytes`) includes garbage not yet collected; the live size of the cache is in \"Memory per cached key\".")
	}
	if e := res.Envoy; e != nil {
		envoyReport(&b, res, e)
	}
	if len(res.Memory) > 0 || res.Facts["process_bytes_per_key"] > 0 {
		p("")
		p("## Memory per cached key")
		p("")
		p("keycache filled through Lookup with keys shaped like the SQLite store's (id, workspace, name, display, created_at); live heap growth after GC ÷ keys.")
		p("")
		p("| cached keys | live heap | bytes per key |")
		p("| ---: | ---: | ---: |")
		for _, m := range res.Memory {
			p("| %d | %s | %.0f |", m.Keys, mib(float64(m.Bytes)), m.PerKey)
		}
		if b := res.Facts["process_bytes_per_key"]; b > 0 {
			p("")
			p("The whole process: `keyauthz serve` (scenario b's server) checked %.0f distinct valid keys once each; its live heap (`go_memstats_heap_alloc_bytes` right after a GC forced with `/debug/pprof/heap?gc=1`) grew by **%.0f bytes per key** — the key cache plus every other per-key state (response parts, limiter, usage).", res.Facts["process_keys"], b)
		}
		if res.HeapGrowth != "" {
			p("")
			p("Where that growth is, by allocation site (`go tool pprof -sample_index=inuse_space -top -base before after`, sampled):")
			p("")
			p("```")
			b.WriteString(strings.TrimRight(res.HeapGrowth, "\n"))
			p("")
			p("```")
		}
	}
	if len(res.Bench) > 0 {
		p("")
		p("## Go benchmarks (no network)")
		p("")
		p("`%s` (median of the runs)", res.BenchCmd)
		p("")
		p("| benchmark | ns/op | B/op | allocs/op |")
		p("| --- | ---: | ---: | ---: |")
		for _, x := range res.Bench {
			p("| %s | %.0f | %.0f | %.0f |", x.Name, x.NsPerOp, x.BytesPerOp, x.AllocsPerOp)
		}
	}
	for _, pr := range res.Profiles {
		p("")
		p("## CPU profile of keyauthz in scenario (%s), %s", pr.Scenario, pr.Mode)
		p("")
		p("An extra window after the scenario's measured ones, keyauthz with `http.pprof: true`; `go tool pprof -top -nodecount=30`:")
		p("")
		p("```")
		b.WriteString(strings.TrimRight(pr.Top, "\n"))
		p("")
		p("```")
	}
	return b.String()
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "(not run)"
	}
	return s
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// envoyReport renders the Envoy section.
func envoyReport(b *strings.Builder, res *Results, e *EnvoyResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format+"\n", a...) }
	o := e.Arm(ArmWithout)
	if o == nil || o.Lat.N() == 0 {
		return
	}
	p("")
	p("## Through Envoy (wrk → Envoy → upstream, envoy/sidecar.yaml with and without the ext_authz filter)")
	p("")
	p("One Envoy per arm (`--concurrency 1`), all from the same rendered `envoy/sidecar.yaml`: without the ext_authz filter (removed from the YAML, nothing else changed), with it → keyauthz over loopback TCP (the file as shipped: target 6), → a second keyauthz over a unix socket (the documented `pipe` variant), and → the no-op server (same gRPC server options, answers OK without work).")
	p("")
	p("- **Placement:** %s.", e.Placement)
	gmp := "?"
	if e.GOMAXPROCS > 0 {
		gmp = fmt.Sprintf("%.0f", e.GOMAXPROCS)
	}
	p("- **keyauthz:** default gRPC settings (fixed 1 MiB HTTP/2 flow-control windows, a goroutine per stream), GOMAXPROCS %s (from its CPU affinity; its `/metrics`), cache hit with the local limiter.", gmp)
	p("- **Fixed rate:** wrk with %d connections, each waiting a random %d–%d ms (mean %d ms) after every answer (≈ %d rps); %d rounds of %s per arm, the arms alternating (each round starts with the next arm). Percentiles are of every request of an arm's rounds pooled (wrk's full latency histograms); \"round by round\" pairs each round's run with the same round's run without the filter.",
		e.Conns, e.DelayMS/2, e.DelayMS*3/2, e.DelayMS, e.Rate, e.Rounds, e.Window)
	p("- **Envoy's own clock:** the harness appends `kzwait=%%COMMON_DURATION(DS_RX_END:US_TX_BEG:us)%%` (end of the request headers → start of the upstream request: routing plus, with the filter, the whole ext_authz call) and the request path to the access-log line each Envoy already writes, in every arm.")
	p("- **CPU per request:** utime+stime of the process from `/proc/PID/stat` around each run ÷ requests. **Other load:** the machine's busy time (`/proc/stat`) during a run less that of wrk, the harness, the measured Envoy and its server, ÷ the run's length: what other tenants of a shared machine were using. SCHED_FIFO keeps them off the measured threads' CPU inside the machine, not out of its caches, memory bandwidth or (in a VM) the host's scheduling of its vCPUs, so a busy machine still widens the tail.")
	p("- Command (one fixed-rate run): `%s`", e.Command)
	for _, n := range e.Notes {
		p("- Note: %s", n)
	}
	p("")
	p("| arm | requests | rps | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99, round by round | Envoy wait p50 / p99 µs | ext_authz server CPU µs/request | Envoy CPU µs/request | other load, CPUs (mean / most) |")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
	for _, a := range e.Arms {
		srv, env := a.CPUPerRequest()
		added, spread, srvCPU := "—", "—", "—"
		if a.Key != ArmWithout {
			add, lo, med, hi, _ := e.AddedP99(a.Key)
			added = fmt.Sprintf("**%+.0f**", us(add))
			spread = fmt.Sprintf("%+.0f…%+.0f (median %+.0f)", us(lo), us(hi), us(med))
			srvCPU = fmt.Sprintf("%.0f", us(srv))
		}
		addP50 := "—"
		if a.Key != ArmWithout {
			addP50 = fmt.Sprintf("%+.0f", us(a.Lat.Pct(50)-o.Lat.Pct(50)))
		}
		om, ox := a.OtherCPUs()
		p("| %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | %s | %.0f / %.0f | %s | %.0f | %.2f / %.2f |", a.Title, a.Requests(), a.RPS(),
			us(a.Lat.Pct(50)), us(a.Lat.Pct(90)), us(a.Lat.Pct(99)), us(a.Lat.Pct(99.9)), addP50, added, spread,
			us(a.Wait.Pct(50)), us(a.Wait.Pct(99)), srvCPU, us(env), om, ox)
	}
	if w := e.Arm(ArmWith); w != nil && w.Lat.N() > 0 {
		srv, env := w.CPUPerRequest()
		_, envO := o.CPUPerRequest()
		line := fmt.Sprintf("Where the added time goes (with vs without, same run): Envoy itself waited %+.0f µs at p50 and %+.0f µs at p99 between the request headers and the upstream request (its access log); per request, Envoy spent %+.0f µs more CPU with the filter and keyauthz %.0f µs",
			us(w.Wait.Pct(50)-o.Wait.Pct(50)), us(w.Wait.Pct(99)-o.Wait.Pct(99)), us(env-envO), us(srv))
		if n := e.Arm(ArmNoop); n != nil && n.Lat.N() > 0 {
			nsrv, _ := n.CPUPerRequest()
			line += fmt.Sprintf(" (the no-op server %.0f µs; its Envoy waited %+.0f µs at p50, %+.0f µs at p99)", us(nsrv), us(n.Wait.Pct(50)-o.Wait.Pct(50)), us(n.Wait.Pct(99)-o.Wait.Pct(99)))
		}
		p("")
		p("%s.", line)
	}
	p("")
	p("| saturation (closed loop, 32 connections, %s, normal priority) | rps | p50 µs | p99 µs | keyauthz CPU ms / 1,000 requests | Envoy CPU ms / 1,000 requests |", res.Load.Duration)
	p("| --- | ---: | ---: | ---: | ---: | ---: |")
	p("| without ext_authz | %.0f | %.0f | %.0f | — | %.1f |", e.SatWithout.RPS(), us(e.SatWithout.P50), us(e.SatWithout.P99), float64(e.SatWithout.Per1k(e.SatWithout.EnvoyCPU))/1e6)
	p("| with ext_authz → keyauthz | %.0f | %.0f | %.0f | %.1f | %.1f |", e.SatWith.RPS(), us(e.SatWith.P50), us(e.SatWith.P99), float64(e.SatWith.Per1k(e.SatWith.ServerCPU))/1e6, float64(e.SatWith.Per1k(e.SatWith.EnvoyCPU))/1e6)
}
