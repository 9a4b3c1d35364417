// Package postgres is the key store shared by many replicas: PostgreSQL through
// a pgx/v5 connection pool, with the sqlite store's schema and migrations.
//
// Concurrency: every write runs in one READ COMMITTED transaction. Create takes
// a transaction-scoped advisory lock on its workspace before counting, so the
// workspace limit holds against concurrent creates on any replica; a partial
// unique index keeps live names unique. Writes that append to the change feed
// take the next number from a one-row counter (UPDATE … RETURNING) as their last
// step: the row lock serializes feed writers until commit, so Seq is gapless and
// follows commit order, and a reader never sees Seq n+1 before n. Key writes are
// rare, so this single point of serialization costs nothing that matters, and it
// spares the cache follower its hole-in-the-feed grace period and cache purges.
// Every feed append also calls pg_notify in the same transaction (delivered on
// commit), which Listen turns into callbacks. Audit events take their Seq from
// an identity column instead (they are written on the Check path too, and
// nobody follows them live).
//
// Bulk writes (Touch, AddUsage: a usage flush of every key used in the
// interval) go in chunks of bounded size, each one statement that the planner
// can only serve from a primary key, so none nears statement_timeout however
// large the keys table (see usage.go).
//
// Connection loss: a server restart or failover kills every pooled connection
// at once. The first call that meets a dead connection resets the pool, and
// reads (and write transactions that failed before their commit) are retried
// once on a fresh connection, so a restart does not fail a burst of calls.
//
// Only digests are stored, never a secret; the URL's password never appears
// in an error or a log line.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

var _ apikey.Store = (*Store)(nil)

const (
	// Channel is the LISTEN/NOTIFY channel every feed append notifies, with the Seq as payload.
	Channel = "keyauthz_changes"
	// defaultConnectTimeout bounds one connection attempt when the URL sets no connect_timeout.
	defaultConnectTimeout = 5 * time.Second
	// workspaceLocks is the first key of the two-integer advisory locks taken per
	// workspace (the second is hashtext(workspace)).
	workspaceLocks int32 = 0x6b7a7773 // "kzws"
)

// Options tune the connection pool; zero values keep pgx's or the server's defaults.
type Options struct {
	MaxConns         int32         // pool size (0: the URL's pool_max_conns or pgx's default)
	StatementTimeout time.Duration // server-side statement_timeout per connection (0: server default)
	// MigrateLockTimeout bounds Migrate's wait for the migration lock another
	// replica holds; it replaces StatementTimeout for that wait only (0: DefaultMigrateLockTimeout).
	MigrateLockTimeout time.Duration
	// Existing opens only a database keyauthz has migrated before: without
	// its schema_migrations table Open fails with ErrNoSchema and creates
	// nothing (the commands that must not create a store by accident).
	Existing bool
}

// ErrNoSchema is Open's error, with Options.Existing, for a database that
// holds no keyauthz schema.
var ErrNoSchema = errors.New("no keyauthz schema in the database")

// DefaultMigrateLockTimeout is the migration lock wait when Options set none.
const DefaultMigrateLockTimeout = time.Minute

// Store is an apikey.Store backed by PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	conn *pgx.ConnConfig // for Listen's dedicated connection
	log  *zap.Logger

	listenIdle time.Duration // how long Listen waits for a notification before pinging
	lockWait   time.Duration // how long Migrate waits for the migration lock

	closeOnce sync.Once
	done      chan struct{} // closed by Close

	// observe, when set (tests), is told each bounded write statement's
	// duration: op ("touch", "add_usage", "prune_usage"), its rows, and how long it took.
	observe func(op string, rows int, took time.Duration)
}

