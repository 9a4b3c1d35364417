package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// Keys of the Envoy arms, each its own Envoy from the same rendered config.
const (
	ArmWithout = "without" // the ext_authz filter removed
	ArmWith    = "with"    // ext_authz → keyauthz over loopback TCP: envoy/sidecar.yaml as shipped (target 6)
	ArmUDS     = "uds"     // ext_authz → keyauthz over a unix socket (the documented pipe variant)
	ArmNoop    = "noop"    // ext_authz → the no-op server: what any grpc-go ext_authz server costs
)

// EnvoyResult is the end-to-end part: wrk → Envoy → upstream, with and
// without the ext_authz filter, in the same run.
type EnvoyResult struct {
	Version    string
	Rate       int           // target fixed rate
	Conns      int           // wrk connections of the fixed-rate runs
	DelayMS    int           // mean wrk per-connection delay between requests
	Rounds     int           // fixed-rate windows per arm, the arms alternating
	Window     time.Duration // length of one fixed-rate window
	Placement  string        // CPUs and scheduling of every process
	RealTime   bool          // the fixed-rate windows ran under SCHED_FIFO
	GOMAXPROCS float64       // keyauthz's, from its /metrics
	Arms       []*EnvoyArm   // ArmWithout, ArmWith, then the others
	SatWith    WrkRun        // closed loop, ext_authz → keyauthz
	SatWithout WrkRun        // closed loop, no ext_authz
	Command    string        // a fixed-rate wrk command line as run (key redacted)
	Notes      []string      // what did not go as planned
}

// Arm returns the arm with key k, or nil.
func (e *EnvoyResult) Arm(k string) *EnvoyArm {
	for _, a := range e.Arms {
		if a.Key == k {
			return a
		}
	}
	return nil
}

// EnvoyArm is one Envoy measured at the fixed rate, all its rounds.
type EnvoyArm struct {
	Key   string
	Title string
	Runs  []WrkRun // one per round
	Lat   Hist     // wrk's latencies, every round pooled
	Wait  Hist     // Envoy's clock: end of the request headers → upstream request started (ext_authz wait + routing)
	Total Hist     // Envoy's clock: first request byte → last response byte

	env    *testenv.Envoy
	server *Server // the ext_authz server; nil without the filter
}

// Requests returns the requests of every round.
func (a *EnvoyArm) Requests() int {
	n := 0
	for _, r := range a.Runs {
		n += r.Requests
	}
	return n
}

// RPS returns the mean achieved rate over the rounds.
func (a *EnvoyArm) RPS() float64 {
	var s float64
	for _, r := range a.Runs {
		s += r.Seconds
	}
	return float64(a.Requests()) / max(s, 1e-9)
}

// OtherCPUs returns how many CPUs the rest of the machine kept busy on
// average during the arm's rounds, and the most in one round.
func (a *EnvoyArm) OtherCPUs() (mean, most float64) {
	var cpu time.Duration
	var s float64
	for _, r := range a.Runs {
		cpu += r.Others
		s += r.Seconds
		most = max(most, r.OtherCPUs())
	}
	return cpu.Seconds() / max(s, 1e-9), most
}

// CPUPerRequest returns the ext_authz server's and Envoy's CPU per request
// over the rounds.
func (a *EnvoyArm) CPUPerRequest() (server, envoy time.Duration) {
	n := a.Requests()
	if n == 0 {
		return 0, 0
	}
	for _, r := range a.Runs {
		server += r.ServerCPU
		envoy += r.EnvoyCPU
	}
	return server / time.Duration(n), envoy / time.Duration(n)
}

// WrkRun is one wrk run's summary plus the CPU of Envoy and of its ext_authz
// server during it.
type WrkRun struct {
	Requests        int
	Seconds         float64
	P50, P90, P99   time.Duration
	P999, Max       time.Duration
	SockErrs, Non2x int
	ServerCPU       time.Duration // the ext_authz server's (keyauthz or the no-op)
	EnvoyCPU        time.Duration
	Others          time.Duration // CPU the rest of the machine used meanwhile: all busy time less wrk, this process, Envoy, the server
	Hist            Hist
}

// OtherCPUs returns how many CPUs the rest of the machine kept busy on average
// during the run.
func (w WrkRun) OtherCPUs() float64 { return w.Others.Seconds() / max(w.Seconds, 1e-9) }

// machineBusy returns the non-idle CPU time of the whole machine (/proc/stat).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy uint64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTick, nil
}

