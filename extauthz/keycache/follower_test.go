package keycache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// fakeFeed is an in-memory change feed.
type fakeFeed struct {
	mu      sync.Mutex
	changes []apikey.Change
	last    int64 // LastSeq's answer when set (else the newest change)
	err     error
}

func (f *fakeFeed) Changes(_ context.Context, after int64, limit int) ([]apikey.Change, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []apikey.Change
	for _, ch := range f.changes {
		if ch.Seq > after && len(out) < limit {
			out = append(out, ch)
		}
	}
	return out, nil
}

func (f *fakeFeed) LastSeq(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	if f.last != 0 {
		return f.last, nil
	}
	var last int64
	for _, ch := range f.changes {
		last = max(last, ch.Seq)
	}
	return last, nil
}

// created returns a feed of n Created changes (of a digest no test caches).
func created(n int) *fakeFeed {
	f := &fakeFeed{}
	for range n {
		f.add(0, apikey.Created, digest(9))
	}
	return f
}

// add appends a change with the given seq (0 = next) and returns its seq.
func (f *fakeFeed) add(seq int64, kind apikey.ChangeKind, ds ...apikey.Digest) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq == 0 {
		seq = 1
		if n := len(f.changes); n > 0 {
			seq = f.changes[n-1].Seq + 1
		}
	}
	ch := apikey.Change{Seq: seq, KeyID: "key_x", Kind: kind, At: time.Now()}
	for _, d := range ds {
		ch.Digests = append(ch.Digests, d.Sum)
	}
	i := len(f.changes)
	for i > 0 && f.changes[i-1].Seq > seq {
		i--
	}
	f.changes = append(f.changes[:i], append([]apikey.Change{ch}, f.changes[i:]...)...)
	return seq
}

func (f *fakeFeed) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func newFollower(t *testing.T, feed Feed, c *Cache) *Follower {
	t.Helper()
	f, err := NewFollower(feed, c, time.Hour, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func poll(t *testing.T, f *Follower) {
	t.Helper()
	if err := f.Poll(context.Background()); err != nil {
		t.Fatalf("Poll: %v", err)
	}
}

func wantSeq(t *testing.T, f *Follower, seq int64) {
	t.Helper()
	if got := f.Seq(); got != seq {
		t.Fatalf("Seq = %d, want %d", got, seq)
	}
}

func TestNewFollowerRejects(t *testing.T) {
	c, _ := testCache(t, newStore(), testOpts)
	for name, fn := range map[string]func() (*Follower, error){
		"nil feed":      func() (*Follower, error) { return NewFollower(nil, c, time.Second, zap.NewNop()) },
		"nil cache":     func() (*Follower, error) { return NewFollower(&fakeFeed{}, nil, time.Second, zap.NewNop()) },
		"nil logger":    func() (*Follower, error) { return NewFollower(&fakeFeed{}, c, time.Second, nil) },
		"zero interval": func() (*Follower, error) { return NewFollower(&fakeFeed{}, c, 0, zap.NewNop()) },
	} {
		if _, err := fn(); err == nil {
			t.Errorf("%s: NewFollower succeeded", name)
		}
	}
}

func TestFollowerStartsAtLastSeqAndPurges(t *testing.T) {
	_, a, c, _ := seeded(t, "key_a")
	feed := created(3)
	f := newFollower(t, feed, c)
	if f.Healthy() || !f.FailingSince().IsZero() {
		t.Errorf("Healthy, FailingSince = %v, %v before the first poll, want false and zero", f.Healthy(), f.FailingSince())
	}
	wantKey(t, c, a, "key_a") // cached before the follower knew where the feed was
	poll(t, f)
	wantSeq(t, f, 3)
	if c.Len() != 0 {
		t.Errorf("Len = %d after the first poll, want the cache purged", c.Len())
	}
	if !f.Healthy() || !f.FailingSince().IsZero() {
		t.Errorf("Healthy, FailingSince = %v, %v", f.Healthy(), f.FailingSince())
	}
}

func TestFollowerEvicts(t *testing.T) {
	for _, tc := range []struct {
		kind    apikey.ChangeKind
		before  string // "" = not found
		after   string
		digests int // how many digests the change names
	}{
		{apikey.Created, "", "key_a", 1},
		{apikey.Refreshed, "key_a", "", 2},
		{apikey.Deleted, "key_a", "", 1},
		{apikey.Rehashed, "key_a", "", 1},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			s := newStore()
			a, a2, other := digest(1), digest(2), digest(3)
			s.put(other, "key_other")
			if tc.before != "" {
				s.put(a, tc.before)
				s.put(a2, tc.before)
			}
			c, _ := testCache(t, s, testOpts)
			feed := &fakeFeed{}
			f := newFollower(t, feed, c)
			poll(t, f)

			lookups := func(id string) {
				t.Helper()
				for _, d := range []apikey.Digest{a, a2}[:tc.digests] {
					if id == "" {
						wantNotFound(t, c, d)
					} else {
						wantKey(t, c, d, id)
					}
				}
				wantKey(t, c, other, "key_other")
			}
			lookups(tc.before)
			reads := s.reads.Load()

			if tc.after == "" {
				s.del(a)
				s.del(a2)
			} else {
				s.put(a, tc.after)
			}
			seq := feed.add(0, tc.kind, []apikey.Digest{a, a2}[:tc.digests]...)
			poll(t, f)
			wantSeq(t, f, seq)
			lookups(tc.after)
			wantReads(t, s, reads+int64(tc.digests)) // only the changed digests were read again
		})
	}
}

