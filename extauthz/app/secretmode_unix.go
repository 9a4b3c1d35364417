//go:build unix

package app

import (
	"os"
	"syscall"
)

// k8sSecretMode reports whether fi is mode 0440 with a group this process
// belongs to: a Secret volume with defaultMode 0400 under a pod fsGroup.
func k8sSecretMode(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode().Perm() != 0o440 {
		return false
	}
	if int(st.Gid) == os.Getgid() {
		return true
	}
	groups, err := os.Getgroups()
	if err != nil {
		return false
	}
	for _, g := range groups {
		if g == int(st.Gid) {
			return true
		}
	}
	return false
}
