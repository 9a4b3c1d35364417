package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// workspaceCols are the workspaces columns scanWorkspace reads, in its order.
const workspaceCols = `id, rate_limit, max_keys, grants, disabled, created_at, updated_at`

// scanWorkspace reads workspaceCols from one row.
func scanWorkspace(sc row.Scanner) (apikey.Workspace, error) {
	var (
		w                  apikey.Workspace
		rate, grants       string
		maxKeys            *int
		created, updatedAt int64
	)
	if err := sc.Scan(&w.ID, &rate, &maxKeys, &grants, &w.Disabled, &created, &updatedAt); err != nil {
		return apikey.Workspace{}, err
	}
	p, err := decodePolicy(rate, grants, w.Disabled)
	if err != nil {
		return apikey.Workspace{}, fmt.Errorf("workspace %s: %w", w.ID, err)
	}
	w.RateLimit, w.Grants = p.RateLimit, p.Grants
	if maxKeys != nil {
		w.MaxKeys = *maxKeys
	}
	w.CreatedAt, w.UpdatedAt = time.UnixMicro(created).UTC(), time.UnixMicro(updatedAt).UTC()
	return w, nil
}

// decodePolicy reads a workspace record's rate and grants columns ("" when unset).
func decodePolicy(rate, grants string, disabled bool) (apikey.Policy, error) {
	p := apikey.Policy{Disabled: disabled}
	if rate != "" {
		r, err := apikey.ParseRate(rate)
		if err != nil {
			return p, fmt.Errorf("rate limit: %w", err)
		}
		p.RateLimit = r
	}
	if grants != "" {
		if err := json.Unmarshal([]byte(grants), &p.Grants); err != nil {
			return p, fmt.Errorf("grants: %w", err)
		}
	}
	return p, nil
}

// workspaceArgs encodes w's settings as the columns rate_limit, max_keys (NULL
// when unset), grants and disabled.
func workspaceArgs(w *apikey.Workspace) (rate string, maxKeys *int, grants string, err error) {
	if w.ID == "" {
		return "", nil, "", errors.New("workspace id is required")
	}
	if w.MaxKeys < 0 {
		return "", nil, "", errors.New("max keys must not be negative")
	}
	if w.MaxKeys > 0 {
		maxKeys = &w.MaxKeys
	}
	if len(w.Grants) == 0 {
		w.Grants = nil
	}
	grants, err = row.Grants(w.Grants)
	if err != nil {
		return "", nil, "", fmt.Errorf("grants: %w", err)
	}
	return w.RateLimit.String(), maxKeys, grants, nil
}

// PutWorkspace creates the record w.ID or replaces its settings (keeping its
// CreatedAt), records a WorkspaceChanged change (which wakes every Listen) and
// a "workspace_updated" audit event ("created", or the fields that changed),
// and reports whether the record was created.
func (s *Store) PutWorkspace(ctx context.Context, w apikey.Workspace, actor string) (apikey.Workspace, bool, error) {
	rate, maxKeys, grants, err := workspaceArgs(&w)
	if err != nil {
		return apikey.Workspace{}, false, fmt.Errorf("postgres put workspace: %w", err)
	}
	var (
		out     apikey.Workspace
		created bool
	)
	err = s.write(ctx, func(tx pgx.Tx) error {
		at := row.Now()
		out, created = w, false
		out.CreatedAt, out.UpdatedAt = at, at
		tag, err := tx.Exec(ctx, `INSERT INTO workspaces (id, rate_limit, max_keys, grants, disabled, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING`,
			w.ID, rate, maxKeys, grants, w.Disabled, at.UnixMicro())
		if err != nil {
			return fmt.Errorf("postgres put workspace %s: %w", w.ID, err)
		}
		detail := "created"
		if tag.RowsAffected() == 0 {
			old, err := scanWorkspace(tx.QueryRow(ctx, `SELECT `+workspaceCols+` FROM workspaces WHERE id = $1 FOR UPDATE`, w.ID))
			if err != nil {
				return fmt.Errorf("postgres put workspace %s: %w", w.ID, err)
			}
			out.CreatedAt = old.CreatedAt
			detail = strings.Join(workspaceChanges(&old, &out), ",")
			if err := updateWorkspace(ctx, tx, w.ID, rate, maxKeys, grants, w.Disabled, at); err != nil {
				return err
			}
		} else {
			created = true
		}
		return workspaceChanged(ctx, tx, at, w.ID, actor, detail)
	})
	if err != nil {
		return apikey.Workspace{}, false, err
	}
	return out, created, nil
}

