package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RedisHelp says how to get the Redis binaries; it is part of every "no redis-server" failure.
const RedisHelp = "redis-server not found: apt-get install -y redis-server (test/run.sh installs it)"

// Environment variables that override where the Redis binaries are found (else PATH).
const (
	RedisServerEnv = "KEYAUTHZ_REDIS_SERVER"
	RedisCLIEnv    = "KEYAUTHZ_REDIS_CLI"
)

// redisStartTimeout bounds how long a server or a cluster may take to come up.
const redisStartTimeout = 15 * time.Second

// redisPingEvery is how often start polls a starting server with PING: finely,
// so that Start returns right when the server answers (tests measure recovery
// from that moment).
const redisPingEvery = time.Millisecond

// RedisProc is one redis-server process on 127.0.0.1 with no persistence.
// It can be stopped, paused and started again on the same port; its log is
// printed when the test fails.
type RedisProc struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	args []string

	mu   sync.Mutex
	proc *process // nil while stopped
}

// StartRedis starts a redis-server on a free loopback port in a temporary
// directory; it is stopped when the test ends.
func StartRedis(t testing.TB) *RedisProc {
	t.Helper()
	return startRedis(t, false)
}

// StartRedisCluster starts n cluster-enabled redis-servers, joins them with
// redis-cli --cluster create (no replicas) and waits until every node reports
// cluster_state:ok. It returns the nodes' addresses.
func StartRedisCluster(t testing.TB, n int) []string {
	t.Helper()
	procs := StartRedisClusterNodes(t, n)
	addrs := make([]string, len(procs))
	for i, p := range procs {
		addrs[i] = p.Addr()
	}
	return addrs
}

// StartRedisClusterNodes is StartRedisCluster returning the nodes' handles,
// for tests that stop or pause nodes.
func StartRedisClusterNodes(t testing.TB, n int) []*RedisProc {
	t.Helper()
	if n < 3 {
		t.Fatalf("testenv: a redis cluster needs at least 3 masters, got %d", n)
	}
	cli := redisCLI(t)
	procs := make([]*RedisProc, n)
	args := []string{"--cluster", "create"}
	for i := range procs {
		procs[i] = startRedis(t, true)
		args = append(args, procs[i].Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, p := range procs {
		err := Poll(redisStartTimeout, func() error {
			info, err := redisDo(p.Addr(), "CLUSTER", "INFO")
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("cluster info: %s", strings.TrimSpace(info))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("testenv: redis cluster node %s not ok within %s: %v", p.Addr(), redisStartTimeout, err)
		}
	}
	return procs
}

func startRedis(t testing.TB, cluster bool) *RedisProc {
	t.Helper()
	bin := redisServer(t)
	dir := t.TempDir()
	var lastErr error
	for range 5 {
		port, err := freePort(cluster)
		if err != nil {
			lastErr = err
			continue
		}
		p := &RedisProc{t: t, bin: bin, dir: dir, port: port}
		p.args = []string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--dir", dir,
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
		}
		if cluster {
			p.args = append(p.args,
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", "2000",
			)
		}
		if lastErr = p.start(); lastErr == nil {
			dumpLogOnFailure(t, "redis-"+strconv.Itoa(port), p.logPath())
			t.Cleanup(p.Stop)
			return p
		}
	}
	t.Fatalf("testenv: start redis-server: %v", lastErr)
	return nil
}

// Addr returns the server's host:port.
func (p *RedisProc) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// Start starts the server again on the same port after Stop (its data is
// gone: there is no persistence) and returns as soon as it answers PING
// (polled every millisecond). It is a no-op while the server runs.
func (p *RedisProc) Start() {
	p.t.Helper()
	if err := p.start(); err != nil {
		p.t.Fatalf("testenv: restart redis-server: %v", err)
	}
}

// Stop kills the server (like a crash, also when paused) and waits for it to
// exit; it is a no-op when the server is not running.
func (p *RedisProc) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		p.proc.kill()
		p.proc = nil
	}
}

// Pause freezes the server (SIGSTOP): connections stay open but nothing is
// answered, like a hung server.
func (p *RedisProc) Pause() { p.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (p *RedisProc) Resume() { p.signal(syscall.SIGCONT) }

func (p *RedisProc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		p.t.Fatalf("testenv: redis-server %s is not running", p.Addr())
	}
	if err := p.proc.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("testenv: signal redis-server: %v", err)
	}
}

func (p *RedisProc) logPath() string { return filepath.Join(p.dir, "redis.log") }

func (p *RedisProc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return nil
	}
	proc, err := startProcess("redis-server", p.logPath(), p.bin, p.args...)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(redisStartTimeout)
	for {
		if done, werr := proc.exited(); done {
			return fmt.Errorf("redis-server on port %d exited (%v):\n%s", p.port, werr, p.logTail())
		}
		_, err := redisDo(p.Addr(), "PING")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			proc.kill()
			return fmt.Errorf("redis-server on port %d not answering within %s: %v\n%s", p.port, redisStartTimeout, err, p.logTail())
		}
		time.Sleep(redisPingEvery)
	}
	p.proc = proc
	return nil
}

func (p *RedisProc) logTail() string {
	b, _ := os.ReadFile(p.logPath())
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// redisServer finds the redis-server binary: $KEYAUTHZ_REDIS_SERVER, then PATH.
func redisServer(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(RedisServerEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s (%s=%s: %v)", RedisHelp, RedisServerEnv, p, err)
		}
		return p
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(RedisHelp)
	}
	return p
}

// redisCLI finds redis-cli: $KEYAUTHZ_REDIS_CLI, next to redis-server, then PATH.
func redisCLI(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(RedisCLIEnv); p != "" {
		return p
	}
	if p := filepath.Join(filepath.Dir(redisServer(t)), "redis-cli"); fileExists(p) {
		return p
	}
	p, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal(strings.Replace(RedisHelp, "redis-server not found", "redis-cli not found", 1))
	}
	return p
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// freePort returns a loopback port that is free now; for a cluster node the
// bus port (port+10000) must be free too.
func freePort(cluster bool) (int, error) {
	if !cluster {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	for range 50 {
		port := 20000 + rand.IntN(20000)
		a, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		a.Close()
		if err != nil {
			continue
		}
		b.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair for a cluster node")
}

// redisDo sends one command over a fresh connection and returns a simple or
// bulk string reply (an integer as text, a nil reply as ""); an error reply
// is an error.
func redisDo(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write(b.Bytes()); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad bulk reply %q", line)
		}
		if n < 0 {
			return "", nil // nil reply
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unsupported reply %q", line)
}