// Open connects to the database url names (postgres://… or a key=value DSN),
// applies pending schema migrations and returns the store.
func Open(ctx context.Context, url string, log *zap.Logger, opt Options) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	safe := config.RedactURL(url)
	secrets, parsable := config.URLSecrets(url)
	if !parsable { // no message about it could be shown safely, not even pgx's
		return nil, fmt.Errorf("postgres url %s: cannot be parsed unambiguously (percent-encode reserved characters such as @ : / ? # in the password)", safe)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres url %s: %s", safe, scrub(err.Error(), secrets...))
	}
	if opt.MaxConns < 0 || opt.StatementTimeout < 0 || opt.MigrateLockTimeout < 0 {
		return nil, fmt.Errorf("postgres %s: negative max conns (%d), statement timeout (%v) or migrate lock timeout (%v)",
			safe, opt.MaxConns, opt.StatementTimeout, opt.MigrateLockTimeout)
	}
	if opt.MaxConns > 0 {
		cfg.MaxConns = opt.MaxConns
	}
	cfg.MinConns = min(cfg.MinConns, cfg.MaxConns)
	cc := cfg.ConnConfig
	if opt.StatementTimeout > 0 {
		cc.RuntimeParams["statement_timeout"] = strconv.FormatInt(max(opt.StatementTimeout.Milliseconds(), 1), 10)
	}
	if cc.RuntimeParams["application_name"] == "" {
		cc.RuntimeParams["application_name"] = "keyauthz"
	}
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = defaultConnectTimeout
	}
	pw := append(secrets, cc.Password)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, redacted(fmt.Errorf("postgres %s: %w", safe, err), pw)
	}
	s := &Store{
		pool:       pool,
		conn:       cc.Copy(),
		log:        log,
		listenIdle: 30 * time.Second,
		lockWait:   opt.MigrateLockTimeout,
		done:       make(chan struct{}),
	}
	if s.lockWait == 0 {
		s.lockWait = DefaultMigrateLockTimeout
	}
	if opt.Existing {
		var found bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&found); err != nil {
			pool.Close()
			return nil, redacted(fmt.Errorf("postgres %s: %w", safe, err), pw)
		}
		if !found {
			pool.Close()
			return nil, fmt.Errorf("postgres %s: %w", safe, ErrNoSchema)
		}
	}
	if err := s.Migrate(ctx); err != nil {
		pool.Close()
		return nil, redacted(fmt.Errorf("postgres %s: %w", safe, err), pw)
	}
	s.log.Debug("opened postgres store", zap.String("url", safe), zap.Int32("max_conns", cfg.MaxConns))
	return s, nil
}

// Close closes the pool (waiting for connections in use to be released) and
// ends every Listen; it is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.pool.Close()
	})
	return nil
}

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := read(ctx, s, func() (struct{}, error) { return struct{}{}, s.pool.Ping(ctx) }); err != nil {
		return fmt.Errorf("postgres ping: %w", err)
	}
	return nil
}

// write runs fn in one READ COMMITTED transaction (explicitly: the locks that
// make Create and the feed atomic rely on each statement seeing fresh commits).
// A transaction that failed before its commit because the connection was lost
// committed nothing, so it is retried once on a fresh connection; a lost
// commit is not retried (it may have been applied).
func (s *Store) write(ctx context.Context, fn func(tx pgx.Tx) error) error {
	committing, err := s.tx(ctx, fn)
	if err != nil && !committing && ctx.Err() == nil && s.lost(err) {
		committing, err = s.tx(ctx, fn)
	}
	if err != nil && committing {
		s.lost(err)
	}
	return err
}

// tx runs fn in one transaction; committing says whether err came from the commit.
func (s *Store) tx(ctx context.Context, fn func(tx pgx.Tx) error) (committing bool, err error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return false, fmt.Errorf("postgres begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return true, fmt.Errorf("postgres commit: %w", err)
	}
	return false, nil
}

// read runs an idempotent read, once more on a fresh connection if the first
// attempt found its pooled connection dead (a server restart or failover).
func read[T any](ctx context.Context, s *Store, f func() (T, error)) (T, error) {
	v, err := f()
	if err != nil && ctx.Err() == nil && s.lost(err) {
		v, err = f()
	}
	return v, err
}

// lost reports whether err means the server connection died; then every idle
// pooled connection is suspect (they all die together on a restart), so the
// pool is reset and the next calls connect afresh.
func (s *Store) lost(err error) bool {
	select {
	case <-s.done:
		return false // closed: nothing to reconnect
	default:
	}
	if !connLost(err) {
		return false
	}
	s.log.Warn("database connection lost; reconnecting", zap.Error(err))
	s.pool.Reset()
	return true
}

