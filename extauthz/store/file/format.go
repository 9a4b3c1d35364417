package file

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Document is the whole key file.
type Document struct {
	Keys []Entry `yaml:"keys" json:"keys"`
}

// Entry is one key in the file. Times are RFC 3339 (a bare date means midnight
// UTC); the digest is 64 hex characters.
type Entry struct {
	ID            string            `yaml:"id" json:"id"`
	Workspace     string            `yaml:"workspace" json:"workspace"`
	Name          string            `yaml:"name,omitempty" json:"name,omitempty"`
	Display       string            `yaml:"display,omitempty" json:"display,omitempty"`
	Digest        string            `yaml:"digest" json:"digest"`
	PepperVersion int               `yaml:"pepper_version" json:"pepper_version"`
	CreatedAt     string            `yaml:"created_at,omitempty" json:"created_at,omitempty"`
	ExpiresAt     string            `yaml:"expires_at,omitempty" json:"expires_at,omitempty"`
	NotBefore     string            `yaml:"not_before,omitempty" json:"not_before,omitempty"`
	RevokedAt     string            `yaml:"revoked_at,omitempty" json:"revoked_at,omitempty"`
	RateLimit     string            `yaml:"rate_limit,omitempty" json:"rate_limit,omitempty"`
	Grants        []string          `yaml:"grants,omitempty" json:"grants,omitempty"`
	Metadata      map[string]string `yaml:"metadata,omitempty" json:"metadata,omitempty"`
	Disabled      bool              `yaml:"disabled,omitempty" json:"disabled,omitempty"`
}

// record is one parsed key.
type record struct {
	key    apikey.Key
	digest apikey.Digest
}

// snapshot is one parsed version of the file; it is never modified once built.
type snapshot struct {
	byDigest map[[32]byte]*record
	byID     map[string]*record
	live     map[string][]*record // workspace -> live keys sorted by id
}

// decode reads a key file: JSON when it starts with '{', YAML otherwise. Unknown
// fields are errors; so is an empty file (a half-written file must not revoke every key).
func decode(b []byte) (Document, error) {
	var doc Document
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 {
		return doc, errors.New("file is empty")
	}
	if trimmed[0] == '{' {
		d := json.NewDecoder(bytes.NewReader(trimmed))
		d.DisallowUnknownFields()
		if err := d.Decode(&doc); err != nil {
			return doc, err
		}
		if d.More() {
			return doc, errors.New("trailing data after the JSON document")
		}
	} else {
		d := yaml.NewDecoder(bytes.NewReader(trimmed))
		d.KnownFields(true)
		if err := d.Decode(&doc); err != nil {
			return doc, err
		}
	}
	if doc.Keys == nil {
		return doc, errors.New("keys: missing (write `keys: []` for no keys)")
	}
	return doc, nil
}

// parse validates a document and indexes it.
func parse(b []byte) (*snapshot, error) {
	doc, err := decode(b)
	if err != nil {
		return nil, err
	}
	s := &snapshot{
		byDigest: make(map[[32]byte]*record, len(doc.Keys)),
		byID:     make(map[string]*record, len(doc.Keys)),
		live:     map[string][]*record{},
	}
	names := map[[2]string]string{}
	for i, e := range doc.Keys {
		r, err := e.record()
		if err != nil {
			return nil, fmt.Errorf("keys[%d].%w", i, err)
		}
		if _, dup := s.byID[r.key.ID]; dup {
			return nil, fmt.Errorf("keys[%d].id: %q appears twice", i, r.key.ID)
		}
		if o, dup := s.byDigest[r.digest.Sum]; dup {
			return nil, fmt.Errorf("keys[%d].digest: same digest as key %s", i, o.key.ID)
		}
		if r.key.RevokedAt.IsZero() && r.key.Name != "" {
			n := [2]string{r.key.Workspace, r.key.Name}
			if o, dup := names[n]; dup {
				return nil, fmt.Errorf("keys[%d].name: %q is also the name of live key %s in workspace %s", i, r.key.Name, o, r.key.Workspace)
			}
			names[n] = r.key.ID
		}
		s.byID[r.key.ID] = r
		s.byDigest[r.digest.Sum] = r
		if r.key.RevokedAt.IsZero() {
			s.live[r.key.Workspace] = append(s.live[r.key.Workspace], r)
		}
	}
	for _, rs := range s.live {
		sort.Slice(rs, func(i, j int) bool { return rs[i].key.ID < rs[j].key.ID })
	}
	return s, nil
}

