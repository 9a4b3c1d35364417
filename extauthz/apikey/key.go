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
	Disabled   bool              // refused (401) until enabled again; the key stays listed
	// Space is what the key's workspace record adds to its checks (Lookup and
	// Get fill it; zero when the workspace has no record).
	Space Policy
	// PepperVersion is the pepper version of the digest that matched (Lookup only).
	PepperVersion int
}

// Policy is the part of a workspace record that applies to each of its keys' checks.
type Policy struct {
	RateLimit Rate     // zero = the config's workspace rate or the default
	Grants    []string // resources every key of the workspace may reach
	Disabled  bool     // every key of the workspace is refused (401)
}

// Valid reports why the key cannot be used at now, or nil when it can.
func (k *Key) Valid(now time.Time) error {
	switch {
	case !k.RevokedAt.IsZero(): // any revocation counts at once, whatever the writer's clock said
		return ErrRevoked
	case k.Disabled || k.Space.Disabled:
		return ErrDisabled
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
	// ErrDisabled means the key, or its whole workspace, is disabled.
	ErrDisabled = errors.New("key disabled")
)

// Owns reports whether the key may act on resource, a resource path of one
// or more levels joined by '/' (e.g. "acme/web/gpu-1": organization, project,
// container group). The key's workspace owns every path whose first level it
// is; a grant, the key's own or its workspace's, covers the path it names and
// every path below it (see Covers).
func (k *Key) Owns(resource string) bool {
	if Covers(k.Workspace, resource) {
		return true
	}
	for _, g := range k.Grants {
		if Covers(g, resource) {
			return true
		}
	}
	for _, g := range k.Space.Grants {
		if Covers(g, resource) {
			return true
		}
	}
	return false
}

// Covers reports whether grant names resource or a level above it: "acme"
// covers "acme" and "acme/web/gpu-1"; "acme/web" covers "acme/web/gpu-1" but
// not "acme/api" nor "acme".
func Covers(grant, resource string) bool {
	return len(resource) >= len(grant) && resource[:len(grant)] == grant &&
		(len(resource) == len(grant) || resource[len(grant)] == '/') && grant != ""
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
	// Updated means a key's record changed (PATCH); Digests are its live digests.
	Updated ChangeKind = "updated"
	// WorkspaceChanged means a workspace record changed: every cached key of
	// Workspace must be read again (Digests is empty).
	WorkspaceChanged ChangeKind = "workspace"
)

// Change is one entry of a store's monotonically numbered change feed.
type Change struct {
	Seq       int64      // strictly increasing per store
	KeyID     string     // affected key ("" for WorkspaceChanged)
	Workspace string     // the affected workspace (WorkspaceChanged; may be empty for key changes)
	Kind      ChangeKind // what happened
	Digests   [][32]byte // digests whose cache entries must be evicted
	At        time.Time  // when
}

// Event is one audit record; it never holds a secret.
type Event struct {
	Seq       int64     // store-assigned, increasing
	At        time.Time // when
	Kind      string    // "created", "refreshed", "updated", "deleted", "denied_after_revoke", "workspace_updated"
	Workspace string    // owning workspace
	KeyID     string    // affected key ("" for a workspace event)
	Actor     string    // "cli", or the admin token's name
	Detail    string    // short free text, never a secret
}

// NewKey is what Create stores: the record and its first digest.
type NewKey struct {
	Key    Key    // ID, Workspace, Name, Display, CreatedAt, ExpiresAt, NotBefore, RateLimit, Grants, Metadata
	Digest Digest // digest of the issued secret
	Max    int    // most live keys the workspace may hold when its record sets no max_keys (0 = unbounded)
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
	Workspaces
	UsageStore
	// Create stores a new key atomically with the workspace limit (ErrLimit: the
	// workspace record's MaxKeys when set, else nk.Max) and name uniqueness
	// (ErrNameTaken) checks, records a Created change and audit event.
	Create(ctx context.Context, nk NewKey) (Key, error)
	// Get returns a key by id with its workspace's Policy (revoked keys are not found).
	Get(ctx context.Context, id string) (Key, error)
	// List returns the live keys of a workspace ordered by id, after the cursor id, at most limit.
	List(ctx context.Context, workspace, after string, limit int) ([]Key, error)
	// ListUnused is List restricted to keys created before since and not used
	// since then (LastUsedAt zero or before since).
	ListUnused(ctx context.Context, workspace string, since time.Time, after string, limit int) ([]Key, error)
	// Update applies p to the live key id atomically (ErrNotFound, ErrNameTaken),
	// records an Updated change with the key's live digests and an "updated"
	// audit event, and returns the updated key.
	Update(ctx context.Context, id string, p KeyPatch, actor string) (Key, error)
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
	// Touch records last-used times for many keys; each key is written at most
	// once, in statements of bounded size served from the primary key.
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

// Workspaces stores workspace records: the settings of a workspace changed at
// run time (the admin API), over the config's workspaces and defaults.
type Workspaces interface {
	// PutWorkspace creates or replaces the record w.ID (CreatedAt is kept on
	// replace), records a WorkspaceChanged change and a "workspace_updated"
	// audit event, and reports whether the record was created.
	PutWorkspace(ctx context.Context, w Workspace, actor string) (Workspace, bool, error)
	// PatchWorkspace applies p to the record id atomically (ErrNotFound when
	// there is none) and records a change and audit event as PutWorkspace does.
	PatchWorkspace(ctx context.Context, id string, p WorkspacePatch, actor string) (Workspace, error)
	// GetWorkspace returns the record id, or ErrNotFound.
	GetWorkspace(ctx context.Context, id string) (Workspace, error)
	// ListWorkspaces returns records ordered by id, after the cursor id, at most limit.
	ListWorkspaces(ctx context.Context, after string, limit int) ([]Workspace, error)
}

// UsageStore keeps per-key request counts in hourly buckets.
type UsageStore interface {
	// AddUsage adds each row's counts to its key's bucket for row.Hour (rows
	// for one key and hour are summed, across calls and replicas). Each
	// (key, hour) appears at most once in rows; statements are bounded in size
	// and served from the primary key. Rows of unknown keys may be dropped.
	AddUsage(ctx context.Context, rows []Usage) error
	// Usage returns a key's buckets with from <= Hour < to, oldest first (hours without requests are absent).
	Usage(ctx context.Context, keyID string, from, to time.Time) ([]Usage, error)
	// UsageTotals returns, for each of ids with any, the requests (all outcomes) counted since since.
	UsageTotals(ctx context.Context, ids []string, since time.Time) (map[string]int64, error)
	// PruneUsage drops buckets with Hour before before and returns how many.
	PruneUsage(ctx context.Context, before time.Time) (int64, error)
}

// Workspace is a workspace record: settings changed at run time that apply
// to every key of the workspace.
type Workspace struct {
	ID        string    // the workspace id (ValidName)
	RateLimit Rate      // zero = the config's workspace rate, then the default
	MaxKeys   int       // 0 = the config's max_keys, then keys.max_per_workspace
	Grants    []string  // resource paths every key of the workspace may reach
	Disabled  bool      // every key of the workspace is refused (401)
	CreatedAt time.Time // first PutWorkspace
	UpdatedAt time.Time // last change
}

// Policy returns the part of w that applies to each key's check.
func (w *Workspace) Policy() Policy {
	return Policy{RateLimit: w.RateLimit, Grants: w.Grants, Disabled: w.Disabled}
}

// WorkspacePatch is a partial update of a workspace record; nil fields are left as they are.
type WorkspacePatch struct {
	RateLimit *Rate     // zero Rate = inherit
	MaxKeys   *int      // 0 = inherit
	Grants    *[]string // nil slice = none
	Disabled  *bool
}

// Apply sets p's non-nil fields on w.
func (p *WorkspacePatch) Apply(w *Workspace) {
	if p.RateLimit != nil {
		w.RateLimit = *p.RateLimit
	}
	if p.MaxKeys != nil {
		w.MaxKeys = *p.MaxKeys
	}
	if p.Grants != nil {
		w.Grants = *p.Grants
	}
	if p.Disabled != nil {
		w.Disabled = *p.Disabled
	}
}

// KeyPatch is a partial update of a key; nil fields are left as they are.
type KeyPatch struct {
	Name      *string
	RateLimit *Rate      // zero Rate = inherit
	ExpiresAt *time.Time // zero Time = never
	Grants    *[]string  // nil slice = none
	Metadata  *map[string]string
	Disabled  *bool
}

// Apply sets p's non-nil fields on k.
func (p *KeyPatch) Apply(k *Key) {
	if p.Name != nil {
		k.Name = *p.Name
	}
	if p.RateLimit != nil {
		k.RateLimit = *p.RateLimit
	}
	if p.ExpiresAt != nil {
		k.ExpiresAt = p.ExpiresAt.UTC()
		if p.ExpiresAt.IsZero() {
			k.ExpiresAt = time.Time{}
		}
	}
	if p.Grants != nil {
		k.Grants = *p.Grants
	}
	if p.Metadata != nil {
		k.Metadata = *p.Metadata
	}
	if p.Disabled != nil {
		k.Disabled = *p.Disabled
	}
}

// Outcome is what a Check decided for a known key, as usage counts it.
type Outcome uint8

// Outcomes of a Check for a known key; NumOutcomes is their count.
const (
	OutcomeAllowed     Outcome = iota // allowed
	OutcomeRateLimited                // 429
	OutcomeForbidden                  // 403: resource outside the key's reach
	OutcomeDisabled                   // 401: key or workspace disabled
	OutcomeExpired                    // 401: past expires_at
	OutcomeRevoked                    // 401: deleted or rotated away
	OutcomeNotYetValid                // 401: before not_before
	OutcomeUnavailable                // 503: rate limiter unavailable under on_error: deny
	NumOutcomes
)

var outcomeNames = [NumOutcomes]string{"allowed", "rate_limited", "forbidden", "disabled", "expired", "revoked", "not_yet_valid", "limiter_unavailable"}

// String returns the outcome's snake_case name (the usage API's and the store's column name).
func (o Outcome) String() string {
	if o < NumOutcomes {
		return outcomeNames[o]
	}
	return "unknown"
}

// Usage is one key's request counts in one hour.
type Usage struct {
	KeyID  string
	Hour   time.Time // start of the hour, UTC
	Counts [NumOutcomes]int64
}

// Total returns the requests counted, all outcomes.
func (u *Usage) Total() int64 {
	var n int64
	for _, c := range u.Counts {
		n += c
	}
	return n
}