// Transient reports whether an Open error may clear by itself, so that opening
// again later is worthwhile: the server could not be reached (refused, timed out,
// name not resolved, connection dropped), is starting up or shutting down, or
// has no free connection slot. A bad URL, a refused login, a missing database
// or a schema newer than this binary are not transient.
func Transient(err error) bool {
	var (
		pe  *pgconn.PgError
		pce *pgconn.ParseConfigError
		ne  net.Error
	)
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.As(err, &pce):
		return false
	case errors.As(err, &pe):
		// 53300 too_many_connections; 57P01-03 admin/crash shutdown, cannot_connect_now; class 08: connection exception.
		return pe.Code == "53300" || strings.HasPrefix(pe.Code, "57P") || strings.HasPrefix(pe.Code, "08")
	}
	return errors.As(err, &ne) || pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// connLost reports whether err comes from a connection that broke (not from a
// failed connection attempt, a statement, or a context).
func connLost(err error) bool {
	var (
		pe *pgconn.PgError
		ce *pgconn.ConnectError
	)
	switch {
	case errors.As(err, &pe):
		// 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now; class 08: connection exception.
		return strings.HasPrefix(pe.Code, "57P") || strings.HasPrefix(pe.Code, "08")
	case errors.As(err, &ce), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		pgconn.Timeout(err):
		return false
	}
	var ne net.Error
	return pgconn.SafeToRetry(err) || errors.As(err, &ne) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// ---------------------------------------------------------------- secrets in URLs

// redactedError is an error whose message had the passwords scrubbed; it still
// unwraps to the original (whose own message holds no password either: pgx
// never prints one outside a connection string, and those are not wrapped here).
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redacted returns err with the given passwords scrubbed from its message.
func redacted(err error, passwords []string) error {
	return &redactedError{msg: scrub(err.Error(), passwords...), err: err}
}

// scrub replaces every occurrence of the given secrets in msg.
func scrub(msg string, secrets ...string) string {
	for _, sec := range secrets {
		if len(sec) >= 1 && sec != config.Redacted {
			msg = strings.ReplaceAll(msg, sec, config.Redacted)
		}
	}
	return msg
}

// ---------------------------------------------------------------- encoding

// limit maps "limit <= 0 means all" to a LIMIT parameter (NULL: no limit).
func limit(n int) *int64 {
	if n <= 0 {
		return nil
	}
	v := int64(n)
	return &v
}

// keyCols are the columns every key read selects from keyFrom, in scanKey's
// order: row.KeyCols, the key's disabled flag, then its workspace record's
// policy (empty when the workspace has no record).
const keyCols = row.KeyCols + `, k.disabled,
	COALESCE(w.rate_limit, ''), COALESCE(w.grants, ''), COALESCE(w.disabled, FALSE)`

// keyFrom joins each key (alias k) to its workspace's record (alias w), if any.
const keyFrom = `keys k LEFT JOIN workspaces w ON w.id = k.workspace`

// lookupSQL is the Check path's one query: the digests primary key, then the
// keys one, then the workspaces one (the workspace's policy rides along).
const lookupSQL = `SELECT ` + keyCols + `, d.expires_at
	FROM digests d JOIN keys k ON k.id = d.key_id LEFT JOIN workspaces w ON w.id = k.workspace
	WHERE d.digest = $1 AND d.pepper_version = $2`

// uniqueViolation returns the constraint a unique violation names, or "".
func uniqueViolation(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		return pe.ConstraintName
	}
	return ""
}

// ---------------------------------------------------------------- reads

// Lookup returns the key whose digest equals d (sum and pepper version). A
// revoked key comes back with RevokedAt set; a grace digest's key comes back
// with ExpiresAt at the earlier of the key's expiry and the grace end.
func (s *Store) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	k, err := read(ctx, s, func() (apikey.Key, error) {
		var grace *int64
		k, err := scanKeyWith(s.pool.QueryRow(ctx, lookupSQL, d.Sum[:], d.Version), &grace)
		k.ExpiresAt = row.GraceExpiry(k.ExpiresAt, row.Time(grace))
		k.PepperVersion = d.Version
		return k, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return apikey.Key{}, apikey.ErrNotFound
	}
	if err != nil {
		return apikey.Key{}, fmt.Errorf("postgres lookup: %w", err)
	}
	return k, nil
}

