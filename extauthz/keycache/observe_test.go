package keycache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Options.ObserveRead sees every store read with its error: found, not found, failed.
func TestObserveRead(t *testing.T) {
	s := newStore()
	s.put(digest(1), "key_a")
	var errs []error
	opt := testOpts
	opt.ObserveRead = func(took time.Duration, err error) {
		if took < 0 {
			t.Errorf("read took %v", took)
		}
		errs = append(errs, err) // reads run one at a time here: each Lookup waits for its own
	}
	c, _ := testCache(t, s, opt)
	ctx := context.Background()
	if _, err := c.Lookup(ctx, digest(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, digest(1)); err != nil { // a hit: no read
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, digest(2)); !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("unknown digest: %v", err)
	}
	boom := errors.New("store down")
	s.setErr(boom)
	if _, err := c.Lookup(ctx, digest(3)); !errors.Is(err, boom) {
		t.Fatalf("store down: %v", err)
	}
	if len(errs) != 3 || errs[0] != nil || !errors.Is(errs[1], apikey.ErrNotFound) || !errors.Is(errs[2], boom) {
		t.Fatalf("observed %v, want [nil, not found, store down]", errs)
	}
	if st := c.Stats(); st.StoreReads != 3 {
		t.Fatalf("StoreReads = %d, want 3", st.StoreReads)
	}
}

// LastPolled moves at each successful poll only: the change-feed lag metric.
func TestFollowerLastPolled(t *testing.T) {
	c, _ := testCache(t, newStore(), testOpts)
	feed := &fakeFeed{}
	clock := time.Unix(1000, 0)
	f := newFollower(t, feed, c)
	f.now = func() time.Time { return clock }
	made := f.LastPolled()
	if time.Since(made) < 0 || time.Since(made) > time.Minute {
		t.Fatalf("LastPolled before any poll = %v, want about when the follower was made", made)
	}
	poll(t, f)
	if !f.LastPolled().Equal(clock) {
		t.Fatalf("LastPolled = %v, want %v", f.LastPolled(), clock)
	}
	feed.add(0, apikey.Created, digest(9))
	polled := clock
	clock = clock.Add(time.Minute)
	feed.setErr(errors.New("feed down"))
	if err := f.Poll(context.Background()); err == nil {
		t.Fatal("Poll with the feed down succeeded")
	}
	if !f.LastPolled().Equal(polled) {
		t.Fatalf("LastPolled = %v after a failed poll, want the last success's %v", f.LastPolled(), polled)
	}
	feed.setErr(nil)
	poll(t, f)
	if !f.LastPolled().Equal(clock) {
		t.Fatalf("LastPolled = %v after recovery, want %v", f.LastPolled(), clock)
	}
}
