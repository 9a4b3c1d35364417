package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// checkConns is the number of connections kept for CheckReader's reads.
const checkConns = 4

// checkSQL selects what the Check path keeps of the key a digest belongs to, in
// checkRow's order, and the digest's grace end.
const checkSQL = `SELECT k.id, k.workspace, k.rate_limit, k.grants, k.not_before, k.revoked_at,
	k.expires_at, d.expires_at, k.disabled, k.metadata, w.rate_limit, w.grants, w.disabled
	FROM digests d JOIN keys k ON k.id = d.key_id ` + row.JoinWorkspaceV2 + `
	WHERE d.digest = ? AND d.pepper_version = ?`

// checkRow indexes the columns of checkSQL.
const (
	colID = iota
	colWorkspace
	colRate
	colGrants
	colNotBefore
	colRevoked
	colExpires
	colGrace
	colDisabled
	colMeta
	colSpaceRate
	colSpaceGrants
	colSpaceDisabled
	checkCols
)

// checkConn is one read-only connection that runs only checkSQL, outside
// database/sql: its argument and row buffers are reused from read to read.
type checkConn struct {
	conn driver.Conn
	stmt driver.StmtQueryContext
	sum  [32]byte // args[0] is a slice of it
	args [2]driver.NamedValue
	row  [checkCols]driver.Value
}

// openCheckConn opens a connection with d (the registered driver) and prepares checkSQL.
func openCheckConn(ctx context.Context, d driver.Driver, name string) (*checkConn, error) {
	conn, err := d.Open(name)
	if err != nil {
		return nil, err
	}
	pc, ok := conn.(driver.ConnPrepareContext)
	if !ok {
		_ = conn.Close()
		return nil, errors.New("driver cannot prepare with a context")
	}
	st, err := pc.PrepareContext(ctx, checkSQL)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	sq, ok := st.(driver.StmtQueryContext)
	if !ok {
		_ = st.Close()
		_ = conn.Close()
		return nil, errors.New("driver statement cannot query with a context")
	}
	c := &checkConn{conn: conn, stmt: sq}
	c.args[0] = driver.NamedValue{Ordinal: 1, Value: c.sum[:]}
	c.args[1] = driver.NamedValue{Ordinal: 2}
	return c, nil
}

func (c *checkConn) close() error {
	return errors.Join(c.stmt.(driver.Stmt).Close(), c.conn.Close())
}

// CheckReader returns a Lookuper for the key cache in front of the Check path.
// Its Keys carry only what the cache keeps (ID, Workspace, ExpiresAt, NotBefore,
// RevokedAt, RateLimit, Grants, Metadata, Disabled, Space, PepperVersion);
// Lookup reads the whole record.
// It reads over connections of its own with a prepared statement, without
// database/sql's per-query bookkeeping, so a cache miss costs a few allocations.
func (s *Store) CheckReader() apikey.Lookuper { return checkReader{s} }

// checkReader is the Lookuper CheckReader returns.
type checkReader struct{ s *Store }

var _ apikey.Lookuper = checkReader{}

// Lookup reads the Check path's part of the key whose digest equals d.
func (r checkReader) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	return r.s.lookupCheck(ctx, d)
}

// lookupCheck is CheckReader's Lookup.
func (s *Store) lookupCheck(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	var c *checkConn
	select {
	case c = <-s.checks:
	default:
		select {
		case c = <-s.checks:
		case <-s.closed:
			return apikey.Key{}, errors.New("sqlite lookup: store closed")
		case <-ctx.Done():
			return apikey.Key{}, fmt.Errorf("sqlite lookup: %w", ctx.Err())
		}
	}
	defer func() { s.checks <- c }()
	k, err := c.lookup(ctx, d)
	if err != nil && !errors.Is(err, apikey.ErrNotFound) {
		return apikey.Key{}, fmt.Errorf("sqlite lookup: %w", err)
	}
	return k, err
}

// lookup runs checkSQL for d on c.
func (c *checkConn) lookup(ctx context.Context, d apikey.Digest) (k apikey.Key, err error) {
	c.sum = d.Sum
	c.args[1].Value = int64(d.Version)
	rows, err := c.stmt.QueryContext(ctx, c.args[:])
	if err != nil {
		return apikey.Key{}, err
	}
	vals := c.row[:]
	defer func() {
		clear(vals) // drop the strings: c outlives the read
		if cerr := rows.Close(); err == nil && cerr != nil {
			k, err = apikey.Key{}, cerr
		}
	}()
	switch err := rows.Next(vals); {
	case errors.Is(err, io.EOF):
		return apikey.Key{}, apikey.ErrNotFound
	case err != nil:
		return apikey.Key{}, err
	}
	var ok1, ok2 bool
	k.ID, ok1 = vals[colID].(string)
	k.Workspace, ok2 = vals[colWorkspace].(string)
	if !ok1 || !ok2 {
		return apikey.Key{}, fmt.Errorf("id or workspace of type %T, %T: want text", vals[colID], vals[colWorkspace])
	}
	k.NotBefore = microsValue(vals[colNotBefore])
	k.RevokedAt = microsValue(vals[colRevoked])
	k.ExpiresAt = row.GraceExpiry(microsValue(vals[colExpires]), microsValue(vals[colGrace]))
	k.PepperVersion = d.Version
	rate, _ := vals[colRate].(string)
	grants, _ := vals[colGrants].(string)
	meta, _ := vals[colMeta].(string)
	if err := row.Decode(&k, rate, grants, meta); err != nil {
		return apikey.Key{}, err
	}
	k.Disabled = truthy(vals[colDisabled])
	rate, _ = vals[colSpaceRate].(string)
	grants, _ = vals[colSpaceGrants].(string)
	if err := row.DecodePolicy(&k.Space, rate, grants); err != nil {
		return apikey.Key{}, fmt.Errorf("workspace %s: %w", k.Workspace, err)
	}
	k.Space.Disabled = truthy(vals[colSpaceDisabled])
	return k, nil
}

// truthy maps a boolean column's value (an integer in SQLite; NULL when the
// workspace has no record) to a bool.
func truthy(v driver.Value) bool {
	switch b := v.(type) {
	case int64:
		return b != 0
	case bool:
		return b
	}
	return false
}

// microsValue maps a time column's value to a time: zero for NULL, Unix microseconds otherwise.
func microsValue(v driver.Value) time.Time {
	if us, ok := v.(int64); ok {
		return time.UnixMicro(us).UTC()
	}
	return time.Time{}
}