// Get returns a live key by id, with its workspace's policy.
func (s *Store) Get(ctx context.Context, id string) (apikey.Key, error) {
	k, err := read(ctx, s, func() (apikey.Key, error) {
		return scanKey(s.pool.QueryRow(ctx,
			`SELECT `+keyCols+` FROM `+keyFrom+` WHERE k.id = $1 AND k.revoked_at IS NULL`, id))
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return apikey.Key{}, apikey.ErrNotFound
	}
	if err != nil {
		return apikey.Key{}, fmt.Errorf("postgres get %s: %w", id, err)
	}
	return k, nil
}

// List returns a workspace's live keys ordered by id, after the cursor; limit <= 0 means all.
func (s *Store) List(ctx context.Context, workspace, after string, n int) ([]apikey.Key, error) {
	out, err := query(ctx, s, scanKey, `SELECT `+keyCols+` FROM `+keyFrom+`
		WHERE k.workspace = $1 AND k.revoked_at IS NULL AND k.id > $2
		ORDER BY k.id LIMIT $3`, workspace, after, limit(n))
	if err != nil {
		return nil, fmt.Errorf("postgres list: %w", err)
	}
	return out, nil
}

// ListUnused is List restricted to keys created before since and not used
// (last_used_at, set by allowed requests only) since then.
func (s *Store) ListUnused(ctx context.Context, workspace string, since time.Time, after string, n int) ([]apikey.Key, error) {
	at := since.UnixMicro()
	out, err := query(ctx, s, scanKey, `SELECT `+keyCols+` FROM `+keyFrom+`
		WHERE k.workspace = $1 AND k.revoked_at IS NULL AND k.id > $2
			AND k.created_at < $3 AND (k.last_used_at IS NULL OR k.last_used_at < $3)
		ORDER BY k.id LIMIT $4`, workspace, after, at, limit(n))
	if err != nil {
		return nil, fmt.Errorf("postgres list unused: %w", err)
	}
	return out, nil
}

// query runs a read returning rows, each scanned by scan (retried as read does).
func query[T any](ctx context.Context, s *Store, scan func(row.Scanner) (T, error), sql string, args ...any) ([]T, error) {
	return read(ctx, s, func() ([]T, error) {
		rows, err := s.pool.Query(ctx, sql, args...)
		if err != nil {
			return nil, err
		}
		return collect(rows, scan)
	})
}

// collect scans every row of rows with scan.
func collect[T any](rows pgx.Rows, scan func(row.Scanner) (T, error)) ([]T, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (T, error) { return scan(r) })
}

// scanKey reads keyCols from one row.
func scanKey(sc row.Scanner) (apikey.Key, error) { return scanKeyWith(sc) }

// scanKeyWith reads keyCols, plus extra destinations, from one row.
func scanKeyWith(sc row.Scanner, extra ...any) (apikey.Key, error) {
	var (
		disabled, wsDisabled bool
		rate, grants         string
	)
	k, err := row.ScanKey(sc, append([]any{&disabled, &rate, &grants, &wsDisabled}, extra...)...)
	if err != nil {
		return apikey.Key{}, err
	}
	k.Disabled = disabled
	if k.Space, err = decodePolicy(rate, grants, wsDisabled); err != nil {
		return apikey.Key{}, fmt.Errorf("key %s: workspace record: %w", k.ID, err)
	}
	return k, nil
}

// changeCols are the changes columns scanChange reads, in its order.
const changeCols = row.ChangeCols + `, workspace`

// scanChange reads changeCols from one row.
func scanChange(sc row.Scanner) (apikey.Change, error) {
	var (
		c    apikey.Change
		at   int64
		kind string
		ds   []byte
	)
	if err := sc.Scan(&c.Seq, &at, &c.KeyID, &kind, &ds, &c.Workspace); err != nil {
		return c, err
	}
	c.At = time.UnixMicro(at).UTC()
	c.Kind = apikey.ChangeKind(kind)
	var err error
	if c.Digests, err = row.SplitDigests(ds); err != nil {
		return c, fmt.Errorf("seq %d: %w", c.Seq, err)
	}
	return c, nil
}

