package app

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/postgres"
)

// Startup retry of a PostgreSQL store that cannot be reached yet: the first
// retry after storeRetryMin, each wait then doubled up to storeRetryMax, with
// ±20% jitter so that replicas started together spread their attempts.
const (
	storeRetryMin = 200 * time.Millisecond
	storeRetryMax = 2 * time.Second
)

// errStoreStarting answers every store call while the store is not open yet.
var errStoreStarting = errors.New("store not open yet: the database is not reachable")

// openStoreAtStart opens the configured store for serve. A PostgreSQL server
// that cannot be reached yet (refused, timed out, starting up) is not fatal:
// the store returned is pending, answering errStoreStarting until Run opens
// it (health NOT_SERVING and /readyz 503 meanwhile), so that a pod started
// before its database waits instead of crash-looping. Any other failure, a
// bad URL, a refused login, an unreadable SQLite file, is an error.
func openStoreAtStart(ctx context.Context, cfg *config.Config, log *zap.Logger) (apikey.Store, error) {
	s, err := openStore(ctx, cfg, log)
	if err == nil {
		return s, nil
	}
	if ctx.Err() == nil && isPostgresURL(cfg.Store.URL) && postgres.Transient(err) {
		c := *cfg
		p := &pendingStore{log: log, open: func(ctx context.Context) (apikey.Store, error) { return openStore(ctx, &c, log) }}
		log.Warn("store not reachable yet; health stays NOT_SERVING while retrying",
			zap.String("store", config.RedactURL(cfg.Store.URL)), zap.Error(err))
		return p, nil
	}
	return nil, fmt.Errorf("open store %s: %w", config.RedactURL(cfg.Store.URL), err)
}

// isPostgresURL reports whether a store URL names PostgreSQL (openStore's test too).
func isPostgresURL(u string) bool {
	return strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://")
}

// pendingStore stands in for a store that could not be opened at start: every
// call fails with errStoreStarting until openLoop has opened it, then every
// call goes to it.
type pendingStore struct {
	log  *zap.Logger
	open func(context.Context) (apikey.Store, error)

	cur atomic.Pointer[storeRef] // nil until open

	mu     sync.Mutex // guards closed against a late open
	closed bool
}

type storeRef struct{ apikey.Store }

var _ apikey.Store = (*pendingStore)(nil)

// openLoop tries to open the store with capped, jittered backoff until it
// opens (it returns the store), ctx ends (nil, nil), or an attempt fails with
// an error that is not transient (that error).
func (p *pendingStore) openLoop(ctx context.Context) (apikey.Store, error) {
	delay := storeRetryMin
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		case <-t.C:
		}
		s, err := p.open(ctx)
		if err == nil {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.closed {
				_ = s.Close()
				return nil, nil
			}
			p.cur.Store(&storeRef{s})
			p.log.Info("store opened", zap.Int("attempts", attempt+1))
			return s, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if !postgres.Transient(err) {
			return nil, fmt.Errorf("open store: %w", err)
		}
		if attempt&(attempt-1) == 0 { // attempts 1, 2, 4, 8 …: the log stays short during a long outage
			p.log.Warn("store still not reachable; retrying", zap.Int("attempt", attempt), zap.Error(err))
		}
		delay = min(2*delay, storeRetryMax)
	}
}

func (p *pendingStore) get() (apikey.Store, error) {
	if r := p.cur.Load(); r != nil {
		return r.Store, nil
	}
	return nil, errStoreStarting
}

// do runs f on the opened store, or answers errStoreStarting.
func (p *pendingStore) do(f func(apikey.Store) error) error {
	s, err := p.get()
	if err != nil {
		return err
	}
	return f(s)
}

// Close closes the store if it was opened; a later open is closed at once.
func (p *pendingStore) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if r := p.cur.Load(); r != nil {
		return r.Close()
	}
	return nil
}

// via runs f on the opened store, or returns the opening error.
func via[T any](p *pendingStore, f func(apikey.Store) (T, error)) (T, error) {
	s, err := p.get()
	if err != nil {
		var zero T
		return zero, err
	}
	return f(s)
}

func (p *pendingStore) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	return via(p, func(s apikey.Store) (apikey.Key, error) { return s.Lookup(ctx, d) })
}

func (p *pendingStore) Create(ctx context.Context, nk apikey.NewKey) (apikey.Key, error) {
	return via(p, func(s apikey.Store) (apikey.Key, error) { return s.Create(ctx, nk) })
}

func (p *pendingStore) Get(ctx context.Context, id string) (apikey.Key, error) {
	return via(p, func(s apikey.Store) (apikey.Key, error) { return s.Get(ctx, id) })
}

