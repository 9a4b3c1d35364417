package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartPostgresMissingBinaryFails(t *testing.T) {
	for name, dir := range map[string]string{
		"no such dir":   "/nonexistent/postgresql/bin",
		"no initdb":     t.TempDir(),
		"only postgres": onlyPostgres(t),
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(PGBinEnv, dir)
			_, err := pgBinDir()
			if err == nil || !strings.Contains(err.Error(), "apt-get install -y postgresql") {
				t.Fatalf("error %v does not say how to install postgresql", err)
			}
		})
	}
}

func onlyPostgres(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "postgres"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPGVersionOrder(t *testing.T) {
	cases := map[string]int{
		"/usr/lib/postgresql/15/bin": 15,
		"/usr/lib/postgresql/9/bin":  9,
		"/usr/lib/postgresql/x/bin":  0,
	}
	for dir, want := range cases {
		if got := pgVersion(dir); got != want {
			t.Errorf("pgVersion(%s) = %d, want %d", dir, got, want)
		}
	}
}

func TestPGReady(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "postmaster.pid")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(pidFile, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if pgReady(pidFile, 42) {
		t.Error("ready without a pid file")
	}
	write("42\n/data\n1\n5432\n/tmp\n127.0.0.1\n  1 2\nstarting\n")
	if pgReady(pidFile, 42) {
		t.Error("ready while starting")
	}
	write("42\n/data\n1\n5432\n/tmp\n127.0.0.1\n  1 2\nready   \n")
	if !pgReady(pidFile, 42) {
		t.Error("not ready with status ready")
	}
	if pgReady(pidFile, 43) {
		t.Error("ready for another postmaster's pid file")
	}
}
