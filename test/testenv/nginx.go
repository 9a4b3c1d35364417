package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// NginxBinEnv names the environment variable holding the nginx binary's path.
const NginxBinEnv = "NGINX_BIN"

// NginxHelp says how to get nginx; it is part of every "no nginx" failure.
const NginxHelp = "no nginx binary: apt-get install -y nginx (Debian's package; test/run.sh's e2e stage installs it), or set NGINX_BIN"

// Default addresses of envoy/nginx/nginx.conf that StartNginx rewrites.
const (
	DefaultNginxListen   = 10000 // nginx's listener: `listen 10000;`
	DefaultHTTPAuthzPort = 9003  // keyauthz's http_authz listener
)

// NginxBin returns $NGINX_BIN, else nginx on the PATH or in /usr/sbin, failing
// the test with NginxHelp when there is none.
func NginxBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(NginxBinEnv)
	if bin == "" {
		if p, err := exec.LookPath("nginx"); err == nil {
			bin = p
		} else if fileExists("/usr/sbin/nginx") {
			bin = "/usr/sbin/nginx"
		}
	}
	if fi, err := os.Stat(bin); bin == "" || err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("%s (%s=%q)", NginxHelp, NginxBinEnv, bin)
	}
	return bin
}

// NginxOptions says which shipped nginx config to run and where its upstreams are.
type NginxOptions struct {
	// Config is a file under envoy/, e.g. "nginx/nginx.conf".
	Config string
	// Ports maps a default upstream port of the config (DefaultHTTPAuthzPort,
	// DefaultAppPort) to the port the test's server listens on.
	Ports map[int]int
}

// Nginx is a running nginx.
type Nginx struct {
	URL    string // the listener, e.g. http://127.0.0.1:34567
	Config string // path of the rendered config
	Log    string // nginx's stderr (its error log)
	Proc   *Proc
}

// RenderNginxConfig reads envoy/<o.Config> and rewrites `listen 10000;` to
// 127.0.0.1:listen and every upstream `server 127.0.0.1:PORT` in o.Ports.
// Every rewrite must match, so a config that drifts from the documented
// defaults fails the test instead of testing something else.
func RenderNginxConfig(t testing.TB, o NginxOptions, listen int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), "envoy", o.Config))
	if err != nil {
		t.Fatalf("read nginx config: %v", err)
	}
	s := string(b)
	replace := func(re, with string) {
		rx := regexp.MustCompile(re)
		if !rx.MatchString(s) {
			t.Fatalf("envoy/%s: no match for %q; test/testenv/nginx.go and envoy/README.md expect it", o.Config, re)
		}
		s = rx.ReplaceAllLiteralString(s, with)
	}
	replace(`(?m)^(\s*)listen\s+`+strconv.Itoa(DefaultNginxListen)+`;`, "listen 127.0.0.1:"+strconv.Itoa(listen)+";")
	for from, to := range o.Ports {
		replace(`server\s+127\.0\.0\.1:`+strconv.Itoa(from)+`\b`, "server 127.0.0.1:"+strconv.Itoa(to))
	}
	return s
}

// StartNginx renders the config and runs nginx on it in the foreground
// (daemon off, its pid file, temporary files and error log in a directory
// of the test's), waiting until its listener accepts connections. It is
// stopped in t.Cleanup (SIGTERM, a non-zero exit fails the test) and its log
// printed if the test failed.
func StartNginx(t testing.TB, o NginxOptions) *Nginx {
	t.Helper()
	bin := NginxBin(t)
	dir := t.TempDir()
	// nginx started as root runs its workers as nobody: they must reach the prefix.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	n := &Nginx{URL: fmt.Sprintf("http://127.0.0.1:%d", port), Config: filepath.Join(dir, "nginx.conf"), Log: filepath.Join(dir, "nginx.log")}
	if err := os.WriteFile(n.Config, []byte(RenderNginxConfig(t, o, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	dumpLogOnFailure(t, "nginx", n.Log)
	p, err := TryStartProc(ProcOptions{Name: "nginx", Log: n.Log, Bin: bin, Args: []string{
		"-p", dir, "-c", n.Config, "-e", "stderr",
		"-g", "daemon off; pid " + filepath.Join(dir, "nginx.pid") + ";",
	}})
	if err != nil {
		t.Fatal(err)
	}
	n.Proc = p
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stop nginx: %v", err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = PollContext(ctx, startTimeout, func() error {
		if done, err := p.Exited(); done {
			cancel() // no use waiting
			return fmt.Errorf("nginx exited: %v", err)
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatalf("nginx (envoy/%s) not listening within %v: %v", o.Config, startTimeout, err)
	}
	return n
}
