// Package sqlite is the embedded key store: one SQLite file (pure-Go driver
// modernc.org/sqlite) in WAL mode. Writes go through a single connection that
// opens every transaction with BEGIN IMMEDIATE, so the workspace limit and name
// checks are atomic with the insert, also against other processes (the CLI)
// writing the same file; reads use a small separate pool and do not block on
// writers, and the key cache's misses read through CheckReader's connections
// of their own. Only digests are stored, never a secret.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

var _ apikey.Store = (*Store)(nil)

const (
	busyTimeout = 5 * time.Second // wait for another process's write lock
	readConns   = 4               // reader pool size
)

// Store is an apikey.Store backed by a SQLite file.
type Store struct {
	w      *sql.DB // one connection; BEGIN IMMEDIATE
	r      *sql.DB // readers, query_only
	lookup *sql.Stmt
	log    *zap.Logger

	checks  chan *checkConn // CheckReader's connections, when idle
	nchecks int             // how many were opened
	closed  chan struct{}   // closed by Close

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the SQLite database file at path and applies
// pending schema migrations.
func Open(ctx context.Context, path string, log *zap.Logger) (*Store, error) {
	if path == "" || path == ":memory:" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite path %q: want a file path without '?' or '#'", path)
	}
	if log == nil {
		log = zap.NewNop()
	}
	if err := createPrivate(path, log); err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	s := &Store{w: w, log: log, checks: make(chan *checkConn, checkConns), closed: make(chan struct{})}
	if err := s.Migrate(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r.SetMaxOpenConns(readConns)
	r.SetMaxIdleConns(readConns)
	r.SetConnMaxIdleTime(0)
	r.SetConnMaxLifetime(0)
	s.r = r
	if s.lookup, err = r.PrepareContext(ctx, lookupSQL); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("sqlite %s: prepare lookup: %w", path, err)
	}
	for range checkConns {
		c, err := openCheckConn(ctx, r.Driver(), dsn(path, false))
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("sqlite %s: open check reader: %w", path, err)
		}
		s.checks <- c
		s.nchecks++
	}
	s.log.Debug("opened sqlite store", zap.String("path", path))
	return s, nil
}

// dsn builds the driver's connection string for path.
func dsn(path string, write bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	if write {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	return path + "?" + q.Encode()
}

// Close closes the connections, waiting for CheckReader reads in flight; it is
// safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		var errs []error
		for range s.nchecks {
			errs = append(errs, (<-s.checks).close())
		}
		if s.lookup != nil {
			errs = append(errs, s.lookup.Close())
		}
		if s.r != nil {
			errs = append(errs, s.r.Close())
		}
		errs = append(errs, s.w.Close())
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Ping reports whether the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.r.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("sqlite ping: %w", err)
	}
	return nil
}

// write runs fn in one BEGIN IMMEDIATE transaction on the writer connection.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite commit: %w", err)
	}
	return nil
}

// ---------------------------------------------------------------- queries

// lookupSQL is the Lookup query: the digests primary key, then the keys one.
const lookupSQL = `SELECT ` + row.KeyColsV2 + `, d.expires_at
	FROM digests d JOIN keys k ON k.id = d.key_id ` + row.JoinWorkspaceV2 + `
	WHERE d.digest = ? AND d.pepper_version = ?`

// querier is what query needs of a *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// query runs a read returning rows, each scanned by scan.
func query[T any](ctx context.Context, db querier, scan func(row.Scanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// scanKey reads row.KeyColsV2 from one row.
func scanKey(sc row.Scanner) (apikey.Key, error) { return row.ScanKeyV2(sc) }

// liveKeySQL reads a live key by id with its workspace's policy.
const liveKeySQL = `SELECT ` + row.KeyColsV2 + ` FROM ` + row.KeyFromV2 + ` WHERE k.id = ? AND k.revoked_at IS NULL`

// ---------------------------------------------------------------- reads

// Lookup returns the key whose digest equals d (sum and pepper version). A
// revoked key comes back with RevokedAt set; a grace digest's key comes back
// with ExpiresAt at the earlier of the key's expiry and the grace end.
func (s *Store) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	k, err := row.ScanLookupV2(s.lookup.QueryRowContext(ctx, d.Sum[:], d.Version), d.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return apikey.Key{}, apikey.ErrNotFound
	}
	if err != nil {
		return apikey.Key{}, fmt.Errorf("sqlite lookup: %w", err)
	}
	return k, nil
}

// Get returns a live key by id.
func (s *Store) Get(ctx context.Context, id string) (apikey.Key, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, liveKeySQL, id))
	if errors.Is(err, sql.ErrNoRows) {
		return apikey.Key{}, apikey.ErrNotFound
	}
	if err != nil {
		return apikey.Key{}, fmt.Errorf("sqlite get %s: %w", id, err)
	}
	return k, nil
}

