package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

// The database and its -wal and -shm files hold every key's digest: they are
// created readable by their owner only, whatever the umask lets through.
func TestFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask, under which SQLite creates 0644
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "keys.db")
	s := open(t, path)
	defer s.Close()
	if _, err := s.Create(context.Background(), storetest.NewKey(t, "acme", "ci")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat: %v", err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %#o, want 0600", filepath.Base(p), m)
		}
	}
}

// An existing database file others may read keeps its mode, with a warning naming it.
func TestOpenWarnsOnReadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	s, err := Open(context.Background(), path, zap.New(core))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	ws := logs.FilterField(zap.String("file", path)).All()
	if len(ws) != 1 {
		t.Fatalf("warnings naming %s: %d, want 1 (all: %v)", path, len(ws), logs.All())
	}
}
