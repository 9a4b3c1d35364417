package row

import (
	"cmp"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// ChunkRows is the most rows one bounded write statement (Touch, AddUsage) carries.
const ChunkRows = 500

// UsageCounters are key_usage's count columns, one per apikey.Outcome in
// order, named by Outcome.String().
var UsageCounters = func() []string {
	out := make([]string, apikey.NumOutcomes)
	for o := range apikey.NumOutcomes {
		out[o] = o.String()
	}
	return out
}()

// schema2 is migration 2 (key disabled flag, workspace records, hourly usage,
// the change feed's workspace) with {text} and {counters} to fill in.
// Workspace times are Unix microseconds like the keys', rate_limit and grants
// are encoded as the keys table's, max_keys is NULL when the record sets none,
// and a usage hour is the Unix microseconds of the hour's start (UTC).
const schema2 = `ALTER TABLE keys ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE workspaces (
	id         {text} PRIMARY KEY,
	rate_limit TEXT NOT NULL DEFAULT '',
	max_keys   INTEGER,
	grants     TEXT NOT NULL DEFAULT '',
	disabled   BOOLEAN NOT NULL DEFAULT FALSE,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);
CREATE TABLE key_usage (
	key_id {text} NOT NULL,
	hour   BIGINT NOT NULL,
{counters}	PRIMARY KEY (key_id, hour)
);
CREATE INDEX key_usage_hour ON key_usage (hour);
CREATE INDEX digests_pepper ON digests (pepper_version, key_id);
ALTER TABLE changes ADD COLUMN workspace {text} NOT NULL DEFAULT '';`

// Schema2 is migration 2 in d's spelling: keys.disabled, the workspaces and
// key_usage tables, and changes.workspace.
func Schema2(d Dialect) string {
	var c strings.Builder
	for _, n := range UsageCounters {
		fmt.Fprintf(&c, "\t%s BIGINT NOT NULL DEFAULT 0,\n", n)
	}
	return strings.NewReplacer("{text}", d.Text, "{counters}", c.String()).Replace(schema2)
}

// KeyFromV2 is the FROM clause KeyColsV2 needs: keys k and its workspace record w, if any.
const KeyFromV2 = `keys k ` + JoinWorkspaceV2

// JoinWorkspaceV2 joins keys k to its workspace record w, if any (for a FROM
// clause that reaches keys k through another table, such as digests).
const JoinWorkspaceV2 = `LEFT JOIN workspaces w ON w.id = k.workspace`

// KeyColsV2 are KeyCols, the key's disabled flag and its workspace record's
// policy columns (from KeyFromV2), in ScanKeyV2's order.
const KeyColsV2 = KeyCols + `, k.disabled, w.rate_limit, w.grants, w.disabled`

// ScanKeyV2 reads KeyColsV2, plus extra destinations, from one row: Disabled
// and Space (zero when the workspace has no record) as well as ScanKey's fields.
func ScanKeyV2(sc Scanner, extra ...any) (apikey.Key, error) {
	var (
		disabled  bool
		wRate     sql.NullString
		wGrants   sql.NullString
		wDisabled sql.NullBool
	)
	k, err := ScanKey(sc, append([]any{&disabled, &wRate, &wGrants, &wDisabled}, extra...)...)
	if err != nil {
		return apikey.Key{}, err
	}
	k.Disabled = disabled
	if err := DecodePolicy(&k.Space, wRate.String, wGrants.String); err != nil {
		return apikey.Key{}, fmt.Errorf("workspace %s: %w", k.Workspace, err)
	}
	k.Space.Disabled = wDisabled.Bool
	return k, nil
}

// ScanLookupV2 is ScanLookup over KeyColsV2 (then the matched digest's expires_at).
func ScanLookupV2(sc Scanner, v int) (apikey.Key, error) {
	var grace *int64
	k, err := ScanKeyV2(sc, &grace)
	if err != nil {
		return apikey.Key{}, err
	}
	k.ExpiresAt = GraceExpiry(k.ExpiresAt, Time(grace))
	k.PepperVersion = v
	return k, nil
}

// DecodePolicy reads a workspace record's rate and grants columns ("" when unset) into p.
func DecodePolicy(p *apikey.Policy, rate, grants string) error {
	if rate != "" {
		r, err := apikey.ParseRate(rate)
		if err != nil {
			return fmt.Errorf("rate_limit: %w", err)
		}
		p.RateLimit = r
	}
	if grants != "" {
		var k apikey.Key
		if err := Decode(&k, "", grants, ""); err != nil {
			return err
		}
		p.Grants = k.Grants
	}
	return nil
}

// ChangeColsV2 are ChangeCols and the change's workspace, in ScanChangeV2's order.
const ChangeColsV2 = ChangeCols + `, workspace`

// ScanChangeV2 reads ChangeColsV2 from one row.
func ScanChangeV2(sc Scanner) (apikey.Change, error) {
	var ws string
	c, err := ScanChange(extraScanner{sc, []any{&ws}})
	c.Workspace = ws
	return c, err
}

// extraScanner appends destinations to every Scan of sc.
type extraScanner struct {
	sc    Scanner
	extra []any
}

func (e extraScanner) Scan(dest ...any) error { return e.sc.Scan(append(dest, e.extra...)...) }

// WorkspaceCols are the workspaces columns ScanWorkspace reads, in its order.
const WorkspaceCols = `id, rate_limit, max_keys, grants, disabled, created_at, updated_at`

// ScanWorkspace reads WorkspaceCols from one row.
func ScanWorkspace(sc Scanner) (apikey.Workspace, error) {
	var (
		w                apikey.Workspace
		rate, grants     string
		maxKeys          sql.NullInt64
		created, updated int64
	)
	if err := sc.Scan(&w.ID, &rate, &maxKeys, &grants, &w.Disabled, &created, &updated); err != nil {
		return w, err
	}
	var p apikey.Policy
	if err := DecodePolicy(&p, rate, grants); err != nil {
		return apikey.Workspace{}, fmt.Errorf("workspace %s: %w", w.ID, err)
	}
	w.RateLimit, w.Grants = p.RateLimit, p.Grants
	w.MaxKeys = int(maxKeys.Int64)
	w.CreatedAt, w.UpdatedAt = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
	return w, nil
}

// WorkspaceValues encodes a record's settings as the workspaces columns hold
// them: rate_limit, max_keys (nil for 0) and grants.
func WorkspaceValues(w apikey.Workspace) (rate string, maxKeys *int64, grants string, err error) {
	if w.MaxKeys > 0 {
		m := int64(w.MaxKeys)
		maxKeys = &m
	}
	if grants, err = Grants(w.Grants); err != nil {
		return "", nil, "", fmt.Errorf("grants: %w", err)
	}
	return w.RateLimit.String(), maxKeys, grants, nil
}

// KeyPatchFields names the fields p sets, comma separated, in a fixed order
// (the "updated" audit event's Detail).
func KeyPatchFields(p apikey.KeyPatch) string {
	var fs []string
	for _, f := range []struct {
		set  bool
		name string
	}{
		{p.Name != nil, "name"}, {p.RateLimit != nil, "rate_limit"}, {p.ExpiresAt != nil, "expires_at"},
		{p.Grants != nil, "grants"}, {p.Metadata != nil, "metadata"}, {p.Disabled != nil, "disabled"},
	} {
		if f.set {
			fs = append(fs, f.name)
		}
	}
	return strings.Join(fs, ",")
}

// WorkspacePatchFields names the fields p sets, comma separated, in a fixed
// order (the "workspace_updated" audit event's Detail for a patch).
func WorkspacePatchFields(p apikey.WorkspacePatch) string {
	var fs []string
	for _, f := range []struct {
		set  bool
		name string
	}{
		{p.RateLimit != nil, "rate_limit"}, {p.MaxKeys != nil, "max_keys"},
		{p.Grants != nil, "grants"}, {p.Disabled != nil, "disabled"},
	} {
		if f.set {
			fs = append(fs, f.name)
		}
	}
	return strings.Join(fs, ",")
}

// Hour is the start of t's hour in UTC: a usage bucket.
func Hour(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) }

