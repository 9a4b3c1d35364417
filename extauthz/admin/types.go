package admin

import (
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

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
	Items      []apikey.View `json:"items"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// AuditPage is one page of GET /v1/workspaces/{ws}/audit; NextCursor is "" on the last page.
type AuditPage struct {
	Items      []Event `json:"items"`
	NextCursor string  `json:"next_cursor,omitempty"`
}
