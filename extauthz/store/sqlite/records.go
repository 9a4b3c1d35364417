package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// ---------------------------------------------------------------- key updates

// ListUnused returns a workspace's live keys created before since and not used
// since then, ordered by id, after the cursor; limit <= 0 means all.
func (s *Store) ListUnused(ctx context.Context, workspace string, since time.Time, after string, limit int) ([]apikey.Key, error) {
	us := since.UnixMicro()
	out, err := query(ctx, s.r, scanKey, `SELECT `+row.KeyColsV2+` FROM `+row.KeyFromV2+`
		WHERE k.workspace = ? AND k.revoked_at IS NULL AND k.id > ? AND k.created_at < ?
		AND (k.last_used_at IS NULL OR k.last_used_at < ?)
		ORDER BY k.id LIMIT ?`, workspace, after, us, us, sqlLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlite list unused: %w", err)
	}
	return out, nil
}

// Update applies p to the live key id in one write transaction (read, apply,
// write), checking the new name against the workspace's other live keys, and
// records an Updated change with the key's digests and an "updated" audit
// event naming the patched fields. An empty patch changes and records nothing.
func (s *Store) Update(ctx context.Context, id string, p apikey.KeyPatch, actor string) (apikey.Key, error) {
	var k apikey.Key
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		if k, err = liveKey(ctx, tx, id, "update"); err != nil {
			return err
		}
		fields := row.KeyPatchFields(p)
		if fields == "" {
			return nil
		}
		p.Apply(&k)
		k.ExpiresAt = row.Norm(k.ExpiresAt)
		if p.Name != nil {
			var taken int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM keys
				WHERE workspace = ? AND name = ? AND revoked_at IS NULL AND id <> ?`, k.Workspace, k.Name, id).Scan(&taken)
			switch {
			case err == nil:
				return fmt.Errorf("workspace %q, name %q: %w", k.Workspace, k.Name, apikey.ErrNameTaken)
			case !errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("sqlite update: check name: %w", err)
			}
		}
		grants, err := row.Grants(k.Grants)
		if err != nil {
			return fmt.Errorf("sqlite update: grants: %w", err)
		}
		meta, err := row.Meta(k.Metadata)
		if err != nil {
			return fmt.Errorf("sqlite update: metadata: %w", err)
		}
		k.Grants, k.Metadata = nil, nil // as they read back
		if err := row.Decode(&k, "", grants, meta); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET name = ?, rate_limit = ?, expires_at = ?, grants = ?,
			metadata = ?, disabled = ? WHERE id = ?`, k.Name, k.RateLimit.String(), row.Micros(k.ExpiresAt),
			grants, meta, k.Disabled, id); err != nil {
			return fmt.Errorf("sqlite update %s: %w", id, err)
		}
		ds, err := keyDigests(ctx, tx, id)
		if err != nil {
			return err
		}
		at := row.Now()
		if err := addChange(ctx, tx, at, id, k.Workspace, apikey.Updated, ds); err != nil {
			return err
		}
		return addEvent(ctx, tx, apikey.Event{At: at, Kind: "updated", Workspace: k.Workspace, KeyID: id, Actor: actor, Detail: fields})
	})
	if err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

// ---------------------------------------------------------------- workspaces