// MergeUsage returns rows with each Hour set to its bucket (Hour), rows of
// the same key and bucket summed, rows without counts dropped, ordered by key
// and hour: at most one row per primary key, written in index order.
func MergeUsage(rows []apikey.Usage) []apikey.Usage {
	type pk struct {
		id string
		h  int64
	}
	at := make(map[pk]int, len(rows))
	out := make([]apikey.Usage, 0, len(rows))
	for _, u := range rows {
		if u.Total() == 0 {
			continue
		}
		u.Hour = Hour(u.Hour)
		k := pk{u.KeyID, u.Hour.UnixMicro()}
		if i, ok := at[k]; ok {
			for o := range u.Counts {
				out[i].Counts[o] += u.Counts[o]
			}
			continue
		}
		at[k] = len(out)
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b apikey.Usage) int {
		return cmp.Or(cmp.Compare(a.KeyID, b.KeyID), a.Hour.Compare(b.Hour))
	})
	return out
}

// UsageCols are the key_usage columns ScanUsage reads, in its order.
var UsageCols = "key_id, hour, " + strings.Join(UsageCounters, ", ")

// ScanUsage reads UsageCols from one row.
func ScanUsage(sc Scanner) (apikey.Usage, error) {
	var (
		u    apikey.Usage
		hour int64
	)
	dest := make([]any, 0, 2+apikey.NumOutcomes)
	dest = append(dest, &u.KeyID, &hour)
	for i := range u.Counts {
		dest = append(dest, &u.Counts[i])
	}
	if err := sc.Scan(dest...); err != nil {
		return u, err
	}
	u.Hour = time.UnixMicro(hour).UTC()
	return u, nil
}

