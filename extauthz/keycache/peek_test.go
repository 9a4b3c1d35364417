package keycache

import (
	"errors"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// TestCached: Cached answers from the entries alone, never reading the store,
// and follows their lifetimes: a positive entry while Lookup would answer from
// it (TTL plus stale serving), a negative one until it expires.
func TestCached(t *testing.T) {
	s, a, c, clk := seeded(t, "key_a")
	unknown := digest(2)
	check := func(what string, d apikey.Digest, wantPos, wantNeg bool) {
		t.Helper()
		if pos, neg := c.Cached(d); pos != wantPos || neg != wantNeg {
			t.Fatalf("%s: Cached = (%v, %v), want (%v, %v)", what, pos, neg, wantPos, wantNeg)
		}
	}
	check("empty cache, known key", a, false, false)
	check("empty cache, unknown key", unknown, false, false)
	if s.reads.Load() != 0 {
		t.Fatalf("Cached read the store %d times", s.reads.Load())
	}
	if _, err := lookup(c, a); err != nil {
		t.Fatal(err)
	}
	if _, err := lookup(c, unknown); !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	reads := s.reads.Load()
	hits := c.Stats()
	check("cached key", a, true, false)
	check("negative entry", unknown, false, true)
	if s.reads.Load() != reads || c.Stats() != hits {
		t.Fatalf("Cached changed store reads (%d → %d) or stats (%+v → %+v)", reads, s.reads.Load(), hits, c.Stats())
	}
	clk.add(testOpts.NegativeTTL + time.Millisecond)
	check("negative entry expired", unknown, false, false)
	clk.add(testOpts.TTL) // past TTL, within stale serving: Lookup still serves it when the store fails
	check("positive entry past TTL, kept for stale serving", a, true, false)
	clk.add(testOpts.MaxStaleness)
	check("positive entry past TTL and staleness", a, false, false)
	c.Evict(a.Sum)
	check("evicted", a, false, false)
}
