package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// migrations are applied in order; migrations[i] brings the schema to version i+1.
// Never edit an applied migration: append a new one.
//
// Portability to PostgreSQL: times are BIGINT Unix microseconds (NULL = unset),
// digests are BLOB (bytea), grants and metadata are JSON text (empty string = none), and
// the partial indexes use syntax both engines accept. Only the seq columns
// differ: INTEGER PRIMARY KEY AUTOINCREMENT here, BIGINT GENERATED ALWAYS AS
// IDENTITY PRIMARY KEY there.
var migrations = []string{
	// 1: keys, digests, change feed, audit log.
	`CREATE TABLE keys (
	id           TEXT PRIMARY KEY,
	workspace    TEXT NOT NULL,
	name         TEXT NOT NULL,
	display      TEXT NOT NULL DEFAULT '',
	created_at   BIGINT NOT NULL,
	expires_at   BIGINT,
	not_before   BIGINT,
	revoked_at   BIGINT,
	rate_limit   TEXT NOT NULL DEFAULT '',
	grants       TEXT NOT NULL DEFAULT '',
	metadata     TEXT NOT NULL DEFAULT '',
	last_used_at BIGINT
);
CREATE INDEX keys_live_workspace ON keys (workspace, id) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX keys_live_name ON keys (workspace, name) WHERE revoked_at IS NULL;

CREATE TABLE digests (
	digest         BLOB PRIMARY KEY,
	key_id         TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
	pepper_version INTEGER NOT NULL,
	expires_at     BIGINT
);
CREATE INDEX digests_key ON digests (key_id);
CREATE INDEX digests_grace ON digests (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE changes (
	seq     INTEGER PRIMARY KEY AUTOINCREMENT,
	at      BIGINT NOT NULL,
	key_id  TEXT NOT NULL,
	kind    TEXT NOT NULL,
	digests BLOB NOT NULL
);

CREATE TABLE audit (
	seq       INTEGER PRIMARY KEY AUTOINCREMENT,
	at        BIGINT NOT NULL,
	kind      TEXT NOT NULL,
	workspace TEXT NOT NULL,
	key_id    TEXT NOT NULL,
	actor     TEXT NOT NULL,
	detail    TEXT NOT NULL
);
CREATE INDEX audit_workspace ON audit (workspace, seq);`,
}

// Migrate brings the database schema up to date in one transaction. Open calls
// it; it is safe to call again and safe against concurrent processes.
func (s *Store) Migrate(ctx context.Context) error {
	var applied []int
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			applied_at BIGINT NOT NULL)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		var cur int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if cur > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", cur, len(migrations))
		}
		for v := cur + 1; v <= len(migrations); v++ {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("apply migration %d: %w", v, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
				v, time.Now().UnixMicro()); err != nil {
				return fmt.Errorf("record migration %d: %w", v, err)
			}
			applied = append(applied, v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		s.log.Info("applied schema migrations", zap.Ints("versions", applied))
	}
	return nil
}
