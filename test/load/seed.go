package load

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

// Layout of a seeded store: stored key i (stream streamStored) has id keyID(i),
// workspace "ws_<i/10>", name "k<i%10>"; keys [0, HitKeys) are the hot set the
// cache-hit scenarios cycle over, keys [HitKeys, HitKeys+LimitedKeys) carry the
// per-key rate limit LimitedRate (the 429 scenario), the rest have no override.
const (
	HitKeys     = 1000
	LimitedKeys = 100
	LimitedRate = "1/h"
	// SmallStore is the number of keys in the store of the cache-hit scenarios.
	SmallStore = HitKeys + LimitedKeys
)

// keyID returns the id of stored key i: "key_" + 20 base62 digits of i, so ids
// sort in insertion order (the bulk insert appends to the B-tree).
func keyID(i uint64) string {
	var b [20]byte
	for j := len(b) - 1; j >= 0; j-- {
		b[j] = base62[i%62]
		i /= 62
	}
	return "key_" + string(b[:])
}

// Pepper derives a 64-character pepper from the seed (test data, not a secret).
func Pepper(seed uint64) []byte {
	s := sha256.Sum256([]byte(fmt.Sprintf("kzload pepper %d", seed)))
	t := sha256.Sum256(s[:])
	return []byte(base64.RawURLEncoding.EncodeToString(append(s[:], t[:16]...)))
}

// seed creates the SQLite store at path with n keys: the schema comes from the
// sqlite store itself (Open runs its migrations); the rows are bulk-inserted in
// one transaction of multi-row INSERTs with the digests the server will compute
// (apikey.Hasher over the same pepper). Seeding through Store.Create would take
// minutes for a million keys.
func seed(ctx context.Context, path string, n int, gen keyGen, pepper []byte) error {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	st, err := sqlite.Open(ctx, path, zap.NewNop())
	if err != nil {
		return fmt.Errorf("create store: %w", err)
	}
	if err := st.Close(); err != nil {
		return err
	}
	h, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		return err
	}
	type row struct {
		sum [32]byte
		i   uint64
	}
	rows := make([]row, n)
	var kb [128]byte
	for i := range rows {
		k := gen.appendKey(kb[:0], streamStored, uint64(i))
		rows[i] = row{sum: h.Sum(string(k)).Sum, i: uint64(i)}
	}
	db, err := sql.Open("sqlite", path+"?_pragma=foreign_keys(0)&_pragma=synchronous(OFF)&_pragma=journal_mode(OFF)&_pragma=cache_size(-262144)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	created := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	const batch = 200
	var args []any
	var q strings.Builder
	flush := func(head, tuple string, cols int) error {
		if len(args) == 0 {
			return nil
		}
		q.Reset()
		q.WriteString(head)
		for j := 0; j < len(args)/cols; j++ {
			if j > 0 {
				q.WriteByte(',')
			}
			q.WriteString(tuple)
		}
		_, err := tx.ExecContext(ctx, q.String(), args...)
		args = args[:0]
		return err
	}
	const keysHead = `INSERT INTO keys (id, workspace, name, display, created_at, rate_limit) VALUES `
	for i := 0; i < n; i++ {
		rate := ""
		if i >= HitKeys && i < HitKeys+LimitedKeys {
			rate = LimitedRate
		}
		k := gen.appendKey(kb[:0], streamStored, uint64(i))
		args = append(args, keyID(uint64(i)), fmt.Sprintf("ws_%07d", i/10), fmt.Sprintf("k%d", i%10),
			string(k[:len(gen.prefix)+5]), created, rate)
		if len(args) == batch*6 {
			if err := flush(keysHead, "(?,?,?,?,?,?)", 6); err != nil {
				return fmt.Errorf("insert keys: %w", err)
			}
		}
	}
	if err := flush(keysHead, "(?,?,?,?,?,?)", 6); err != nil {
		return fmt.Errorf("insert keys: %w", err)
	}
	slices.SortFunc(rows, func(a, b row) int { return bytes.Compare(a.sum[:], b.sum[:]) })
	const digHead = `INSERT INTO digests (digest, key_id, pepper_version) VALUES `
	for i := range rows {
		args = append(args, rows[i].sum[:], keyID(rows[i].i), 1)
		if len(args) == batch*3 {
			if err := flush(digHead, "(?,?,?)", 3); err != nil {
				return fmt.Errorf("insert digests: %w", err)
			}
		}
	}
	if err := flush(digHead, "(?,?,?)", 3); err != nil {
		return fmt.Errorf("insert digests: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `PRAGMA journal_mode=WAL`) // as the store left it
	return err
}

// checkSeeded opens the store at path read-only through the sqlite store and
// verifies it holds n keys and that the first, a limited and the last key
// resolve under pepper: a cached store from an earlier run is reused only then.
func checkSeeded(ctx context.Context, path string, n int, gen keyGen, pepper []byte) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", path+"?_pragma=query_only(1)")
	if err != nil {
		return err
	}
	var got int
	err = db.QueryRowContext(ctx, `SELECT COUNT(*) FROM digests`).Scan(&got)
	db.Close()
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("store %s holds %d digests, want %d", path, got, n)
	}
	st, err := sqlite.Open(ctx, path, zap.NewNop())
	if err != nil {
		return err
	}
	defer st.Close()
	h, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		return err
	}
	for _, i := range []uint64{0, HitKeys, uint64(n - 1)} {
		k, err := st.Lookup(ctx, h.Sum(gen.key(streamStored, i)))
		if err != nil {
			return fmt.Errorf("key %d: %w", i, err)
		}
		if k.ID != keyID(i) {
			return fmt.Errorf("key %d: id %s, want %s", i, k.ID, keyID(i))
		}
	}
	return nil
}
