package row

import (
	"fmt"
	"strconv"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Scanner is one result row: *sql.Row, *sql.Rows, pgx.Row, pgx.CollectableRow.
type Scanner interface{ Scan(dest ...any) error }

// KeyCols are the keys columns (table alias k) every key read selects, in ScanKey's order.
const KeyCols = `k.id, k.workspace, k.name, k.display, k.created_at, k.expires_at, k.not_before,
	k.revoked_at, k.rate_limit, k.grants, k.metadata, k.last_used_at`

// ChangeCols are the changes columns ScanChange reads, in its order.
const ChangeCols = `seq, at, key_id, kind, digests`

// EventCols are the audit columns ScanEvent reads, in its order.
const EventCols = `seq, at, kind, workspace, key_id, actor, detail`

// Micros maps a time to its column value: NULL for zero, Unix microseconds otherwise.
func Micros(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	v := t.UnixMicro()
	return &v
}

// Time reverses Micros: zero for NULL.
func Time(v *int64) time.Time {
	if v == nil {
		return time.Time{}
	}
	return time.UnixMicro(*v).UTC()
}

// ScanKey reads KeyCols, plus extra destinations, from one row.
func ScanKey(sc Scanner, extra ...any) (apikey.Key, error) {
	var (
		k                                   apikey.Key
		created                             int64
		expires, notBefore, revoked, usedAt *int64
		rate, grants, meta                  string
	)
	dest := append([]any{&k.ID, &k.Workspace, &k.Name, &k.Display, &created, &expires, &notBefore,
		&revoked, &rate, &grants, &meta, &usedAt}, extra...)
	if err := sc.Scan(dest...); err != nil {
		return apikey.Key{}, err
	}
	k.CreatedAt = time.UnixMicro(created).UTC()
	k.ExpiresAt = Time(expires)
	k.NotBefore = Time(notBefore)
	k.RevokedAt = Time(revoked)
	k.LastUsedAt = Time(usedAt)
	if err := Decode(&k, rate, grants, meta); err != nil {
		return apikey.Key{}, err
	}
	return k, nil
}

// ScanLookup reads a Lookup row, KeyCols and then the matched digest's
// expires_at, of a key matched through a digest of pepper version v: ExpiresAt
// is the earlier of the key's expiry and the digest's grace end.
func ScanLookup(sc Scanner, v int) (apikey.Key, error) {
	var grace *int64
	k, err := ScanKey(sc, &grace)
	if err != nil {
		return apikey.Key{}, err
	}
	k.ExpiresAt = GraceExpiry(k.ExpiresAt, Time(grace))
	k.PepperVersion = v
	return k, nil
}

// ScanChange reads ChangeCols from one row.
func ScanChange(sc Scanner) (apikey.Change, error) {
	var (
		c    apikey.Change
		at   int64
		kind string
		ds   []byte
	)
	if err := sc.Scan(&c.Seq, &at, &c.KeyID, &kind, &ds); err != nil {
		return c, err
	}
	c.At = time.UnixMicro(at).UTC()
	c.Kind = apikey.ChangeKind(kind)
	var err error
	if c.Digests, err = SplitDigests(ds); err != nil {
		return c, fmt.Errorf("seq %d: %w", c.Seq, err)
	}
	return c, nil
}

// ScanEvent reads EventCols from one row.
func ScanEvent(sc Scanner) (apikey.Event, error) {
	var (
		e  apikey.Event
		at int64
	)
	if err := sc.Scan(&e.Seq, &at, &e.Kind, &e.Workspace, &e.KeyID, &e.Actor, &e.Detail); err != nil {
		return e, err
	}
	e.At = time.UnixMicro(at).UTC()
	return e, nil
}

// ScanDigest reads one digest column.
func ScanDigest(sc Scanner) ([32]byte, error) {
	var (
		b []byte
		d [32]byte
	)
	if err := sc.Scan(&b); err != nil {
		return d, err
	}
	if len(b) != len(d) {
		return d, fmt.Errorf("stored digest has %d bytes", len(b))
	}
	copy(d[:], b)
	return d, nil
}

// MaxPepperCount is the most live keys KeysByPepperSQL counts per pepper
// version: a count of MaxPepperCount means at least that many. Counting them
// all would read every digest, seconds on a store of millions of keys.
const MaxPepperCount = 1000

// KeysByPepperSQL counts the live keys (not revoked) by the pepper version of
// their usable digests (grace digests until they expire), up to MaxPepperCount
// per version, with one placeholder, ?, for now in Unix microseconds;
// PostgreSQL callers rewrite it to $1. The versions in use are found by a
// skip scan of the digests_pepper index (one probe per version), and each
// version's count stops at MaxPepperCount keys: the cost does not grow with the store.
var KeysByPepperSQL = `WITH RECURSIVE v(version) AS (
		SELECT MIN(pepper_version) FROM digests
		UNION ALL
		SELECT (SELECT MIN(pepper_version) FROM digests WHERE pepper_version > v.version) FROM v WHERE v.version IS NOT NULL
	)
	SELECT v.version, (SELECT COUNT(*) FROM (SELECT DISTINCT d.key_id FROM digests d JOIN keys k ON k.id = d.key_id
		WHERE d.pepper_version = v.version AND k.revoked_at IS NULL AND (d.expires_at IS NULL OR d.expires_at > ?)
		LIMIT ` + strconv.Itoa(MaxPepperCount) + `) x)
	FROM v WHERE v.version IS NOT NULL`

// ScanCount reads a (pepper version, count) row of KeysByPepperSQL.
func ScanCount(sc Scanner) ([2]int, error) {
	var vc [2]int
	err := sc.Scan(&vc[0], &vc[1])
	return vc, err
}

// Counts turns ScanCount rows into a map from pepper version to key count.
func Counts(rows [][2]int) map[int]int {
	m := make(map[int]int, len(rows))
	for _, vc := range rows {
		if vc[1] > 0 { // a version left only on revoked keys or expired grace digests
			m[vc[0]] = vc[1]
		}
	}
	return m
}
