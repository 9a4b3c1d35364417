package apikey

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Limits on key names and grants, shared by the CLI and the admin API.
const (
	MaxNameLen   = 100
	MaxGrants    = 64
	MaxGrantLen  = 128
	MaxMetadata  = 16
	MaxMetaField = 256
)

// Spec is what a caller asks for when creating a key.
type Spec struct {
	Workspace string
	Name      string
	ExpiresAt time.Time // zero = never
	NotBefore time.Time // zero = now
	RateLimit Rate      // zero = workspace or global default
	Grants    []string
	Metadata  map[string]string
}

// FieldError is bad input naming the offending field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Validate checks a Spec at time now; errors are *FieldError.
func (s *Spec) Validate(now time.Time) error {
	if err := CheckWorkspace(s.Workspace); err != nil {
		return err
	}
	if err := CheckKeyName(s.Name); err != nil {
		return err
	}
	switch {
	case !s.ExpiresAt.IsZero() && !s.ExpiresAt.After(now):
		return &FieldError{"expires_at", "must be in the future"}
	case !s.ExpiresAt.IsZero() && !s.NotBefore.IsZero() && !s.NotBefore.Before(s.ExpiresAt):
		return &FieldError{"not_before", "must be before expires_at"}
	case s.RateLimit.Check() != nil:
		return &FieldError{"rate_limit", RateRule}
	}
	if err := CheckGrants("grants", s.Grants); err != nil {
		return err
	}
	return checkMetadata(s.Metadata)
}

// checkMetadata returns a *FieldError naming "metadata" unless m is within the bounds.
func checkMetadata(m map[string]string) error {
	if len(m) > MaxMetadata {
		return &FieldError{"metadata", fmt.Sprintf("at most %d entries", MaxMetadata)}
	}
	for k, v := range m {
		if k == "" || len(k) > MaxMetaField || len(v) > MaxMetaField {
			return &FieldError{"metadata", fmt.Sprintf("keys must be non-empty; keys and values at most %d bytes", MaxMetaField)}
		}
	}
	return nil
}

// MaxKeysLimit is the largest max_keys a workspace record may set.
const MaxKeysLimit = 1_000_000

// Validate checks a workspace record; errors are *FieldError.
func (w *Workspace) Validate() error {
	if err := CheckWorkspace(w.ID); err != nil {
		return err
	}
	switch {
	case !w.RateLimit.IsZero() && w.RateLimit.Check() != nil:
		return &FieldError{"rate_limit", RateRule}
	case w.MaxKeys < 0 || w.MaxKeys > MaxKeysLimit:
		return &FieldError{"max_keys", fmt.Sprintf("must be between 1 and %d (0 or absent: inherit)", MaxKeysLimit)}
	}
	return CheckGrants("grants", w.Grants)
}

// Manager runs the key lifecycle (create, refresh, delete) over a Store; the
// CLI and the admin API both use it. Secrets leave it only as return values.
type Manager struct {
	store  Store
	format *Format
	hasher *Hasher
	max    func(workspace string) int
	now    func() time.Time
}

// NewManager returns a Manager; max gives a workspace's key limit (0 = unbounded).
func NewManager(s Store, f *Format, h *Hasher, max func(workspace string) int) (*Manager, error) {
	if s == nil || f == nil || h == nil || max == nil {
		return nil, errors.New("apikey: store, format, hasher and limit are required")
	}
	return &Manager{store: s, format: f, hasher: h, max: max, now: time.Now}, nil
}

// Store returns the manager's store.
func (m *Manager) Store() Store { return m.store }

// Format returns the format of the keys the manager issues.
func (m *Manager) Format() *Format { return m.format }