// List returns a workspace's live keys ordered by id, after the cursor; limit <= 0 means all.
func (s *Store) List(ctx context.Context, workspace, after string, limit int) ([]apikey.Key, error) {
	out, err := query(ctx, s.r, scanKey, `SELECT `+row.KeyColsV2+` FROM `+row.KeyFromV2+`
		WHERE k.workspace = ? AND k.revoked_at IS NULL AND k.id > ?
		ORDER BY k.id LIMIT ?`, workspace, after, sqlLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlite list: %w", err)
	}
	return out, nil
}

func sqlLimit(n int) int {
	if n <= 0 {
		return -1 // SQLite: no limit
	}
	return n
}

// Changes returns feed entries with Seq > after, oldest first; limit <= 0 means all.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]apikey.Change, error) {
	out, err := query(ctx, s.r, row.ScanChangeV2, `SELECT `+row.ChangeColsV2+` FROM changes
		WHERE seq > ? ORDER BY seq LIMIT ?`, after, sqlLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlite changes: %w", err)
	}
	return out, nil
}

// LastSeq returns the newest change Seq, 0 when the feed is empty.
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM changes`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("sqlite last seq: %w", err)
	}
	return seq, nil
}

// KeysByPepper counts the live (not revoked) keys by the pepper version of
// their usable digests: a key with a grace digest counts under both versions.
func (s *Store) KeysByPepper(ctx context.Context) (map[int]int, error) {
	rows, err := query(ctx, s.r, row.ScanCount, row.KeysByPepperSQL, time.Now().UnixMicro())
	if err != nil {
		return nil, fmt.Errorf("sqlite keys by pepper: %w", err)
	}
	return row.Counts(rows), nil
}

// Events returns a workspace's audit events with Seq > after, oldest first; limit <= 0 means all.
func (s *Store) Events(ctx context.Context, workspace string, after int64, limit int) ([]apikey.Event, error) {
	out, err := query(ctx, s.r, row.ScanEvent, `SELECT `+row.EventCols+` FROM audit
		WHERE workspace = ? AND seq > ? ORDER BY seq LIMIT ?`, workspace, after, sqlLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlite events: %w", err)
	}
	return out, nil
}

// ---------------------------------------------------------------- writes

// Create stores a new key and its digest, atomically with the workspace limit and
// live-name checks. A zero ID or CreatedAt is filled in.
func (s *Store) Create(ctx context.Context, nk apikey.NewKey) (apikey.Key, error) {
	k, at, grants, meta, err := row.NewKey(nk.Key)
	if err != nil {
		return apikey.Key{}, fmt.Errorf("sqlite create: %w", err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		max := nk.Max
		rec, err := getWorkspace(ctx, tx, k.Workspace)
		switch {
		case err == nil:
			k.Space = rec.Policy()
			if rec.MaxKeys > 0 {
				max = rec.MaxKeys
			}
		case !errors.Is(err, apikey.ErrNotFound):
			return fmt.Errorf("sqlite create: %w", err)
		}
		if max > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keys
				WHERE workspace = ? AND revoked_at IS NULL`, k.Workspace).Scan(&n); err != nil {
				return fmt.Errorf("sqlite create: count keys: %w", err)
			}
			if n >= max {
				return fmt.Errorf("workspace %q holds %d keys (max %d): %w", k.Workspace, n, max, apikey.ErrLimit)
			}
		}
		var taken int
		err = tx.QueryRowContext(ctx, `SELECT 1 FROM keys
			WHERE workspace = ? AND name = ? AND revoked_at IS NULL`, k.Workspace, k.Name).Scan(&taken)
		switch {
		case err == nil:
			return fmt.Errorf("workspace %q, name %q: %w", k.Workspace, k.Name, apikey.ErrNameTaken)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("sqlite create: check name: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO keys (id, workspace, name, display, created_at,
			expires_at, not_before, rate_limit, grants, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			k.ID, k.Workspace, k.Name, k.Display, k.CreatedAt.UnixMicro(), row.Micros(k.ExpiresAt),
			row.Micros(k.NotBefore), k.RateLimit.String(), grants, meta); err != nil {
			return fmt.Errorf("sqlite create: insert key: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO digests (digest, key_id, pepper_version) VALUES (?, ?, ?)`,
			nk.Digest.Sum[:], k.ID, nk.Digest.Version); err != nil {
			return fmt.Errorf("sqlite create: insert digest: %w", err)
		}
		if err := addChange(ctx, tx, at, k.ID, k.Workspace, apikey.Created, [][32]byte{nk.Digest.Sum}); err != nil {
			return err
		}
		return addEvent(ctx, tx, apikey.Event{At: at, Kind: "created", Workspace: k.Workspace, KeyID: k.ID, Actor: nk.Actor})
	})
	if err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