func TestFollowerRetriesAfterError(t *testing.T) {
	s, a, c, _ := seeded(t, "key_a")
	feed := &fakeFeed{}
	f := newFollower(t, feed, c)
	poll(t, f)
	wantKey(t, c, a, "key_a")

	boom := errors.New("feed down")
	feed.setErr(boom)
	seq := feed.add(0, apikey.Deleted, a)
	s.del(a)
	clock := time.Unix(1000, 0)
	f.now = func() time.Time { return clock }
	if err := f.Poll(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Poll error = %v, want the feed error", err)
	}
	if f.Healthy() || !f.FailingSince().Equal(clock) {
		t.Fatalf("Healthy, FailingSince = %v, %v after a failed poll, want false, %v", f.Healthy(), f.FailingSince(), clock)
	}
	wantSeq(t, f, 0)
	failed := clock
	clock = clock.Add(time.Minute)
	if err := f.Poll(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Poll error = %v, want the feed error", err)
	}
	if !f.FailingSince().Equal(failed) {
		t.Fatalf("FailingSince = %v after a second failed poll, want the first failure's %v", f.FailingSince(), failed)
	}

	feed.setErr(nil)
	poll(t, f)
	wantSeq(t, f, seq)
	if !f.Healthy() || !f.FailingSince().IsZero() {
		t.Fatalf("Healthy, FailingSince = %v, %v after recovery", f.Healthy(), f.FailingSince())
	}
	wantNotFound(t, c, a)
}

func TestFollowerFirstPollError(t *testing.T) {
	c, _ := testCache(t, newStore(), testOpts)
	feed := &fakeFeed{err: errors.New("feed down")}
	f := newFollower(t, feed, c)
	if err := f.Poll(context.Background()); err == nil {
		t.Fatal("Poll succeeded on a failing feed")
	}
	if f.Healthy() || f.FailingSince().IsZero() {
		t.Fatalf("Healthy, FailingSince = %v, %v after a failed first poll", f.Healthy(), f.FailingSince())
	}
	feed.setErr(nil)
	feed.add(0, apikey.Created, digest(1))
	poll(t, f)
	wantSeq(t, f, 1)
}

func TestFollowerGap(t *testing.T) {
	s := newStore()
	a, b, other := digest(1), digest(2), digest(3)
	for _, d := range []apikey.Digest{a, b, other} {
		s.put(d, "key_old")
	}
	c, _ := testCache(t, s, testOpts)
	feed := &fakeFeed{}
	feed.add(1, apikey.Created, digest(9))
	f := newFollower(t, feed, c)
	now := time.Unix(1000, 0)
	f.now = func() time.Time { return now }
	poll(t, f)
	wantSeq(t, f, 1)
	for _, d := range []apikey.Digest{a, b, other} {
		wantKey(t, c, d, "key_old")
	}

	// Seq 3 is visible before seq 2 (a writer has not committed yet): apply 3,
	// but stay at 1 so that 2 is read when it commits.
	s.put(b, "key_new")
	feed.add(3, apikey.Refreshed, b)
	poll(t, f)
	wantSeq(t, f, 1)
	wantKey(t, c, b, "key_new")
	s.put(a, "key_new")
	feed.add(2, apikey.Refreshed, a)
	now = now.Add(f.grace / 2)
	poll(t, f)
	wantSeq(t, f, 3)
	wantKey(t, c, a, "key_new")
	wantKey(t, c, b, "key_new")
	wantKey(t, c, other, "key_old") // no purge
	if c.Len() != 3 {
		t.Fatalf("Len = %d, want 3 (nothing purged)", c.Len())
	}

	// Seq 4 never comes: after the grace period the whole cache is purged.
	feed.add(5, apikey.Deleted, digest(8))
	poll(t, f)
	wantSeq(t, f, 3)
	now = now.Add(f.grace - 1)
	poll(t, f)
	wantSeq(t, f, 3)
	if c.Len() != 3 {
		t.Fatalf("Len = %d, purged before the grace period ended", c.Len())
	}
	now = now.Add(1)
	poll(t, f)
	wantSeq(t, f, 5)
	if c.Len() != 0 {
		t.Fatalf("Len = %d, want the cache purged after a lasting gap", c.Len())
	}
}

