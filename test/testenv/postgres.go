package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// PGHelp says how to get the PostgreSQL binaries; it is part of every "no postgresql" failure.
const PGHelp = "postgresql not found: apt-get install -y postgresql (test/run.sh installs it)"

// PGBinEnv names the environment variable of a directory holding initdb and
// postgres; unset means the newest /usr/lib/postgresql/*/bin, then PATH.
const PGBinEnv = "KEYAUTHZ_PG_BIN"

// Credentials and database of every test server. The password is a fixed test
// value: TCP connections authenticate with SCRAM, as a real deployment would.
const (
	PGUser     = "postgres"
	PGPassword = "keyauthz-test-pw"
	PGDatabase = "keyauthz"
)

const (
	// pgStartTimeout bounds how long the server may take to accept connections.
	pgStartTimeout = 15 * time.Second
	// pgStopTimeout bounds a fast shutdown (SIGINT) before the server is killed.
	pgStopTimeout = 10 * time.Second
	// pgSystemUser runs initdb and postgres when the tests run as root (both refuse root).
	pgSystemUser = "postgres"
)

// PGProc is one PostgreSQL server on 127.0.0.1 with a fresh data directory
// (fsync off: fast, not durable). It can be stopped and started again on the
// same port with the same data; its log is printed when the test fails.
type PGProc struct {
	t    testing.TB
	bin  string // directory holding initdb, postgres, createdb
	base string // temporary directory: data/, socket, log
	port int
	cred *syscall.Credential // nil unless running as root

	mu   sync.Mutex
	proc *Proc // nil while stopped
}

var pgDBSeq atomic.Int64

// StartPostgres initializes a data directory, starts a server on a free
// loopback port and creates the database PGDatabase; the server is stopped and
// its directory removed when the test ends. As root, initdb and postgres run as
// the "postgres" system user (created by the Debian package).
func StartPostgres(t testing.TB) *PGProc {
	t.Helper()
	bin, err := pgBinDir()
	if err != nil {
		t.Fatal(err)
	}
	cred, err := pgCredential()
	if err != nil {
		t.Fatalf("testenv: postgres: %v", err)
	}
	base, err := os.MkdirTemp("", "keyauthz-pg-")
	if err != nil {
		t.Fatalf("testenv: postgres temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	p := &PGProc{t: t, bin: bin, base: base, cred: cred}
	if err := p.initdb(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dumpLogOnFailure(t, "postgres", p.logPath())
	var lastErr error
	for range 5 {
		if p.port, lastErr = TryFreePort(); lastErr != nil {
			continue
		}
		if lastErr = p.start(); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("testenv: start postgres: %v", lastErr)
	}
	t.Cleanup(p.Stop)
	if err := p.createdb(PGDatabase); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// URL returns the connection URL of the database PGDatabase.
func (p *PGProc) URL() string { return p.dbURL(PGDatabase) }

// Addr returns the server's host:port.
func (p *PGProc) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// NewDatabase creates an empty database with a unique name and returns its URL,
// for tests that each need a fresh store on one server.
func (p *PGProc) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), pgDBSeq.Add(1))
	if err := p.createdb(name); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p.dbURL(name)
}

func (p *PGProc) dbURL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(PGUser, PGPassword),
		Host:     p.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Start starts the server again on the same port with the same data after Stop.
// It is a no-op while the server runs.
func (p *PGProc) Start() {
	p.t.Helper()
	if err := p.start(); err != nil {
		p.t.Fatalf("testenv: restart postgres: %v", err)
	}
}

// Stop shuts the server down fast (SIGINT: clients are disconnected, no
// waiting for them) and waits for it to exit, killing it after a timeout. It is
// a no-op when the server is not running.
func (p *PGProc) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return
	}
	if ok, _ := p.proc.Exited(); !ok {
		_ = p.proc.Signal(syscall.SIGINT)
		select {
		case <-p.proc.Done():
		case <-time.After(pgStopTimeout):
			p.proc.Kill()
		}
	}
	p.proc = nil
}

func (p *PGProc) dataDir() string { return filepath.Join(p.base, "data") }

