package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/internal/row"
)

// Bounded writes. A flush writes last-used times and usage counts for every
// key used in the flush interval: 120,000 keys a minute at 2,000 cache misses
// a second. One statement over all of them is planned as a hash join against
// a scan of the whole keys table (10M rows: seconds, past statement_timeout).
// So both writes go in chunks of at most chunkRows rows, each its own
// statement (its own transaction), and each in a form the planner can only
// serve from a primary key:
//
//   - Touch restricts keys with id = ANY($ids), an index condition on the
//     primary key whatever the join method, after locking those rows in id
//     order (two replicas touching overlapping keys cannot deadlock);
//   - AddUsage never reads keys: it upserts into key_usage, whose primary key
//     (key_id, hour) is the ON CONFLICT arbiter, rows sorted by that key.
//
// The chunks of one call are independent: an error leaves the earlier chunks
// applied (harmless for Touch, whose times only move forward).
const chunkRows = 500

// pruneRows is how many usage rows one PruneUsage statement deletes at most.
const pruneRows = 5000

// touchLockSQL locks the chunk's keys in id order (the lock is held until
// the implicit transaction of the chunk's batch ends, after touchSQL).
const touchLockSQL = `SELECT count(*) FROM (
	SELECT 1 FROM keys WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE
) l`

// touchSQL sets each key's last_used_at to its time unless it holds a later one.
const touchSQL = `UPDATE keys k SET last_used_at = u.at
	FROM unnest($1::text[], $2::bigint[]) AS u (id, at)
	WHERE k.id = ANY($1::text[]) AND k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)`

// Touch records last-used times, in chunks of at most chunkRows keys, each
// served from the primary key; unknown ids are ignored and a time never moves
// backwards. Chunks are idempotent, so one that met a dead connection is
// retried once on a fresh one.
func (s *Store) Touch(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ids := make([]string, 0, len(used))
	for id := range used {
		ids = append(ids, id)
	}
	slices.Sort(ids) // chunks lock in one global order too
	ats := make([]int64, chunkRows)
	for c := range slices.Chunk(ids, chunkRows) {
		ats = ats[:len(c)]
		for i, id := range c {
			ats[i] = used[id].UnixMicro()
		}
		start := time.Now()
		_, err := read(ctx, s, func() (struct{}, error) {
			b := &pgx.Batch{}
			b.Queue(touchLockSQL, c)
			b.Queue(touchSQL, c, ats)
			return struct{}{}, s.pool.SendBatch(ctx, b).Close()
		})
		s.observed("touch", len(c), start)
		if err != nil {
			return fmt.Errorf("postgres touch %d keys: %w", len(c), err)
		}
	}
	return nil
}

// observed reports one bounded statement to the test hook, if any.
func (s *Store) observed(op string, rows int, start time.Time) {
	if s.observe != nil {
		s.observe(op, rows, time.Since(start))
	}
}

// usageCols are key_usage's counter columns, in apikey.Outcome order.
var usageCols = func() []string {
	c := make([]string, apikey.NumOutcomes)
	for o := range apikey.NumOutcomes {
		c[o] = o.String()
	}
	return c
}()

// addUsageSQL upserts one chunk: $1 key ids, $2 hours, then one bigint array
// per outcome; an existing bucket's counters are added to.
var addUsageSQL = func() string {
	var b strings.Builder
	b.WriteString("INSERT INTO key_usage AS u (key_id, hour, " + strings.Join(usageCols, ", ") + ")\n\t")
	b.WriteString("SELECT * FROM unnest($1::text[], $2::timestamptz[]")
	for i := range usageCols {
		b.WriteString(", $" + strconv.Itoa(i+3) + "::bigint[]")
	}
	b.WriteString(")\n\tON CONFLICT (key_id, hour) DO UPDATE SET ")
	for i, c := range usageCols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c + " = u." + c + " + EXCLUDED." + c)
	}
	return b.String()
}()

