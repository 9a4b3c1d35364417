package keycache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// fakeStore is a counting Lookuper. A read takes its answer when it starts and,
// when a gate is set, returns it only once the gate is closed (a slow store).
type fakeStore struct {
	mu      sync.Mutex
	keys    map[[32]byte]apikey.Key
	err     error
	gate    chan struct{}
	entered chan struct{} // receives once per read when set (buffered by the test)
	reads   atomic.Int64
}

func newStore() *fakeStore { return &fakeStore{keys: map[[32]byte]apikey.Key{}} }

func (s *fakeStore) Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error) {
	s.reads.Add(1)
	s.mu.Lock()
	k, ok := s.keys[d.Sum]
	err, gate, entered := s.err, s.gate, s.entered
	s.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return apikey.Key{}, ctx.Err()
		}
	}
	switch {
	case err != nil:
		return apikey.Key{}, err
	case !ok:
		return apikey.Key{}, apikey.ErrNotFound
	}
	return k, nil
}

func (s *fakeStore) put(d apikey.Digest, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[d.Sum] = apikey.Key{ID: id, Workspace: "ws1", PepperVersion: d.Version}
}

func (s *fakeStore) del(d apikey.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, d.Sum)
}

func (s *fakeStore) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// slow makes later reads wait for the returned gate and report on entered.
func (s *fakeStore) slow() (gate, entered chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate, s.entered = make(chan struct{}), make(chan struct{}, 1000)
	return s.gate, s.entered
}

func (s *fakeStore) fast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate, s.entered = nil, nil
}

// fakeClock advances a cache's clock in tests.
type fakeClock struct{ c *Cache }

func (f fakeClock) add(d time.Duration) { f.c.now.Add(int64(d)) }

func digest(i int) apikey.Digest {
	var d apikey.Digest
	d.Sum[0], d.Sum[1], d.Sum[31] = byte(i), byte(i>>8), 0xAA
	d.Version = 1
	return d
}

var testOpts = Options{Size: 100, TTL: time.Minute, NegativeSize: 100, NegativeTTL: 10 * time.Second, MaxStaleness: 5 * time.Minute}

// testCache returns a cache whose clock moves only when the test says so.
func testCache(t testing.TB, s apikey.Lookuper, opt Options) (*Cache, fakeClock) {
	t.Helper()
	c, err := newCache(s, opt, zap.NewNop(), false)
	if err != nil {
		t.Fatalf("newCache: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, fakeClock{c}
}

// seeded returns a store holding digest(1) as key id, that digest, and a
// cache with testOpts over the store.
func seeded(t testing.TB, id string) (*fakeStore, apikey.Digest, *Cache, fakeClock) {
	t.Helper()
	s := newStore()
	a := digest(1)
	s.put(a, id)
	c, clk := testCache(t, s, testOpts)
	return s, a, c, clk
}

// eventually waits until cond holds, for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Until(t, 5*time.Second, what, cond)
}

// lookup is Lookup bounded in time, so that a broken cache fails a test instead of hanging it.
func lookup(c *Cache, d apikey.Digest) (apikey.Key, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Lookup(ctx, d)
}

func wantKey(t *testing.T, c *Cache, d apikey.Digest, id string) {
	t.Helper()
	k, err := lookup(c, d)
	if err != nil || k.ID != id {
		t.Fatalf("Lookup = %q, %v; want %q", k.ID, err, id)
	}
}

func wantNotFound(t *testing.T, c *Cache, d apikey.Digest) {
	t.Helper()
	k, err := lookup(c, d)
	if !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("Lookup = %q, %v; want ErrNotFound", k.ID, err)
	}
}

