package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// writePepper writes a pepper file with the given mode and configures it.
func writePepper(t *testing.T, cfg *config.Config, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pepper")
	if err := os.WriteFile(p, []byte(strings.Repeat("p", 48)), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
	cfg.Pepper = config.Pepper{Current: 1, Versions: []config.PepperVersion{{Version: 1, Secret: config.Secret{File: p}}}}
	return p
}

// A store that cannot be opened makes New return the real error, not panic
// closing a nil store.
func TestNewReportsStoreOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("this is not a database\n", 200)), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ url, want string }{
		"not a database": {"sqlite://" + garbage, "not a database"},
		"directory":      {"sqlite://" + dir, "is a directory"},
		"missing file":   {"file://" + filepath.Join(dir, "missing.yaml"), "no such file"},
		"bad postgres":   {"postgres://u@" + testenv.FreeAddr(t) + "/k?pool_max_conns=x", "pool_max_conns"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Store.URL = c.url
			writePepper(t, &cfg, 0o600)
			a, err := New(context.Background(), cfg, zap.NewNop(), Options{})
			if err == nil {
				a.closeAll()
				t.Fatal("New succeeded")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("New error %q does not say %q", err, c.want)
			}
		})
	}
}

// PostgreSQL unreachable at start: New succeeds with a pending store; Run
// serves NOT_SERVING and /readyz 503 while retrying, and turns SERVING once the
// store opens, in the same process. The store URL's password appears in no log.
func TestStoreUnreachableAtStartThenOpens(t *testing.T) {
	const pw = "Sup3rS3cret"
	cfg := testConfig(t)
	cfg.Store.URL = "postgres://u@" + testenv.FreeAddr(t) + "/k?sslmode=disable&password=" + pw
	writePepper(t, &cfg, 0o600)
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := New(context.Background(), cfg, zap.New(core), Options{})
	if err != nil {
		t.Fatalf("New with PostgreSQL down: %v", err)
	}
	p, ok := a.store.(*pendingStore)
	if !ok {
		t.Fatalf("store is %T, want a pending store", a.store)
	}
	// The database "comes up" on the third retry (a SQLite store stands in for it).
	open, tries := p.open, 0
	p.open = func(ctx context.Context) (apikey.Store, error) {
		if tries++; tries < 3 {
			return open(ctx)
		}
		return sqlite.Open(ctx, filepath.Join(t.TempDir(), "keys.db"), zap.NewNop())
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	health, readyz := probes(t, a)
	waitFor(t, "gRPC up", func() bool { return health() != healthpb.HealthCheckResponse_UNKNOWN })
	if s, c := health(), readyz(); s != healthpb.HealthCheckResponse_NOT_SERVING || c != http.StatusServiceUnavailable {
		t.Fatalf("store not open: health %v, /readyz %d; want NOT_SERVING, 503", s, c)
	}
	waitFor(t, "SERVING after the store opens", func() bool { return health() == healthpb.HealthCheckResponse_SERVING })
	if c := readyz(); c != http.StatusOK {
		t.Fatalf("/readyz once the store is open: %d", c)
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if tries != 3 {
		t.Errorf("open attempts after New: %d, want 3", tries)
	}
	var sawRefused, sawServing bool
	for _, e := range logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, pw) {
			t.Errorf("log line shows the password: %s", line)
		}
		sawRefused = sawRefused || strings.Contains(line, "connection refused")
		sawServing = sawServing || e.Message == "serving" && strings.Contains(line, "password=xxxxx")
	}
	if !sawRefused || !sawServing {
		t.Errorf("logs lack the real error (%v) or the redacted store URL on serving (%v)", sawRefused, sawServing)
	}
}