// getWorkspace reads the record id through q (ErrNotFound when there is none).
func getWorkspace(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}, id string) (apikey.Workspace, error) {
	w, err := row.ScanWorkspace(q.QueryRowContext(ctx, `SELECT `+row.WorkspaceCols+` FROM workspaces WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return apikey.Workspace{}, apikey.ErrNotFound
	}
	if err != nil {
		return apikey.Workspace{}, fmt.Errorf("sqlite workspace %s: %w", id, err)
	}
	return w, nil
}

// GetWorkspace returns the record id, or apikey.ErrNotFound.
func (s *Store) GetWorkspace(ctx context.Context, id string) (apikey.Workspace, error) {
	return getWorkspace(ctx, s.r, id)
}

// ListWorkspaces returns records ordered by id, after the cursor; limit <= 0 means all.
func (s *Store) ListWorkspaces(ctx context.Context, after string, limit int) ([]apikey.Workspace, error) {
	out, err := query(ctx, s.r, row.ScanWorkspace, `SELECT `+row.WorkspaceCols+` FROM workspaces
		WHERE id > ? ORDER BY id LIMIT ?`, after, sqlLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlite list workspaces: %w", err)
	}
	return out, nil
}

// PutWorkspace creates or replaces the record w.ID (keeping CreatedAt on
// replace) and records a WorkspaceChanged change and a "workspace_updated"
// audit event ("created", or the settings that changed).
func (s *Store) PutWorkspace(ctx context.Context, w apikey.Workspace, actor string) (apikey.Workspace, bool, error) {
	var (
		out     apikey.Workspace
		created bool
	)
	err := s.write(ctx, func(tx *sql.Tx) error {
		old, err := getWorkspace(ctx, tx, w.ID)
		switch {
		case errors.Is(err, apikey.ErrNotFound):
			created = true
		case err != nil:
			return err
		}
		detail := "created"
		if !created {
			detail = row.WorkspaceChangedFields(old, w)
		}
		out, err = putWorkspace(ctx, tx, w, created)
		if err != nil {
			return err
		}
		return workspaceChanged(ctx, tx, out, actor, detail)
	})
	if err != nil {
		return apikey.Workspace{}, false, err
	}
	return out, created, nil
}

// PatchWorkspace applies p to the record id in one write transaction
// (apikey.ErrNotFound when there is none) and records a change and an audit
// event naming the patched settings.
func (s *Store) PatchWorkspace(ctx context.Context, id string, p apikey.WorkspacePatch, actor string) (apikey.Workspace, error) {
	var out apikey.Workspace
	err := s.write(ctx, func(tx *sql.Tx) error {
		w, err := getWorkspace(ctx, tx, id)
		if err != nil {
			return err
		}
		p.Apply(&w)
		if out, err = putWorkspace(ctx, tx, w, false); err != nil {
			return err
		}
		return workspaceChanged(ctx, tx, out, actor, row.WorkspacePatchFields(p))
	})
	if err != nil {
		return apikey.Workspace{}, err
	}
	return out, nil
}

// putWorkspace inserts (create) or updates the record w and returns it as stored.
func putWorkspace(ctx context.Context, tx *sql.Tx, w apikey.Workspace, create bool) (apikey.Workspace, error) {
	rate, maxKeys, grants, err := row.WorkspaceValues(w)
	if err != nil {
		return apikey.Workspace{}, fmt.Errorf("sqlite workspace %s: %w", w.ID, err)
	}
	at := row.Now().UnixMicro()
	if create {
		_, err = tx.ExecContext(ctx, `INSERT INTO workspaces (id, rate_limit, max_keys, grants, disabled, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, w.ID, rate, maxKeys, grants, w.Disabled, at, at)
	} else {
		_, err = tx.ExecContext(ctx, `UPDATE workspaces SET rate_limit = ?, max_keys = ?, grants = ?, disabled = ?,
			updated_at = ? WHERE id = ?`, rate, maxKeys, grants, w.Disabled, at, w.ID)
	}
	if err != nil {
		return apikey.Workspace{}, fmt.Errorf("sqlite write workspace %s: %w", w.ID, err)
	}
	return getWorkspace(ctx, tx, w.ID)
}

// workspaceChanged records the WorkspaceChanged change and audit event of w.
func workspaceChanged(ctx context.Context, tx *sql.Tx, w apikey.Workspace, actor, detail string) error {
	if err := addChange(ctx, tx, w.UpdatedAt, "", w.ID, apikey.WorkspaceChanged, nil); err != nil {
		return err
	}
	return addEvent(ctx, tx, apikey.Event{At: w.UpdatedAt, Kind: "workspace_updated", Workspace: w.ID, Actor: actor, Detail: detail})
}

// ---------------------------------------------------------------- usage

// placeholder spells SQLite's positional parameter.
func placeholder(int) string { return "?" }

// fullChunkUsageSQL is the upsert of a full chunk of usage rows.
var fullChunkUsageSQL = row.AddUsageSQL(row.ChunkRows, placeholder)

// AddUsage adds each row's counts to its (key, hour) bucket, in one
// transaction of upserts of at most row.ChunkRows rows each. Rows of unknown
// keys are kept until pruned.
func (s *Store) AddUsage(ctx context.Context, rows []apikey.Usage) error {
	rows = row.MergeUsage(rows)
	if len(rows) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		args := make([]any, 0, min(len(rows), row.ChunkRows)*(2+int(apikey.NumOutcomes)))
		for chunk := range slices.Chunk(rows, row.ChunkRows) {
			q := fullChunkUsageSQL
			if len(chunk) < row.ChunkRows {
				q = row.AddUsageSQL(len(chunk), placeholder)
			}
			args = args[:0]
			for _, u := range chunk {
				args = row.UsageArgs(args, u)
			}
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return fmt.Errorf("sqlite add usage: %w", err)
			}
		}
		return nil
	})
}

