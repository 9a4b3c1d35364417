package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// migrations are applied in order; migrations[i] brings the schema to version i+1.
// Never edit an applied migration: append a new one. They are the sqlite
// store's migrations, version for version, with these differences:
//
//   - digests are BYTEA instead of BLOB;
//   - text columns that are compared or ordered (ids, workspace, name) use
//     COLLATE "C", so ordering and List cursors are bytewise, as in SQLite and
//     Go, whatever the database's default collation;
//   - changes.seq is a plain BIGINT taken from the one-row change_seq counter
//     (see appendChange), not an identity, so the feed is gapless and numbered
//     in commit order; audit.seq is an identity column.
var migrations = []string{
	// 1: keys, digests, change feed, audit log.
	`CREATE TABLE keys (
	id           TEXT COLLATE "C" PRIMARY KEY,
	workspace    TEXT COLLATE "C" NOT NULL,
	name         TEXT COLLATE "C" NOT NULL,
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
	digest         BYTEA PRIMARY KEY,
	key_id         TEXT COLLATE "C" NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
	pepper_version INTEGER NOT NULL,
	expires_at     BIGINT
);
CREATE INDEX digests_key ON digests (key_id);
CREATE INDEX digests_grace ON digests (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE change_seq (
	one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
	seq BIGINT NOT NULL
);
INSERT INTO change_seq (seq) VALUES (0);

CREATE TABLE changes (
	seq     BIGINT PRIMARY KEY,
	at      BIGINT NOT NULL,
	key_id  TEXT COLLATE "C" NOT NULL,
	kind    TEXT NOT NULL,
	digests BYTEA NOT NULL
);

CREATE TABLE audit (
	seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at        BIGINT NOT NULL,
	kind      TEXT NOT NULL,
	workspace TEXT COLLATE "C" NOT NULL,
	key_id    TEXT NOT NULL,
	actor     TEXT NOT NULL,
	detail    TEXT NOT NULL
);
CREATE INDEX audit_workspace ON audit (workspace, seq);`,
}

// migrateLock is the pg_advisory_xact_lock key (one bigint) that serializes
// migrations of replicas starting together. Row-level locks use the
// two-integer form, a separate key space.
const migrateLock int64 = 0x6b65796175746878 // "keyauthx"

// Migrate brings the database schema up to date in one transaction, under an
// advisory lock so that replicas starting together apply each migration once.
// Open calls it; it is safe to call again.
func (s *Store) Migrate(ctx context.Context) error {
	var applied []int
	err := s.write(ctx, func(tx pgx.Tx) error {
		// The wait for the lock has its own bound: another replica holds it for as
		// long as its migrations take, which statement_timeout is not meant to cover.
		var stmtTimeout string
		if err := tx.QueryRow(ctx, `SELECT current_setting('statement_timeout')`).Scan(&stmtTimeout); err != nil {
			return fmt.Errorf("read statement_timeout: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`,
			strconv.FormatInt(max(s.lockWait.Milliseconds(), 1), 10)); err != nil {
			return fmt.Errorf("set migration lock timeout: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLock); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "57014" && ctx.Err() == nil { // query_canceled: the timeout
				return fmt.Errorf("lock schema: another session held the migration lock for longer than %v (store.migrate_lock_timeout): %w", s.lockWait, err)
			}
			return fmt.Errorf("lock schema: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, stmtTimeout); err != nil {
			return fmt.Errorf("restore statement_timeout: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			applied_at BIGINT NOT NULL)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		var cur int
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if cur > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", cur, len(migrations))
		}
		for v := cur + 1; v <= len(migrations); v++ {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("apply migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`,
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
