package file

import (
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// The tests write key files with these; keyauthz itself only reads them.

// NewEntry returns the file form of key k with digest d.
func NewEntry(k apikey.Key, d apikey.Digest) Entry {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	return Entry{
		ID: k.ID, Workspace: k.Workspace, Name: k.Name, Display: k.Display,
		Digest: hex.EncodeToString(d.Sum[:]), PepperVersion: d.Version,
		CreatedAt: ts(k.CreatedAt), ExpiresAt: ts(k.ExpiresAt), NotBefore: ts(k.NotBefore), RevokedAt: ts(k.RevokedAt),
		RateLimit: k.RateLimit.String(), Grants: slices.Clone(k.Grants), Metadata: k.Metadata, Disabled: k.Disabled,
	}
}

// Encode writes entries as a YAML key file that Open reads.
func Encode(w io.Writer, entries []Entry) error {
	if entries == nil {
		entries = []Entry{}
	}
	e := yaml.NewEncoder(w)
	e.SetIndent(2)
	if err := e.Encode(Document{Keys: entries}); err != nil {
		return fmt.Errorf("encode key file: %w", err)
	}
	return e.Close()
}