// Refresh replaces a live key's digest with d and its display form with display.
// With grace 0 the old digests are dropped at once; otherwise they stay usable
// until now+grace.
func (s *Store) Refresh(ctx context.Context, id string, d apikey.Digest, display string, grace time.Duration, actor string) (apikey.Key, error) {
	var k apikey.Key
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		if k, err = liveKey(ctx, tx, id, "refresh"); err != nil {
			return err
		}
		at := row.Now()
		if _, err := tx.ExecContext(ctx, `DELETE FROM digests WHERE expires_at IS NOT NULL AND expires_at <= ?`,
			at.UnixMicro()); err != nil {
			return fmt.Errorf("sqlite refresh: prune grace digests: %w", err)
		}
		old, err := keyDigests(ctx, tx, id)
		if err != nil {
			return err
		}
		detail := ""
		if grace <= 0 {
			_, err = tx.ExecContext(ctx, `DELETE FROM digests WHERE key_id = ?`, id)
		} else {
			end := at.Add(grace).UnixMicro()
			detail = "grace " + grace.String()
			_, err = tx.ExecContext(ctx, `UPDATE digests SET expires_at = ?
				WHERE key_id = ? AND (expires_at IS NULL OR expires_at > ?)`, end, id, end)
		}
		if err != nil {
			return fmt.Errorf("sqlite refresh: old digests: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO digests (digest, key_id, pepper_version) VALUES (?, ?, ?)`,
			d.Sum[:], id, d.Version); err != nil {
			return fmt.Errorf("sqlite refresh: insert digest: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET display = ? WHERE id = ?`, display, id); err != nil {
			return fmt.Errorf("sqlite refresh: display: %w", err)
		}
		k.Display = display
		if err := addChange(ctx, tx, at, id, k.Workspace, apikey.Refreshed, old); err != nil {
			return err
		}
		return addEvent(ctx, tx, apikey.Event{At: at, Kind: "refreshed", Workspace: k.Workspace, KeyID: id, Actor: actor, Detail: detail})
	})
	if err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

// Delete revokes a live key at once; its digests stay so Lookup reports it revoked.
func (s *Store) Delete(ctx context.Context, id, actor string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		var ws string
		err := tx.QueryRowContext(ctx, `SELECT workspace FROM keys WHERE id = ? AND revoked_at IS NULL`, id).Scan(&ws)
		if errors.Is(err, sql.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("sqlite delete %s: %w", id, err)
		}
		at := row.Now()
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET revoked_at = ? WHERE id = ?`, at.UnixMicro(), id); err != nil {
			return fmt.Errorf("sqlite delete %s: %w", id, err)
		}
		ds, err := keyDigests(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := addChange(ctx, tx, at, id, ws, apikey.Deleted, ds); err != nil {
			return err
		}
		return addEvent(ctx, tx, apikey.Event{At: at, Kind: "deleted", Workspace: ws, KeyID: id, Actor: actor})
	})
}

// Rehash moves old's key (and grace end) to digest d and drops old.
func (s *Store) Rehash(ctx context.Context, old, d apikey.Digest) error {
	if old == d {
		return nil
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		var (
			id, ws string
			end    sql.NullInt64
		)
		err := tx.QueryRowContext(ctx, `SELECT d.key_id, d.expires_at, k.workspace FROM digests d JOIN keys k ON k.id = d.key_id
			WHERE d.digest = ? AND d.pepper_version = ?`, old.Sum[:], old.Version).Scan(&id, &end, &ws)
		if errors.Is(err, sql.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("sqlite rehash: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO digests (digest, key_id, pepper_version, expires_at)
			VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING`, d.Sum[:], id, d.Version, end); err != nil {
			return fmt.Errorf("sqlite rehash: insert digest: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM digests WHERE digest = ?`, old.Sum[:]); err != nil {
			return fmt.Errorf("sqlite rehash: drop digest: %w", err)
		}
		// The new digest too: caches may hold a negative entry for it from
		// before the move, which would deny the key once old is gone.
		return addChange(ctx, tx, row.Now(), id, ws, apikey.Rehashed, [][32]byte{d.Sum, old.Sum})
	})
}