// Changes returns feed entries with Seq > after, oldest first; limit <= 0 means all.
func (s *Store) Changes(ctx context.Context, after int64, n int) ([]apikey.Change, error) {
	out, err := query(ctx, s, scanChange, `SELECT `+changeCols+` FROM changes
		WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit(n))
	if err != nil {
		return nil, fmt.Errorf("postgres changes: %w", err)
	}
	return out, nil
}

// LastSeq returns the newest change Seq, 0 when the feed is empty.
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	seq, err := read(ctx, s, func() (int64, error) {
		var seq int64
		err := s.pool.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM changes`).Scan(&seq)
		return seq, err
	})
	if err != nil {
		return 0, fmt.Errorf("postgres last seq: %w", err)
	}
	return seq, nil
}

// KeysByPepper counts the live (not revoked) keys by the pepper version of
// their usable digests: a key with a grace digest counts under both versions.
func (s *Store) KeysByPepper(ctx context.Context) (map[int]int, error) {
	rows, err := query(ctx, s, row.ScanCount, strings.Replace(row.KeysByPepperSQL, "?", "$1", 1), time.Now().UnixMicro())
	if err != nil {
		return nil, fmt.Errorf("postgres keys by pepper: %w", err)
	}
	return row.Counts(rows), nil
}

// Events returns a workspace's audit events with Seq > after, oldest first; limit <= 0 means all.
// Their Seq comes from an identity column: unlike the change feed's, it may
// have holes and, with concurrent writers, commit out of order.
func (s *Store) Events(ctx context.Context, workspace string, after int64, n int) ([]apikey.Event, error) {
	out, err := query(ctx, s, row.ScanEvent, `SELECT `+row.EventCols+` FROM audit
		WHERE workspace = $1 AND seq > $2 ORDER BY seq LIMIT $3`, workspace, after, limit(n))
	if err != nil {
		return nil, fmt.Errorf("postgres events: %w", err)
	}
	return out, nil
}

// ---------------------------------------------------------------- writes

