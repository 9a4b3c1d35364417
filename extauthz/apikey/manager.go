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
	case len(s.Grants) > MaxGrants:
		return &FieldError{"grants", fmt.Sprintf("at most %d entries", MaxGrants)}
	case len(s.Metadata) > MaxMetadata:
		return &FieldError{"metadata", fmt.Sprintf("at most %d entries", MaxMetadata)}
	}
	for i, g := range s.Grants {
		if !ValidName(g) { // the entry is not echoed: it could be a pasted secret
			return &FieldError{"grants", fmt.Sprintf("entry %d: %s", i, IDRule)}
		}
	}
	for k, v := range s.Metadata {
		if k == "" || len(k) > MaxMetaField || len(v) > MaxMetaField {
			return &FieldError{"metadata", fmt.Sprintf("keys must be non-empty; keys and values at most %d bytes", MaxMetaField)}
		}
	}
	return nil
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
