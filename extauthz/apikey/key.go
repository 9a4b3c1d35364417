// Package apikey holds the key format, the peppered hasher, the Key record,
// the Store contract that every key store implements, and their errors.
package apikey

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors returned by stores and by the key format. Callers compare with errors.Is.
var (
	// ErrNotFound means no key matches the digest or id.
	ErrNotFound = errors.New("key not found")
	// ErrLimit means the workspace already holds its maximum number of keys.
	ErrLimit = errors.New("workspace key limit reached")
	// ErrNameTaken means another live key in the workspace has the same name.
	ErrNameTaken = errors.New("key name already used in workspace")
	// ErrReadOnly means the store cannot be written (the file store).
	ErrReadOnly = errors.New("store is read-only")
	// ErrNotFoundCached is ErrNotFound answered by a cache from a negative entry:
	// what the store said up to a negative TTL ago, not what it says now.
	// errors.Is(ErrNotFoundCached, ErrNotFound) holds.
	ErrNotFoundCached = fmt.Errorf("%w (cached)", ErrNotFound)
)

// Key is one API key's record; it never holds the secret.
type Key struct {
	ID         string            // "key_…", not secret
	Workspace  string            // owning account / tenant
	Name       string            // unique per workspace among live keys
	Display    string            // prefix + first body characters, e.g. "kz_4fA9"
	CreatedAt  time.Time         // creation time (UTC)
	ExpiresAt  time.Time         // zero = never; for a grace digest, the earlier of key and grace expiry
	NotBefore  time.Time         // zero = immediately
	RevokedAt  time.Time         // zero = live
	RateLimit  Rate              // zero = use the workspace or global default
	Grants     []string          // extra resources (organizations) the key may reach
	LastUsedAt time.Time         // zero = never used (coalesced, approximate)
	Metadata   map[string]string // small free-form map
	// PepperVersion is the pepper version of the digest that matched (Lookup only).
	PepperVersion int
}

// Valid reports why the key cannot be used at now, or nil when it can.
func (k *Key) Valid(now time.Time) error {
	switch {
	case !k.RevokedAt.IsZero(): // any revocation counts at once, whatever the writer's clock said
		return ErrRevoked
	case !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt):
		return ErrExpired
	case !k.NotBefore.IsZero() && now.Before(k.NotBefore):
		return ErrNotYetValid
	}
	return nil
}

// Validity errors returned by Key.Valid.
var (
	// ErrRevoked means the key was deleted or its secret was rotated away.
	ErrRevoked = errors.New("key revoked")
	// ErrExpired means the key's expiry has passed.
	ErrExpired = errors.New("key expired")
	// ErrNotYetValid means the key's not-before time has not come.
	ErrNotYetValid = errors.New("key not yet valid")
)

// Owns reports whether the key may act on resource: its workspace or a granted resource.
func (k *Key) Owns(resource string) bool {
	if resource == k.Workspace {
		return true
	}
	for _, g := range k.Grants {
		if g == resource {
			return true
		}
	}
	return false
}

// Digest is a stored secret fingerprint: HMAC-SHA-256 under one pepper version.
type Digest struct {
	Sum     [32]byte // HMAC-SHA-256(pepper[Version], secret)
	Version int      // pepper version used
}

// ChangeKind says what happened to a key in the change feed.
type ChangeKind string

// Change kinds recorded by stores.
const (
	Created   ChangeKind = "created"
	Refreshed ChangeKind = "refreshed"
	Deleted   ChangeKind = "deleted"
	Rehashed  ChangeKind = "rehashed"
)

// Change is one entry of a store's monotonically numbered change feed.
type Change struct {
	Seq     int64      // strictly increasing per store
	KeyID   string     // affected key
	Kind    ChangeKind // what happened
	Digests [][32]byte // digests whose cache entries must be evicted
	At      time.Time  // when
}

// Event is one audit record; it never holds a secret.
type Event struct {
	Seq       int64     // store-assigned, increasing
	At        time.Time // when
	Kind      string    // "created", "refreshed", "deleted", "denied_after_revoke"
	Workspace string    // owning workspace
	KeyID     string    // affected key
	Actor     string    // "cli", or the admin token's name
	Detail    string    // short free text, never a secret
}

// NewKey is what Create stores: the record and its first digest.
type NewKey struct {
	Key    Key    // ID, Workspace, Name, Display, CreatedAt, ExpiresAt, NotBefore, RateLimit, Grants, Metadata
	Digest Digest // digest of the issued secret
	Max    int    // most live keys the workspace may hold (0 = unbounded)
	Actor  string // for the audit event
}

// Lookuper finds a key by digest; it is all the Check path needs from a store.
type Lookuper interface {
	// Lookup returns the key whose live digest equals d, or ErrNotFound.
	// A revoked key is returned with RevokedAt set for the audit trail's sake.
	Lookup(ctx context.Context, d Digest) (Key, error)
}

// Store is the contract every key store (sqlite, postgres, file) implements.
type Store interface {
	Lookuper
	// Create stores a new key atomically with the workspace limit (ErrLimit) and name
	// uniqueness (ErrNameTaken) checks, records a Created change and audit event.
	Create(ctx context.Context, nk NewKey) (Key, error)
	// Get returns a key by id (revoked keys are not found).
	Get(ctx context.Context, id string) (Key, error)
	// List returns the live keys of a workspace ordered by id, after the cursor id, at most limit.
	List(ctx context.Context, workspace, after string, limit int) ([]Key, error)
	// Refresh replaces the key's digest with d and its Display with display; the old
	// digests stay valid until now+grace (grace 0 = revoked at once). Records a Refreshed
	// change with the old digests and an audit event.
	Refresh(ctx context.Context, id string, d Digest, display string, grace time.Duration, actor string) (Key, error)
	// Delete revokes the key at once and records a Deleted change with its digests.
	Delete(ctx context.Context, id, actor string) error
	// Rehash adds digest d (a newer pepper version) for the key that old belongs to, and drops old.
	// Records a Rehashed change with both digests (d's negative cache entries must go too).
	Rehash(ctx context.Context, old, d Digest) error
	// Changes returns feed entries with Seq > after, oldest first, at most limit.
	Changes(ctx context.Context, after int64, limit int) ([]Change, error)
	// LastSeq returns the newest change Seq (0 when empty).
	LastSeq(ctx context.Context) (int64, error)
	// Touch records last-used times for many keys in one write.
	Touch(ctx context.Context, used map[string]time.Time) error
	// Audit appends an audit event.
	Audit(ctx context.Context, e Event) error
	// Events returns a workspace's audit events with Seq > after, oldest first, at most limit.
	Events(ctx context.Context, workspace string, after int64, limit int) ([]Event, error)
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
	// Close releases the store.
	Close() error
}