// Audit appends an audit event; a zero At is stamped with now.
func (s *Store) Audit(ctx context.Context, e apikey.Event) error {
	if e.At.IsZero() {
		e.At = row.Now()
	}
	return s.write(ctx, func(tx *sql.Tx) error { return addEvent(ctx, tx, e) })
}

func keyDigests(ctx context.Context, tx *sql.Tx, id string) ([][32]byte, error) {
	out, err := query(ctx, tx, row.ScanDigest, `SELECT digest FROM digests WHERE key_id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("sqlite digests of %s: %w", id, err)
	}
	return out, nil
}

// addChange appends a change-feed entry for key id (or "" for a workspace change) of workspace ws.
func addChange(ctx context.Context, tx *sql.Tx, at time.Time, id, ws string, kind apikey.ChangeKind, ds [][32]byte) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO changes (at, key_id, kind, digests, workspace) VALUES (?, ?, ?, ?, ?)`,
		at.UnixMicro(), id, string(kind), row.JoinDigests(ds), ws); err != nil {
		return fmt.Errorf("sqlite record change: %w", err)
	}
	return nil
}

func addEvent(ctx context.Context, tx *sql.Tx, e apikey.Event) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit (at, kind, workspace, key_id, actor, detail)
		VALUES (?, ?, ?, ?, ?, ?)`, e.At.UnixMicro(), e.Kind, e.Workspace, e.KeyID, e.Actor, e.Detail); err != nil {
		return fmt.Errorf("sqlite record audit event: %w", err)
	}
	return nil
}

// createPrivate creates the database file, if it does not exist yet, with mode
// 0600: SQLite gives its -wal and -shm files the database file's mode, and
// left to itself it would create all three 0644 (under the usual umask). An
// existing file keeps its mode; a warning says when others may read it.
func createPrivate(path string, log *zap.Logger) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		return f.Close()
	case !errors.Is(err, fs.ErrExist):
		return err
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return err
	case fi.IsDir():
		return errors.New("is a directory, not a database file")
	case fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0:
		log.Warn("database file is accessible to group or others; chmod 600 it (its -wal and -shm files follow)",
			zap.String("file", path), zap.String("mode", fmt.Sprintf("%#o", fi.Mode().Perm())))
	}
	return nil
}

// liveKey reads the live key id inside tx (apikey.ErrNotFound when there is none).
func liveKey(ctx context.Context, tx *sql.Tx, id, op string) (apikey.Key, error) {
	k, err := scanKey(tx.QueryRowContext(ctx, liveKeySQL, id))
	if errors.Is(err, sql.ErrNoRows) {
		return k, apikey.ErrNotFound
	}
	if err != nil {
		return k, fmt.Errorf("sqlite %s %s: %w", op, id, err)
	}
	return k, nil
}
