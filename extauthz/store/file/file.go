// Package file is a read-only key store read from a YAML or JSON file, for keys
// kept outside keyauthz (for example in a Kubernetes Secret mounted as a volume).
// The file holds digests, never secrets:
//
//	keys:
//	  - id: key_abc                      # required, unique
//	    workspace: acme                  # required
//	    name: ci                         # optional; unique among a workspace's live keys
//	    display: kz_4fA9                 # optional listing form
//	    digest: <64 hex chars>           # required: HMAC-SHA-256(pepper, secret), unique
//	    pepper_version: 1                # required: the pepper version of the digest
//	    created_at: 2026-01-01T00:00:00Z # optional, RFC 3339
//	    expires_at: 2027-01-01T00:00:00Z # optional
//	    not_before: 2026-01-01T00:00:00Z # optional
//	    revoked_at: 2026-06-01T00:00:00Z # optional: the key is revoked
//	    rate_limit: 600/m                # optional: N/s, N/m, N/h, N/d or N/<duration>
//	    grants: [org1]                   # optional
//	    metadata: {team: x}              # optional string map
//	    disabled: true                   # optional: the key is refused (401) but stays listed
//
// A document starting with '{' is read as JSON with the same field names. Unknown
// fields, a missing `keys` field and an empty file are errors. Encode writes the format.
//
// The store watches the file's directory (Kubernetes updates a Secret volume by
// swapping the `..data` symlink) and also re-reads the file periodically; a changed
// file is reloaded, and a bad one is logged and ignored, keeping the previous keys.
// Each reload appends the difference to an in-memory change feed so caches can
// evict what changed. Writes (keys and workspace records) return
// apikey.ErrReadOnly; Touch and AddUsage are no-ops and no usage is kept; the
// file holds no workspace records; audit events are kept in memory, the newest
// maxEvents of them.
package file

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

var _ apikey.Store = (*Store)(nil)

const (
	// DefaultPollInterval is how often the file is re-read when no watch event came.
	DefaultPollInterval = 10 * time.Second
	debounce            = 50 * time.Millisecond // lets a burst of watch events settle
	maxChanges          = 1 << 16               // change-feed entries kept
	maxEvents           = 1024                  // audit events kept
)

// Option adjusts Open.
type Option func(*Store)

// WithPollInterval sets how often the file is re-read as a fallback to watch events.
func WithPollInterval(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.poll = d
		}
	}
}

// Store is a read-only apikey.Store over a key file.
type Store struct {
	path  string
	log   *zap.Logger
	poll  time.Duration
	watch bool // use fsnotify (tests turn it off to exercise polling)

	cur atomic.Pointer[snapshot]

	mu       sync.Mutex // guards the fields below and serializes reloads
	lastSeen [32]byte   // hash of the last content read, good or bad
	changes  []apikey.Change
	seq      int64
	events   []apikey.Event
	eventSeq int64

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool
}

// Open reads the key file at path and starts watching it until Close; ctx only
// bounds the first read.
func Open(ctx context.Context, path string, log *zap.Logger, opts ...Option) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{path: path, log: log, poll: DefaultPollInterval, watch: true,
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	snap, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	s.cur.Store(snap)
	s.lastSeen = sha256.Sum256(b)

	var w *fsnotify.Watcher
	if s.watch {
		if w, err = fsnotify.NewWatcher(); err == nil {
			if err = w.Add(filepath.Dir(path)); err != nil {
				_ = w.Close()
				w = nil
			}
		}
		if err != nil {
			s.log.Warn("cannot watch key file directory; polling only", zap.String("path", path),
				zap.Duration("interval", s.poll), zap.Error(err))
		}
	}
	go s.run(w)
	s.log.Info("loaded key file", zap.String("path", path), zap.Int("keys", len(snap.byID)))
	return s, nil
}

// Close stops watching the file; it is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.done
	})
	return nil
}

// run reloads the file on watch events (debounced) and on every poll tick.
func (s *Store) run(w *fsnotify.Watcher) {
	defer close(s.done)
	var (
		events <-chan fsnotify.Event
		errs   <-chan error
	)
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	tick := time.NewTicker(s.poll)
	defer tick.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-s.stop:
			return
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			settle.Reset(debounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			s.log.Warn("key file watch error", zap.Error(err))
		case <-settle.C:
			s.reload()
		case <-tick.C:
			s.reload()
		}
	}
}

