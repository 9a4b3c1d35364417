//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// migrateLock is the advisory lock keyauthz's PostgreSQL store takes around
// its migrations (extauthz/store/postgres, "keyauthx"). The test checks that
// three sessions of the fresh database really wait on a lock while it holds
// this one, so a changed key fails here rather than passing without a race.
const migrateLock int64 = 0x6b65796175746878

// TestReplicasStartTogetherOnFreshDatabase: three `serve` processes started
// together on a fresh database while the migration lock is held for longer than
// store.statement_timeout (2 s), as by a replica in the middle of a slow
// migration, all wait for the lock and come up. Before the lock wait had its own
// bound (store.migrate_lock_timeout), they failed at 2 s.
func TestReplicasStartTogetherOnFreshDatabase(t *testing.T) {
	pg := testenv.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	holder, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrateLock); err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	released := make(chan time.Duration, 1)
	go func() { // release once all three wait on the lock, and no sooner than 2.5 s
		for ctx.Err() == nil {
			var n int
			err := holder.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
			if err == nil && n == 3 && time.Since(taken) > 2500*time.Millisecond {
				_, _ = holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, migrateLock)
				released <- time.Since(taken)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// Three processes at once (not parallel subtests: -parallel defaults to
	// GOMAXPROCS, 2 on the CI machine, which would start them two and one).
	dir := t.TempDir()
	pepper := filepath.Join(dir, "pepper")
	if err := os.WriteFile(pepper, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := testenv.KeyauthzBin(t)
	var ready []string
	procs := make([]*testenv.Proc, 3)
	for i := range procs {
		h := testenv.FreeAddr(t)
		cfg := filepath.Join(dir, fmt.Sprintf("r%d.yaml", i))
		y := fmt.Sprintf("grpc: {listen: %q}\nhttp: {listen: %q}\nstore: {url: %q}\npepper: {current: 1, versions: [{version: 1, file: %q}]}\n",
			testenv.FreeAddr(t), h, url, pepper)
		if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		procs[i] = testenv.StartProc(t, testenv.ProcOptions{Name: fmt.Sprintf("keyauthz-%d", i), Log: filepath.Join(dir, fmt.Sprintf("r%d.log", i)),
			Bin: bin, Args: []string{"serve", "--config", cfg}})
		ready = append(ready, "http://"+h+"/readyz")
	}
	for i, u := range ready {
		if err := testenv.WaitReady(ctx, procs[i], u, 30*time.Second); err != nil {
			t.Fatalf("replica %d not ready: %v", i, err)
		}
	}
	for i, p := range procs {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
	select {
	case d := <-released:
		t.Logf("lock released after %v with all three replicas waiting", d.Round(time.Millisecond))
	default:
		t.Fatal("the replicas came up without ever all waiting on the migration lock: the test did not race them")
	}
}
