package sqlite

import (
	"context"
	"database/sql"

	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// migrations are applied in order; migrations[i] brings the schema to version i+1.
// Never edit an applied migration: append a new one. They are the postgres
// store's, version for version (row.Schema1 spells both); here the seq
// columns are INTEGER PRIMARY KEY AUTOINCREMENT and digests are BLOB.
var migrations = []string{
	// 1: keys, digests, change feed, audit log.
	row.Schema1(row.Dialect{
		Blob:     "BLOB",
		Text:     "TEXT",
		Seq:      "INTEGER PRIMARY KEY AUTOINCREMENT",
		AuditSeq: "INTEGER PRIMARY KEY AUTOINCREMENT",
	}),
	// 2: keys.disabled, workspace records, hourly usage, changes.workspace.
	row.Schema2(row.Dialect{Text: "TEXT"}),
}

// Migrate brings the database schema up to date in one transaction. Open calls
// it; it is safe to call again and safe against concurrent processes.
func (s *Store) Migrate(ctx context.Context) error {
	var applied []int
	err := s.write(ctx, func(tx *sql.Tx) (err error) {
		applied, err = row.Migrate(migrations,
			func(q string) error { _, err := tx.ExecContext(ctx, q); return err },
			func(q string, n *int) error { return tx.QueryRowContext(ctx, q).Scan(n) })
		return err
	})
	if err != nil {
		return err
	}
	row.LogApplied(s.log, applied)
	return nil
}