func wantReads(t *testing.T, s *fakeStore, n int64) {
	t.Helper()
	if got := s.reads.Load(); got != n {
		t.Fatalf("store reads = %d, want %d", got, n)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	mod := func(f func(*Options)) Options { o := testOpts; f(&o); return o }
	for name, o := range map[string]Options{
		"zero size":            mod(func(o *Options) { o.Size = 0 }),
		"zero ttl":             mod(func(o *Options) { o.TTL = 0 }),
		"negative staleness":   mod(func(o *Options) { o.MaxStaleness = -1 }),
		"negative neg size":    mod(func(o *Options) { o.NegativeSize = -1 }),
		"negative neg ttl":     mod(func(o *Options) { o.NegativeTTL = -1 }),
		"neg size without ttl": mod(func(o *Options) { o.NegativeTTL = 0 }),
		"neg ttl without size": mod(func(o *Options) { o.NegativeSize = 0 }),
	} {
		if _, err := New(newStore(), o, zap.NewNop()); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := New(nil, testOpts, zap.NewNop()); err == nil {
		t.Error("nil store: New succeeded")
	}
	if _, err := New(newStore(), testOpts, nil); err == nil {
		t.Error("nil logger: New succeeded")
	}
}

func TestHitMissNegative(t *testing.T) {
	s := newStore()
	a, b := digest(1), digest(2)
	s.put(a, "key_a")
	c, _ := testCache(t, s, testOpts)

	wantKey(t, c, a, "key_a")
	wantReads(t, s, 1)
	wantKey(t, c, a, "key_a")
	wantReads(t, s, 1)
	if k, _ := c.Lookup(context.Background(), a); k.PepperVersion != 1 {
		t.Errorf("PepperVersion = %d, want 1", k.PepperVersion)
	}

	wantNotFound(t, c, b)
	wantReads(t, s, 2)
	wantNotFound(t, c, b)
	wantReads(t, s, 2)

	want := Stats{Hits: 2, NegativeHits: 1, Misses: 2, StoreReads: 2}
	if st := c.Stats(); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	if c.Len() != 1 || c.NegativeLen() != 1 {
		t.Errorf("Len, NegativeLen = %d, %d; want 1, 1", c.Len(), c.NegativeLen())
	}
}

func TestNegativeCachingDisabled(t *testing.T) {
	s := newStore()
	o := testOpts
	o.NegativeSize, o.NegativeTTL = 0, 0
	c, _ := testCache(t, s, o)
	wantNotFound(t, c, digest(1))
	wantNotFound(t, c, digest(1))
	wantReads(t, s, 2)
}

func TestPositiveTTL(t *testing.T) {
	s, a, c, clk := seeded(t, "key_old")

	wantKey(t, c, a, "key_old")
	s.put(a, "key_new")
	clk.add(testOpts.TTL)
	wantKey(t, c, a, "key_old") // exactly TTL old: still fresh
	wantReads(t, s, 1)
	clk.add(time.Nanosecond)
	wantKey(t, c, a, "key_new")
	wantReads(t, s, 2)
	wantKey(t, c, a, "key_new")
	wantReads(t, s, 2)
}

func TestPositiveTTLThenNotFound(t *testing.T) {
	s, a, c, clk := seeded(t, "key_a")
	wantKey(t, c, a, "key_a")
	s.del(a)
	clk.add(testOpts.TTL + 1)
	wantNotFound(t, c, a) // not served stale: the store answered
	if c.Len() != 0 {
		t.Errorf("Len = %d after the key was not found, want 0", c.Len())
	}
	wantNotFound(t, c, a)
	wantReads(t, s, 2)
}

func TestNegativeTTL(t *testing.T) {
	s := newStore()
	a := digest(1)
	c, clk := testCache(t, s, testOpts)

	wantNotFound(t, c, a)
	s.put(a, "key_a") // created without an eviction: only the TTL helps
	clk.add(testOpts.NegativeTTL - 1)
	wantNotFound(t, c, a)
	wantReads(t, s, 1)
	clk.add(1)
	wantKey(t, c, a, "key_a")
	wantReads(t, s, 2)
}

func TestNegativeTTLRealClock(t *testing.T) {
	s := newStore()
	a := digest(1)
	o := testOpts
	o.NegativeTTL = 30 * time.Millisecond
	c, err := New(s, o, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	wantNotFound(t, c, a)
	s.put(a, "key_a")
	start := time.Now()
	eventually(t, "negative entry to expire", func() bool {
		_, err := c.Lookup(context.Background(), a)
		return err == nil
	})
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("negative entry expired after %v, want about %v", d, o.NegativeTTL)
	}
}

func TestLRUBound(t *testing.T) {
	s := newStore()
	for i := 1; i <= 3; i++ {
		s.put(digest(i), fmt.Sprint("key_", i))
	}
	o := testOpts
	o.Size = 2
	c, _ := testCache(t, s, o)
	wantKey(t, c, digest(1), "key_1")
	wantKey(t, c, digest(2), "key_2")
	wantKey(t, c, digest(1), "key_1") // 2 is now least recently used
	wantKey(t, c, digest(3), "key_3")
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want 2", c.Len())
	}
	wantReads(t, s, 3)
	wantKey(t, c, digest(1), "key_1")
	wantReads(t, s, 3)
	wantKey(t, c, digest(2), "key_2")
	wantReads(t, s, 4)
}

func TestManyShards(t *testing.T) {
	s := newStore()
	o := testOpts
	o.Size, o.NegativeSize = 100_000, 100_000
	c, _ := testCache(t, s, o)
	if len(c.shards) < 2 {
		t.Fatalf("shards = %d, want several for a large cache", len(c.shards))
	}
	for i := range 512 {
		s.put(digest(i), fmt.Sprint("key_", i))
	}
	for range 2 {
		for i := range 512 {
			wantKey(t, c, digest(i), fmt.Sprint("key_", i))
		}
	}
	wantReads(t, s, 512)
	if c.Len() != 512 {
		t.Errorf("Len = %d, want 512", c.Len())
	}
	c.Purge()
	if c.Len() != 0 {
		t.Errorf("Len after Purge = %d", c.Len())
	}
}

func TestSingleflight(t *testing.T) {
	s, a, c, _ := seeded(t, "key_a")
	gate, _ := s.slow()

	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			k, err := c.Lookup(context.Background(), a)
			if err == nil && k.ID != "key_a" {
				err = fmt.Errorf("got %q", k.ID)
			}
			errs <- err
		})
	}
	eventually(t, "all lookups to wait", func() bool { return c.Stats().Misses == n })
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantReads(t, s, 1)
}