// Create issues a key for spec and returns its record and the secret (shown once).
func (m *Manager) Create(ctx context.Context, spec Spec, actor string) (Key, string, error) {
	now := m.now().UTC()
	if err := spec.Validate(now); err != nil {
		return Key{}, "", err
	}
	if f := m.format.keyField(&spec); f != "" { // it would be stored and listed in clear
		return Key{}, "", &FieldError{f, "must not hold an API key"}
	}
	id, err := NewID()
	if err != nil {
		return Key{}, "", err
	}
	secret, err := m.format.Generate()
	if err != nil {
		return Key{}, "", err
	}
	k := Key{
		ID: id, Workspace: spec.Workspace, Name: spec.Name, Display: m.format.Display(secret),
		CreatedAt: now, ExpiresAt: spec.ExpiresAt.UTC(), NotBefore: spec.NotBefore.UTC(),
		RateLimit: spec.RateLimit, Grants: spec.Grants, Metadata: spec.Metadata,
	}
	if spec.ExpiresAt.IsZero() {
		k.ExpiresAt = time.Time{}
	}
	if spec.NotBefore.IsZero() {
		k.NotBefore = time.Time{}
	}
	k, err = m.store.Create(ctx, NewKey{Key: k, Digest: m.hasher.Sum(secret), Max: m.max(spec.Workspace), Actor: actor})
	if err != nil {
		return Key{}, "", err
	}
	return k, secret, nil
}

// Refresh rotates a key's secret; the old one stays valid for grace (0 = invalid at once).
func (m *Manager) Refresh(ctx context.Context, id string, grace time.Duration, actor string) (Key, string, error) {
	if grace < 0 {
		return Key{}, "", &FieldError{"grace", "must not be negative"}
	}
	secret, err := m.format.Generate()
	if err != nil {
		return Key{}, "", err
	}
	k, err := m.store.Refresh(ctx, id, m.hasher.Sum(secret), m.format.Display(secret), grace, actor)
	if err != nil {
		return Key{}, "", err
	}
	return k, secret, nil
}

// Delete revokes a key at once.
func (m *Manager) Delete(ctx context.Context, id, actor string) error {
	return m.store.Delete(ctx, id, actor)
}

// Update applies p to the key id after checking it at the manager's now; errors are *FieldError or the store's.
func (m *Manager) Update(ctx context.Context, id string, p KeyPatch, actor string) (Key, error) {
	now := m.now().UTC()
	switch {
	case p.Name != nil && CheckKeyName(*p.Name) != nil:
		return Key{}, CheckKeyName(*p.Name)
	case p.RateLimit != nil && !p.RateLimit.IsZero() && p.RateLimit.Check() != nil:
		return Key{}, &FieldError{"rate_limit", RateRule}
	case p.ExpiresAt != nil && !p.ExpiresAt.IsZero() && !p.ExpiresAt.After(now):
		return Key{}, &FieldError{"expires_at", "must be in the future"}
	}
	if p.Grants != nil {
		if err := CheckGrants("grants", *p.Grants); err != nil {
			return Key{}, err
		}
	}
	if p.Metadata != nil {
		if err := checkMetadata(*p.Metadata); err != nil {
			return Key{}, err
		}
	}
	if f := m.format.patchKeyField(&p); f != "" {
		return Key{}, &FieldError{f, "must not hold an API key"}
	}
	return m.store.Update(ctx, id, p, actor)
}

// PutWorkspace creates or replaces a workspace record after checking it.
func (m *Manager) PutWorkspace(ctx context.Context, w Workspace, actor string) (Workspace, bool, error) {
	if err := w.Validate(); err != nil {
		return Workspace{}, false, err
	}
	if m.format.grantsHoldKey(w.Grants) {
		return Workspace{}, false, &FieldError{"grants", "must not hold an API key"}
	}
	return m.store.PutWorkspace(ctx, w, actor)
}

// PatchWorkspace applies p to a workspace record after checking the result.
func (m *Manager) PatchWorkspace(ctx context.Context, id string, p WorkspacePatch, actor string) (Workspace, error) {
	w := Workspace{ID: id}
	p.Apply(&w) // only the patched fields are checked: the stored ones passed before
	if err := w.Validate(); err != nil {
		return Workspace{}, err
	}
	if m.format.grantsHoldKey(w.Grants) {
		return Workspace{}, &FieldError{"grants", "must not hold an API key"}
	}
	return m.store.PatchWorkspace(ctx, id, p, actor)
}

// MaxKeys returns the most live keys workspace ws may hold (0 = unbounded):
// its record's max_keys when set, else the configured limit.
func (m *Manager) MaxKeys(ctx context.Context, ws string) (int, error) {
	w, err := m.store.GetWorkspace(ctx, ws)
	switch {
	case err == nil && w.MaxKeys > 0:
		return w.MaxKeys, nil
	case err == nil || errors.Is(err, ErrNotFound):
		return m.max(ws), nil
	}
	return 0, err
}
