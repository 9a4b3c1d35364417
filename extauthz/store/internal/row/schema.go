package row

import (
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Dialect is how one SQL store spells the parts of the shared schema that
// differ between engines.
type Dialect struct {
	Blob     string // digest columns: BLOB (SQLite) or BYTEA (PostgreSQL)
	Text     string // compared or ordered text columns (ids, workspace, name)
	Counter  string // statements creating the change feed's counter, before the changes table; "" for none
	Seq      string // changes.seq
	AuditSeq string // audit.seq
}

// schema1 is migration 1 (keys, digests, change feed, audit log) with the
// Dialect's parts as {blob}, {text}, {counter}, {seq} and {audit_seq}.
// Times are BIGINT Unix microseconds (NULL = unset), grants and metadata are
// JSON text (empty string = none), and the partial indexes use syntax both
// engines accept.
const schema1 = `CREATE TABLE keys (
	id           {text} PRIMARY KEY,
	workspace    {text} NOT NULL,
	name         {text} NOT NULL,
	display      TEXT NOT NULL DEFAULT '',
	created_at   BIGINT NOT NULL,
	expires_at   BIGINT,
	not_before   BIGINT,
	revoked_at   BIGINT,
	rate_limit   TEXT NOT NULL DEFAULT '',
	grants       TEXT NOT NULL DEFAULT '',
	metadata     TEXT NOT NULL DEFAULT '',
	last_used_at BIGINT
);
CREATE INDEX keys_live_workspace ON keys (workspace, id) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX keys_live_name ON keys (workspace, name) WHERE revoked_at IS NULL;

CREATE TABLE digests (
	digest         {blob} PRIMARY KEY,
	key_id         {text} NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
	pepper_version INTEGER NOT NULL,
	expires_at     BIGINT
);
CREATE INDEX digests_key ON digests (key_id);
CREATE INDEX digests_grace ON digests (expires_at) WHERE expires_at IS NOT NULL;

{counter}CREATE TABLE changes (
	seq     {seq},
	at      BIGINT NOT NULL,
	key_id  {text} NOT NULL,
	kind    TEXT NOT NULL,
	digests {blob} NOT NULL
);

CREATE TABLE audit (
	seq       {audit_seq},
	at        BIGINT NOT NULL,
	kind      TEXT NOT NULL,
	workspace {text} NOT NULL,
	key_id    TEXT NOT NULL,
	actor     TEXT NOT NULL,
	detail    TEXT NOT NULL
);
CREATE INDEX audit_workspace ON audit (workspace, seq);`

// Schema1 is migration 1 in d's spelling: the keys, digests, changes and
// audit tables and their indexes.
func Schema1(d Dialect) string {
	return strings.NewReplacer("{blob}", d.Blob, "{text}", d.Text, "{counter}", d.Counter,
		"{seq}", d.Seq, "{audit_seq}", d.AuditSeq).Replace(schema1)
}

// Migrate applies the migrations a database lacks, inside the caller's
// transaction: migrations[i] brings the schema to version i+1, and the
// versions applied are recorded in schema_migrations (created if needed).
// exec runs one statement; scanInt runs a query for one integer. It returns
// the versions it applied, for LogApplied once the transaction commits.
func Migrate(migrations []string, exec func(sql string) error, scanInt func(sql string, n *int) error) ([]int, error) {
	if err := exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			applied_at BIGINT NOT NULL)`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	var cur int
	if err := scanInt(`SELECT COALESCE(MAX(version), 0) FROM schema_migrations`, &cur); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	if cur > len(migrations) {
		return nil, fmt.Errorf("database schema version %d is newer than this binary knows (%d)", cur, len(migrations))
	}
	var applied []int
	for v := cur + 1; v <= len(migrations); v++ {
		if err := exec(migrations[v-1]); err != nil {
			return nil, fmt.Errorf("apply migration %d: %w", v, err)
		}
		// Integers only, so formatted in: the engines' placeholders differ.
		if err := exec(fmt.Sprintf(`INSERT INTO schema_migrations (version, applied_at) VALUES (%d, %d)`,
			v, time.Now().UnixMicro())); err != nil {
			return nil, fmt.Errorf("record migration %d: %w", v, err)
		}
		applied = append(applied, v)
	}
	return applied, nil
}

// LogApplied logs the versions Migrate applied, if any.
func LogApplied(log *zap.Logger, applied []int) {
	if len(applied) > 0 {
		log.Info("applied schema migrations", zap.Ints("versions", applied))
	}
}