func TestStoreErrorNotCached(t *testing.T) {
	s, a, c, _ := seeded(t, "key_a")
	boom := errors.New("connection refused")
	s.setErr(boom)

	_, err := c.Lookup(context.Background(), a)
	if !errors.Is(err, boom) || errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("Lookup error = %v, want the store error", err)
	}
	if c.Len() != 0 || c.NegativeLen() != 0 {
		t.Fatalf("error was cached: Len %d, NegativeLen %d", c.Len(), c.NegativeLen())
	}
	s.setErr(nil)
	wantKey(t, c, a, "key_a")
	wantReads(t, s, 2)
	if st := c.Stats(); st.StoreErrors != 1 {
		t.Errorf("StoreErrors = %d, want 1", st.StoreErrors)
	}
}

func TestEvictDropsPositiveAndNegative(t *testing.T) {
	s := newStore()
	a, b, other := digest(1), digest(2), digest(3)
	s.put(a, "key_a")
	s.put(other, "key_other")
	c, _ := testCache(t, s, testOpts)
	wantKey(t, c, a, "key_a")
	wantNotFound(t, c, b)
	wantKey(t, c, other, "key_other")
	wantReads(t, s, 3)

	s.del(a)          // deleted
	s.put(b, "key_b") // created
	c.Evict(a.Sum, b.Sum)
	wantNotFound(t, c, a)
	wantKey(t, c, b, "key_b")
	wantKey(t, c, other, "key_other") // untouched
	wantReads(t, s, 5)
}

// TestEvictDuringRead checks that a read that started before an Evict (or Purge)
// does not put its result in the cache, and that lookups after the Evict do not
// join it but read again.
func TestEvictDuringRead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		evict func(c *Cache, d apikey.Digest)
	}{
		{"evict", func(c *Cache, d apikey.Digest) { c.Evict(d.Sum) }},
		{"purge", func(c *Cache, _ apikey.Digest) { c.Purge() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, a, c, _ := seeded(t, "key_old")

			gate, entered := s.slow()
			first := make(chan string, 1)
			go func() {
				k, _ := c.Lookup(context.Background(), a)
				first <- k.ID
			}()
			<-entered // the read has taken the old answer
			s.put(a, "key_new")
			tc.evict(c, a)

			s.fast()
			wantKey(t, c, a, "key_new") // did not join the old read
			wantReads(t, s, 2)

			close(gate)
			if id := <-first; id != "key_old" {
				t.Errorf("first lookup = %q, want key_old (it asked before the change)", id)
			}
			wantKey(t, c, a, "key_new") // the old read did not overwrite the entry
			wantReads(t, s, 2)
		})
	}
}

