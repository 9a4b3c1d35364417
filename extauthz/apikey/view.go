package apikey

import "time"

// View is a key's JSON form for the CLI and the admin API. Key (the secret) is
// set only in the answer to create and refresh.
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
func NewView(k Key, secret string) View {
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
