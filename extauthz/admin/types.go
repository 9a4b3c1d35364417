package admin

import (
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// View is a key's JSON form in the admin API (and in the CLI's --json output).
// Key (the secret) is set only in the answer to create and refresh.
type View struct {
	ID         string            `json:"id"`
	Workspace  string            `json:"workspace"`
	Name       string            `json:"name"`
	Key        string            `json:"key,omitempty"`
	Display    string            `json:"display"`
	CreatedAt  time.Time         `json:"created_at"`
	LastUsedAt *time.Time        `json:"last_used_at"`
	ExpiresAt  *time.Time        `json:"expires_at"`
	NotBefore  *time.Time        `json:"not_before,omitempty"`
	RateLimit  string            `json:"rate_limit,omitempty"`
	Grants     []string          `json:"grants,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	Disabled   bool              `json:"disabled"`
	// Requests30d is the requests (all outcomes) counted in the last 30 days
	// (list, get, update, refresh; 0 right after create).
	Requests30d int64 `json:"requests_30d"`
}

// RequestsWindow is the period View.Requests30d counts.
const RequestsWindow = 30 * 24 * time.Hour

// NewView renders k; secret is "" except right after create or refresh.
func NewView(k apikey.Key, secret string) View {
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		u := t.UTC()
		return &u
	}
	return View{
		ID: k.ID, Workspace: k.Workspace, Name: k.Name, Key: secret, Display: k.Display,
		CreatedAt: k.CreatedAt.UTC(), LastUsedAt: opt(k.LastUsedAt), ExpiresAt: opt(k.ExpiresAt),
		NotBefore: opt(k.NotBefore), RateLimit: k.RateLimit.String(), Grants: k.Grants, Metadata: k.Metadata,
		Disabled: k.Disabled,
	}
}

// WorkspaceView is a workspace record's JSON form in the admin API and the CLI.
type WorkspaceView struct {
	ID        string    `json:"id"`
	RateLimit string    `json:"rate_limit,omitempty"` // "" = inherited (config, then default)
	MaxKeys   int       `json:"max_keys,omitempty"`   // 0 = inherited
	Grants    []string  `json:"grants"`
	Disabled  bool      `json:"disabled"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// NewWorkspaceView renders a workspace record.
func NewWorkspaceView(w apikey.Workspace) WorkspaceView {
	g := w.Grants
	if g == nil {
		g = []string{}
	}
	return WorkspaceView{ID: w.ID, RateLimit: w.RateLimit.String(), MaxKeys: w.MaxKeys, Grants: g,
		Disabled: w.Disabled, CreatedAt: w.CreatedAt.UTC(), UpdatedAt: w.UpdatedAt.UTC()}
}

// WorkspacePage is one page of GET /v1/workspaces; NextCursor is "" on the last page.
type WorkspacePage struct {
	Items      []WorkspaceView `json:"items"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

// Denied counts a key's denied requests by reason (apikey.Outcome names).
type Denied struct {
	RateLimited        int64 `json:"rate_limited"`
	Forbidden          int64 `json:"forbidden"`
	Disabled           int64 `json:"disabled"`
	Expired            int64 `json:"expired"`
	Revoked            int64 `json:"revoked"`
	NotYetValid        int64 `json:"not_yet_valid"`
	LimiterUnavailable int64 `json:"limiter_unavailable"`
}

// Counts is a key's allowed requests and its denied ones by reason.
type Counts struct {
	Allowed int64  `json:"allowed"`
	Denied  Denied `json:"denied"`
}

// add adds one store bucket's counts.
func (c *Counts) add(n *[apikey.NumOutcomes]int64) {
	c.Allowed += n[apikey.OutcomeAllowed]
	d := &c.Denied
	d.RateLimited += n[apikey.OutcomeRateLimited]
	d.Forbidden += n[apikey.OutcomeForbidden]
	d.Disabled += n[apikey.OutcomeDisabled]
	d.Expired += n[apikey.OutcomeExpired]
	d.Revoked += n[apikey.OutcomeRevoked]
	d.NotYetValid += n[apikey.OutcomeNotYetValid]
	d.LimiterUnavailable += n[apikey.OutcomeUnavailable]
}

// Total returns the requests counted, allowed and denied.
func (c *Counts) Total() int64 {
	d := &c.Denied
	return c.Allowed + d.RateLimited + d.Forbidden + d.Disabled + d.Expired + d.Revoked + d.NotYetValid + d.LimiterUnavailable
}

// Bucket is one hour's or day's counts of a usage report, from Start.
type Bucket struct {
	Start time.Time `json:"start"`
	Counts
}

// Usage is the answer of GET …/api-keys/{id}/usage: a key's counts over
// [From, To) in dense buckets (hours or UTC days without requests included).
type Usage struct {
	KeyID       string    `json:"key_id"`
	Granularity string    `json:"granularity"` // "hour" or "day"
	From        time.Time `json:"from"`        // the first bucket's start
	To          time.Time `json:"to"`
	Totals      Counts    `json:"totals"`
	Buckets     []Bucket  `json:"buckets"`
}

// Event is an audit event's JSON form; it never holds a secret.
type Event struct {
	Seq    int64     `json:"seq"`
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"` // created, refreshed, updated, deleted, denied_after_revoke, workspace_updated
	KeyID  string    `json:"key_id"`
	Actor  string    `json:"actor"` // the admin token's name, "cli" or "check"
	Detail string    `json:"detail,omitempty"`
}

// NewEvent renders a store's audit event.
func NewEvent(e apikey.Event) Event {
	return Event{Seq: e.Seq, At: e.At.UTC(), Kind: e.Kind, KeyID: e.KeyID, Actor: e.Actor, Detail: e.Detail}
}

// KeyPage is one page of GET /v1/workspaces/{ws}/api-keys; NextCursor is "" on the last page.
type KeyPage struct {
	Items      []View `json:"items"`
	MaxKeys    int    `json:"max_keys"` // the workspace's key cap (0 = unbounded)
	NextCursor string `json:"next_cursor,omitempty"`
}

// AuditPage is one page of GET /v1/workspaces/{ws}/audit; NextCursor is "" on the last page.
type AuditPage struct {
	Items      []Event `json:"items"`
	NextCursor string  `json:"next_cursor,omitempty"`
}
