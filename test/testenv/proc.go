package testenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProcOptions says how to run a child process.
type ProcOptions struct {
	Name string              // for messages, e.g. "keyauthz"
	Log  string              // file that receives stdout and stderr (appended)
	Bin  string              // the executable
	Args []string            // its arguments
	Dir  string              // working directory; "" keeps ours
	Env  []string            // added to our environment
	CPUs string              // taskset CPU list ("0", "0,1"); "" runs anywhere
	Cred *syscall.Credential // run as this user; nil runs as ourselves
}

// Proc is a running child process whose stdout and stderr go to one log file.
type Proc struct {
	Name string
	Log  string // path of the log file

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
}

// TryStartProc starts a process as o says. With o.CPUs it runs under taskset,
// which execs the binary in place (same PID).
func TryStartProc(o ProcOptions) (*Proc, error) {
	f, err := os.OpenFile(o.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", o.Name, err)
	}
	bin, args := o.Bin, o.Args
	if o.CPUs != "" {
		bin, args = "taskset", append([]string{"-c", o.CPUs, bin}, args...)
	}
	fmt.Fprintf(f, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = o.Dir
	if len(o.Env) > 0 {
		cmd.Env = append(os.Environ(), o.Env...)
	}
	if o.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.Cred}
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", o.Name, err)
	}
	p := &Proc{Name: o.Name, Log: o.Log, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// StartProc is TryStartProc for a test: a failure to start fails it, the
// process is killed in t.Cleanup if still running, and its log is printed if
// the test failed. An empty o.Log means a file in t.TempDir().
func StartProc(t testing.TB, o ProcOptions) *Proc {
	t.Helper()
	if o.Log == "" {
		o.Log = filepath.Join(t.TempDir(), o.Name+".log")
	}
	dumpLogOnFailure(t, o.Name, o.Log)
	p, err := TryStartProc(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns how the process ended (Wait's error); call it after Done.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// ExitCode waits up to timeout for the process to end and returns its exit
// code (-1 when a signal killed it); ok is false if it is still running.
func (p *Proc) ExitCode(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, false
	}
	return p.cmd.ProcessState.ExitCode(), true
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s: %w", p.Name, err)
	}
	return nil
}

// Stop sends SIGTERM and waits up to grace for the exit, then kills. It returns
// an error unless the process exited with status 0 after SIGTERM.
func (p *Proc) Stop(grace time.Duration) error {
	if ok, err := p.Exited(); ok {
		return fmt.Errorf("%s had already exited: %v", p.Name, err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s exited after SIGTERM: %w", p.Name, p.err)
		}
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed", p.Name, grace)
	}
}

// Kill ends the process at once (SIGKILL), if it is still running, and waits
// for it to exit.
func (p *Proc) Kill() {
	if ok, _ := p.Exited(); ok {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Output returns the whole log file.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// Tail returns the last n bytes of the log file.
func (p *Proc) Tail(n int) string { return Tail(p.Log, n) }

// Tail returns the last n bytes of the file at path ("" if it cannot be read).
func Tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
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