// RPS returns the achieved request rate.
func (w WrkRun) RPS() float64 { return float64(w.Requests) / max(w.Seconds, 1e-9) }

// Per1k returns cpu per 1,000 of the run's requests.
func (w WrkRun) Per1k(cpu time.Duration) time.Duration {
	if w.Requests == 0 {
		return 0
	}
	return cpu * 1000 / time.Duration(w.Requests)
}

// Hist counts latencies by whole microseconds.
type Hist map[int64]int64

// Merge adds o's counts.
func (h Hist) Merge(o Hist) {
	for v, n := range o {
		h[v] += n
	}
}

// N returns the number of latencies counted.
func (h Hist) N() int64 {
	var n int64
	for _, c := range h {
		n += c
	}
	return n
}

// Pct returns the p-th percentile (0 < p ≤ 100), nearest rank; 0 when empty.
func (h Hist) Pct(p float64) time.Duration {
	n := h.N()
	if n == 0 {
		return 0
	}
	vs := make([]int64, 0, len(h))
	for v := range h {
		vs = append(vs, v)
	}
	slices.Sort(vs)
	rank := max(int64(math.Ceil(p/100*float64(n))), 1)
	var seen int64
	for _, v := range vs {
		seen += h[v]
		if seen >= rank {
			return time.Duration(v) * time.Microsecond
		}
	}
	return time.Duration(vs[len(vs)-1]) * time.Microsecond
}

// walkYAML calls f on every mapping of a decoded YAML document.
func walkYAML(v any, f func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		f(x)
		for _, c := range x {
			walkYAML(c, f)
		}
	case []any:
		for _, c := range x {
			walkYAML(c, f)
		}
	}
}

// editYAML decodes cfg, lets edit change it and encodes it again.
func editYAML(cfg string, edit func(doc any) error) (string, error) {
	var doc any
	if err := yaml.Unmarshal([]byte(cfg), &doc); err != nil {
		return "", err
	}
	if err := edit(doc); err != nil {
		return "", err
	}
	b, err := yaml.Marshal(doc)
	return string(b), err
}

// withoutExtAuthz removes the ext_authz HTTP filter (and its per-route
// settings) from a rendered Envoy config; everything else stays.
func withoutExtAuthz(cfg string) (string, error) {
	const name = "envoy.filters.http.ext_authz"
	return editYAML(cfg, func(doc any) error {
		removed := 0
		walkYAML(doc, func(x map[string]any) {
			if fs, ok := x["http_filters"].([]any); ok {
				var keep []any
				for _, f := range fs {
					if m, ok := f.(map[string]any); ok && m["name"] == name {
						removed++
						continue
					}
					keep = append(keep, f)
				}
				x["http_filters"] = keep
			}
			if p, ok := x["typed_per_filter_config"].(map[string]any); ok {
				delete(p, name)
				if len(p) == 0 {
					delete(x, "typed_per_filter_config")
				}
			}
		})
		if removed == 0 {
			return fmt.Errorf("no %s filter in the config", name)
		}
		return nil
	})
}

// timingFields is appended to every access-log line of the measured Envoys:
// Envoy's own clock for the time from the end of the request headers to the
// start of the upstream request (the ext_authz wait plus routing), and from the
// first request byte to the last response byte, and the request path, which
// tells the measured windows from the warm-up and saturation runs.
const timingFields = " kzwait=%COMMON_DURATION(DS_RX_END:US_TX_BEG:us)% kztotal=%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% kzpath=%REQ(:PATH)%"

// withTiming appends timingFields to the text access-log formats of cfg.
func withTiming(cfg string) (string, error) {
	return editYAML(cfg, func(doc any) error {
		n := 0
		walkYAML(doc, func(x map[string]any) {
			src, ok := x["text_format_source"].(map[string]any)
			if !ok {
				return
			}
			if s, ok := src["inline_string"].(string); ok {
				src["inline_string"] = strings.TrimSuffix(s, "\n") + timingFields + "\n"
				n++
			}
		})
		if n == 0 {
			return fmt.Errorf("no text access-log format to add the timings to")
		}
		return nil
	})
}

var timingLine = regexp.MustCompile(` kzwait=(\d+) kztotal=(\d+) kzpath=(\S+)$`)

