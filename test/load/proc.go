package load

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat (100 on Linux).
const clockTick = 100

// running holds how to stop every child started so far, so StopAll can end them.
var running struct {
	sync.Mutex
	stop []func()
}

// onStopAll registers f to run in StopAll.
func onStopAll(f func()) {
	running.Lock()
	running.stop = append(running.stop, f)
	running.Unlock()
}

// start runs a child process (testenv.TryStartProc) and registers it with StopAll.
func start(o testenv.ProcOptions) (*testenv.Proc, error) {
	p, err := testenv.TryStartProc(o)
	if err != nil {
		return nil, err
	}
	onStopAll(func() {
		if ok, _ := p.Exited(); !ok {
			_ = p.Stop(5 * time.Second)
		}
	})
	return p, nil
}

// StopAll stops every child still running (on exit or interrupt).
func StopAll() {
	running.Lock()
	all := running.stop
	running.stop = nil
	running.Unlock()
	for _, f := range all {
		f()
	}
}

// CPUTime returns the user+system CPU time the process has used, all threads.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// RSS returns the resident set size of pid in bytes (VmRSS).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// PinSelf restricts every thread of this process, and so every thread it
// creates later, to cpu, and sets GOMAXPROCS to 1.
func PinSelf(cpu int) error {
	var mask [16]uint64
	mask[cpu/64] = 1 << (cpu % 64)
	runtime.GOMAXPROCS(1)
	for round := 0; round < 5; round++ {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			_, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(mask), uintptr(unsafe.Pointer(&mask)))
			if errno != 0 && errno != syscall.ESRCH {
				return fmt.Errorf("sched_setaffinity(%d): %w", tid, errno)
			}
		}
	}
	return nil
}

// OnlineCPUs returns the number of CPUs this process may run on.
func OnlineCPUs() int { return runtime.NumCPU() }
