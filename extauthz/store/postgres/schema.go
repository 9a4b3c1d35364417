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
// Never edit an applied migration: append a new one. They are the sqlite
// store's migrations, version for version (row.Schema1 spells both), with
// these differences:
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
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, stmtTimeout); err != nil {
			return fmt.Errorf("restore statement_timeout: %w", err)
		}
		applied, err = row.Migrate(migrations,
			func(q string) error { _, err := tx.Exec(ctx, q); return err },
			func(q string, n *int) error { return tx.QueryRow(ctx, q).Scan(n) })
		return err
	})
	if err != nil {
		return err
	}
	row.LogApplied(s.log, applied)
	return nil
}