// TestOldReadEndsDuringNewRead checks that an evicted read ending while a newer
// read of the same digest is in flight leaves the newer one for others to join.
func TestOldReadEndsDuringNewRead(t *testing.T) {
	s, a, c, _ := seeded(t, "key_old")

	gate1, entered := s.slow()
	first := make(chan error, 1)
	go func() {
		_, err := lookup(c, a)
		first <- err
	}()
	<-entered
	s.put(a, "key_new")
	c.Evict(a.Sum)

	gate2, entered := s.slow()
	results := make(chan string, 2)
	get := func() {
		k, err := lookup(c, a)
		if err != nil {
			results <- err.Error()
			return
		}
		results <- k.ID
	}
	go get()
	<-entered
	close(gate1)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	go get()
	eventually(t, "third lookup to wait", func() bool { return c.Stats().Misses == 3 })
	close(gate2)
	for range 2 {
		if id := <-results; id != "key_new" {
			t.Errorf("lookup after evict = %q, want key_new", id)
		}
	}
	wantReads(t, s, 2)
}

func TestEvictDuringReadNegative(t *testing.T) {
	s := newStore()
	a := digest(1)
	c, _ := testCache(t, s, testOpts)
	gate, entered := s.slow()
	done := make(chan error, 1)
	go func() {
		_, err := c.Lookup(context.Background(), a)
		done <- err
	}()
	<-entered // read answers not found
	s.put(a, "key_a")
	c.Evict(a.Sum)
	close(gate)
	if err := <-done; !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("first lookup: %v, want ErrNotFound", err)
	}
	s.fast()
	wantKey(t, c, a, "key_a") // the not-found answer was not cached
}

func TestStaleServing(t *testing.T) {
	s, a, c, clk := seeded(t, "key_a") // TTL 1m, staleness 5m, retry 1s
	wantKey(t, c, a, "key_a")
	boom := errors.New("store down")
	s.setErr(boom)

	clk.add(2 * time.Minute)
	wantKey(t, c, a, "key_a") // stale after a failed read
	wantReads(t, s, 2)
	wantKey(t, c, a, "key_a") // stale without asking the failing store again at once
	wantReads(t, s, 2)
	clk.add(c.retry)
	wantKey(t, c, a, "key_a")
	wantReads(t, s, 3)
	if st := c.Stats(); st.StaleServes != 3 || st.StoreErrors != 2 {
		t.Errorf("StaleServes, StoreErrors = %d, %d; want 3, 2", st.StaleServes, st.StoreErrors)
	}

	clk.add(testOpts.TTL + testOpts.MaxStaleness - 2*time.Minute - c.retry) // exactly TTL+MaxStaleness old
	wantKey(t, c, a, "key_a")
	clk.add(time.Nanosecond + c.retry)
	if _, err := c.Lookup(context.Background(), a); !errors.Is(err, boom) {
		t.Fatalf("after TTL+MaxStaleness: Lookup error = %v, want the store error", err)
	}
	if c.Len() != 0 {
		t.Errorf("Len = %d, want the too-old entry dropped", c.Len())
	}
}

func TestStaleServingRecovers(t *testing.T) {
	s, a, c, clk := seeded(t, "key_a")
	wantKey(t, c, a, "key_a")
	s.setErr(errors.New("store down"))
	clk.add(2 * time.Minute)
	wantKey(t, c, a, "key_a")

	s.setErr(nil)
	s.put(a, "key_a2")
	clk.add(c.retry)
	wantKey(t, c, a, "key_a2")
	clk.add(testOpts.TTL) // fresh again: no read
	wantKey(t, c, a, "key_a2")
	wantReads(t, s, 3)
}

func TestNoStaleServingWithoutMaxStaleness(t *testing.T) {
	s := newStore()
	a := digest(1)
	s.put(a, "key_a")
	o := testOpts
	o.MaxStaleness = 0
	c, clk := testCache(t, s, o)
	wantKey(t, c, a, "key_a")
	boom := errors.New("store down")
	s.setErr(boom)
	clk.add(o.TTL + 1)
	if _, err := c.Lookup(context.Background(), a); !errors.Is(err, boom) {
		t.Fatalf("Lookup error = %v, want the store error", err)
	}
	if st := c.Stats(); st.StaleServes != 0 {
		t.Errorf("StaleServes = %d", st.StaleServes)
	}
}

