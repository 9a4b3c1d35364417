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
}

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
	}
}

// Event is an audit event's JSON form; it never holds a secret.
type Event struct {
	Seq    int64     `json:"seq"`
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"` // created, refreshed, deleted, denied_after_revoke
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
	NextCursor string `json:"next_cursor,omitempty"`
}

// AuditPage is one page of GET /v1/workspaces/{ws}/audit; NextCursor is "" on the last page.
type AuditPage struct {
	Items      []Event `json:"items"`
	NextCursor string  `json:"next_cursor,omitempty"`
}
