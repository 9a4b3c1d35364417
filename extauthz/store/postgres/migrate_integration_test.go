//go:build integration

package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// TestMigrationLock: replicas starting while another migrates wait for the
// migration lock under MigrateLockTimeout, not under the statement timeout.
func TestMigrationLock(t *testing.T) {
	p := testenv.StartPostgres(t)
	t.Run("ReplicasOutwaitStatementTimeout", func(t *testing.T) { testReplicasOutwaitStatementTimeout(t, p) })
	t.Run("LockWaitBounded", func(t *testing.T) { testLockWaitBounded(t, p) })
}

// holdMigrationLock takes the migration lock on url from a session of its own,
// as a replica in the middle of a long migration would, and returns its release.
func holdMigrationLock(t *testing.T, url string) (release func()) {
	t.Helper()
	c, err := pgx.Connect(ctxT(t), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if _, err := c.Exec(ctxT(t), `SELECT pg_advisory_lock($1)`, migrateLock); err != nil {
		t.Fatalf("take the migration lock: %v", err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			_, _ = c.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, migrateLock)
			_ = c.Close(context.Background())
		})
	}
	t.Cleanup(release)
	return release
}

// waiters returns how many sessions wait for an advisory lock.
func waiters(t *testing.T, url string) int {
	t.Helper()
	c, err := pgx.Connect(ctxT(t), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctxT(t), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Three replicas open a fresh database together while a fourth session holds
// the migration lock for three times their statement timeout: all three wait,
// then migrate (once) and open.
func testReplicasOutwaitStatementTimeout(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	const stmt = 400 * time.Millisecond
	release := holdMigrationLock(t, url)
	const n = 3
	var wg sync.WaitGroup
	errs := make([]error, n)
	stores := make([]*Store, n)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = Open(ctxT(t), url, zap.NewNop(), Options{MaxConns: 2, StatementTimeout: stmt, MigrateLockTimeout: 20 * time.Second})
		})
	}
	testenv.Eventually(t, 10*time.Second, "all replicas waiting for the migration lock", func() error {
		if w := waiters(t, url); w != n {
			return fmt.Errorf("%d waiting", w)
		}
		return nil
	})
	// The holder keeps the lock well past the replicas' statement timeout.
	time.Sleep(3 * stmt)
	release()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: Open: %v", i, err)
		}
		defer stores[i].Close()
	}
	t.Logf("3 replicas waited %v for the lock (statement timeout %v) and opened", time.Since(start).Round(time.Millisecond), stmt)
	var v, rows int
	var st string
	if err := stores[0].pool.QueryRow(ctxT(t), `SELECT MAX(version), COUNT(*), current_setting('statement_timeout') FROM schema_migrations`).Scan(&v, &rows, &st); err != nil ||
		v != len(migrations) || rows != len(migrations) || st != "400ms" {
		t.Errorf("schema_migrations: max %d, %d rows, statement_timeout %q, %v; want %d, %d, 400ms", v, rows, st, err, len(migrations), len(migrations))
	}
}

// A lock held for longer than MigrateLockTimeout fails Open with an error naming the setting.
func testLockWaitBounded(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	holdMigrationLock(t, url)
	start := time.Now()
	s, err := Open(ctxT(t), url, zap.NewNop(), Options{MigrateLockTimeout: 300 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded while another session held the migration lock")
	}
	took := time.Since(start)
	if !strings.Contains(err.Error(), "store.migrate_lock_timeout") {
		t.Errorf("error %q does not name store.migrate_lock_timeout", err)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("Open gave up after %v, want about 300ms", took)
	}
	if Transient(err) {
		t.Errorf("a lock wait timeout counts as transient: %v", err)
	}
}