func TestFollowerFeedWentBackwards(t *testing.T) {
	_, a, c, _ := seeded(t, "key_a")
	feed := created(5)
	f := newFollower(t, feed, c)
	poll(t, f)
	wantSeq(t, f, 5)
	wantKey(t, c, a, "key_a")

	feed.mu.Lock()
	feed.changes = feed.changes[:2] // store restored from an older backup
	feed.mu.Unlock()
	poll(t, f)
	wantSeq(t, f, 2)
	if c.Len() != 0 {
		t.Fatalf("Len = %d, want the cache purged", c.Len())
	}
	feed.add(0, apikey.Deleted, a)
	poll(t, f)
	wantSeq(t, f, 3)
}

func TestFollowerManyChanges(t *testing.T) {
	s := newStore()
	c, _ := testCache(t, s, testOpts)
	feed := &fakeFeed{}
	f := newFollower(t, feed, c)
	poll(t, f)
	a := digest(1)
	s.put(a, "key_a")
	wantKey(t, c, a, "key_a")
	n := 3*feedBatch + 7
	for i := range n {
		d := digest(100 + i)
		if i == n-1 {
			d = a
		}
		feed.add(0, apikey.Created, d)
	}
	poll(t, f)
	wantSeq(t, f, int64(n))
	if c.Len() != 0 {
		t.Fatalf("Len = %d: the last change's digest was not evicted", c.Len())
	}
}

func TestFollowerRun(t *testing.T) {
	s, a, c, _ := seeded(t, "key_a")
	feed := &fakeFeed{}
	f, err := NewFollower(feed, c, 5*time.Millisecond, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	eventually(t, "first poll", f.Healthy)
	wantKey(t, c, a, "key_a")

	s.del(a)
	seq := feed.add(0, apikey.Deleted, a)
	eventually(t, fmt.Sprintf("seq %d", seq), func() bool { return f.Seq() == seq })
	wantNotFound(t, c, a)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// countingFeed counts Changes calls.
type countingFeed struct {
	*fakeFeed
	mu    sync.Mutex
	calls int
}

func (c *countingFeed) Changes(ctx context.Context, after int64, limit int) ([]apikey.Change, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	return c.fakeFeed.Changes(ctx, after, limit)
}

func (c *countingFeed) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// TestFollowerPollsFastWhilePushDown runs a follower with an hourly interval
// (push notifications do the work): once push is reported down it polls at
// once and then every FastInterval, so a change is applied within 250 ms
// without any notification; once push is back it returns to its interval.
func TestFollowerPollsFastWhilePushDown(t *testing.T) {
	s, a, c, _ := seeded(t, "key_a")
	feed := &countingFeed{fakeFeed: &fakeFeed{}}
	f := newFollower(t, feed, c) // interval: one hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	eventually(t, "first poll", f.Healthy)
	wantKey(t, c, a, "key_a")

	f.SetPushed(false)
	f.SetPushed(false) // idempotent
	for i := range 3 {
		d := digest(10 + i)
		s.put(d, "key_d")
		wantKey(t, c, d, "key_d")
		s.del(d)
		seq := feed.add(0, apikey.Deleted, d)
		added := time.Now()
		for f.Seq() != seq {
			if time.Since(added) > 250*time.Millisecond {
				t.Fatalf("change %d not applied within 250ms with push down (polls so far: %d)", i, feed.n())
			}
			time.Sleep(time.Millisecond)
		}
		wantNotFound(t, c, d)
	}

	f.SetPushed(true)
	settled := feed.n()
	time.Sleep(3 * FastInterval)
	if n := feed.n(); n > settled+1 {
		t.Fatalf("%d polls in %v after push came back, want at most the one at the switch", n-settled, 3*FastInterval)
	}
}
