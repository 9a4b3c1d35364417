package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

// A database at schema version 1 (before workspace records and usage) is
// brought to the current version with its keys enabled and without a policy.
func TestMigrateFromVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	if err := createPrivate(path, nil); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nk := storetest.NewKey(t, "acme", "ci")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := row.Migrate(migrations[:1],
		func(q string) error { _, err := tx.ExecContext(ctx, q); return err },
		func(q string, n *int) error { return tx.QueryRowContext(ctx, q).Scan(n) }); err != nil {
		t.Fatalf("migration 1: %v", err)
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO keys (id, workspace, name, created_at) VALUES (?, ?, ?, ?)`, []any{nk.Key.ID, "acme", "ci", nk.Key.CreatedAt.UnixMicro()}},
		{`INSERT INTO digests (digest, key_id, pepper_version) VALUES (?, ?, 1)`, []any{nk.Digest.Sum[:], nk.Key.ID}},
		{`INSERT INTO changes (at, key_id, kind, digests) VALUES (1, ?, 'created', ?)`, []any{nk.Key.ID, nk.Digest.Sum[:]}},
	} {
		if _, err := tx.ExecContext(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := open(t, path)
	defer s.Close()
	k, err := s.Lookup(ctx, nk.Digest)
	if err != nil || k.ID != nk.Key.ID || k.Disabled || k.Space.Disabled || len(k.Space.Grants) != 0 {
		t.Fatalf("Lookup after migrating = %+v, %v; want the key, enabled, no policy", k, err)
	}
	chs, err := s.Changes(ctx, 0, 10)
	if err != nil || len(chs) != 1 || chs[0].Workspace != "" || chs[0].KeyID != nk.Key.ID {
		t.Errorf("Changes after migrating = %+v, %v; want the old entry with no workspace", chs, err)
	}
	if _, _, err := s.PutWorkspace(ctx, apikey.Workspace{ID: "acme", MaxKeys: 1}, "t"); err != nil {
		t.Fatalf("PutWorkspace: %v", err)
	}
	if _, err := s.Create(ctx, storetest.NewKey(t, "acme", "second")); err == nil {
		t.Errorf("Create over the record's max_keys 1 succeeded")
	}
}

// The bounded writes and the usage reads are served from the primary keys
// (or key_usage's hour index for pruning), never by scanning keys.
func TestBoundedWritesUseIndexes(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "keys.db"))
	defer s.Close()
	for _, c := range []struct {
		name, sql, want string
		args            []any
	}{
		{"Touch", touchSQL(2), "SEARCH keys USING INDEX sqlite_autoindex_keys_1 (id=?)", []any{"a", 1, "b", 2}},
		{"AddUsage", row.AddUsageSQL(2, placeholder), "", make([]any, 2*(2+int(apikey.NumOutcomes)))},
		{"Usage", `SELECT ` + row.UsageCols + ` FROM key_usage WHERE key_id = ? AND hour >= ? AND hour < ? ORDER BY hour`,
			"SEARCH key_usage USING INDEX sqlite_autoindex_key_usage_1 (key_id=? AND hour>? AND hour<?)", []any{"a", 1, 2}},
		{"UsageTotals", `SELECT key_id, SUM(` + usageTotal + `) FROM key_usage WHERE key_id IN (?, ?) AND hour >= ? GROUP BY key_id`,
			"SEARCH key_usage USING INDEX sqlite_autoindex_key_usage_1 (key_id=? AND hour>?)", []any{"a", "b", 1}},
		{"PruneUsage", `DELETE FROM key_usage WHERE hour < ?`, "SEARCH key_usage USING INDEX key_usage_hour (hour<?)", []any{1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rows, err := s.r.Query(`EXPLAIN QUERY PLAN `+c.sql, c.args...)
			if err != nil {
				t.Fatalf("explain: %v", err)
			}
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, detail)
			}
			text := strings.Join(plan, "\n")
			if strings.Contains(text, "SCAN keys") || strings.Contains(text, "SCAN key_usage") {
				t.Errorf("plan scans a table:\n%s", text)
			}
			if c.want != "" && !strings.Contains(text, c.want) {
				t.Errorf("plan lacks %q:\n%s", c.want, text)
			}
		})
	}
}