// envoyTimings reads the timing fields of the access-log lines for path.
func envoyTimings(log, path string) (wait, total Hist, err error) {
	f, err := os.Open(log)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	wait, total = Hist{}, Hist{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := timingLine.FindStringSubmatch(sc.Text())
		if m == nil || m[3] != path {
			continue
		}
		w, err1 := strconv.ParseInt(m[1], 10, 64)
		t, err2 := strconv.ParseInt(m[2], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		wait[w]++
		total[t]++
	}
	return wait, total, sc.Err()
}

// wrkPath is what the measured fixed-rate windows request; warm-up, sanity and
// saturation requests add a phase parameter so Envoy's access log tells them apart.
const wrkPath = "/organizations/acme/jobs?limit=20"

// wrkScript writes the Lua script wrk runs: an optional per-connection delay,
// a machine-readable summary line and the whole latency histogram.
func wrkScript(dir string, delayMS int) (string, error) {
	var b strings.Builder
	if delayMS > 0 {
		// Uniform jitter around the mean keeps the connections from firing in
		// lock-step bursts (they all start together).
		fmt.Fprintf(&b, "math.randomseed(os.time())\nfunction delay() return math.random(%d, %d) end\n", delayMS/2, delayMS*3/2)
	}
	b.WriteString(`function done(s, lat, req)
  io.write(string.format("KZRESULT requests=%d duration=%d p50=%d p90=%d p99=%d p999=%d max=%d sockerr=%d non2xx=%d\n",
    s.requests, s.duration, lat:percentile(50), lat:percentile(90), lat:percentile(99), lat:percentile(99.9), lat.max,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout, s.errors.status))
  local parts = {}
  for i = 1, #lat do
    local v, c = lat(i)
    parts[#parts + 1] = string.format("%d:%d", v, c)
  end
  io.write("KZHIST " .. table.concat(parts, ",") .. "\n")
end
`)
	path := filepath.Join(dir, fmt.Sprintf("wrk-%d.lua", delayMS))
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

var (
	kzResult = regexp.MustCompile(`KZRESULT (.*)`)
	kzHist   = regexp.MustCompile(`KZHIST (.*)`)
)

// wrkJob is one wrk run.
type wrkJob struct {
	wrap   []string // command prefix: taskset, chrt (may be empty)
	script string
	url    string
	path   string
	key    string
	conns  int
	d      time.Duration
	server int // PID of the ext_authz server whose CPU is measured around the run (0: none)
	envoy  int // PID of the Envoy whose CPU is measured around the run (0: none)
}

// cpuOf returns the CPU time of pid, 0 for pid 0.
func cpuOf(pid int) (time.Duration, error) {
	if pid == 0 {
		return 0, nil
	}
	return CPUTime(pid)
}

// runWrk runs wrk and reads its summary and histogram; the CPU of the job's
// processes is measured around it.
func runWrk(ctx context.Context, j wrkJob) (WrkRun, string, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(j.conns), "-d" + strconv.Itoa(int(j.d.Seconds()+0.5)) + "s", "--timeout", "2s",
		"-s", j.script, "-H", "x-api-key: " + j.key, j.url + j.path}
	cmd := append(append(slices.Clone(j.wrap), "wrk"), args...)
	var sh []string
	for _, a := range cmd {
		a = strings.Replace(a, j.key, "<key>", 1)
		if strings.ContainsAny(a, " ?&") {
			a = "'" + a + "'"
		}
		sh = append(sh, a)
	}
	shown := strings.Join(sh, " ")
	s0, err1 := cpuOf(j.server)
	e0, err2 := cpuOf(j.envoy)
	h0, err3 := cpuOf(os.Getpid())
	m0, err4 := machineBusy()
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return WrkRun{}, shown, fmt.Errorf("cpu time: %w", err)
	}
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	out, err := c.CombinedOutput()
	if err != nil {
		return WrkRun{}, shown, fmt.Errorf("wrk: %v\n%.2000s", err, out)
	}
	s1, err1 := cpuOf(j.server)
	e1, err2 := cpuOf(j.envoy)
	h1, err3 := cpuOf(os.Getpid())
	m1, err4 := machineBusy()
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return WrkRun{}, shown, fmt.Errorf("cpu time: %w", err)
	}
	var wrkCPU time.Duration // chrt and taskset exec wrk in place: the child's rusage is wrk's
	if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
		wrkCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	m := kzResult.FindSubmatch(out)
	if m == nil {
		return WrkRun{}, shown, fmt.Errorf("wrk printed no summary:\n%.2000s", out)
	}
	v := map[string]int64{}
	for _, kv := range strings.Fields(string(m[1])) {
		k, s, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return WrkRun{}, shown, fmt.Errorf("wrk summary %q: %v", kv, err)
		}
		v[k] = n
	}
	h := Hist{}
	if m := kzHist.FindSubmatch(out); m != nil && len(strings.TrimSpace(string(m[1]))) > 0 {
		for _, vc := range strings.Split(strings.TrimSpace(string(m[1])), ",") {
			a, b, ok := strings.Cut(vc, ":")
			lat, err1 := strconv.ParseInt(a, 10, 64)
			n, err2 := strconv.ParseInt(b, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				return WrkRun{}, shown, fmt.Errorf("wrk histogram entry %q", vc)
			}
			h[lat] += n
		}
	}
	if v["requests"] == 0 {
		return WrkRun{}, shown, fmt.Errorf("wrk completed no request:\n%.2000s", out)
	}
	usd := func(k string) time.Duration { return time.Duration(v[k]) * time.Microsecond }
	return WrkRun{
		Requests: int(v["requests"]), Seconds: float64(v["duration"]) / 1e6,
		P50: usd("p50"), P90: usd("p90"), P99: usd("p99"), P999: usd("p999"), Max: usd("max"),
		SockErrs: int(v["sockerr"]), Non2x: int(v["non2xx"]), ServerCPU: s1 - s0, EnvoyCPU: e1 - e0, Hist: h,
		Others: max(m1-m0-(s1-s0)-(e1-e0)-(h1-h0)-wrkCPU, 0),
	}, shown, nil
}

