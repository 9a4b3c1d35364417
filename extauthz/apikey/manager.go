package apikey

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	switch {
	case !ValidName(s.Workspace):
		return &FieldError{"workspace", "must be 1-128 characters of letters, digits, '-', '_' or '.'"}
	case strings.TrimSpace(s.Name) == "" || len(s.Name) > MaxNameLen:
		return &FieldError{"name", fmt.Sprintf("must be non-empty and at most %d bytes", MaxNameLen)}
	case !s.ExpiresAt.IsZero() && !s.ExpiresAt.After(now):
		return &FieldError{"expires_at", "must be in the future"}
	case !s.ExpiresAt.IsZero() && !s.NotBefore.IsZero() && !s.NotBefore.Before(s.ExpiresAt):
		return &FieldError{"not_before", "must be before expires_at"}
	case s.RateLimit.N < 0 || s.RateLimit.Per < 0 || (s.RateLimit.N == 0) != (s.RateLimit.Per == 0):
		return &FieldError{"rate_limit", "must be a rate such as 600/m"}
	case len(s.Grants) > MaxGrants:
		return &FieldError{"grants", fmt.Sprintf("at most %d entries", MaxGrants)}
	case len(s.Metadata) > MaxMetadata:
		return &FieldError{"metadata", fmt.Sprintf("at most %d entries", MaxMetadata)}
	}
	for _, c := range s.Name {
		if c < ' ' || c == 0x7f {
			return &FieldError{"name", "must not contain control characters"}
		}
	}
	for _, g := range s.Grants {
		if !ValidName(g) {
			return &FieldError{"grants", fmt.Sprintf("%q: must be 1-128 characters of letters, digits, '-', '_' or '.'", g)}
		}
	}
	for k, v := range s.Metadata {
		if k == "" || len(k) > MaxMetaField || len(v) > MaxMetaField {
			return &FieldError{"metadata", fmt.Sprintf("keys must be non-empty; keys and values at most %d bytes", MaxMetaField)}
		}
	}
	return nil
}

// ValidName reports whether s is a usable workspace or resource name.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxGrantLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
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

// Create issues a key for spec and returns its record and the secret (shown once).
func (m *Manager) Create(ctx context.Context, spec Spec, actor string) (Key, string, error) {
	now := m.now().UTC()
	if err := spec.Validate(now); err != nil {
		return Key{}, "", err
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
