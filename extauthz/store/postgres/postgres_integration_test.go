//go:build integration

package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
	"github.com/keyauthz/keyauthz/test/testenv"
)

var dbSeq atomic.Int64

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newDB creates an empty database on p and returns its URL. Its default
// collation is ICU en-US (not bytewise), as on many production servers, so the
// suite checks that ordering does not depend on the database's collation.
func newDB(t testing.TB, p *testenv.PGProc) string {
	t.Helper()
	name := fmt.Sprintf("kz_%d", dbSeq.Add(1))
	c, err := pgx.Connect(ctxT(t), p.URL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctxT(t), `CREATE DATABASE `+name+
		` WITH TEMPLATE = template0 LOCALE_PROVIDER = 'icu' ICU_LOCALE = 'en-US'`); err != nil {
		t.Fatalf("create database: %v", err)
	}
	u, err := url.Parse(p.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

func open(t testing.TB, url string, opt Options) *Store {
	t.Helper()
	s, err := Open(ctxT(t), url, zaptest.NewLogger(t), opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestStore runs the tests that leave the server running on one server (each
// on its own database); the tests that stop the server start their own.
func TestStore(t *testing.T) {
	p := testenv.StartPostgres(t)
	for _, c := range []struct {
		name string
		test func(*testing.T, *testenv.PGProc)
	}{
		{"Conformance", testConformance},
		{"DatabaseCollationIsNotBytewise", testDatabaseCollationIsNotBytewise},
		{"MigrateConcurrentAndIdempotent", testMigrateConcurrentAndIdempotent},
		{"NewerSchemaRefused", testNewerSchemaRefused},
		{"ExistingOnly", testExistingOnly},
		{"WrongPasswordHidden", testWrongPasswordHidden},
		{"Options", testOptions},
		{"FeedGaplessUnderConcurrentWriters", testFeedGaplessUnderConcurrentWriters},
		{"TouchConcurrentReplicas", testTouchConcurrentReplicas},
		{"ListenNotifiesOtherReplica", testListenNotifiesOtherReplica},
		{"ListenDrivesFollower", testListenDrivesFollower},
		{"ListenDrivesFollowerUpdates", testListenDrivesFollowerUpdates},
		{"AddUsageConcurrentReplicas", testAddUsageConcurrentReplicas},
		{"ListenIdlePingKeepsListening", testListenIdlePingKeepsListening},
	} {
		t.Run(c.name, func(t *testing.T) { c.test(t, p) })
	}
}

func testConformance(t *testing.T, p *testenv.PGProc) {
	storetest.Run(t, func(t *testing.T) apikey.Store {
		s, err := Open(ctxT(t), newDB(t, p), zaptest.NewLogger(t), Options{MaxConns: 4, StatementTimeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

func testDatabaseCollationIsNotBytewise(t *testing.T, p *testenv.PGProc) {
	s := open(t, newDB(t, p), Options{})
	var lt bool
	if err := s.pool.QueryRow(ctxT(t), `SELECT 'a' < 'B'`).Scan(&lt); err != nil || !lt {
		t.Fatalf("'a' < 'B' = %v, %v: the test databases should use a non-bytewise collation", lt, err)
	}
	// So List must still order ids bytewise (Go's and SQLite's order).
	for _, id := range []string{"key_a", "key_B", "key_c", "key_D"} {
		nk := storetest.NewKey(t, "acme", id)
		nk.Key.ID = id
		if _, err := s.Create(ctxT(t), nk); err != nil {
			t.Fatalf("Create: %v", err)
		}
	}
	keys, err := s.List(ctxT(t), "acme", "key_B", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range keys {
		got = append(got, k.ID)
	}
	if want := []string{"key_D", "key_a", "key_c"}; !slices.Equal(got, want) {
		t.Errorf("List(after key_B) = %v, want %v (bytewise)", got, want)
	}
}

func testMigrateConcurrentAndIdempotent(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	stores := make([]*Store, n)
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = Open(ctxT(t), url, zap.NewNop(), Options{MaxConns: 2}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open #%d: %v", i, err)
		}
		t.Cleanup(func() { _ = stores[i].Close() })
	}
	s := stores[0]
	if err := s.Migrate(ctxT(t)); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	var v, rows int
	if err := s.pool.QueryRow(ctxT(t), `SELECT MAX(version), COUNT(*) FROM schema_migrations`).Scan(&v, &rows); err != nil ||
		v != len(migrations) || rows != len(migrations) {
		t.Errorf("schema_migrations: max %d, %d rows, %v; want %d, %d", v, rows, err, len(migrations), len(migrations))
	}
}

// Options.Existing refuses a database without keyauthz's schema and creates
// nothing in it; once migrated, it opens.
func testExistingOnly(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	if s, err := Open(ctxT(t), url, zap.NewNop(), Options{Existing: true}); !errors.Is(err, ErrNoSchema) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open(Existing) of an empty database: %v, want ErrNoSchema", err)
	}
	s := open(t, url, Options{}) // creates the schema
	var tables int
	if err := s.pool.QueryRow(ctxT(t), `SELECT count(*) FROM schema_migrations`).Scan(&tables); err != nil || tables != len(migrations) {
		t.Fatalf("schema_migrations rows = %d, %v; want %d (created only by the second Open)", tables, err, len(migrations))
	}
	s2, err := Open(ctxT(t), url, zap.NewNop(), Options{Existing: true})
	if err != nil {
		t.Fatalf("Open(Existing) of a migrated database: %v", err)
	}
	s2.Close()
}

func testNewerSchemaRefused(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	s := open(t, url, Options{})
	if _, err := s.pool.Exec(ctxT(t), `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(ctxT(t), url, zap.NewNop(), Options{}); err == nil {
		s2.Close()
		t.Fatal("Open of a database from a newer binary succeeded, want an error")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error = %v, want it to say the schema is newer", err)
	}
}

func testWrongPasswordHidden(t *testing.T, p *testenv.PGProc) {
	const pw = "n0t-the-Passw0rd"
	bad := strings.Replace(p.URL(), testenv.PGPassword, pw, 1)
	s, err := Open(ctxT(t), bad, zap.NewNop(), Options{})
	if err == nil {
		s.Close()
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), testenv.PGPassword) {
		t.Fatalf("error shows a password: %v", err)
	}
}

func testOptions(t *testing.T, p *testenv.PGProc) {
	s := open(t, newDB(t, p), Options{MaxConns: 3, StatementTimeout: 100 * time.Millisecond})
	if got := s.pool.Config().MaxConns; got != 3 {
		t.Errorf("pool MaxConns = %d, want 3", got)
	}
	var st, app string
	if err := s.pool.QueryRow(ctxT(t), `SELECT current_setting('statement_timeout'), current_setting('application_name')`).Scan(&st, &app); err != nil {
		t.Fatal(err)
	}
	if st != "100ms" || app != "keyauthz" {
		t.Errorf("statement_timeout, application_name = %q, %q; want 100ms, keyauthz", st, app)
	}
	_, err := s.pool.Exec(ctxT(t), `SELECT pg_sleep(2)`)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Errorf("2 s statement with a 100 ms timeout: %v, want query_canceled (57014)", err)
	}
	if err := s.Ping(ctxT(t)); err != nil {
		t.Errorf("Ping after a timed out statement: %v", err)
	}
}

// Feed writers on two replicas: every reader, at any moment, sees Seqs 1..n
// with no hole (the follower never has to wait out or purge for a gap).
func testFeedGaplessUnderConcurrentWriters(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	a, b := open(t, url, Options{MaxConns: 4}), open(t, url, Options{MaxConns: 4})
	const perWriter = 15
	var wg sync.WaitGroup
	done := make(chan struct{})
	for w, s := range []*Store{a, b, a, b} {
		wg.Go(func() {
			for i := range perWriter {
				nk := storetest.NewKey(t, fmt.Sprintf("ws%d", w), fmt.Sprintf("k%d", i))
				k, err := s.Create(ctxT(t), nk)
				if err != nil {
					t.Errorf("Create: %v", err)
					return
				}
				if i%3 == 0 {
					if err := s.Delete(ctxT(t), k.ID, "t"); err != nil {
						t.Errorf("Delete: %v", err)
						return
					}
				}
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	reads := 0
	var bad error
	check := func() {
		chs, err := b.Changes(ctxT(t), 0, 0)
		if err != nil {
			bad = fmt.Errorf("Changes: %w", err)
			return
		}
		for i, c := range chs {
			if c.Seq != int64(i+1) {
				bad = fmt.Errorf("read %d: change #%d has Seq %d, want %d (a hole or reordering)", reads, i, c.Seq, i+1)
				return
			}
		}
		reads++
	}
	for finished := false; !finished && bad == nil; {
		select {
		case <-done:
			finished = true // one last check with everything committed
		default:
		}
		check()
	}
	<-done
	if bad != nil {
		t.Fatal(bad)
	}
	want := int64(4 * (perWriter + (perWriter+2)/3))
	if last, err := a.LastSeq(ctxT(t)); err != nil || last != want {
		t.Errorf("LastSeq = %d, %v; want %d", last, err, want)
	}
	t.Logf("%d consistent reads while writing", reads)
}

// Two replicas touching overlapping keys in random order must not deadlock.
func testTouchConcurrentReplicas(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	a, b := open(t, url, Options{}), open(t, url, Options{})
	var ids []string
	for i := range 30 {
		k, err := a.Create(ctxT(t), storetest.NewKey(t, "acme", fmt.Sprintf("k%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
	}
	var wg sync.WaitGroup
	var latest atomic.Int64
	for _, s := range []*Store{a, b, a, b} {
		wg.Go(func() {
			for range 20 {
				at := time.Now().UTC()
				used := map[string]time.Time{}
				for _, id := range ids {
					used[id] = at
				}
				if err := s.Touch(ctxT(t), used); err != nil {
					t.Errorf("Touch: %v", err)
					return
				}
				latest.Store(max(latest.Load(), at.UnixMicro()))
			}
		})
	}
	wg.Wait()
	keys, err := b.List(ctxT(t), "acme", "", 0)
	if err != nil || len(keys) != len(ids) {
		t.Fatalf("List = %d keys, %v", len(keys), err)
	}
	for _, k := range keys {
		if k.LastUsedAt.IsZero() {
			t.Errorf("%s LastUsedAt zero after Touch", k.ID)
		}
	}
	// Never backwards.
	old := map[string]time.Time{ids[0]: time.Now().Add(-time.Hour)}
	if err := a.Touch(ctxT(t), old); err != nil {
		t.Fatal(err)
	}
	if k, err := a.Get(ctxT(t), ids[0]); err != nil || k.LastUsedAt.Before(time.Now().Add(-time.Minute)) {
		t.Errorf("LastUsedAt after an older Touch = %v, %v; want unchanged", k.LastUsedAt, err)
	}
}

func TestOutagePingRecovers(t *testing.T) {
	p := testenv.StartPostgres(t)
	s := open(t, newDB(t, p), Options{MaxConns: 4})
	nk := storetest.NewKey(t, "acme", "ci")
	if _, err := s.Create(ctxT(t), nk); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctxT(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	p.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping with the server stopped = nil, want an error")
	}
	if _, err := s.Lookup(ctx, nk.Digest); err == nil || errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("Lookup with the server stopped = %v, want a store error (not ErrNotFound)", err)
	}
	p.Start()
	if err := s.Ping(ctxT(t)); err != nil {
		t.Fatalf("Ping after restart: %v", err)
	}
	if _, err := s.Lookup(ctxT(t), nk.Digest); err != nil {
		t.Fatalf("Lookup after restart: %v", err)
	}
}

// A restart kills every pooled connection at once; the first calls after it
// must not fail on them (the pool is reset and reads and unsent writes retried).
func TestRestartWithDeadPooledConnections(t *testing.T) {
	p := testenv.StartPostgres(t)
	s := open(t, newDB(t, p), Options{MaxConns: 4})
	nk := storetest.NewKey(t, "acme", "ci")
	k, err := s.Create(ctxT(t), nk)
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		call func() error
	}{
		{"Lookup", func() error { _, err := s.Lookup(ctxT(t), nk.Digest); return err }},
		{"Get", func() error { _, err := s.Get(ctxT(t), k.ID); return err }},
		{"List", func() error { _, err := s.List(ctxT(t), "acme", "", 0); return err }},
		{"Changes", func() error { _, err := s.Changes(ctxT(t), 0, 0); return err }},
		{"LastSeq", func() error { _, err := s.LastSeq(ctxT(t)); return err }},
		{"Events", func() error { _, err := s.Events(ctxT(t), "acme", 0, 0); return err }},
		{"Touch", func() error { return s.Touch(ctxT(t), map[string]time.Time{k.ID: time.Now()}) }},
		{"Create", func() error { _, err := s.Create(ctxT(t), storetest.NewKey(t, "acme", "new")); return err }},
		{"Refresh", func() error {
			_, err := s.Refresh(ctxT(t), k.ID, storetest.NewDigest(t, 1), "kz_x", 0, "t")
			return err
		}},
		{"Ping", func() error { return s.Ping(ctxT(t)) }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			// Fill the pool with connections that the restart kills.
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					if _, err := s.pool.Exec(ctxT(t), `SELECT pg_sleep(0.05)`); err != nil {
						t.Errorf("warm up: %v", err)
					}
				})
			}
			wg.Wait()
			if n := s.pool.Stat().IdleConns(); n != 4 {
				t.Fatalf("%d idle connections, want 4", n)
			}
			p.Stop()
			p.Start()
			if err := c.call(); err != nil {
				t.Errorf("first %s after restart: %v", c.name, err)
			}
		})
	}
}

// ---------------------------------------------------------------- Listen

// listener runs s.Listen in the background and counts onChange calls.
type listener struct {
	calls    atomic.Int64
	ch       chan struct{}
	cancel   context.CancelFunc
	finished chan struct{} // closed when Listen returned
	err      error         // Listen's result, set before finished closes
}

func listen(t *testing.T, s *Store, onChange func()) *listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{ch: make(chan struct{}, 100), cancel: cancel, finished: make(chan struct{})}
	go func() {
		defer close(l.finished)
		l.err = s.Listen(ctx, func() {
			if onChange != nil {
				onChange()
			}
			l.calls.Add(1)
			select {
			case l.ch <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-l.finished
		if l.err != nil {
			t.Errorf("Listen returned %v, want nil", l.err)
		}
	})
	return l
}

// wait waits for the next onChange call and returns how long it took.
func (l *listener) wait(t *testing.T, within time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-l.ch:
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("%s: no onChange within %v", what, within)
		return 0
	}
}

// drain forgets onChange calls so far.
func (l *listener) drain() {
	for {
		select {
		case <-l.ch:
		default:
			return
		}
	}
}

func testListenNotifiesOtherReplica(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	a, b := open(t, url, Options{}), open(t, url, Options{})
	l := listen(t, b, nil)
	l.wait(t, 5*time.Second, "initial call after connecting")

	nk := storetest.NewKey(t, "acme", "ci")
	k, err := a.Create(ctxT(t), nk)
	if err != nil {
		t.Fatal(err)
	}
	l.wait(t, time.Second, "Create on A")
	l.drain()
	start := time.Now()
	if err := a.Delete(ctxT(t), k.ID, "t"); err != nil {
		t.Fatal(err)
	}
	l.wait(t, 100*time.Millisecond, "Delete on A")
	t.Logf("Delete on A to onChange on B: %v", time.Since(start))

	// A failed write (nothing committed) notifies nobody.
	l.drain()
	if err := a.Delete(ctxT(t), k.ID, "t"); !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("second Delete = %v", err)
	}
	if _, err := a.Create(ctxT(t), storetest.NewKey(t, "acme", "x")); err != nil {
		t.Fatal(err)
	}
	l.wait(t, time.Second, "Create after a failed Delete")
	select {
	case <-l.ch:
		t.Error("onChange for the failed Delete as well")
	case <-time.After(50 * time.Millisecond):
	}
}

// pushedPair opens stores A and B on a fresh database and B's cache, whose
// follower polls only when B's LISTEN calls it (the app's wiring, push only);
// it returns A, the cache and the follower after the initial call.
func pushedPair(t *testing.T, p *testenv.PGProc) (*Store, *keycache.Cache, *keycache.Follower) {
	t.Helper()
	url := newDB(t, p)
	a, b := open(t, url, Options{}), open(t, url, Options{})
	cache, err := keycache.New(b, keycache.Options{Size: 100, TTL: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	f, err := keycache.NewFollower(b, cache, time.Hour, zap.NewNop()) // no polling: push only
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	l := listen(t, b, func() { _ = f.Poll(ctx) })
	l.wait(t, 5*time.Second, "initial call")
	return a, cache, f
}

// The wiring the app uses: B's cache follows A's writes through Listen → Follower.Poll.
func testListenDrivesFollower(t *testing.T, p *testenv.PGProc) {
	a, cache, f := pushedPair(t, p)
	if !f.Healthy() {
		t.Fatalf("follower not started by the initial onChange (failing since %v)", f.FailingSince())
	}

	nk := storetest.NewKey(t, "acme", "ci")
	k, err := a.Create(ctxT(t), nk)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cache.Lookup(ctxT(t), nk.Digest); err != nil || got.ID != k.ID {
		t.Fatalf("B cache Lookup = %v, %v", got.ID, err)
	}
	start := time.Now()
	if err := a.Delete(ctxT(t), k.ID, "t"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 100*time.Millisecond, "B's cache sees A's Delete", func() error {
		got, err := cache.Lookup(ctxT(t), nk.Digest)
		if err != nil {
			return err
		}
		if got.Valid(time.Now()) == nil {
			return errors.New("key still valid in B's cache")
		}
		return nil
	})
	t.Logf("revoked on B after %v", time.Since(start))
}

// Key updates and workspace records reach B's cache through the same push:
// a disabled key, then a disabled workspace, then its grants.
func testListenDrivesFollowerUpdates(t *testing.T, p *testenv.PGProc) {
	a, cache, _ := pushedPair(t, p)

	nk := storetest.NewKey(t, "acme", "ci")
	k, err := a.Create(ctxT(t), nk)
	if err != nil {
		t.Fatal(err)
	}
	seen := func(what string, ok func(apikey.Key) bool) {
		t.Helper()
		start := time.Now()
		testenv.Eventually(t, 500*time.Millisecond, what, func() error {
			got, err := cache.Lookup(ctxT(t), nk.Digest)
			if err != nil {
				return err
			}
			if !ok(got) {
				return fmt.Errorf("B's cached key = disabled %v, space %+v", got.Disabled, got.Space)
			}
			return nil
		})
		t.Logf("%s after %v", what, time.Since(start))
	}
	seen("B caches the key", func(k apikey.Key) bool { return k.Valid(time.Now()) == nil })

	on, off := true, false
	if _, err := a.Update(ctxT(t), k.ID, apikey.KeyPatch{Disabled: &on}, "t"); err != nil {
		t.Fatal(err)
	}
	seen("B sees A's key update", func(k apikey.Key) bool { return k.Disabled })
	if _, err := a.Update(ctxT(t), k.ID, apikey.KeyPatch{Disabled: &off}, "t"); err != nil {
		t.Fatal(err)
	}
	seen("B sees the key enabled again", func(k apikey.Key) bool { return !k.Disabled })

	if _, _, err := a.PutWorkspace(ctxT(t), apikey.Workspace{ID: "acme", Disabled: true}, "t"); err != nil {
		t.Fatal(err)
	}
	seen("B sees A's workspace record", func(k apikey.Key) bool { return k.Space.Disabled })
	grants := []string{"org1/web"}
	if _, err := a.PatchWorkspace(ctxT(t), "acme", apikey.WorkspacePatch{Disabled: &off, Grants: &grants}, "t"); err != nil {
		t.Fatal(err)
	}
	seen("B sees A's workspace patch", func(k apikey.Key) bool { return !k.Space.Disabled && k.Owns("org1/web/x") })
}

// Replicas adding usage to the same buckets at once, each in its own row
// order and over several chunks, neither deadlock nor lose counts.
func testAddUsageConcurrentReplicas(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	stores := []*Store{open(t, url, Options{}), open(t, url, Options{})}
	h0 := time.Now().UTC().Truncate(time.Hour).Add(-100 * time.Hour)
	var rows []apikey.Usage
	for i := range 3*chunkRows/40 + 1 { // more than 3 chunks
		for h := range 40 {
			rows = append(rows, apikey.Usage{KeyID: fmt.Sprintf("key_%03d", i), Hour: h0.Add(time.Duration(h) * time.Hour),
				Counts: [apikey.NumOutcomes]int64{apikey.OutcomeAllowed: 1, apikey.OutcomeForbidden: 2}})
		}
	}
	const writers, rounds = 4, 5
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			mine := slices.Clone(rows)
			if w%2 == 1 {
				slices.Reverse(mine)
			}
			for range rounds {
				if err := stores[w%2].AddUsage(ctxT(t), mine); err != nil {
					t.Errorf("AddUsage: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	var n, allowed, forbidden int64
	if err := stores[0].pool.QueryRow(ctxT(t), `SELECT count(*), sum(allowed), sum(forbidden) FROM key_usage`).Scan(&n, &allowed, &forbidden); err != nil {
		t.Fatal(err)
	}
	want := int64(len(rows))
	if n != want || allowed != writers*rounds*want || forbidden != 2*writers*rounds*want {
		t.Errorf("key_usage = %d rows, %d allowed, %d forbidden; want %d, %d, %d", n, allowed, forbidden,
			want, writers*rounds*want, 2*writers*rounds*want)
	}
}

func TestListenReconnects(t *testing.T) {
	p := testenv.StartPostgres(t)
	url := newDB(t, p)
	a, b := open(t, url, Options{}), open(t, url, Options{})
	l := listen(t, b, nil)
	l.wait(t, 5*time.Second, "initial call")

	p.Stop()
	l.drain()
	calls := l.calls.Load()
	time.Sleep(300 * time.Millisecond) // a few failed reconnection attempts
	if got := l.calls.Load(); got != calls {
		t.Errorf("onChange called %d times while the server was down", got-calls)
	}
	p.Start()
	l.wait(t, 10*time.Second, "catch-up call after the server came back")

	// LISTEN is in force again on the new connection.
	l.drain()
	if _, err := a.Create(ctxT(t), storetest.NewKey(t, "acme", "after")); err != nil {
		t.Fatal(err)
	}
	l.wait(t, time.Second, "Create after reconnect")
}

func testListenIdlePingKeepsListening(t *testing.T, p *testenv.PGProc) {
	url := newDB(t, p)
	a, b := open(t, url, Options{}), open(t, url, Options{})
	b.listenIdle = 20 * time.Millisecond
	l := listen(t, b, nil)
	l.wait(t, 5*time.Second, "initial call")
	time.Sleep(200 * time.Millisecond) // several idle timeouts and pings
	if n := l.calls.Load(); n != 1 {
		t.Errorf("onChange called %d times while idle, want once (no reconnects)", n)
	}
	if _, err := a.Create(ctxT(t), storetest.NewKey(t, "acme", "k")); err != nil {
		t.Fatal(err)
	}
	l.wait(t, time.Second, "Create after idling")
}

func TestListenEnds(t *testing.T) {
	p := testenv.StartPostgres(t)
	s := open(t, newDB(t, p), Options{})
	if err := s.Listen(context.Background(), nil); err == nil {
		t.Error("Listen(nil onChange) = nil, want an error")
	}
	// Closing the store ends Listen.
	l := listen(t, s, nil)
	l.wait(t, 5*time.Second, "initial call")
	s.Close()
	select {
	case <-l.finished:
	case <-time.After(5 * time.Second):
		t.Fatal("Listen still running after Close")
	}
	// A cancelled context ends Listen while the server is unreachable too.
	s2 := open(t, newDB(t, p), Options{})
	p.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s2.Listen(ctx, func() {}) }()
	time.Sleep(150 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Listen after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Listen still running after cancel")
	}
}

// ---------------------------------------------------------------- benchmark

func BenchmarkLookup(b *testing.B) {
	p := testenv.StartPostgres(b)
	s := open(b, newDB(b, p), Options{MaxConns: 8})
	var ds []apikey.Digest
	for i := range 100 {
		nk := storetest.NewKey(b, "acme", fmt.Sprintf("k%d", i))
		if _, err := s.Create(ctxT(b), nk); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, nk.Digest)
	}
	ctx := context.Background()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.Lookup(ctx, ds[i%len(ds)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
