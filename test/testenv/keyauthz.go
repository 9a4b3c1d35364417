package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// KeyauthzBinEnv names the environment variable holding the built keyauthz binary.
const KeyauthzBinEnv = "KEYAUTHZ_BIN"

// KeyauthzHelp says how to get a keyauthz binary.
const KeyauthzHelp = "set KEYAUTHZ_BIN to a built keyauthz (go build -o /tmp/keyauthz ./cmd/keyauthz), or run test/run.sh"

// KeyauthzBin returns $KEYAUTHZ_BIN, failing the test with KeyauthzHelp when it
// is unset or not an executable file.
func KeyauthzBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(KeyauthzBinEnv)
	if bin == "" {
		t.Fatalf("%s is not set: %s", KeyauthzBinEnv, KeyauthzHelp)
	}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("%s=%q is not an executable file: %s", KeyauthzBinEnv, bin, KeyauthzHelp)
	}
	return bin
}

// BuildKeyauthz builds ./cmd/keyauthz of the module at root into dir and returns
// the binary's path; for TestMain when KEYAUTHZ_BIN is unset.
func BuildKeyauthz(root, dir string) (string, error) {
	bin := filepath.Join(dir, "keyauthz")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/keyauthz")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keyauthz: %v\n%s", err, out)
	}
	return bin, nil
}

// KeyauthzOptions shapes the test configuration of a Keyauthz.
type KeyauthzOptions struct {
	// Unix makes the gRPC listener a unix socket instead of a loopback port.
	Unix bool
	// Extra is YAML appended to the generated config, e.g. an ownership: block;
	// it must not repeat the generated top-level keys (grpc, http, store, pepper, log).
	Extra string
	// StoreURL replaces the private SQLite store (e.g. a shared postgres:// URL).
	StoreURL string
	// PepperFile replaces the fresh private pepper (replicas sharing a store share it).
	PepperFile string
	// Codec is grpc.codec, "fast" or "standard"; empty means CodecEnv's value, else "fast".
	Codec string
	// GRPCExtra is YAML added to the generated grpc: block, e.g. a tls: block,
	// each line indented by two spaces.
	GRPCExtra string
}

// CodecEnv selects grpc.codec when the options name none: "fast" (default) or "standard".
const CodecEnv = "KEYAUTHZ_E2E_CODEC"

// applyCodec fills o.Codec from CodecEnv, defaulting to "fast".
func applyCodec(t testing.TB, o *KeyauthzOptions) {
	if o.Codec == "" {
		o.Codec = os.Getenv(CodecEnv)
	}
	switch o.Codec {
	case "":
		o.Codec = "fast"
	case "fast", "standard":
	default:
		t.Fatalf("codec %q (%s): want fast or standard", o.Codec, CodecEnv)
	}
}

// BackendEnv selects the stores StartKeyauthz uses when the options name none:
// "sqlite" (default: a private SQLite file, local limiter) or "postgres-redis"
// (a private PostgreSQL database and Redis server, redis limiter).
const BackendEnv = "KEYAUTHZ_E2E_BACKEND"

// applyBackend fills o from BackendEnv, starting PostgreSQL and Redis as needed.
func applyBackend(t testing.TB, o *KeyauthzOptions) {
	switch b := os.Getenv(BackendEnv); b {
	case "", "sqlite":
	case "postgres-redis":
		if o.StoreURL == "" {
			o.StoreURL = StartPostgres(t).URL()
		}
		if !strings.Contains(o.Extra, "ratelimit:") {
			o.Extra += fmt.Sprintf("ratelimit:\n  backend: redis\n  redis: {addrs: [%q]}\n", StartRedis(t).Addr())
		}
	default:
		t.Fatalf("%s=%q: want sqlite or postgres-redis", BackendEnv, b)
	}
}

// Keyauthz is a keyauthz server run from the built binary, with its own SQLite
// store and pepper in a temporary directory.
type Keyauthz struct {
	Bin      string
	Dir      string
	Config   string // path of the config file
	GRPCAddr string // "127.0.0.1:PORT" or "unix:///path"
	HTTPAddr string // "127.0.0.1:PORT": /healthz, /readyz
	Log      string // path of the server's log (all runs appended)
	Codec    string // grpc.codec in the config: "fast" or "standard"

	proc *Proc
}

