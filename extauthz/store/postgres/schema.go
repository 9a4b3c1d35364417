package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// migrations are applied in order; migrations[i] brings the schema to version i+1.
// Never edit an applied migration: append a new one. Migration 1 is the
// sqlite store's (row.Schema1 spells both), with these differences:
//
//   - digests are BYTEA instead of BLOB;
//   - text columns that are compared or ordered (ids, workspace, name) use
//     COLLATE "C", so ordering and List cursors are bytewise, as in SQLite and
//     Go, whatever the database's default collation;
//   - changes.seq is a plain BIGINT taken from the one-row change_seq counter
//     (see appendChange), not an identity, so the feed is gapless and numbered
//     in commit order; audit.seq is an identity column.
//
// Migration 2 is PostgreSQL's own spelling of the round-4 tables (workspace
// records, hourly usage): workspaces.max_keys is NULL when the record sets
// none, and key_usage.hour is a TIMESTAMPTZ.
var migrations = []string{
	// 1: keys, digests, change feed, audit log.
	row.Schema1(row.Dialect{
		Blob: "BYTEA",
		Text: `TEXT COLLATE "C"`,
		Counter: `CREATE TABLE change_seq (
	one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
	seq BIGINT NOT NULL
);
INSERT INTO change_seq (seq) VALUES (0);

`,
		Seq:      "BIGINT PRIMARY KEY",
		AuditSeq: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
	}),
	// 2: disabled keys, workspace records, hourly usage counts, the workspace
	// of a change. Adding a column with a constant default rewrites no table.
	// key_usage has no foreign key to keys: usage writes never touch the keys
	// table (rows of a deleted key are harmless and age out with the others).
	// Its counters are named by apikey.Outcome.String(); hour is the UTC hour start.
	`ALTER TABLE keys ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE workspaces (
	id         TEXT COLLATE "C" PRIMARY KEY,
	rate_limit TEXT NOT NULL DEFAULT '',
	max_keys   INTEGER,
	grants     TEXT NOT NULL DEFAULT '',
	disabled   BOOLEAN NOT NULL DEFAULT FALSE,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);

CREATE TABLE key_usage (
	key_id              TEXT COLLATE "C" NOT NULL,
	hour                TIMESTAMPTZ NOT NULL,
	allowed             BIGINT NOT NULL DEFAULT 0,
	rate_limited        BIGINT NOT NULL DEFAULT 0,
	forbidden           BIGINT NOT NULL DEFAULT 0,
	disabled            BIGINT NOT NULL DEFAULT 0,
	expired             BIGINT NOT NULL DEFAULT 0,
	revoked             BIGINT NOT NULL DEFAULT 0,
	not_yet_valid       BIGINT NOT NULL DEFAULT 0,
	limiter_unavailable BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (key_id, hour)
);
CREATE INDEX key_usage_hour ON key_usage (hour);
CREATE INDEX digests_pepper ON digests (pepper_version, key_id);

ALTER TABLE changes ADD COLUMN workspace TEXT COLLATE "C" NOT NULL DEFAULT '';`,
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
	err := s.write(ctx, func(tx pgx.Tx) (err error) {
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
		// A migration may build an index over millions of rows: it runs without
		// statement_timeout, which bounds the Check path's and the API's statements.
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', '0', true)`); err != nil {
			return fmt.Errorf("lift statement_timeout: %w", err)
		}
		applied, err = row.Migrate(migrations,
			func(q string) error { _, err := tx.Exec(ctx, q); return err },
			func(q string, n *int) error { return tx.QueryRow(ctx, q).Scan(n) })
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, stmtTimeout); err != nil {
			return fmt.Errorf("restore statement_timeout: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	row.LogApplied(s.log, applied)
	return nil
}
