package keycache

import (
	"context"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// putKey stores k under d.
func (s *fakeStore) putKey(d apikey.Digest, k apikey.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k.PepperVersion = d.Version
	s.keys[d.Sum] = k
}

// The cached key keeps Disabled, the workspace policy and only the configured
// metadata fields (the first lookup answers the store's key as it is).
func TestCachedKeyCarriesPolicyAndMetadata(t *testing.T) {
	s := newStore()
	full, plain, other := digest(1), digest(2), digest(3)
	space := apikey.Policy{RateLimit: apikey.Rate{N: 7, Per: time.Minute}, Grants: []string{"acme/web"}, Disabled: true}
	s.putKey(full, apikey.Key{ID: "key_full", Workspace: "ws1", Name: "n", Disabled: true, Space: space,
		Grants:   []string{"partner"},
		Metadata: map[string]string{"team": "ml", "plan": "pro", "secret_note": "not forwarded"}})
	s.putKey(plain, apikey.Key{ID: "key_plain", Workspace: "ws1"})
	s.putKey(other, apikey.Key{ID: "key_other", Workspace: "ws1", Metadata: map[string]string{"unlisted": "x"}})
	opt := testOpts
	opt.Metadata = []string{"team", "plan", "region"}
	c, _ := testCache(t, s, opt)

	for _, d := range []apikey.Digest{full, plain, other} {
		if _, err := lookup(c, d); err != nil { // fill the cache
			t.Fatal(err)
		}
	}
	for _, pass := range []string{"hit", "second hit"} {
		k, err := lookup(c, full)
		if err != nil {
			t.Fatal(err)
		}
		want := apikey.Key{ID: "key_full", Workspace: "ws1", Disabled: true, Space: space, Grants: []string{"partner"},
			Metadata: map[string]string{"team": "ml", "plan": "pro"}, PepperVersion: 1}
		if !reflect.DeepEqual(k, want) {
			t.Errorf("%s: Lookup = %+v\nwant %+v", pass, k, want)
		}
		if err := k.Valid(time.Now()); err != apikey.ErrDisabled {
			t.Errorf("%s: Valid = %v, want ErrDisabled", pass, err)
		}
		for _, d := range []apikey.Digest{plain, other} {
			k, err := lookup(c, d)
			if err != nil {
				t.Fatal(err)
			}
			if k.Metadata != nil || k.Disabled || !reflect.DeepEqual(k.Space, apikey.Policy{}) || k.Grants != nil {
				t.Errorf("%s: %s = %+v, want no metadata, policy or grants", pass, k.ID, k)
			}
		}
	}
	wantReads(t, s, 3)
}

// A key without grants, workspace policy or kept metadata costs no more than
// before those were cached: no extra allocation behind the entry, and an
// entry of the same size class (112 bytes).
func TestPlainEntryStaysSmall(t *testing.T) {
	e := pack(apikey.Key{ID: "key_a", Workspace: "ws", Metadata: map[string]string{"unlisted": "x"}}, []string{"team"})
	if e.x != nil {
		t.Errorf("a plain key packs extra %+v, want nil", *e.x)
	}
	if n := unsafe.Sizeof(entry{}); n > 112 {
		t.Errorf("entry is %d bytes, want at most 112 (its size class before workspace policies)", n)
	}
	if e := pack(apikey.Key{ID: "key_a", Space: apikey.Policy{Disabled: true}}, nil); e.x == nil || !e.x.space.Disabled {
		t.Errorf("a key of a disabled workspace packs %+v", e.x)
	}
}

func TestEvictWorkspace(t *testing.T) {
	s := newStore()
	c, _ := testCache(t, s, Options{Size: 64 * minShardSize, TTL: time.Minute, NegativeSize: 100, NegativeTTL: time.Minute})
	if len(c.shards) < 2 {
		t.Fatalf("%d shards; the test wants several", len(c.shards))
	}
	const n = 64 // spread over the shards by the digest's first byte
	var mine, theirs []apikey.Digest
	for i := range n {
		d := digest(i)
		if i%2 == 0 {
			s.putKey(d, apikey.Key{ID: "key_mine", Workspace: "acme"})
			mine = append(mine, d)
		} else {
			s.putKey(d, apikey.Key{ID: "key_theirs", Workspace: "acme2"})
			theirs = append(theirs, d)
		}
	}
	unknown := digest(1000)
	for _, d := range append(append([]apikey.Digest{}, mine...), theirs...) {
		if _, err := lookup(c, d); err != nil {
			t.Fatal(err)
		}
	}
	wantNotFound(t, c, unknown)
	reads := s.reads.Load()

	c.EvictWorkspace("acme")
	if got := c.Len(); got != len(theirs) {
		t.Fatalf("Len = %d after EvictWorkspace, want %d (acme2's keys only)", got, len(theirs))
	}
	for _, d := range theirs {
		wantKey(t, c, d, "key_theirs")
	}
	wantNotFound(t, c, unknown) // negative entries stay
	wantReads(t, s, reads)
	for _, d := range mine {
		wantKey(t, c, d, "key_mine")
	}
	wantReads(t, s, reads+int64(len(mine))) // each of acme's keys read again, once
}

// A read in flight when its workspace is evicted answers its callers but is
// not cached, and later lookups do not join it.
func TestEvictWorkspaceDuringRead(t *testing.T) {
	s := newStore()
	a := digest(1)
	s.putKey(a, apikey.Key{ID: "key_a", Workspace: "acme"})
	c, _ := testCache(t, s, testOpts)

	gate, entered := s.slow()
	first := make(chan apikey.Key, 1)
	go func() {
		k, _ := c.Lookup(context.Background(), a)
		first <- k
	}()
	<-entered // the read has taken the old answer
	s.putKey(a, apikey.Key{ID: "key_a", Workspace: "acme", Space: apikey.Policy{Disabled: true}})
	c.EvictWorkspace("acme")

	s.fast()
	if k, err := lookup(c, a); err != nil || !k.Space.Disabled {
		t.Fatalf("Lookup after EvictWorkspace = %+v, %v; want the new policy (not the old read)", k, err)
	}
	wantReads(t, s, 2)
	close(gate)
	if k := <-first; k.Space.Disabled {
		t.Errorf("first lookup = %+v, want the answer it asked for before the change", k)
	}
	if k, err := lookup(c, a); err != nil || !k.Space.Disabled {
		t.Fatalf("Lookup = %+v, %v; the old read overwrote the entry", k, err)
	}
	wantReads(t, s, 2)
}

// An in-flight read of another workspace is still cached once it ends.
func TestEvictWorkspaceKeepsOtherReads(t *testing.T) {
	s := newStore()
	a := digest(1)
	s.putKey(a, apikey.Key{ID: "key_a", Workspace: "other"})
	c, _ := testCache(t, s, testOpts)
	gate, entered := s.slow()
	done := make(chan error, 1)
	go func() { _, err := c.Lookup(context.Background(), a); done <- err }()
	<-entered
	c.EvictWorkspace("acme")
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s.fast()
	wantKey(t, c, a, "key_a")
	wantReads(t, s, 1)
}

func TestFollowerEvictsWorkspace(t *testing.T) {
	s := newStore()
	a, b, other := digest(1), digest(2), digest(3)
	s.putKey(a, apikey.Key{ID: "key_a", Workspace: "acme"})
	s.putKey(b, apikey.Key{ID: "key_b", Workspace: "acme"})
	s.putKey(other, apikey.Key{ID: "key_o", Workspace: "beta"})
	c, _ := testCache(t, s, testOpts)
	feed := &fakeFeed{}
	f := newFollower(t, feed, c)
	poll(t, f)
	for _, d := range []apikey.Digest{a, b, other} {
		if _, err := lookup(c, d); err != nil {
			t.Fatal(err)
		}
	}
	reads := s.reads.Load()

	space := apikey.Policy{Grants: []string{"partner"}}
	s.putKey(a, apikey.Key{ID: "key_a", Workspace: "acme", Space: space})
	s.putKey(b, apikey.Key{ID: "key_b", Workspace: "acme", Space: space})
	feed.mu.Lock()
	feed.changes = append(feed.changes, apikey.Change{Seq: 1, Kind: apikey.WorkspaceChanged, Workspace: "acme", At: time.Now()})
	feed.mu.Unlock()
	poll(t, f)
	wantSeq(t, f, 1)
	for _, d := range []apikey.Digest{a, b} {
		if k, err := lookup(c, d); err != nil || !k.Owns("partner/x") {
			t.Fatalf("Lookup = %+v, %v; want the workspace grant after the change", k, err)
		}
	}
	wantKey(t, c, other, "key_o")
	wantReads(t, s, reads+2) // acme's two keys only

	// An Updated change evicts its digests, as before.
	s.putKey(a, apikey.Key{ID: "key_a", Workspace: "acme", Disabled: true})
	feed.add(0, apikey.Updated, a)
	poll(t, f)
	if k, err := lookup(c, a); err != nil || !k.Disabled {
		t.Fatalf("Lookup after Updated = %+v, %v; want the disabled key", k, err)
	}
	wantReads(t, s, reads+3)
}