// Usage returns a key's buckets with from <= Hour < to, oldest first.
func (s *Store) Usage(ctx context.Context, keyID string, from, to time.Time) ([]apikey.Usage, error) {
	out, err := query(ctx, s.r, row.ScanUsage, `SELECT `+row.UsageCols+` FROM key_usage
		WHERE key_id = ? AND hour >= ? AND hour < ? ORDER BY hour`, keyID, from.UnixMicro(), to.UnixMicro())
	if err != nil {
		return nil, fmt.Errorf("sqlite usage: %w", err)
	}
	return out, nil
}

// usageTotal is the sum of a key_usage row's counters.
var usageTotal = strings.Join(row.UsageCounters, " + ")

// UsageTotals returns, for each of ids with any, the requests counted in
// buckets from since's hour on (ids are read in chunks of row.ChunkRows).
func (s *Store) UsageTotals(ctx context.Context, ids []string, since time.Time) (map[string]int64, error) {
	out := map[string]int64{}
	type total struct {
		id string
		n  int64
	}
	scan := func(sc row.Scanner) (total, error) {
		var t total
		err := sc.Scan(&t.id, &t.n)
		return t, err
	}
	for chunk := range slices.Chunk(ids, row.ChunkRows) {
		args := make([]any, 0, len(chunk)+1)
		for _, id := range chunk {
			args = append(args, id)
		}
		args = append(args, row.Hour(since).UnixMicro())
		ts, err := query(ctx, s.r, scan, `SELECT key_id, SUM(`+usageTotal+`) FROM key_usage
			WHERE key_id IN (?`+strings.Repeat(", ?", len(chunk)-1)+`) AND hour >= ? GROUP BY key_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("sqlite usage totals: %w", err)
		}
		for _, t := range ts {
			out[t.id] = t.n
		}
	}
	return out, nil
}

// PruneUsage drops buckets with Hour before before and returns how many.
func (s *Store) PruneUsage(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM key_usage WHERE hour < ?`, before.UnixMicro())
		if err != nil {
			return fmt.Errorf("sqlite prune usage: %w", err)
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// ---------------------------------------------------------------- last used

// touchSQL updates the last-used times of n keys from a VALUES list of (id,
// micros) pairs, served from the keys primary key; a time never moves back.
func touchSQL(n int) string {
	return `WITH v(id, at) AS (VALUES (?, ?)` + strings.Repeat(", (?, ?)", n-1) + `)
		UPDATE keys SET last_used_at = v.at FROM v
		WHERE keys.id = v.id AND (keys.last_used_at IS NULL OR keys.last_used_at < v.at)`
}

// fullChunkTouchSQL is touchSQL for a full chunk.
var fullChunkTouchSQL = touchSQL(row.ChunkRows)

// Touch records last-used times in one transaction of statements of at most
// row.ChunkRows keys each; unknown ids are ignored and a time never moves backwards.
func (s *Store) Touch(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ids := slices.Sorted(maps.Keys(used))
	return s.write(ctx, func(tx *sql.Tx) error {
		args := make([]any, 0, 2*min(len(ids), row.ChunkRows))
		for chunk := range slices.Chunk(ids, row.ChunkRows) {
			q := fullChunkTouchSQL
			if len(chunk) < row.ChunkRows {
				q = touchSQL(len(chunk))
			}
			args = args[:0]
			for _, id := range chunk {
				args = append(args, id, used[id].UnixMicro())
			}
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return fmt.Errorf("sqlite touch: %w", err)
			}
		}
		return nil
	})
}