func TestEvictedEntryNotServedStale(t *testing.T) {
	s, a, c, clk := seeded(t, "key_a")
	wantKey(t, c, a, "key_a")
	c.Evict(a.Sum) // deleted on another replica, then the store went down
	s.setErr(errors.New("store down"))
	clk.add(2 * time.Minute)
	if _, err := c.Lookup(context.Background(), a); err == nil {
		t.Fatal("an evicted key was served during a store outage")
	}
}

func TestCallerCancelDoesNotCancelSharedRead(t *testing.T) {
	s, a, c, _ := seeded(t, "key_a")
	gate, entered := s.slow()

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.Lookup(ctx, a)
		first <- err
	}()
	<-entered
	second := make(chan error, 1)
	go func() {
		k, err := c.Lookup(context.Background(), a)
		if err == nil && k.ID != "key_a" {
			err = fmt.Errorf("got %q", k.ID)
		}
		second <- err
	}()
	eventually(t, "second lookup to wait", func() bool { return c.Stats().Misses == 2 })
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled lookup: %v, want context.Canceled", err)
	}
	close(gate)
	if err := <-second; err != nil {
		t.Fatalf("second lookup: %v", err)
	}
	wantReads(t, s, 1)
	wantKey(t, c, a, "key_a")
	wantReads(t, s, 1)
}

func TestReadKeepsCallerDeadline(t *testing.T) {
	s := newStore()
	a := digest(1)
	c, _ := testCache(t, s, testOpts)
	_, _ = s.slow() // never opened: the read ends with its context

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.Lookup(ctx, a)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup error = %v, want DeadlineExceeded", err)
	}
	// The shared read ended too (deadline kept), so Close does not wait for it.
	eventually(t, "the read to end", func() bool { return c.Stats().StoreReads == 1 })
}

func TestClose(t *testing.T) {
	s := newStore()
	a, b := digest(1), digest(2)
	s.put(a, "key_a")
	c, err := New(s, testOpts, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	wantKey(t, c, a, "key_a")

	_, entered := s.slow() // never opened: only Close ends the read
	done := make(chan error, 1)
	go func() {
		_, err := c.Lookup(context.Background(), b)
		done <- err
	}()
	<-entered
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("lookup in flight at Close: %v, want context.Canceled", err)
	}
	if _, err := c.Lookup(context.Background(), digest(3)); !errors.Is(err, ErrClosed) {
		t.Fatalf("miss after Close: %v, want ErrClosed", err)
	}
	wantKey(t, c, a, "key_a") // hits still answer
}

func TestReadTimeoutBoundsRead(t *testing.T) {
	s := newStore()
	a := digest(1)
	o := testOpts
	o.ReadTimeout = 20 * time.Millisecond
	c, _ := testCache(t, s, o)
	_, _ = s.slow() // never opened: only the read timeout ends the read

	start := time.Now()
	_, err := c.Lookup(context.Background(), a) // no deadline of its own
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup error = %v, want DeadlineExceeded from the read timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Lookup took %v with a 20ms read timeout", d)
	}
	// A caller deadline shorter than the read timeout still wins.
	_, _ = s.slow()
	o.ReadTimeout = time.Hour
	c2, _ := testCache(t, s, o)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c2.Lookup(ctx, a); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup error = %v, want DeadlineExceeded", err)
	}
	eventually(t, "the read to end", func() bool { return c2.Stats().StoreReads == 1 })
}

type ctxKey struct{}

// valueStore records the value the read's context carries under ctxKey.
type valueStore struct{ got chan any }

func (s valueStore) Lookup(ctx context.Context, _ apikey.Digest) (apikey.Key, error) {
	s.got <- ctx.Value(ctxKey{})
	return apikey.Key{ID: "key_a"}, nil
}

