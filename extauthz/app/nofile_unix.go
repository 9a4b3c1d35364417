//go:build unix

package app

import "syscall"

// openFileLimit is the process's soft RLIMIT_NOFILE (Go raises it to the hard
// limit at start), 0 when it cannot be read.
func openFileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur >= 1<<62 { // RLIM_INFINITY or absurd: unknown
		return 0
	}
	return uint64(r.Cur)
}
