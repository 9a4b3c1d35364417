// Package row holds what the SQL stores (sqlite, postgres) share: the schema
// (in each engine's spelling), the migration runner, and the row encodings and
// scanners, so both keep one data model and one on-disk format for times,
// grants, metadata and digest lists.
package row

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Now is the current time as stores keep it: UTC, microsecond precision.
func Now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// Norm returns t as it will read back: UTC, microsecond precision (zero stays zero).
func Norm(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.UnixMicro(t.UnixMicro()).UTC()
}

// Grants encodes a grant list as JSON ("" when empty).
func Grants(g []string) (string, error) {
	if len(g) == 0 {
		return "", nil
	}
	b, err := json.Marshal(g)
	return string(b), err
}

// Meta encodes a metadata map as JSON ("" when empty).
func Meta(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "", nil
	}
	b, err := json.Marshal(m)
	return string(b), err
}

// JoinDigests concatenates digest sums into one blob.
func JoinDigests(ds [][32]byte) []byte {
	b := make([]byte, 0, 32*len(ds))
	for _, d := range ds {
		b = append(b, d[:]...)
	}
	return b
}

// SplitDigests reverses JoinDigests.
func SplitDigests(b []byte) ([][32]byte, error) {
	if len(b)%32 != 0 {
		return nil, fmt.Errorf("digest list of %d bytes is not a multiple of 32", len(b))
	}
	out := make([][32]byte, len(b)/32)
	for i := range out {
		copy(out[i][:], b[32*i:])
	}
	return out, nil
}

// NewKey prepares a key for insertion the same way in every SQL store: it checks
// workspace and name, fills a zero ID and CreatedAt, normalises times, clears
// what a new key cannot have, and encodes grants and metadata. at is now.
func NewKey(k apikey.Key) (_ apikey.Key, at time.Time, grants, meta string, err error) {
	if k.Workspace == "" || k.Name == "" {
		return k, at, "", "", errors.New("workspace and name are required")
	}
	if k.ID == "" {
		if k.ID, err = apikey.NewID(); err != nil {
			return k, at, "", "", err
		}
	}
	at = Now()
	if k.CreatedAt.IsZero() {
		k.CreatedAt = at
	}
	k.CreatedAt, k.ExpiresAt, k.NotBefore = Norm(k.CreatedAt), Norm(k.ExpiresAt), Norm(k.NotBefore)
	k.RevokedAt, k.LastUsedAt, k.PepperVersion = time.Time{}, time.Time{}, 0
	if grants, err = Grants(k.Grants); err != nil {
		return k, at, "", "", fmt.Errorf("grants: %w", err)
	}
	if meta, err = Meta(k.Metadata); err != nil {
		return k, at, "", "", fmt.Errorf("metadata: %w", err)
	}
	return k, at, grants, meta, nil
}

// Decode reads the rate, grants and metadata columns ("" when unset) into k.
func Decode(k *apikey.Key, rate, grants, meta string) error {
	if rate != "" {
		r, err := apikey.ParseRate(rate)
		if err != nil {
			return fmt.Errorf("key %s: %w", k.ID, err)
		}
		k.RateLimit = r
	}
	if grants != "" {
		if err := json.Unmarshal([]byte(grants), &k.Grants); err != nil {
			return fmt.Errorf("key %s: grants: %w", k.ID, err)
		}
	}
	if meta != "" {
		if err := json.Unmarshal([]byte(meta), &k.Metadata); err != nil {
			return fmt.Errorf("key %s: metadata: %w", k.ID, err)
		}
	}
	return nil
}

// GraceExpiry is the expiry of a key matched through a digest whose grace
// period ends at grace (zero: not a grace digest): the earlier of the two.
func GraceExpiry(expires, grace time.Time) time.Time {
	if !grace.IsZero() && (expires.IsZero() || grace.Before(expires)) {
		return grace
	}
	return expires
}