func TestReadKeepsCallerValues(t *testing.T) {
	s := valueStore{got: make(chan any, 1)}
	c, _ := testCache(t, s, testOpts)
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), ctxKey{}, "trace-1"), 5*time.Second)
	defer cancel()
	if _, err := c.Lookup(ctx, digest(1)); err != nil {
		t.Fatal(err)
	}
	if v := <-s.got; v != "trace-1" {
		t.Fatalf("store read saw value %v, want the caller's", v)
	}
}

// Readers that finished wait for the next miss, at most maxIdleReaders of them;
// the rest exit.
func TestIdleReadersBounded(t *testing.T) {
	s := newStore()
	c, _ := testCache(t, s, testOpts)
	gate, entered := s.slow()
	const n = 3 * maxIdleReaders
	var wg sync.WaitGroup
	for i := range n {
		s.put(digest(i), fmt.Sprintf("key_%d", i))
		wg.Go(func() { _, _ = lookup(c, digest(i)) })
	}
	for range n {
		<-entered // n reads in flight at once: n readers
	}
	close(gate)
	wg.Wait()
	eventually(t, "readers to settle", func() bool { return c.idle.Load() == maxIdleReaders })
	// An idle reader takes the next miss: it is not counted idle while reading.
	s.fast()
	wantNotFound(t, c, digest(n+1))
	if got := c.idle.Load(); got > maxIdleReaders {
		t.Fatalf("%d idle readers, want at most %d", got, maxIdleReaders)
	}
}

// Hits, misses, evictions and Evict calls at once on a cache much smaller than
// the key set: every answer is the key asked for (run with -race).
func TestConcurrentChurn(t *testing.T) {
	s := newStore()
	const keys = 300
	for i := range keys {
		s.put(digest(i), fmt.Sprintf("key_%d", i))
	}
	c, _ := testCache(t, s, Options{Size: 32, TTL: time.Minute, NegativeSize: 32, NegativeTTL: time.Second, MaxStaleness: time.Minute})
	var eg errgroup.Group
	for g := range 8 {
		eg.Go(func() error {
			for n := range 3000 {
				i := (n*7 + g*13) % (keys + 20) // the last 20 are unknown
				if n%50 == 0 {
					c.Evict(digest(i).Sum)
				}
				k, err := lookup(c, digest(i))
				switch {
				case i >= keys && !errors.Is(err, apikey.ErrNotFound):
					return fmt.Errorf("unknown digest %d: %q, %v", i, k.ID, err)
				case i < keys && (err != nil || k.ID != fmt.Sprintf("key_%d", i)):
					return fmt.Errorf("digest %d: %q, %v", i, k.ID, err)
				}
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := c.Len(); n > 32 {
		t.Fatalf("Len %d over the size", n)
	}
}

// Every time a Key can hold comes back from a cache hit as the store gave it:
// exactly to the microsecond (the SQL stores' precision) — far future (past
// 2262-04-11, where Unix nanoseconds wrap), far past (before 1677-09-21), the
// Unix epoch itself, zero (unset) — and a finer part rounded toward a deny:
// expiry and revocation down, not-before up.
func TestCachedTimesExact(t *testing.T) {
	times := map[string]time.Time{
		"2262-04-12":           time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC),
		"2300-01-01":           time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC),
		"9999-12-31T23:59:59Z": time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		"last microsecond":     time.Date(9999, 12, 31, 23, 59, 59, 999_999_000, time.UTC),
		"last nanosecond":      time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		"wrap edge":            time.Unix(0, 1<<63-1).Add(time.Nanosecond),
		"year 1 plus 1µs":      time.Date(1, 1, 1, 0, 0, 0, 1000, time.UTC),
		"1600":                 time.Date(1600, 6, 1, 12, 0, 0, 500, time.FixedZone("X", 3600)),
		"unix epoch":           time.Unix(0, 0),
		"now":                  time.Now(),
		"zero":                 {},
	}
	for name, at := range times {
		t.Run(name, func(t *testing.T) {
			s := newStore()
			c, _ := testCache(t, s, testOpts)
			d := digest(1)
			want := apikey.Key{ID: "key_far", Workspace: "ws1", ExpiresAt: at, NotBefore: at, RevokedAt: at, PepperVersion: 1}
			s.mu.Lock()
			s.keys[d.Sum] = want
			s.mu.Unlock()
			down := at.Truncate(time.Microsecond) // Truncate works on absolute time: exact for any year
			up := down
			if !down.Equal(at) {
				up = down.Add(time.Microsecond)
			}
			for _, from := range []string{"store read", "cache hit"} {
				k, err := lookup(c, d)
				if err != nil {
					t.Fatalf("%s: %v", from, err)
				}
				for field, w := range map[string][2]time.Time{"ExpiresAt": {k.ExpiresAt, down}, "NotBefore": {k.NotBefore, up}, "RevokedAt": {k.RevokedAt, down}} {
					got, wt := w[0], w[1]
					if from == "store read" {
						wt = at // the read itself hands back the store's Key
					}
					if !got.Equal(wt) || got.IsZero() != at.IsZero() {
						t.Errorf("%s: %s = %v, want %v", from, field, got, wt)
					}
				}
				wantReads(t, s, 1)
			}
		})
	}
}

// A key valid from 2300 stays not yet valid, and a key expiring at the end of
// 9999 stays valid, on every cache hit — not only on the store read.
func TestCachedFarFutureValidity(t *testing.T) {
	now := time.Now()
	cases := []struct {
		name string
		key  apikey.Key
		want error
	}{
		{"not_before 2262-04-12", apikey.Key{NotBefore: time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC)}, apikey.ErrNotYetValid},
		{"not_before 2300-01-01", apikey.Key{NotBefore: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)}, apikey.ErrNotYetValid},
		{"not_before 9999-12-31T23:59:59Z", apikey.Key{NotBefore: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)}, apikey.ErrNotYetValid},
		{"expires_at 2262-04-12", apikey.Key{ExpiresAt: time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC)}, nil},
		{"expires_at 2300-01-01", apikey.Key{ExpiresAt: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)}, nil},
		{"expires_at 9999-12-31T23:59:59Z", apikey.Key{ExpiresAt: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore()
			c, _ := testCache(t, s, testOpts)
			d := digest(1)
			tc.key.ID, tc.key.Workspace = "key_far", "ws1"
			s.mu.Lock()
			s.keys[d.Sum] = tc.key
			s.mu.Unlock()
			for i := range 3 {
				k, err := lookup(c, d)
				if err != nil {
					t.Fatalf("lookup %d: %v", i+1, err)
				}
				if err := k.Valid(now); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
					t.Fatalf("lookup %d: Valid = %v, want %v", i+1, err, tc.want)
				}
			}
			wantReads(t, s, 1)
		})
	}
}