// setFIFO puts every thread of each process under SCHED_FIFO priority 1 (on)
// or back under SCHED_OTHER.
func setFIFO(on bool, pids ...int) error {
	for _, pid := range pids {
		args := []string{"-a", "-o", "-p", "0", strconv.Itoa(pid)}
		if on {
			args = []string{"-a", "-f", "-p", "1", strconv.Itoa(pid)}
		}
		if out, err := exec.Command("chrt", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("chrt %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// upstream is the app behind Envoy: 200 with a small JSON body. It runs in
// this process, so on the load generator's CPU when pinned.
func startUpstream() (*http.Server, int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, 0, err
	}
	body := []byte(`{"items":[],"next":null}`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return srv, l.Addr().(*net.TCPAddr).Port, nil
}

func get(url, key string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, url+wrkPath+"&phase=sanity", nil)
	if err != nil {
		return 0, err
	}
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// envoy runs the end-to-end part.
//
// Placement (with -pin): the pod — each Envoy and its ext_authz server — on
// the server CPU, wrk and the upstream app (this process) on the client CPU,
// the same for every arm. The fixed-rate windows run every one of those
// processes under SCHED_FIFO (unless KZLOAD_ENVOY_FIFO=0), so the other
// tenants of a shared machine do not decide the tail; the saturation windows
// run at normal priority.
func (r *runner) envoy(ctx context.Context) error {
	bin, err := testenv.FindEnvoy(r.o.EnvoyBin, r.o.Root)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk not found: apt-get install -y wrk")
	}
	res := &EnvoyResult{Rate: r.o.EnvoyRate, Rounds: max(r.o.Load.Rounds, 1), Window: r.o.Load.Duration}
	res.Version = strings.TrimSpace(output(r.o.Root, bin, "--version"))
	r.res.EnvoyVer = res.Version
	pod, cli := r.cpuSrv, r.cpuCli
	var wrap []string
	if cli != "" {
		wrap = []string{"taskset", "-c", cli}
	}
	kcfg := KeyauthzConfig{Store: r.small, Pepper: r.pepper}
	kz, err := StartKeyauthz(ctx, "envoy-keyauthz", r.o.Work, r.o.KeyauthzBin, pod, kcfg)
	if err != nil {
		return err
	}
	defer kz.Stop()
	kcfg.GRPCListen = "unix://" + filepath.Join(r.o.Work, "envoy-keyauthz.sock")
	kzu, err := StartKeyauthz(ctx, "envoy-keyauthz-uds", r.o.Work, r.o.KeyauthzBin, pod, kcfg)
	if err != nil {
		return err
	}
	defer kzu.Stop()
	noop, err := StartNoop(ctx, r.o.Work, r.noopBin, pod, r.hit[0])
	if err != nil {
		return err
	}
	defer noop.Stop()
	if m, err := kz.Metrics(); err == nil {
		res.GOMAXPROCS = m.Sum("go_sched_gomaxprocs_threads")
	}
	up, port, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.Close()
	render := func(authz string) (string, error) {
		c, err := testenv.TryRenderEnvoyConfig(testenv.EnvoyOptions{Config: "sidecar.yaml", Keyauthz: authz, Ports: map[int]int{testenv.DefaultAppPort: port}})
		if err != nil {
			return "", err
		}
		return withTiming(c)
	}
	with, err := render(kz.GRPC)
	if err != nil {
		return err
	}
	without, err := withoutExtAuthz(with)
	if err != nil {
		return err
	}
	uds, err := render(kzu.GRPC)
	if err != nil {
		return err
	}
	viaNoop, err := render(noop.GRPC)
	if err != nil {
		return err
	}
	for _, a := range []struct {
		key, title, cfg string
		server          *Server
	}{
		{ArmWithout, "without ext_authz", without, nil},
		{ArmWith, "with ext_authz → keyauthz, loopback TCP (sidecar.yaml as shipped)", with, kz},
		{ArmUDS, "with ext_authz → keyauthz, unix socket (`pipe`)", uds, kzu},
		{ArmNoop, "with ext_authz → no-op server, loopback TCP", viaNoop, noop},
	} {
		e, err := testenv.TryStartEnvoy(ctx, testenv.EnvoyRun{Bin: bin, Dir: r.o.Work, Name: "envoy-" + a.key, Config: a.cfg, CPUs: pod, LogLevel: "warn"})
		if err != nil {
			return fmt.Errorf("envoy-%s: %v\n%s", a.key, err, testenv.Tail(filepath.Join(r.o.Work, "envoy-"+a.key+".log"), 4000))
		}
		defer e.Proc.Stop(5 * time.Second)
		res.Arms = append(res.Arms, &EnvoyArm{Key: a.key, Title: a.title, Lat: Hist{}, env: e, server: a.server})
	}
	key := r.gen.key(streamStored, 0)
	for _, a := range res.Arms {
		checks := []struct {
			key  string
			want int
		}{{key, 200}, {"", 401}, {malformed(key), 401}}
		switch a.Key {
		case ArmWithout, ArmNoop:
			checks = checks[:1]
			checks = append(checks, struct {
				key  string
				want int
			}{"", 200})
		}
		for _, c := range checks {
			if code, err := get(a.env.URL, c.key); err != nil || code != c.want {
				return fmt.Errorf("sanity GET through envoy-%s (key %v): %d, %v; want %d", a.Key, c.key != "", code, err, c.want)
			}
		}
	}
	// Fixed rate: conns connections, each waiting a random delay (mean
	// conns/rate) after every answer, so about rate requests per second (a
	// little less: latency adds to the delay).
	res.Conns = 50
	res.DelayMS = res.Conns * 1000 / r.o.EnvoyRate
	fixed, err := wrkScript(r.o.Work, res.DelayMS)
	if err != nil {
		return err
	}
	sat, err := wrkScript(r.o.Work, 0)
	if err != nil {
		return err
	}
	job := func(a *EnvoyArm, script, path string, conns int, d time.Duration) wrkJob {
		j := wrkJob{wrap: wrap, script: script, url: a.env.URL, path: path, key: key, conns: conns, d: d, envoy: a.env.Proc.PID()}
		if a.server != nil {
			j.server = a.server.Proc.PID()
		}
		return j
	}
	// Warm every path (connections, keyauthz's cache) before measuring.
	for _, a := range res.Arms {
		if _, _, err := runWrk(ctx, job(a, sat, wrkPath+"&phase=warmup", 4, time.Second)); err != nil {
			return err
		}
	}
	pids := []int{os.Getpid(), kz.Proc.PID(), kzu.Proc.PID(), noop.Proc.PID()}
	for _, a := range res.Arms {
		pids = append(pids, a.env.Proc.PID())
	}
	res.Placement = "all processes on every CPU, normal priority (-pin=false)"
	fixedWrap := wrap
	if pod != "" {
		res.Placement = fmt.Sprintf("the pod — each Envoy (`--concurrency 1`) and its ext_authz server — on CPU %s; wrk and the upstream app (the harness process) on CPU %s", pod, cli)
		if os.Getenv("KZLOAD_ENVOY_FIFO") == "0" {
			res.Placement += "; normal priority (KZLOAD_ENVOY_FIFO=0)"
		} else if err := setFIFO(true, pids...); err != nil {
			_ = setFIFO(false, pids...)
			res.Notes = append(res.Notes, "SCHED_FIFO not applied: "+err.Error())
			res.Placement += "; normal priority (SCHED_FIFO could not be set)"
		} else {
			res.RealTime = true
			fixedWrap = append([]string{"chrt", "-f", "1"}, wrap...)
			res.Placement += "; during the fixed-rate windows every thread of those processes and wrk run under SCHED_FIFO priority 1 " +
				"(so other tenants of the machine cannot delay a wakeup; among themselves they still queue), the saturation windows at normal priority"
		}
	}
	err = r.envoyRounds(ctx, res, fixed, fixedWrap, job)
	if res.RealTime {
		if e := setFIFO(false, pids...); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return err
	}
	w, o := res.Arm(ArmWith), res.Arm(ArmWithout)
	if res.SatWithout, _, err = runWrk(ctx, job(o, sat, wrkPath+"&phase=saturation", 32, r.o.Load.Duration)); err != nil {
		return err
	}
	if res.SatWith, _, err = runWrk(ctx, job(w, sat, wrkPath+"&phase=saturation", 32, r.o.Load.Duration)); err != nil {
		return err
	}
	r.logf("  wrk saturation: %.0f rps without ext_authz, %.0f rps with", res.SatWithout.RPS(), res.SatWith.RPS())
	// Envoy writes its access log on exit: stop the Envoys, then read their timings.
	for _, a := range res.Arms {
		if err := a.env.Proc.Stop(10 * time.Second); err != nil {
			return fmt.Errorf("stop envoy-%s: %v", a.Key, err)
		}
		if a.Wait, a.Total, err = envoyTimings(a.env.Proc.Log, wrkPath); err != nil {
			return err
		}
	}
	for _, wr := range append([]WrkRun{res.SatWith, res.SatWithout}, allRuns(res)...) {
		if wr.SockErrs > 0 || wr.Non2x > 0 {
			return fmt.Errorf("wrk saw %d socket errors and %d non-2xx answers", wr.SockErrs, wr.Non2x)
		}
	}
	r.res.Envoy = res
	return nil
}

// envoyRounds measures every arm res.Rounds times at the fixed rate, the arms
// alternating (each round starts with the next arm, so none always follows
// the same one).
func (r *runner) envoyRounds(ctx context.Context, res *EnvoyResult, script string, wrap []string, job func(*EnvoyArm, string, string, int, time.Duration) wrkJob) error {
	n := len(res.Arms)
	for round := range res.Rounds {
		for i := range n {
			a := res.Arms[(round+i)%n]
			j := job(a, script, wrkPath, res.Conns, res.Window)
			j.wrap = wrap
			w, cmd, err := runWrk(ctx, j)
			if err != nil {
				return err
			}
			if a.Key == ArmWith {
				res.Command = cmd
			}
			a.Runs = append(a.Runs, w)
			a.Lat.Merge(w.Hist)
			r.logf("  round %d %-7s: %.0f rps, p50 %.0f µs, p99 %.0f µs; CPU/request: server %.0f µs, envoy %.0f µs; other load %.2f CPUs",
				round+1, a.Key, w.RPS(), us(w.P50), us(w.P99), us(w.Per1k(w.ServerCPU))/1000, us(w.Per1k(w.EnvoyCPU))/1000, w.OtherCPUs())
		}
	}
	return nil
}

func allRuns(res *EnvoyResult) []WrkRun {
	var out []WrkRun
	for _, a := range res.Arms {
		out = append(out, a.Runs...)
	}
	return out
}

// AddedP99 returns arm k's pooled p99 minus the without arm's, and the spread
// of the same difference taken round by round (each round's two runs).
func (e *EnvoyResult) AddedP99(k string) (pooled, lo, median, hi time.Duration, ok bool) {
	a, o := e.Arm(k), e.Arm(ArmWithout)
	if a == nil || o == nil || a.Lat.N() == 0 || o.Lat.N() == 0 {
		return 0, 0, 0, 0, false
	}
	var d []time.Duration
	for i := range min(len(a.Runs), len(o.Runs)) {
		d = append(d, a.Runs[i].Hist.Pct(99)-o.Runs[i].Hist.Pct(99))
	}
	slices.Sort(d)
	return a.Lat.Pct(99) - o.Lat.Pct(99), d[0], d[len(d)/2], d[len(d)-1], true
}
