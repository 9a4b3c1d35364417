package app

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const lowFDChild = "KEYAUTHZ_TEST_LOW_FD_CHILD"

// TestHTTPSlowClientsCannotStarveGRPC runs keyauthz in a child process limited
// to 256 open files, holds 300 slow HTTP clients against it, and checks that
// new gRPC clients still connect and are answered: the HTTP listener may hold
// no more than a quarter of the descriptors.
func TestHTTPSlowClientsCannotStarveGRPC(t *testing.T) {
	if dir := os.Getenv(lowFDChild); dir != "" {
		serveLowFD(t, dir)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHTTPSlowClientsCannotStarveGRPC$", "-test.count=1")
	cmd.Env = append(os.Environ(), lowFDChild+"="+t.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		stdin.Close() // the child stops serving
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("child: %v", err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("child did not stop: %v", <-exited)
		}
	}()
	var grpcAddr, httpAddr string
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if _, serr := fmt.Sscanf(line, "serving %s %s", &grpcAddr, &httpAddr); err != nil || serr != nil {
		t.Fatalf("child said %q: %v %v", line, err, serr)
	}
	go io.Copy(io.Discard, stdout)

	const clients = 300
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	var started sync.WaitGroup
	for range clients {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", httpAddr)
			if err != nil {
				started.Done()
				return
			}
			defer c.Close()
			go func() { <-ctx.Done(); c.Close() }()
			fmt.Fprintf(c, "POST /healthz HTTP/1.1\r\nHost: keyauthz\r\nContent-Length: 100000\r\n\r\n")
			started.Done()
			for ctx.Err() == nil {
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	started.Wait()
	settled(t, cmd.Process.Pid) // the child has accepted what it will

	for i := range 5 {
		conn := dialGRPCAddr(t, grpcAddr)
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
		ccancel()
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("new gRPC client %d with %d slow HTTP clients: %v %v", i, clients, r, err)
		}
		if err := checkAllowed(conn, "no-such-key"); err == nil || !strings.Contains(err.Error(), "denied") {
			t.Fatalf("new gRPC client %d: Check not answered: %v", i, err)
		}
		conn.Close()
	}
}

// serveLowFD is the child: keyauthz under a 256-file limit, until stdin closes.
func serveLowFD(t *testing.T, dir string) {
	lim := syscall.Rlimit{Cur: 256, Max: 256}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Store.URL = "sqlite://" + filepath.Join(dir, "keys.db")
	a := startApp(t, cfg) // stopped, and Run's error reported, when the child test ends
	fmt.Printf("serving %s %s\n", a.GRPCAddr(), a.HTTPAddr())
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// settled waits until process pid's count of open files has not changed for
// 200 ms (at most 5 s).
func settled(t *testing.T, pid int) {
	t.Helper()
	count := func() int {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		return len(fds)
	}
	deadline := time.Now().Add(5 * time.Second)
	for last, same := count(), 0; same < 4 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if n := count(); n == last {
			same++
		} else {
			last, same = n, 0
		}
	}
}