// A store's "not found" comes back as apikey.ErrNotFound itself; a negative
// entry's as apikey.ErrNotFoundCached, which is ErrNotFound for errors.Is: the
// Check path tells the two apart during a pepper rotation.
func TestNotFoundFromStoreOrNegativeEntry(t *testing.T) {
	s := newStore()
	c, _ := testCache(t, s, testOpts)
	d := digest(1)
	if _, err := lookup(c, d); err != apikey.ErrNotFound {
		t.Fatalf("store read: err = %v, want apikey.ErrNotFound itself", err)
	}
	_, err := lookup(c, d)
	if err != apikey.ErrNotFoundCached || !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("negative entry: err = %v, want apikey.ErrNotFoundCached (errors.Is ErrNotFound)", err)
	}
	wantReads(t, s, 1)
}

// Options.Now replaces the ticking clock: TTLs follow it and nothing else.
func TestOptionsNow(t *testing.T) {
	var mu sync.Mutex
	at := time.Unix(1_000_000, 0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return at }
	add := func(d time.Duration) { mu.Lock(); at = at.Add(d); mu.Unlock() }
	s := newStore()
	a, b := digest(1), digest(2)
	s.put(a, "key_a")
	o := testOpts
	o.Now = now
	c, err := New(s, o, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantKey(t, c, a, "key_a")
	wantNotFound(t, c, b)
	time.Sleep(20 * time.Millisecond) // real time does not age entries
	add(o.NegativeTTL - time.Nanosecond)
	wantKey(t, c, a, "key_a")
	wantNotFound(t, c, b)
	wantReads(t, s, 2)
	add(time.Nanosecond)
	wantNotFound(t, c, b) // negative entry expired: read again
	wantReads(t, s, 3)
	add(o.TTL)
	wantKey(t, c, a, "key_a") // positive entry past TTL: read again
	wantReads(t, s, 4)
}
