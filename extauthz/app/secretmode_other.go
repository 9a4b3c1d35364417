//go:build !unix

package app

import "os"

// k8sSecretMode is false where files have no Unix groups.
func k8sSecretMode(os.FileInfo) bool { return false }