// UsageArgs appends u's values in UsageCols order to args.
func UsageArgs(args []any, u apikey.Usage) []any {
	args = append(args, u.KeyID, u.Hour.UnixMicro())
	for _, c := range u.Counts {
		args = append(args, c)
	}
	return args
}

// AddUsageSQL is an upsert of n rows of UsageCols that adds each row's counts
// to its stored bucket; ph(i) spells the i-th placeholder (1-based: "?" or "$i").
func AddUsageSQL(n int, ph func(i int) string) string {
	var b strings.Builder
	b.WriteString("INSERT INTO key_usage (" + UsageCols + ") VALUES ")
	cols := 2 + int(apikey.NumOutcomes)
	for r := range n {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := range cols {
			if c > 0 {
				b.WriteString(", ")
			}
			b.WriteString(ph(r*cols + c + 1))
		}
		b.WriteByte(')')
	}
	b.WriteString(" ON CONFLICT (key_id, hour) DO UPDATE SET ")
	for i, c := range UsageCounters {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = key_usage.%s + excluded.%s", c, c, c)
	}
	return b.String()
}

// WorkspaceChangedFields names the settings that differ between a and b,
// comma separated, in WorkspacePatchFields' order (the "workspace_updated"
// audit event's Detail for a replace).
func WorkspaceChangedFields(a, b apikey.Workspace) string {
	var p apikey.WorkspacePatch
	if a.RateLimit != b.RateLimit {
		p.RateLimit = &b.RateLimit
	}
	if a.MaxKeys != b.MaxKeys {
		p.MaxKeys = &b.MaxKeys
	}
	if !slices.Equal(a.Grants, b.Grants) {
		p.Grants = &b.Grants
	}
	if a.Disabled != b.Disabled {
		p.Disabled = &b.Disabled
	}
	return WorkspacePatchFields(p)
}