// Create stores a new key and its digest, atomically with the workspace limit
// (the workspace record's max_keys when set, else nk.Max) and live-name checks,
// under the workspace's advisory lock. A zero ID or CreatedAt is filled in; the
// key comes back with its workspace's policy, as Get returns it.
func (s *Store) Create(ctx context.Context, nk apikey.NewKey) (apikey.Key, error) {
	k, at, grants, meta, err := row.NewKey(nk.Key)
	if err != nil {
		return apikey.Key{}, fmt.Errorf("postgres create: %w", err)
	}
	err = s.write(ctx, func(tx pgx.Tx) error {
		// A separate statement: the count below must see what the previous
		// holder of the lock committed (READ COMMITTED: a snapshot per statement).
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, workspaceLocks, k.Workspace); err != nil {
			return fmt.Errorf("postgres create: lock workspace: %w", err)
		}
		var (
			n                int
			recMax           *int
			taken            bool
			wsRate, wsGrants string
			wsDisabled       bool
		)
		if err := tx.QueryRow(ctx, `SELECT c.n, c.taken, w.max_keys,
				COALESCE(w.rate_limit, ''), COALESCE(w.grants, ''), COALESCE(w.disabled, FALSE)
			FROM (SELECT COUNT(*)::int AS n, COALESCE(bool_or(name = $2), FALSE) AS taken FROM keys
				WHERE workspace = $1 AND revoked_at IS NULL) c
			LEFT JOIN workspaces w ON w.id = $1`, k.Workspace, k.Name).Scan(&n, &taken, &recMax, &wsRate, &wsGrants, &wsDisabled); err != nil {
			return fmt.Errorf("postgres create: count keys: %w", err)
		}
		maxKeys := nk.Max
		if recMax != nil && *recMax > 0 {
			maxKeys = *recMax
		}
		if maxKeys > 0 && n >= maxKeys {
			return fmt.Errorf("workspace %q holds %d keys (max %d): %w", k.Workspace, n, maxKeys, apikey.ErrLimit)
		}
		var err error
		if k.Space, err = decodePolicy(wsRate, wsGrants, wsDisabled); err != nil {
			return fmt.Errorf("postgres create: workspace record: %w", err)
		}
		if taken {
			return fmt.Errorf("workspace %q, name %q: %w", k.Workspace, k.Name, apikey.ErrNameTaken)
		}
		_, err = tx.Exec(ctx, `INSERT INTO keys (id, workspace, name, display, created_at,
			expires_at, not_before, rate_limit, grants, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			k.ID, k.Workspace, k.Name, k.Display, k.CreatedAt.UnixMicro(), row.Micros(k.ExpiresAt),
			row.Micros(k.NotBefore), k.RateLimit.String(), grants, meta)
		switch uniqueViolation(err) {
		case "":
		case "keys_live_name":
			return fmt.Errorf("workspace %q, name %q: %w", k.Workspace, k.Name, apikey.ErrNameTaken)
		default:
			return fmt.Errorf("postgres create: key id %s already exists: %w", k.ID, err)
		}
		if err != nil {
			return fmt.Errorf("postgres create: insert key: %w", err)
		}
		if err := insertDigest(ctx, tx, nk.Digest, k.ID); err != nil {
			return fmt.Errorf("postgres create: %w", err)
		}
		if err := addEvent(ctx, tx, apikey.Event{At: at, Kind: "created", Workspace: k.Workspace, KeyID: k.ID, Actor: nk.Actor}); err != nil {
			return err
		}
		return appendChange(ctx, tx, at, k.ID, "", apikey.Created, [][32]byte{nk.Digest.Sum})
	})
	if err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

func insertDigest(ctx context.Context, tx pgx.Tx, d apikey.Digest, id string) error {
	_, err := tx.Exec(ctx, `INSERT INTO digests (digest, key_id, pepper_version) VALUES ($1, $2, $3)`,
		d.Sum[:], id, d.Version)
	if uniqueViolation(err) != "" {
		return fmt.Errorf("insert digest: digest already belongs to a key: %w", err)
	}
	if err != nil {
		return fmt.Errorf("insert digest: %w", err)
	}
	return nil
}

// Refresh replaces a live key's digest with d and its display form with display.
// With grace 0 the old digests are dropped at once; otherwise they stay usable
// until now+grace. The key's expired grace digests are pruned on the way.
func (s *Store) Refresh(ctx context.Context, id string, d apikey.Digest, display string, grace time.Duration, actor string) (apikey.Key, error) {
	var k apikey.Key
	err := s.write(ctx, func(tx pgx.Tx) error {
		var err error
		k, err = scanKey(tx.QueryRow(ctx,
			`SELECT `+keyCols+` FROM `+keyFrom+` WHERE k.id = $1 AND k.revoked_at IS NULL FOR NO KEY UPDATE OF k`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("postgres refresh %s: %w", id, err)
		}
		at := row.Now()
		// Only this key's digests (locked through its row): a global prune would
		// make concurrent refreshes of different keys contend for the same rows.
		if _, err := tx.Exec(ctx, `DELETE FROM digests WHERE key_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2`,
			id, at.UnixMicro()); err != nil {
			return fmt.Errorf("postgres refresh: prune grace digests: %w", err)
		}
		old, err := keyDigests(ctx, tx, id)
		if err != nil {
			return err
		}
		detail := ""
		if grace <= 0 {
			_, err = tx.Exec(ctx, `DELETE FROM digests WHERE key_id = $1`, id)
		} else {
			end := at.Add(grace).UnixMicro()
			detail = "grace " + grace.String()
			_, err = tx.Exec(ctx, `UPDATE digests SET expires_at = $1
				WHERE key_id = $2 AND (expires_at IS NULL OR expires_at > $1)`, end, id)
		}
		if err != nil {
			return fmt.Errorf("postgres refresh: old digests: %w", err)
		}
		if err := insertDigest(ctx, tx, d, id); err != nil {
			return fmt.Errorf("postgres refresh: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE keys SET display = $1 WHERE id = $2`, display, id); err != nil {
			return fmt.Errorf("postgres refresh: display: %w", err)
		}
		k.Display = display
		if err := addEvent(ctx, tx, apikey.Event{At: at, Kind: "refreshed", Workspace: k.Workspace, KeyID: id, Actor: actor, Detail: detail}); err != nil {
			return err
		}
		return appendChange(ctx, tx, at, id, "", apikey.Refreshed, old)
	})
	if err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