func (p *PGProc) logPath() string { return filepath.Join(p.base, "postgres.log") }

// initdb creates the data directory: superuser PGUser, SCRAM over TCP, trust
// on the unix socket (which lives in the private temporary directory).
func (p *PGProc) initdb() error {
	pw := filepath.Join(p.base, "pwfile")
	if err := os.WriteFile(pw, []byte(PGPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("postgres password file: %w", err)
	}
	if err := p.chown(p.base, pw); err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(p.bin, "initdb"),
		"-D", p.dataDir(), "-U", PGUser, "--pwfile", pw,
		"--auth-local=trust", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

// chown gives paths to the server's user when running as root.
func (p *PGProc) chown(paths ...string) error {
	if p.cred == nil {
		return nil
	}
	for _, path := range paths {
		if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return fmt.Errorf("postgres: chown %s: %w", path, err)
		}
	}
	return nil
}

func (p *PGProc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return nil
	}
	pidFile := filepath.Join(p.dataDir(), "postmaster.pid")
	proc, err := TryStartProc(ProcOptions{Name: "postgres", Log: p.logPath(), Cred: p.cred, Bin: filepath.Join(p.bin, "postgres"), Args: []string{
		"-D", p.dataDir(),
		"-p", strconv.Itoa(p.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + p.base,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=100",
	}})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(pgStartTimeout)
	for {
		if done, werr := proc.Exited(); done {
			return fmt.Errorf("postgres on port %d exited (%v):\n%s", p.port, werr, p.logTail())
		}
		if pgReady(pidFile, proc.PID()) {
			break
		}
		if time.Now().After(deadline) {
			proc.Kill()
			return fmt.Errorf("postgres on port %d not ready within %s:\n%s", p.port, pgStartTimeout, p.logTail())
		}
		time.Sleep(pollEvery)
	}
	p.proc = proc
	return nil
}

// pgReady reports whether the postmaster with pid says it accepts connections:
// the status line of postmaster.pid reads "ready" (what pg_ctl -w waits for).
func pgReady(pidFile string, pid int) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pid) &&
		strings.TrimSpace(lines[7]) == "ready"
}

// createdb creates database name over the unix socket.
func (p *PGProc) createdb(name string) error {
	p.mu.Lock()
	running := p.proc != nil
	p.mu.Unlock()
	if !running {
		return fmt.Errorf("createdb %s: postgres on port %d is not running", name, p.port)
	}
	cmd := exec.Command(filepath.Join(p.bin, "createdb"), "-h", p.base, "-p", strconv.Itoa(p.port), "-U", PGUser, name)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("createdb %s: %v\n%s", name, err, out)
	}
	return nil
}

func (p *PGProc) logTail() string { return Tail(p.logPath(), 2000) }

// pgCredential returns the credential initdb and postgres run with: the
// postgres system user when we are root (they refuse to run as root), else nil.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(pgSystemUser)
	if err != nil {
		return nil, fmt.Errorf("running as root needs the %q system user to run postgres (%v); %s", pgSystemUser, err, PGHelp)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user %s: %w", pgSystemUser, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// pgBinDir finds the directory holding initdb and postgres: $KEYAUTHZ_PG_BIN,
// the newest /usr/lib/postgresql/*/bin, then PATH.
func pgBinDir() (string, error) {
	has := func(dir string) bool {
		return fileExists(filepath.Join(dir, "initdb")) && fileExists(filepath.Join(dir, "postgres")) &&
			fileExists(filepath.Join(dir, "createdb"))
	}
	if dir := os.Getenv(PGBinEnv); dir != "" {
		if !has(dir) {
			return "", fmt.Errorf("%s (%s=%s holds no initdb, postgres and createdb)", PGHelp, PGBinEnv, dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return pgVersion(a) - pgVersion(b) })
	for i := len(dirs) - 1; i >= 0; i-- {
		if has(dirs[i]) {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New(PGHelp)
}

// pgVersion returns the major version in /usr/lib/postgresql/<v>/bin (0 if none).
func pgVersion(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}
