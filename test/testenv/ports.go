// Package testenv starts the real processes the e2e and integration tests talk to
// (Envoy, keyauthz, an upstream HTTP server, Redis, PostgreSQL) and stops them in
// t.Cleanup, keeping their logs when a test fails.
package testenv

import (
	"errors"
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
)

// LogDirEnv names the environment variable of a directory where the logs of the
// processes of a failed test are copied (for CI artifacts); unset keeps them only
// in the test output.
const LogDirEnv = "E2E_LOG_DIR"

// pollEvery is how often Eventually retries.
const pollEvery = 20 * time.Millisecond

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Eventually calls f until it returns nil, failing the test with f's last error
// when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := Poll(timeout, f); err != nil {
		t.Fatalf("%s: not within %v: %v", what, timeout, err)
	}
}

// Poll calls f until it returns nil or timeout passes, and returns f's last error.
func Poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollEvery)
	}
}

// RepoRoot returns the module root: the nearest directory above the working
// directory that holds go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = up
	}
}

// process is a child process whose stdout and stderr go to one log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string        // path of the log file
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
}

// startProcess runs bin with args, appending its output to logPath.
func startProcess(name, logPath, bin string, args ...string) (*process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	fmt.Fprintf(f, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM and waits up to grace for the exit, then kills. It returns
// an error unless the process exited with status 0 after SIGTERM.
func (p *process) stop(grace time.Duration) error {
	if ok, err := p.exited(); ok {
		return fmt.Errorf("%s had already exited: %v", p.name, err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s exited after SIGTERM: %w", p.name, p.err)
		}
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed", p.name, grace)
	}
}

// kill ends the process at once, if it is still running.
func (p *process) kill() {
	if ok, _ := p.exited(); ok {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// maxLogDump bounds how much of one log file goes to the test output.
const maxLogDump = 64 << 10

var logCopy sync.Mutex

// dumpLogOnFailure registers a cleanup that, if the test failed, prints the tail
// of the log file and copies it to $E2E_LOG_DIR when that is set.
func dumpLogOnFailure(t testing.TB, name, path string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Logf("%s log: %v", name, err)
			return
		}
		out := b
		if len(out) > maxLogDump {
			out = out[len(out)-maxLogDump:]
		}
		t.Logf("---- %s log (%s, last %d of %d bytes) ----\n%s\n---- end of %s log ----", name, path, len(out), len(b), out, name)
		if dir := os.Getenv(LogDirEnv); dir != "" {
			if err := copyLog(dir, t.Name(), name, path); err != nil {
				t.Logf("keep %s log: %v", name, err)
			}
		}
	})
}

func copyLog(dir, test, name, path string) error {
	logCopy.Lock()
	defer logCopy.Unlock()
	safe := strings.NewReplacer("/", "_", " ", "_", ":", "_").Replace(test)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, safe+"."+name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	return errors.Join(err, dst.Close())
}