// Delete revokes a live key at once; its digests stay so Lookup reports it revoked.
func (s *Store) Delete(ctx context.Context, id, actor string) error {
	return s.write(ctx, func(tx pgx.Tx) error {
		at := row.Now()
		var ws string
		err := tx.QueryRow(ctx, `UPDATE keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL
			RETURNING workspace`, id, at.UnixMicro()).Scan(&ws)
		if errors.Is(err, pgx.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("postgres delete %s: %w", id, err)
		}
		ds, err := keyDigests(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := addEvent(ctx, tx, apikey.Event{At: at, Kind: "deleted", Workspace: ws, KeyID: id, Actor: actor}); err != nil {
			return err
		}
		return appendChange(ctx, tx, at, id, "", apikey.Deleted, ds)
	})
}

// Rehash moves old's key (and grace end) to digest d and drops old.
func (s *Store) Rehash(ctx context.Context, old, d apikey.Digest) error {
	if old == d {
		return nil
	}
	return s.write(ctx, func(tx pgx.Tx) error {
		var (
			id  string
			end *int64
		)
		err := tx.QueryRow(ctx, `SELECT key_id, expires_at FROM digests WHERE digest = $1 AND pepper_version = $2
			FOR UPDATE`, old.Sum[:], old.Version).Scan(&id, &end)
		if errors.Is(err, pgx.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("postgres rehash: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO digests (digest, key_id, pepper_version, expires_at)
			VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING`, d.Sum[:], id, d.Version, end); err != nil {
			return fmt.Errorf("postgres rehash: insert digest: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM digests WHERE digest = $1`, old.Sum[:]); err != nil {
			return fmt.Errorf("postgres rehash: drop digest: %w", err)
		}
		// The new digest too: caches may hold a negative entry for it from
		// before the move, which would deny the key once old is gone.
		return appendChange(ctx, tx, row.Now(), id, "", apikey.Rehashed, [][32]byte{d.Sum, old.Sum})
	})
}

// Audit appends an audit event; a zero At is stamped with now.
func (s *Store) Audit(ctx context.Context, e apikey.Event) error {
	if e.At.IsZero() {
		e.At = row.Now()
	}
	if _, err := s.pool.Exec(ctx, insertEventSQL, e.At.UnixMicro(), e.Kind, e.Workspace, e.KeyID, e.Actor, e.Detail); err != nil {
		s.lost(err) // not retried: it may have been recorded
		return fmt.Errorf("postgres record audit event: %w", err)
	}
	return nil
}

func keyDigests(ctx context.Context, tx pgx.Tx, id string) ([][32]byte, error) {
	rows, err := tx.Query(ctx, `SELECT digest FROM digests WHERE key_id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("postgres digests of %s: %w", id, err)
	}
	out, err := collect(rows, row.ScanDigest)
	if err != nil {
		return nil, fmt.Errorf("postgres digests of %s: %w", id, err)
	}
	return out, nil
}

// appendChangeSQL takes the next Seq from the counter row (its lock is held
// until commit, so feed writers commit in Seq order and Seq has no holes),
// appends the change and notifies listeners (delivered at commit).
const appendChangeSQL = `WITH n AS (
	UPDATE change_seq SET seq = seq + 1 RETURNING seq
), c AS (
	INSERT INTO changes (seq, at, key_id, kind, digests, workspace) SELECT seq, $1, $2, $3, $4, $5 FROM n RETURNING seq
)
SELECT seq, pg_notify('` + Channel + `', seq::text) FROM c`

// appendChange records a change (and so notifies every Listen, workspace
// changes included); callers make it the last statement of their transaction,
// so that the feed's lock is held as briefly as possible.
func appendChange(ctx context.Context, tx pgx.Tx, at time.Time, id, ws string, kind apikey.ChangeKind, ds [][32]byte) error {
	var seq int64
	if err := tx.QueryRow(ctx, appendChangeSQL, at.UnixMicro(), id, string(kind), row.JoinDigests(ds), ws).Scan(&seq, nil); err != nil {
		return fmt.Errorf("postgres record change: %w", err)
	}
	return nil
}

const insertEventSQL = `INSERT INTO audit (at, kind, workspace, key_id, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)`

func addEvent(ctx context.Context, tx pgx.Tx, e apikey.Event) error {
	if _, err := tx.Exec(ctx, insertEventSQL, e.At.UnixMicro(), e.Kind, e.Workspace, e.KeyID, e.Actor, e.Detail); err != nil {
		return fmt.Errorf("postgres record audit event: %w", err)
	}
	return nil
}