func (p *pendingStore) List(ctx context.Context, workspace, after string, limit int) ([]apikey.Key, error) {
	return via(p, func(s apikey.Store) ([]apikey.Key, error) { return s.List(ctx, workspace, after, limit) })
}

func (p *pendingStore) ListUnused(ctx context.Context, workspace string, since time.Time, after string, limit int) ([]apikey.Key, error) {
	return via(p, func(s apikey.Store) ([]apikey.Key, error) { return s.ListUnused(ctx, workspace, since, after, limit) })
}

func (p *pendingStore) Update(ctx context.Context, id string, u apikey.KeyPatch, actor string) (apikey.Key, error) {
	return via(p, func(s apikey.Store) (apikey.Key, error) { return s.Update(ctx, id, u, actor) })
}

func (p *pendingStore) Refresh(ctx context.Context, id string, d apikey.Digest, display string, grace time.Duration, actor string) (apikey.Key, error) {
	return via(p, func(s apikey.Store) (apikey.Key, error) { return s.Refresh(ctx, id, d, display, grace, actor) })
}

func (p *pendingStore) Delete(ctx context.Context, id, actor string) error {
	return p.do(func(s apikey.Store) error { return s.Delete(ctx, id, actor) })
}

func (p *pendingStore) Rehash(ctx context.Context, old, d apikey.Digest) error {
	return p.do(func(s apikey.Store) error { return s.Rehash(ctx, old, d) })
}

func (p *pendingStore) Changes(ctx context.Context, after int64, limit int) ([]apikey.Change, error) {
	return via(p, func(s apikey.Store) ([]apikey.Change, error) { return s.Changes(ctx, after, limit) })
}

func (p *pendingStore) LastSeq(ctx context.Context) (int64, error) {
	return via(p, func(s apikey.Store) (int64, error) { return s.LastSeq(ctx) })
}

func (p *pendingStore) Touch(ctx context.Context, used map[string]time.Time) error {
	return p.do(func(s apikey.Store) error { return s.Touch(ctx, used) })
}

func (p *pendingStore) Audit(ctx context.Context, e apikey.Event) error {
	return p.do(func(s apikey.Store) error { return s.Audit(ctx, e) })
}

func (p *pendingStore) Events(ctx context.Context, workspace string, after int64, limit int) ([]apikey.Event, error) {
	return via(p, func(s apikey.Store) ([]apikey.Event, error) { return s.Events(ctx, workspace, after, limit) })
}

func (p *pendingStore) PutWorkspace(ctx context.Context, w apikey.Workspace, actor string) (apikey.Workspace, bool, error) {
	var created bool
	out, err := via(p, func(s apikey.Store) (apikey.Workspace, error) {
		var (
			w2  apikey.Workspace
			err error
		)
		w2, created, err = s.PutWorkspace(ctx, w, actor)
		return w2, err
	})
	return out, created, err
}

func (p *pendingStore) PatchWorkspace(ctx context.Context, id string, u apikey.WorkspacePatch, actor string) (apikey.Workspace, error) {
	return via(p, func(s apikey.Store) (apikey.Workspace, error) { return s.PatchWorkspace(ctx, id, u, actor) })
}

func (p *pendingStore) GetWorkspace(ctx context.Context, id string) (apikey.Workspace, error) {
	return via(p, func(s apikey.Store) (apikey.Workspace, error) { return s.GetWorkspace(ctx, id) })
}

func (p *pendingStore) ListWorkspaces(ctx context.Context, after string, limit int) ([]apikey.Workspace, error) {
	return via(p, func(s apikey.Store) ([]apikey.Workspace, error) { return s.ListWorkspaces(ctx, after, limit) })
}

func (p *pendingStore) AddUsage(ctx context.Context, rows []apikey.Usage) error {
	return p.do(func(s apikey.Store) error { return s.AddUsage(ctx, rows) })
}

func (p *pendingStore) Usage(ctx context.Context, keyID string, from, to time.Time) ([]apikey.Usage, error) {
	return via(p, func(s apikey.Store) ([]apikey.Usage, error) { return s.Usage(ctx, keyID, from, to) })
}

func (p *pendingStore) UsageTotals(ctx context.Context, ids []string, since time.Time) (map[string]int64, error) {
	return via(p, func(s apikey.Store) (map[string]int64, error) { return s.UsageTotals(ctx, ids, since) })
}

func (p *pendingStore) PruneUsage(ctx context.Context, before time.Time) (int64, error) {
	return via(p, func(s apikey.Store) (int64, error) { return s.PruneUsage(ctx, before) })
}

func (p *pendingStore) Ping(ctx context.Context) error {
	return p.do(func(s apikey.Store) error { return s.Ping(ctx) })
}
