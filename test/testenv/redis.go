package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
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
// printed when the test fails. Start, Pause and Resume fail the test that
// started it: they are for servers from StartRedis, not TryStartRedis.
type RedisProc struct {
	t    testing.TB // nil for a server from TryStartRedis
	bin  string
	dir  string
	cpus string // taskset CPU list; "" runs anywhere
	port int
	args []string

	mu   sync.Mutex
	proc *Proc // nil while stopped
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
	cli, err := redisCLI()
	if err != nil {
		t.Fatal(err)
	}
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
	bin, err := redisServer()
	if err != nil {
		t.Fatal(err)
	}
	p, err := runRedis(bin, t.TempDir(), "", cluster)
	if err != nil {
		t.Fatalf("testenv: start redis-server: %v", err)
	}
	p.t = t
	dumpLogOnFailure(t, "redis-"+strconv.Itoa(p.port), p.logPath())
	t.Cleanup(p.Stop)
	return p
}

// TryStartRedis starts a redis-server on a free loopback port with its files
// and log (redis.log) in dir, under taskset on cpus when that is not empty.
// The caller stops it with Stop.
func TryStartRedis(dir, cpus string) (*RedisProc, error) {
	bin, err := redisServer()
	if err != nil {
		return nil, err
	}
	return runRedis(bin, dir, cpus, false)
}

// runRedis starts a server on a free port (up to five tries).
func runRedis(bin, dir, cpus string, cluster bool) (*RedisProc, error) {
	var lastErr error
	for range 5 {
		var port int
		if cluster {
			port, lastErr = freePortPair()
		} else {
			port, lastErr = TryFreePort()
		}
		if lastErr != nil {
			continue
		}
		p := &RedisProc{bin: bin, dir: dir, cpus: cpus, port: port}
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
			return p, nil
		}
	}
	return nil, lastErr
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
		p.proc.Kill()
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
	if err := p.proc.Signal(sig); err != nil {
		p.t.Fatalf("testenv: %v", err)
	}
}

func (p *RedisProc) logPath() string { return filepath.Join(p.dir, "redis.log") }

func (p *RedisProc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return nil
	}
	proc, err := TryStartProc(ProcOptions{Name: "redis-server", Log: p.logPath(), Bin: p.bin, Args: p.args, CPUs: p.cpus})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(redisStartTimeout)
	for {
		if done, werr := proc.Exited(); done {
			return fmt.Errorf("redis-server on port %d exited (%v):\n%s", p.port, werr, p.logTail())
		}
		_, err := redisDo(p.Addr(), "PING")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			proc.Kill()
			return fmt.Errorf("redis-server on port %d not answering within %s: %v\n%s", p.port, redisStartTimeout, err, p.logTail())
		}
		time.Sleep(redisPingEvery)
	}
	p.proc = proc
	return nil
}

func (p *RedisProc) logTail() string { return Tail(p.logPath(), 2000) }

// redisServer finds the redis-server binary: $KEYAUTHZ_REDIS_SERVER, then PATH.
func redisServer() (string, error) {
	if p := os.Getenv(RedisServerEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s (%s=%s: %v)", RedisHelp, RedisServerEnv, p, err)
		}
		return p, nil
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New(RedisHelp)
	}
	return p, nil
}

// redisCLI finds redis-cli: $KEYAUTHZ_REDIS_CLI, next to redis-server, then PATH.
func redisCLI() (string, error) {
	if p := os.Getenv(RedisCLIEnv); p != "" {
		return p, nil
	}
	srv, err := redisServer()
	if err != nil {
		return "", err
	}
	if p := filepath.Join(filepath.Dir(srv), "redis-cli"); fileExists(p) {
		return p, nil
	}
	p, err := exec.LookPath("redis-cli")
	if err != nil {
		return "", errors.New(strings.Replace(RedisHelp, "redis-server not found", "redis-cli not found", 1))
	}
	return p, nil
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