// Key is the JSON that `keys create --json` and `keys refresh --json` print: the
// fields of admin.View the tests use, decoded from the binary's output on purpose
// without importing admin, so a renamed JSON field fails the tests.
type Key struct {
	ID        string     `json:"id"`
	Workspace string     `json:"workspace"`
	Name      string     `json:"name"`
	Secret    string     `json:"key"`
	Display   string     `json:"display"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// StartKeyauthz writes a config (fresh pepper, SQLite file, free ports), runs
// `keyauthz serve` and waits for /readyz. It is stopped in t.Cleanup (SIGTERM;
// a non-zero exit fails the test) and its log printed if the test failed.
func StartKeyauthz(t testing.TB, o KeyauthzOptions) *Keyauthz {
	t.Helper()
	k := &Keyauthz{Bin: KeyauthzBin(t), Dir: t.TempDir()}
	k.Config = filepath.Join(k.Dir, "keyauthz.yaml")
	k.Log = filepath.Join(k.Dir, "keyauthz.log")
	applyBackend(t, &o)
	applyCodec(t, &o)
	k.Codec = o.Codec
	if o.PepperFile == "" {
		o.PepperFile = filepath.Join(k.Dir, "pepper")
		pepper := make([]byte, 48)
		if _, err := rand.Read(pepper); err != nil {
			t.Fatalf("pepper: %v", err)
		}
		if err := os.WriteFile(o.PepperFile, pepper, 0o600); err != nil {
			t.Fatalf("write pepper: %v", err)
		}
	}
	if o.StoreURL == "" {
		o.StoreURL = "sqlite://" + filepath.Join(k.Dir, "keys.db")
	}
	if o.Unix {
		k.GRPCAddr = "unix://" + filepath.Join(k.Dir, "grpc.sock")
	} else {
		k.GRPCAddr = "127.0.0.1:" + strconv.Itoa(FreePort(t))
	}
	k.HTTPAddr = "127.0.0.1:" + strconv.Itoa(FreePort(t))
	cfg := fmt.Sprintf(`grpc:
  listen: %q
  drain_timeout: 2s
  codec: %q
%shttp:
  listen: %q
store:
  url: %q
pepper:
  current: 1
  versions: [{version: 1, file: %q}]
log:
  level: debug
%s`, k.GRPCAddr, o.Codec, o.GRPCExtra, k.HTTPAddr, o.StoreURL, o.PepperFile, o.Extra)
	if err := os.WriteFile(k.Config, []byte(cfg), 0o600); err != nil {
		t.Fatalf("write keyauthz config: %v", err)
	}
	dumpLogOnFailure(t, "keyauthz", k.Log)
	t.Cleanup(func() {
		if k.proc == nil {
			return
		}
		if ok, _ := k.proc.Exited(); ok {
			return
		}
		if err := k.proc.Stop(10 * time.Second); err != nil {
			t.Errorf("stop keyauthz: %v", err)
		}
	})
	k.Start(t)
	return k
}

// Start runs `keyauthz serve` (again, after Stop) on the same config, store and
// ports, and waits until /readyz answers 200.
func (k *Keyauthz) Start(t testing.TB) {
	t.Helper()
	if k.proc != nil {
		if ok, _ := k.proc.Exited(); !ok {
			t.Fatalf("keyauthz is already running")
		}
	}
	p, err := TryStartProc(ProcOptions{Name: "keyauthz", Log: k.Log, Bin: k.Bin, Args: []string{"serve", "--config", k.Config}})
	if err != nil {
		t.Fatal(err)
	}
	k.proc = p
	if err := WaitReady(context.Background(), p, "http://"+k.HTTPAddr+"/readyz", startTimeout); err != nil {
		t.Fatalf("keyauthz not ready within %v: %v", startTimeout, err)
	}
}

// Stop sends SIGTERM and fails the test unless keyauthz exits with status 0.
func (k *Keyauthz) Stop(t testing.TB) {
	t.Helper()
	if err := k.proc.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop keyauthz: %v", err)
	}
}

// Kill kills keyauthz with SIGKILL (a crash: no drain, no flush) and waits
// for it to exit; Start runs it again.
func (k *Keyauthz) Kill(t testing.TB) {
	t.Helper()
	if k.proc == nil {
		t.Fatalf("keyauthz is not running")
	}
	k.proc.Kill()
}

// Run runs a keyauthz CLI command with this server's --config and returns its
// stdout; a non-zero exit fails the test. --config goes right after the command
// words ("keys create", "check"), so flags must come before positional arguments.
func (k *Keyauthz) Run(t testing.TB, args ...string) []byte {
	t.Helper()
	out, err := k.TryRun(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryRun is Run returning the failure instead of failing the test.
func (k *Keyauthz) TryRun(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := 1
	if len(args) > 1 && args[0] == "keys" {
		n = 2
	}
	n = min(n, len(args))
	args = append(append(append([]string(nil), args[:n]...), "--config", k.Config), args[n:]...)
	cmd := exec.CommandContext(ctx, k.Bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("keyauthz %s: %v\nstderr: %s", strings.Join(args, " "), err, redact(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// redact keeps secrets out of test output: a CLI error should never print one,
// but if it did, the test log must not repeat it.
func redact(s string) string {
	if i := strings.Index(s, `"key":`); i >= 0 {
		return s[:i] + `"key": <redacted>…`
	}
	return s
}

// CreateKey runs `keys create --workspace ws --name name [flags] --json`.
func (k *Keyauthz) CreateKey(t testing.TB, ws, name string, flags ...string) Key {
	t.Helper()
	args := append([]string{"keys", "create", "--workspace", ws, "--name", name}, flags...)
	return k.runKey(t, append(args, "--json")...)
}

// RefreshKey runs `keys refresh id [flags] --json` and returns the new key.
func (k *Keyauthz) RefreshKey(t testing.TB, id string, flags ...string) Key {
	t.Helper()
	args := append([]string{"keys", "refresh"}, flags...)
	return k.runKey(t, append(args, "--json", id)...)
}

// DeleteKey runs `keys delete id`.
func (k *Keyauthz) DeleteKey(t testing.TB, id string) {
	t.Helper()
	k.Run(t, "keys", "delete", id)
}

func (k *Keyauthz) runKey(t testing.TB, args ...string) Key {
	t.Helper()
	out := k.Run(t, args...)
	var key Key
	if err := json.Unmarshal(out, &key); err != nil {
		t.Fatalf("keyauthz %s: output is not a key as JSON: %v", args[:2], err)
	}
	if key.ID == "" || key.Secret == "" {
		t.Fatalf("keyauthz %s: JSON lacks id or key", args[:2])
	}
	return key
}
