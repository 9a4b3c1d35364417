package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// Update applies p to the live key id in one transaction: the key's row is
// locked, patched and written back; a name another live key of the workspace
// holds is ErrNameTaken (the keys_live_name index decides, so concurrent
// updates and creates cannot both win). It records an Updated change with every
// digest of the key (grace digests included) and an "updated" audit event whose
// Detail lists the fields that changed, and returns the key as Get would.
func (s *Store) Update(ctx context.Context, id string, p apikey.KeyPatch, actor string) (apikey.Key, error) {
	var k apikey.Key
	err := s.write(ctx, func(tx pgx.Tx) error {
		old, err := scanKey(tx.QueryRow(ctx,
			`SELECT `+keyCols+` FROM `+keyFrom+` WHERE k.id = $1 AND k.revoked_at IS NULL FOR NO KEY UPDATE OF k`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return apikey.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("postgres update %s: %w", id, err)
		}
		k = old
		p.Apply(&k)
		normKey(&k)
		if k.Name == "" {
			return errors.New("postgres update: name is required")
		}
		grants, err := row.Grants(k.Grants)
		if err != nil {
			return fmt.Errorf("postgres update: grants: %w", err)
		}
		meta, err := row.Meta(k.Metadata)
		if err != nil {
			return fmt.Errorf("postgres update: metadata: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE keys SET name = $2, rate_limit = $3, expires_at = $4, grants = $5,
			metadata = $6, disabled = $7 WHERE id = $1`,
			id, k.Name, k.RateLimit.String(), row.Micros(k.ExpiresAt), grants, meta, k.Disabled)
		switch c := uniqueViolation(err); {
		case c == "keys_live_name":
			return fmt.Errorf("workspace %q, name %q: %w", k.Workspace, k.Name, apikey.ErrNameTaken)
		case err != nil:
			return fmt.Errorf("postgres update %s: %w", id, err)
		}
		ds, err := keyDigests(ctx, tx, id)
		if err != nil {
			return err
		}
		at := row.Now()
		if err := addEvent(ctx, tx, apikey.Event{At: at, Kind: "updated", Workspace: k.Workspace, KeyID: id,
			Actor: actor, Detail: strings.Join(keyChanges(&old, &k), ",")}); err != nil {
			return err
		}
		return appendChange(ctx, tx, at, id, k.Workspace, apikey.Updated, ds)
	})
	if err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

// normKey makes k read as it will read back: UTC microsecond times, nil for
// empty grants and metadata.
func normKey(k *apikey.Key) {
	k.ExpiresAt = row.Norm(k.ExpiresAt)
	if len(k.Grants) == 0 {
		k.Grants = nil
	}
	if len(k.Metadata) == 0 {
		k.Metadata = nil
	}
}

// keyChanges names the fields (as the admin API spells them) that differ between old and k.
func keyChanges(old, k *apikey.Key) []string {
	var f []string
	if old.Name != k.Name {
		f = append(f, "name")
	}
	if old.RateLimit != k.RateLimit {
		f = append(f, "rate_limit")
	}
	if !old.ExpiresAt.Equal(k.ExpiresAt) {
		f = append(f, "expires_at")
	}
	if !slices.Equal(old.Grants, k.Grants) {
		f = append(f, "grants")
	}
	if !maps.Equal(old.Metadata, k.Metadata) {
		f = append(f, "metadata")
	}
	if old.Disabled != k.Disabled {
		f = append(f, "disabled")
	}
	return f
}