// record converts an entry; errors start with the field name.
func (e Entry) record() (*record, error) {
	if e.ID == "" {
		return nil, errors.New("id: required")
	}
	if e.Workspace == "" {
		return nil, errors.New("workspace: required")
	}
	if e.PepperVersion <= 0 {
		return nil, errors.New("pepper_version: must be a positive integer")
	}
	d, err := apikey.ParseDigestHex(e.Digest, e.PepperVersion)
	if err != nil {
		return nil, errors.New("digest: want 64 hex characters (HMAC-SHA-256 of the secret)")
	}
	r := &record{digest: d, key: apikey.Key{
		ID: e.ID, Workspace: e.Workspace, Name: e.Name, Display: e.Display,
		Grants: slices.Clone(e.Grants), Metadata: e.Metadata, Disabled: e.Disabled,
	}}
	for _, f := range []struct {
		name string
		in   string
		out  *time.Time
	}{
		{"created_at", e.CreatedAt, &r.key.CreatedAt},
		{"expires_at", e.ExpiresAt, &r.key.ExpiresAt},
		{"not_before", e.NotBefore, &r.key.NotBefore},
		{"revoked_at", e.RevokedAt, &r.key.RevokedAt},
	} {
		if *f.out, err = parseTime(f.in); err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if e.RateLimit != "" {
		if r.key.RateLimit, err = apikey.ParseRate(e.RateLimit); err != nil {
			return nil, fmt.Errorf("rate_limit: %w", err)
		}
		if err := r.key.RateLimit.Check(); err != nil {
			return nil, fmt.Errorf("rate_limit: %w", err)
		}
	}
	return r, nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time such as 2027-01-01T00:00:00Z", s)
}

// diff lists the changes that turn prev into next, ordered by key id: removed keys
// are Deleted with their digest, a changed digest is Refreshed with the old one,
// a newly revoked key is Deleted, any other change to a key is Refreshed (so its
// cache entry is evicted), and new keys are Created with their digest.
func diff(prev, next *snapshot, at time.Time) []apikey.Change {
	var out []apikey.Change
	add := func(id string, kind apikey.ChangeKind, d [32]byte) {
		out = append(out, apikey.Change{KeyID: id, Kind: kind, Digests: [][32]byte{d}, At: at})
	}
	for id, o := range prev.byID {
		n, ok := next.byID[id]
		switch {
		case !ok:
			add(id, apikey.Deleted, o.digest.Sum)
		case o.digest != n.digest:
			add(id, apikey.Refreshed, o.digest.Sum)
		case o.key.RevokedAt.IsZero() && !n.key.RevokedAt.IsZero():
			add(id, apikey.Deleted, o.digest.Sum)
		case !sameKey(o.key, n.key):
			add(id, apikey.Refreshed, o.digest.Sum)
		}
	}
	for id, n := range next.byID {
		if _, ok := prev.byID[id]; !ok {
			add(id, apikey.Created, n.digest.Sum)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].KeyID < out[j].KeyID })
	return out
}

func sameKey(a, b apikey.Key) bool {
	if len(a.Metadata) != len(b.Metadata) {
		return false
	}
	for k, v := range a.Metadata {
		if w, ok := b.Metadata[k]; !ok || w != v {
			return false
		}
	}
	return a.ID == b.ID && a.Workspace == b.Workspace && a.Name == b.Name && a.Display == b.Display &&
		a.CreatedAt.Equal(b.CreatedAt) && a.ExpiresAt.Equal(b.ExpiresAt) && a.NotBefore.Equal(b.NotBefore) &&
		a.RevokedAt.Equal(b.RevokedAt) && a.RateLimit == b.RateLimit && slices.Equal(a.Grants, b.Grants) &&
		a.Disabled == b.Disabled
}
