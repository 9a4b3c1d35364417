//go:build integration

package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func pgQuery(t *testing.T, url, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var s string
	err = c.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

func pgExec(t *testing.T, url, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestStartPostgresStopStart(t *testing.T) {
	start := time.Now()
	p := StartPostgres(t)
	t.Logf("postgres up in %v", time.Since(start))
	url := p.URL()
	if !strings.HasPrefix(url, "postgres://") || !strings.Contains(url, "@"+p.Addr()+"/keyauthz?sslmode=disable") {
		t.Fatalf("URL = %q, want postgres://…@%s/keyauthz?sslmode=disable", url, p.Addr())
	}
	if got, err := pgQuery(t, url, `SELECT current_database() || ' ' || current_user`); err != nil || got != "keyauthz postgres" {
		t.Fatalf("query = %q, %v; want keyauthz postgres", got, err)
	}
	for _, setting := range []string{"fsync", "synchronous_commit"} {
		if got, err := pgQuery(t, url, `SHOW `+setting); err != nil || got != "off" {
			t.Errorf("%s = %q, %v; want off", setting, got, err)
		}
	}
	// TCP connections authenticate: a wrong password is refused.
	bad := strings.Replace(url, PGPassword, "wrong", 1)
	if _, err := pgQuery(t, bad, `SELECT 'x'`); err == nil {
		t.Error("connected with a wrong password")
	}
	pgExec(t, url, `CREATE TABLE kept AS SELECT 'v'::text AS s`)
	// Another database on the same server.
	other := p.NewDatabase(t)
	if got, err := pgQuery(t, other, `SELECT count(*)::text FROM pg_tables WHERE tablename = 'kept'`); err != nil || got != "0" {
		t.Fatalf("new database holds %q tables named kept, %v; want 0", got, err)
	}

	p.Stop()
	if _, err := pgQuery(t, url, `SELECT 'x'`); err == nil {
		t.Fatal("query answered after Stop")
	}
	p.Stop() // idempotent

	p.Start()
	if got, err := pgQuery(t, url, `SELECT s FROM kept`); err != nil || got != "v" {
		t.Fatalf("after restart: %q, %v; want the data kept", got, err)
	}
	p.Start() // no-op while running
}