// PatchWorkspace applies p to the record id in one transaction (ErrNotFound
// when there is none) and records a change and an audit event as PutWorkspace does.
func (s *Store) PatchWorkspace(ctx context.Context, id string, p apikey.WorkspacePatch, actor string) (apikey.Workspace, error) {
	var w apikey.Workspace
	err := s.write(ctx, func(tx pgx.Tx) error {
		old, err := scanWorkspace(tx.QueryRow(ctx, `SELECT `+workspaceCols+` FROM workspaces WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("postgres patch workspace %s: %w", id, err)
		}
		w = old
		p.Apply(&w)
		rate, maxKeys, grants, err := workspaceArgs(&w)
		if err != nil {
			return fmt.Errorf("postgres patch workspace: %w", err)
		}
		at := row.Now()
		w.UpdatedAt = at
		if err := updateWorkspace(ctx, tx, id, rate, maxKeys, grants, w.Disabled, at); err != nil {
			return err
		}
		return workspaceChanged(ctx, tx, at, id, actor, strings.Join(workspaceChanges(&old, &w), ","))
	})
	if err != nil {
		return apikey.Workspace{}, err
	}
	return w, nil
}

// updateWorkspace writes a record's settings and its update time.
func updateWorkspace(ctx context.Context, tx pgx.Tx, id, rate string, maxKeys *int, grants string, disabled bool, at time.Time) error {
	if _, err := tx.Exec(ctx, `UPDATE workspaces SET rate_limit = $2, max_keys = $3, grants = $4, disabled = $5,
		updated_at = $6 WHERE id = $1`, id, rate, maxKeys, grants, disabled, at.UnixMicro()); err != nil {
		return fmt.Errorf("postgres update workspace %s: %w", id, err)
	}
	return nil
}

// workspaceChanged records the audit event and the change feed entry of a workspace write.
func workspaceChanged(ctx context.Context, tx pgx.Tx, at time.Time, id, actor, detail string) error {
	if err := addEvent(ctx, tx, apikey.Event{At: at, Kind: "workspace_updated", Workspace: id, Actor: actor, Detail: detail}); err != nil {
		return err
	}
	return appendChange(ctx, tx, at, "", id, apikey.WorkspaceChanged, nil)
}

// workspaceChanges names the settings (as the admin API spells them) that differ between old and w.
func workspaceChanges(old, w *apikey.Workspace) []string {
	var f []string
	if old.RateLimit != w.RateLimit {
		f = append(f, "rate_limit")
	}
	if old.MaxKeys != w.MaxKeys {
		f = append(f, "max_keys")
	}
	if !slices.Equal(old.Grants, w.Grants) {
		f = append(f, "grants")
	}
	if old.Disabled != w.Disabled {
		f = append(f, "disabled")
	}
	return f
}

// GetWorkspace returns the record id, or ErrNotFound.
func (s *Store) GetWorkspace(ctx context.Context, id string) (apikey.Workspace, error) {
	w, err := read(ctx, s, func() (apikey.Workspace, error) {
		return scanWorkspace(s.pool.QueryRow(ctx, `SELECT `+workspaceCols+` FROM workspaces WHERE id = $1`, id))
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return apikey.Workspace{}, apikey.ErrNotFound
	}
	if err != nil {
		return apikey.Workspace{}, fmt.Errorf("postgres get workspace: %w", err)
	}
	return w, nil
}

// ListWorkspaces returns records ordered by id (bytewise), after the cursor id; limit <= 0 means all.
func (s *Store) ListWorkspaces(ctx context.Context, after string, n int) ([]apikey.Workspace, error) {
	out, err := query(ctx, s, scanWorkspace, `SELECT `+workspaceCols+` FROM workspaces
		WHERE id > $1 ORDER BY id LIMIT $2`, after, limit(n))
	if err != nil {
		return nil, fmt.Errorf("postgres list workspaces: %w", err)
	}
	return out, nil
}