// AddUsage adds each row's counts to its key's bucket for row.Hour (truncated
// to the UTC hour), in chunks of at most chunkRows rows that never read the
// keys table (rows of unknown keys are kept and age out). Rows repeating a
// (key, hour) are summed first; rows are written in (key, hour) order, so
// replicas adding to the same buckets cannot deadlock. The chunks run in one
// transaction, so a failed call added nothing and the caller may send the
// same rows again without counting them twice.
func (s *Store) AddUsage(ctx context.Context, rows []apikey.Usage) error {
	rows = mergeUsage(rows)
	if len(rows) == 0 {
		return nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		s.lost(err)
		return fmt.Errorf("postgres add usage: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	var (
		ids    = make([]string, 0, min(len(rows), chunkRows))
		hours  = make([]time.Time, 0, cap(ids))
		counts [apikey.NumOutcomes][]int64
		args   = make([]any, 2+apikey.NumOutcomes)
	)
	for c := range slices.Chunk(rows, chunkRows) {
		ids, hours = ids[:0], hours[:0]
		for o := range counts {
			counts[o] = counts[o][:0]
		}
		for _, u := range c {
			ids = append(ids, u.KeyID)
			hours = append(hours, u.Hour)
			for o, n := range u.Counts {
				counts[o] = append(counts[o], n)
			}
		}
		args[0], args[1] = ids, hours
		for o := range counts {
			args[2+o] = counts[o]
		}
		start := time.Now()
		_, err := tx.Exec(ctx, addUsageSQL, args...)
		s.observed("add_usage", len(c), start)
		if err != nil {
			s.lost(err)
			return fmt.Errorf("postgres add usage of %d keys: %w", len(c), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		s.lost(err)
		return fmt.Errorf("postgres add usage: commit: %w", err)
	}
	return nil
}

// mergeUsage returns rows with hours truncated to the UTC hour, empty rows
// dropped, rows of one (key, hour) summed, sorted by key then hour.
func mergeUsage(rows []apikey.Usage) []apikey.Usage {
	out := make([]apikey.Usage, 0, len(rows))
	for _, u := range rows {
		if u.Counts == ([apikey.NumOutcomes]int64{}) {
			continue
		}
		u.Hour = u.Hour.UTC().Truncate(time.Hour)
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b apikey.Usage) int {
		return cmp.Or(strings.Compare(a.KeyID, b.KeyID), a.Hour.Compare(b.Hour))
	})
	j := 0
	for i := range out {
		if j > 0 && out[j-1].KeyID == out[i].KeyID && out[j-1].Hour.Equal(out[i].Hour) {
			for o, n := range out[i].Counts {
				out[j-1].Counts[o] += n
			}
			continue
		}
		out[j] = out[i]
		j++
	}
	return out[:j]
}

// usageSelect reads key_usage rows in scanUsage's order.
var usageSelect = `SELECT key_id, hour, ` + strings.Join(usageCols, ", ") + ` FROM key_usage`

// scanUsage reads one usageSelect row.
func scanUsage(sc row.Scanner) (apikey.Usage, error) {
	var u apikey.Usage
	dest := []any{&u.KeyID, &u.Hour}
	for o := range u.Counts {
		dest = append(dest, &u.Counts[o])
	}
	if err := sc.Scan(dest...); err != nil {
		return apikey.Usage{}, err
	}
	u.Hour = u.Hour.UTC()
	return u, nil
}

// Usage returns a key's buckets with from <= Hour < to, oldest first (hours
// without requests are absent); a primary-key range scan.
func (s *Store) Usage(ctx context.Context, keyID string, from, to time.Time) ([]apikey.Usage, error) {
	out, err := query(ctx, s, scanUsage, usageSelect+` WHERE key_id = $1 AND hour >= $2 AND hour < $3 ORDER BY hour`,
		keyID, from, to)
	if err != nil {
		return nil, fmt.Errorf("postgres usage: %w", err)
	}
	return out, nil
}

// usageTotalSQL sums every outcome of the chunk's keys since $2.
var usageTotalSQL = `SELECT key_id, SUM(` + strings.Join(usageCols, " + ") + `)::bigint FROM key_usage
	WHERE key_id = ANY($1::text[]) AND hour >= $2 GROUP BY key_id`

// UsageTotals returns, for each of ids with any, the requests (all outcomes)
// counted since since's hour (its bucket included); chunked like the writes.
func (s *Store) UsageTotals(ctx context.Context, ids []string, since time.Time) (map[string]int64, error) {
	out := make(map[string]int64)
	since = since.UTC().Truncate(time.Hour)
	for c := range slices.Chunk(ids, chunkRows) {
		type total struct {
			id string
			n  int64
		}
		rows, err := query(ctx, s, func(sc row.Scanner) (total, error) {
			var t total
			return t, sc.Scan(&t.id, &t.n)
		}, usageTotalSQL, c, since)
		if err != nil {
			return nil, fmt.Errorf("postgres usage totals: %w", err)
		}
		for _, t := range rows {
			if t.n != 0 {
				out[t.id] = t.n
			}
		}
	}
	return out, nil
}

// pruneUsageSQL deletes at most pruneRows buckets older than $1 (found through
// key_usage_hour, deleted by row address).
var pruneUsageSQL = `DELETE FROM key_usage WHERE ctid = ANY(ARRAY(
	SELECT ctid FROM key_usage WHERE hour < $1 LIMIT ` + strconv.Itoa(pruneRows) + `))`

// PruneUsage drops buckets with Hour before before, at most pruneRows per
// statement, and returns how many it dropped.
func (s *Store) PruneUsage(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	for {
		start := time.Now()
		tag, err := s.pool.Exec(ctx, pruneUsageSQL, before)
		s.observed("prune_usage", int(tag.RowsAffected()), start)
		if err != nil {
			s.lost(err)
			return n, fmt.Errorf("postgres prune usage: %w", err)
		}
		n += tag.RowsAffected()
		// Fewer than a full batch: nothing older is left, or another replica
		// pruning at the same time took the rest.
		if tag.RowsAffected() < pruneRows {
			return n, nil
		}
	}
}