// A store that turns out not to open for good (not a transient error) while
// retrying ends Run with that error.
func TestStoreFailsForGoodWhileRetrying(t *testing.T) {
	cfg := testConfig(t)
	cfg.Store.URL = "postgres://u@" + testenv.FreeAddr(t) + "/k?sslmode=disable"
	writePepper(t, &cfg, 0o600)
	a, err := New(context.Background(), cfg, zap.NewNop(), Options{})
	if err != nil {
		t.Fatalf("New with PostgreSQL down: %v", err)
	}
	p := a.store.(*pendingStore)
	p.open = func(context.Context) (apikey.Store, error) {
		return nil, errors.New("password authentication failed")
	}
	ran := make(chan error, 1)
	go func() { ran <- a.Run(context.Background()) }()
	select {
	case err := <-ran:
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("Run = %v, want the open error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run still serving after the store failed for good")
	}
}

// probes returns the gRPC health status and /readyz code of a running App.
func probes(t *testing.T, a *App) (func() healthpb.HealthCheckResponse_ServingStatus, func() int) {
	conn, err := grpc.NewClient(a.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	hcl := &http.Client{Timeout: 2 * time.Second}
	t.Cleanup(hcl.CloseIdleConnections)
	return func() healthpb.HealthCheckResponse_ServingStatus {
			r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil {
				return healthpb.HealthCheckResponse_UNKNOWN
			}
			return r.GetStatus()
		}, func() int {
			r, err := hcl.Get("http://" + a.HTTPAddr().String() + "/readyz")
			if err != nil {
				return 0
			}
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
			return r.StatusCode
		}
}

// A pepper file others may read is named in a warning at start; a 0600 one is not.
func TestPepperFileModeWarning(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test gives the pepper file a foreign group, which needs root (CI runs as root)")
	}
	const foreign = 54321 // a group this process is not in
	for _, c := range []struct {
		mode os.FileMode
		gid  int // -1: the process's own group
		warn bool
	}{
		{0o600, -1, false}, {0o400, -1, false},
		{0o440, -1, false}, // a Kubernetes secret volume with defaultMode 0400 under an fsGroup keyauthz runs in
		{0o640, -1, true}, {0o640, foreign, true}, {0o440, foreign, true}, {0o644, -1, true}, {0o444, -1, true}, {0o460, -1, true},
	} {
		cfg := config.Default()
		p := writePepper(t, &cfg, c.mode)
		if c.gid >= 0 {
			if err := os.Chown(p, -1, c.gid); err != nil {
				t.Fatal(err)
			}
		}
		core, logs := observer.New(zapcore.WarnLevel)
		if _, err := peppers(&cfg, false, zap.New(core)); err != nil {
			t.Fatal(err)
		}
		got := logs.FilterField(zap.String("file", p)).Len()
		if c.warn && got != 1 || !c.warn && logs.Len() != 0 {
			t.Errorf("pepper mode %#o, group %d: %d warnings naming the file (%d in all), want warned=%v", c.mode, c.gid, got, logs.Len(), c.warn)
		}
	}
}

// password: {env} naming an unset (or empty) variable is an error naming the
// field, not a silent "no password"; so is an empty password: {file}.
func TestRedisPasswordSourceMustHoldAPassword(t *testing.T) {
	const env = "KEYAUTHZ_TEST_REDIS_PASSWORD_UNSET"
	os.Unsetenv(env)
	cfg := config.Default()
	cfg.RateLimit.Backend = config.BackendRedis
	cfg.RateLimit.Redis.Addrs = []string{testenv.FreeAddr(t)}
	cfg.RateLimit.Redis.Password = config.Secret{Env: env}
	check := func(field string) {
		t.Helper()
		lim, err := newRedisLimiter(&cfg, zap.NewNop())
		if err == nil {
			lim.Close()
			t.Fatalf("newRedisLimiter succeeded, want an error naming %s", field)
		}
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Path != field {
			t.Fatalf("newRedisLimiter = %v, want a FieldError at %s", err, field)
		}
	}
	check("ratelimit.redis.password.env")
	t.Setenv(env, "")
	check("ratelimit.redis.password.env")
	cfg.RateLimit.Redis.Password = config.Secret{File: filepath.Join(t.TempDir(), "redis-password")}
	if err := os.WriteFile(cfg.RateLimit.Redis.Password.File, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("ratelimit.redis.password.file")
}