// reload re-reads the file; unchanged content is skipped, bad content is logged
// once and leaves the current keys in place.
func (s *Store) reload() {
	b, err := os.ReadFile(s.path)
	var sum [32]byte
	if err == nil {
		sum = sha256.Sum256(b)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sum == s.lastSeen {
		return
	}
	s.lastSeen = sum
	if err != nil {
		s.log.Error("cannot read key file; keeping the previous keys", zap.String("path", s.path), zap.Error(err))
		return
	}
	next, err := parse(b)
	if err != nil {
		s.log.Error("bad key file; keeping the previous keys", zap.String("path", s.path), zap.Error(err))
		return
	}
	prev := s.cur.Swap(next) // readers see the new keys before the feed says they changed
	ch := diff(prev, next, time.Now().UTC())
	for i := range ch {
		s.seq++
		ch[i].Seq = s.seq
	}
	s.changes = append(s.changes, ch...)
	if n := len(s.changes) - maxChanges; n > 0 {
		s.changes = slices.Delete(s.changes, 0, n)
	}
	s.log.Info("reloaded key file", zap.String("path", s.path), zap.Int("keys", len(next.byID)), zap.Int("changes", len(ch)))
}

func clone(k apikey.Key) apikey.Key {
	k.Grants = slices.Clone(k.Grants)
	if k.Metadata != nil {
		m := make(map[string]string, len(k.Metadata))
		for a, b := range k.Metadata {
			m[a] = b
		}
		k.Metadata = m
	}
	return k
}

// Lookup returns the key whose digest (sum and pepper version) equals d; a revoked
// key comes back with RevokedAt set.
func (s *Store) Lookup(_ context.Context, d apikey.Digest) (apikey.Key, error) {
	r, ok := s.cur.Load().byDigest[d.Sum]
	if !ok || r.digest.Version != d.Version {
		return apikey.Key{}, apikey.ErrNotFound
	}
	k := clone(r.key)
	k.PepperVersion = d.Version
	return k, nil
}

// KeysByPepper counts the live (not revoked) keys of the file by the pepper
// version of their digest.
func (s *Store) KeysByPepper(context.Context) (map[int]int, error) {
	m := map[int]int{}
	for _, r := range s.cur.Load().byID {
		if r.key.RevokedAt.IsZero() {
			m[r.digest.Version]++
		}
	}
	return m, nil
}

// Get returns a live key by id.
func (s *Store) Get(_ context.Context, id string) (apikey.Key, error) {
	r, ok := s.cur.Load().byID[id]
	if !ok || !r.key.RevokedAt.IsZero() {
		return apikey.Key{}, apikey.ErrNotFound
	}
	return clone(r.key), nil
}

// List returns a workspace's live keys ordered by id, after the cursor; limit <= 0 means all.
func (s *Store) List(_ context.Context, workspace, after string, limit int) ([]apikey.Key, error) {
	rs := s.cur.Load().live[workspace]
	i, _ := slices.BinarySearchFunc(rs, after, func(r *record, id string) int {
		switch {
		case r.key.ID <= id:
			return -1
		default:
			return 1
		}
	})
	rs = rs[i:]
	if limit > 0 && len(rs) > limit {
		rs = rs[:limit]
	}
	out := make([]apikey.Key, len(rs))
	for j, r := range rs {
		out[j] = clone(r.key)
	}
	return out, nil
}

// Changes returns feed entries with Seq > after, oldest first; limit <= 0 means all.
func (s *Store) Changes(_ context.Context, after int64, limit int) ([]apikey.Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, _ := slices.BinarySearchFunc(s.changes, after+1, func(c apikey.Change, seq int64) int {
		return int(c.Seq - seq)
	})
	rest := s.changes[i:]
	if limit > 0 && len(rest) > limit {
		rest = rest[:limit]
	}
	out := make([]apikey.Change, len(rest))
	for j, c := range rest {
		c.Digests = slices.Clone(c.Digests)
		out[j] = c
	}
	return out, nil
}

// LastSeq returns the newest change Seq, 0 before the first reload.
func (s *Store) LastSeq(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq, nil
}

// Audit keeps the event in memory; a zero At is stamped with now.
func (s *Store) Audit(_ context.Context, e apikey.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eventSeq++
	e.Seq = s.eventSeq
	if e.At.IsZero() {
		e.At = time.Now()
	}
	e.At = e.At.UTC()
	s.events = append(s.events, e)
	if n := len(s.events) - maxEvents; n > 0 {
		s.events = slices.Delete(s.events, 0, n)
	}
	return nil
}

// Events returns a workspace's kept audit events with Seq > after; limit <= 0 means all.
func (s *Store) Events(_ context.Context, workspace string, after int64, limit int) ([]apikey.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []apikey.Event
	for _, e := range s.events {
		if e.Seq > after && e.Workspace == workspace {
			out = append(out, e)
			if limit > 0 && len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// Ping reports an error once the store is closed.
func (s *Store) Ping(context.Context) error {
	if s.closed.Load() {
		return errors.New("file store is closed")
	}
	return nil
}

// Touch does nothing: the file is not written.
func (s *Store) Touch(context.Context, map[string]time.Time) error { return nil }

// Create returns apikey.ErrReadOnly.
func (s *Store) Create(context.Context, apikey.NewKey) (apikey.Key, error) {
	return apikey.Key{}, apikey.ErrReadOnly
}

// Refresh returns apikey.ErrReadOnly.
func (s *Store) Refresh(context.Context, string, apikey.Digest, string, time.Duration, string) (apikey.Key, error) {
	return apikey.Key{}, apikey.ErrReadOnly
}

// Delete returns apikey.ErrReadOnly.
func (s *Store) Delete(context.Context, string, string) error { return apikey.ErrReadOnly }

// Rehash returns apikey.ErrReadOnly.
func (s *Store) Rehash(context.Context, apikey.Digest, apikey.Digest) error {
	return apikey.ErrReadOnly
}

// ListUnused returns a workspace's live keys created before since, ordered by
// id, after the cursor; limit <= 0 means all. The file records no use, so
// every such key counts as unused.
func (s *Store) ListUnused(_ context.Context, workspace string, since time.Time, after string, limit int) ([]apikey.Key, error) {
	var out []apikey.Key
	for _, r := range s.cur.Load().live[workspace] {
		if r.key.ID <= after || !r.key.CreatedAt.Before(since) {
			continue
		}
		out = append(out, clone(r.key))
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out, nil
}

// Update returns apikey.ErrReadOnly.
func (s *Store) Update(context.Context, string, apikey.KeyPatch, string) (apikey.Key, error) {
	return apikey.Key{}, apikey.ErrReadOnly
}

// PutWorkspace returns apikey.ErrReadOnly.
func (s *Store) PutWorkspace(context.Context, apikey.Workspace, string) (apikey.Workspace, bool, error) {
	return apikey.Workspace{}, false, apikey.ErrReadOnly
}

// PatchWorkspace returns apikey.ErrReadOnly.
func (s *Store) PatchWorkspace(context.Context, string, apikey.WorkspacePatch, string) (apikey.Workspace, error) {
	return apikey.Workspace{}, apikey.ErrReadOnly
}

// GetWorkspace returns apikey.ErrNotFound: the file holds no workspace records.
func (s *Store) GetWorkspace(context.Context, string) (apikey.Workspace, error) {
	return apikey.Workspace{}, apikey.ErrNotFound
}

// ListWorkspaces returns no records: the file holds none.
func (s *Store) ListWorkspaces(context.Context, string, int) ([]apikey.Workspace, error) {
	return nil, nil
}

// AddUsage does nothing, like Touch: the file is not written, and the usage
// recorder must not log a failure at every flush.
func (s *Store) AddUsage(context.Context, []apikey.Usage) error { return nil }

// Usage returns no buckets: no usage is kept.
func (s *Store) Usage(context.Context, string, time.Time, time.Time) ([]apikey.Usage, error) {
	return nil, nil
}

// UsageTotals returns an empty map: no usage is kept.
func (s *Store) UsageTotals(context.Context, []string, time.Time) (map[string]int64, error) {
	return map[string]int64{}, nil
}

// PruneUsage drops nothing: no usage is kept.
func (s *Store) PruneUsage(context.Context, time.Time) (int64, error) { return 0, nil }
