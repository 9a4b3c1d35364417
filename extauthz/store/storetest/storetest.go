// Package storetest is the conformance suite every apikey.Store implementation
// runs: Run for writable stores (sqlite, postgres), RunReadOnly for stores that
// are filled from outside (file). It uses only the apikey.Store interface, so
// it holds no store-specific assumptions.
//
// Time rules checked here: times round-trip with at least millisecond precision
// and come back in UTC; times the store sets itself ("now") are compared with
// the test's clock within Slack, so a database clock may be used.
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Slack is how far a store-set time ("now") may drift from the test's clock.
const Slack = time.Second

// Seed is one key a read-only store must hold when opened; a non-zero
// Key.RevokedAt marks it revoked and Key.Disabled true marks it disabled.
type Seed struct {
	Key    apikey.Key
	Digest apikey.Digest
}

// harness opens a store holding the seeds, however the store gets them.
type harness struct {
	open     func(t *testing.T, seeds []Seed) apikey.Store
	readOnly bool
}

// Run tests the whole apikey.Store contract against a writable store. open must
// return a new, empty store for each call; the suite closes it. Beyond the
// interface's comments, it expects Create to stamp a zero CreatedAt with now,
// Touch to ignore unknown ids, Ping to fail after Close, and Close to be idempotent.
func Run(t *testing.T, open func(t *testing.T) apikey.Store) {
	h := harness{open: func(t *testing.T, seeds []Seed) apikey.Store {
		t.Helper()
		s := open(t)
		t.Cleanup(func() { _ = s.Close() })
		for _, sd := range seeds {
			k := mustCreate(t, s, apikey.NewKey{Key: sd.Key, Digest: sd.Digest, Actor: "seed"})
			if sd.Key.Disabled {
				on := true
				if _, err := s.Update(ctx(t), k.ID, apikey.KeyPatch{Disabled: &on}, "seed"); err != nil {
					t.Fatalf("seed: Update(%s, disabled): %v", k.ID, err)
				}
			}
			if !sd.Key.RevokedAt.IsZero() {
				if err := s.Delete(ctx(t), k.ID, "seed"); err != nil {
					t.Fatalf("seed: Delete(%s): %v", k.ID, err)
				}
			}
		}
		return s
	}}
	h.runRead(t)
	fresh := func(t *testing.T) apikey.Store { return h.open(t, nil) }
	t.Run("CreateRoundTrip", func(t *testing.T) { testCreateRoundTrip(t, fresh(t)) })
	t.Run("CreateNormalizesTimes", func(t *testing.T) { testCreateNormalizesTimes(t, fresh(t)) })
	t.Run("ListAfterDelete", func(t *testing.T) { testListAfterDelete(t, fresh(t)) })
	t.Run("LookupDeleted", func(t *testing.T) { testLookupDeleted(t, fresh(t)) })
	t.Run("WorkspaceLimit", func(t *testing.T) { testLimit(t, fresh(t)) })
	t.Run("NameTaken", func(t *testing.T) { testNameTaken(t, fresh(t)) })
	t.Run("ConcurrentCreate", func(t *testing.T) { testConcurrentCreate(t, fresh(t)) })
	t.Run("RefreshNoGrace", func(t *testing.T) { testRefreshNoGrace(t, fresh(t)) })
	t.Run("RefreshGrace", func(t *testing.T) { testRefreshGrace(t, fresh(t)) })
	t.Run("RefreshGraceCappedByExpiry", func(t *testing.T) { testRefreshGraceCapped(t, fresh(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, fresh(t)) })
	t.Run("Rehash", func(t *testing.T) { testRehash(t, fresh(t)) })
	t.Run("Changes", func(t *testing.T) { testChanges(t, fresh(t)) })
	t.Run("Touch", func(t *testing.T) { testTouch(t, fresh(t)) })
	t.Run("LifecycleAudit", func(t *testing.T) { testLifecycleAudit(t, fresh(t)) })
	t.Run("KeysByPepperAfterWrites", func(t *testing.T) { testKeysByPepperAfterWrites(t, fresh(t)) })
	runRound4(t, fresh)
}

// RunReadOnly tests the read side of the contract against a store that cannot be
// written: open must return a new store holding exactly the seeds; the suite closes it.
// Writes must fail with apikey.ErrReadOnly; Touch may be a no-op or ErrReadOnly.
func RunReadOnly(t *testing.T, open func(t *testing.T, seeds []Seed) apikey.Store) {
	h := harness{readOnly: true, open: func(t *testing.T, seeds []Seed) apikey.Store {
		t.Helper()
		s := open(t, seeds)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}}
	h.runRead(t)
	t.Run("WritesReadOnly", func(t *testing.T) {
		seeds := fixture(t)
		testWritesReadOnly(t, h.open(t, seeds), seeds)
	})
}

// runRead runs the tests that hold for writable and read-only stores alike.
func (h harness) runRead(t *testing.T) {
	t.Run("Get", func(t *testing.T) { h.testGet(t) })
	t.Run("List", func(t *testing.T) { h.testList(t) })
	t.Run("Lookup", func(t *testing.T) { h.testLookup(t) })
	t.Run("RoundTrip", func(t *testing.T) { h.testRoundTrip(t) })
	t.Run("FarFutureTimes", func(t *testing.T) { h.testFarFutureTimes(t) })
	t.Run("ChangesConsistent", func(t *testing.T) { h.testChangesConsistent(t) })
	t.Run("Audit", func(t *testing.T) { h.testAudit(t) })
	t.Run("PingClose", func(t *testing.T) { h.testPingClose(t) })
	t.Run("KeysByPepper", func(t *testing.T) { h.testKeysByPepper(t) })
	t.Run("Disabled", func(t *testing.T) { h.testDisabled(t) })
	t.Run("NoWorkspaceRecord", func(t *testing.T) { h.testNoWorkspaceRecord(t) })
	t.Run("ListUnused", func(t *testing.T) { h.testListUnused(t) })
	t.Run("UsageEmpty", func(t *testing.T) { h.testUsageEmpty(t) })
}

// ---------------------------------------------------------------- helpers

// PepperCounter is what every store offers beyond apikey.Store: serve counts
// the live keys by pepper version at start, to refuse a config that lacks a
// version keys were made with.
type PepperCounter interface {
	// KeysByPepper counts the live (not revoked) keys by the pepper version of
	// their usable digests; a key in a refresh's grace period counts under the
	// versions of both its digests.
	KeysByPepper(ctx context.Context) (map[int]int, error)
}

// keysByPepper calls s's KeysByPepper; the test fails if s has none.
func keysByPepper(t *testing.T, s apikey.Store) map[int]int {
	t.Helper()
	pc, ok := s.(PepperCounter)
	if !ok {
		t.Fatalf("%T has no KeysByPepper method (storetest.PepperCounter)", s)
	}
	m, err := pc.KeysByPepper(ctx(t))
	if err != nil {
		t.Fatalf("KeysByPepper: %v", err)
	}
	for v, n := range m { // a version without keys may be absent or 0
		if n == 0 {
			delete(m, v)
		}
	}
	return m
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// NewDigest returns a random digest under pepper version v.
func NewDigest(t testing.TB, v int) apikey.Digest {
	t.Helper()
	d := apikey.Digest{Version: v}
	if _, err := rand.Read(d.Sum[:]); err != nil {
		t.Fatalf("random digest: %v", err)
	}
	return d
}

// NewKey returns a NewKey for workspace ws with a fresh id, a random version-1
// digest and a creation time with sub-millisecond digits (to exercise precision).
func NewKey(t testing.TB, ws, name string) apikey.NewKey {
	t.Helper()
	id, err := apikey.NewID()
	if err != nil {
		t.Fatalf("NewID: %v", err)
	}
	return apikey.NewKey{
		Key: apikey.Key{
			ID: id, Workspace: ws, Name: name, Display: "kz_" + id[4:8],
			CreatedAt: time.Now().Add(-time.Hour).Round(0),
		},
		Digest: NewDigest(t, 1),
		Actor:  "tester",
	}
}

func mustCreate(t *testing.T, s apikey.Store, nk apikey.NewKey) apikey.Key {
	t.Helper()
	k, err := s.Create(ctx(t), nk)
	if err != nil {
		t.Fatalf("Create(%s/%s): %v", nk.Key.Workspace, nk.Key.Name, err)
	}
	return k
}

// mustRefresh refreshes key id to digest d (display "kz_new1") with grace.
func mustRefresh(t *testing.T, s apikey.Store, id string, d apikey.Digest, grace time.Duration) {
	t.Helper()
	if _, err := s.Refresh(ctx(t), id, d, "kz_new1", grace, "t"); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
}

// mustDelete deletes key id.
func mustDelete(t *testing.T, s apikey.Store, id string) {
	t.Helper()
	if err := s.Delete(ctx(t), id, "t"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

// fixture is the standard seed set: two workspaces, a fully populated key, a
// revoked key, and keys whose ids sort in an order unrelated to creation order.
func fixture(t *testing.T) []Seed {
	t.Helper()
	loc := time.FixedZone("X", 5*3600)
	full := NewKey(t, "acme", "full")
	full.Key.ExpiresAt = time.Date(2099, 1, 2, 3, 4, 5, 678_900_000, loc)
	full.Key.NotBefore = time.Date(2001, 2, 3, 4, 5, 6, 789_000_000, time.UTC)
	full.Key.RateLimit = apikey.Rate{N: 600, Per: time.Minute}
	full.Key.Grants = []string{"org1", "org2"}
	full.Key.Metadata = map[string]string{"team": "x", "env": "prod"}
	full.Digest = NewDigest(t, 2)
	seeds := []Seed{{Key: full.Key, Digest: full.Digest}}
	for _, n := range []string{"c", "a", "b"} {
		nk := NewKey(t, "acme", n)
		seeds = append(seeds, Seed{Key: nk.Key, Digest: nk.Digest})
	}
	other := NewKey(t, "globex", "ci")
	seeds = append(seeds, Seed{Key: other.Key, Digest: other.Digest})
	gone := NewKey(t, "acme", "gone")
	gone.Key.RevokedAt = time.Now().Add(-time.Minute)
	seeds = append(seeds, Seed{Key: gone.Key, Digest: gone.Digest})
	return seeds
}

func seedByName(t *testing.T, seeds []Seed, name string) Seed {
	t.Helper()
	for _, s := range seeds {
		if s.Key.Name == name {
			return s
		}
	}
	t.Fatalf("no seed %q", name)
	return Seed{}
}

// sameTime checks a round-tripped time: zero stays zero, otherwise equal within a
// millisecond and in UTC.
func sameTime(t *testing.T, field string, got, want time.Time) {
	t.Helper()
	if want.IsZero() {
		if !got.IsZero() {
			t.Errorf("%s = %v, want zero", field, got)
		}
		return
	}
	if d := got.Sub(want); d >= time.Millisecond || d <= -time.Millisecond {
		t.Errorf("%s = %v, want %v (±1ms)", field, got, want)
	}
	if got.Location() != time.UTC {
		t.Errorf("%s location = %v, want UTC", field, got.Location())
	}
}

// nowish checks that a store-set time lies within [from, to] ± Slack and is UTC.
func nowish(t *testing.T, field string, got, from, to time.Time) {
	t.Helper()
	if got.IsZero() {
		t.Errorf("%s is zero, want about now", field)
		return
	}
	if got.Before(from.Add(-Slack)) || got.After(to.Add(Slack)) {
		t.Errorf("%s = %v, want within [%v, %v] ± %v", field, got, from, to, Slack)
	}
	if got.Location() != time.UTC {
		t.Errorf("%s location = %v, want UTC", field, got.Location())
	}
}

// sameKey compares the stored fields of a key (not LastUsedAt, RevokedAt, PepperVersion).
func sameKey(t *testing.T, got, want apikey.Key) {
	t.Helper()
	if got.ID != want.ID || got.Workspace != want.Workspace || got.Name != want.Name || got.Display != want.Display {
		t.Errorf("key = {%s %s %s %s}, want {%s %s %s %s}", got.ID, got.Workspace, got.Name, got.Display,
			want.ID, want.Workspace, want.Name, want.Display)
	}
	if got.Disabled != want.Disabled {
		t.Errorf("key %s Disabled = %v, want %v", got.ID, got.Disabled, want.Disabled)
	}
	sameTime(t, "CreatedAt", got.CreatedAt, want.CreatedAt)
	sameTime(t, "ExpiresAt", got.ExpiresAt, want.ExpiresAt)
	sameTime(t, "NotBefore", got.NotBefore, want.NotBefore)
	if got.RateLimit != want.RateLimit {
		t.Errorf("RateLimit = %v, want %v", got.RateLimit, want.RateLimit)
	}
	if !slices.Equal(got.Grants, want.Grants) {
		t.Errorf("Grants = %q, want %q", got.Grants, want.Grants)
	}
	if len(got.Metadata) != len(want.Metadata) {
		t.Errorf("Metadata = %v, want %v", got.Metadata, want.Metadata)
	}
	for k, v := range want.Metadata {
		if got.Metadata[k] != v {
			t.Errorf("Metadata[%q] = %q, want %q", k, got.Metadata[k], v)
		}
	}
}

func ids(keys []apikey.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

// paged reads a listing (what) in pages of size through its cursor, the last
// id of the previous page, and returns the ids in order; a page longer than
// size, an error or more than 100 pages fail t.
func paged(t *testing.T, what string, size int, page func(after string) ([]string, error)) []string {
	t.Helper()
	var out []string
	after := ""
	for range 100 {
		p, err := page(after)
		if err != nil {
			t.Fatalf("%s(after %q): %v", what, after, err)
		}
		if len(p) > size {
			t.Fatalf("%s(limit %d) returned %d", what, size, len(p))
		}
		if len(p) == 0 {
			return out
		}
		out = append(out, p...)
		after = p[len(p)-1]
	}
	t.Fatalf("%s: more than 100 pages", what)
	return nil
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: err = %v, want %v", what, err, want)
	}
}

func hasDigest(ds [][32]byte, d apikey.Digest) bool {
	return slices.Contains(ds, d.Sum)
}

// unusable reports whether a Lookup result cannot authorize a request now.
func unusable(k apikey.Key, err error) bool {
	if errors.Is(err, apikey.ErrNotFound) {
		return true
	}
	return err == nil && k.Valid(time.Now()) != nil
}

// ---------------------------------------------------------------- read tests

func (h harness) testGet(t *testing.T) {
	seeds := fixture(t)
	s := h.open(t, seeds)
	for _, sd := range seeds {
		k, err := s.Get(ctx(t), sd.Key.ID)
		if !sd.Key.RevokedAt.IsZero() {
			wantErr(t, "Get(revoked)", err, apikey.ErrNotFound)
			continue
		}
		if err != nil {
			t.Fatalf("Get(%s): %v", sd.Key.ID, err)
		}
		sameKey(t, k, sd.Key)
		if !k.RevokedAt.IsZero() {
			t.Errorf("Get(%s).RevokedAt = %v, want zero", k.ID, k.RevokedAt)
		}
	}
	_, err := s.Get(ctx(t), "key_doesnotexist")
	wantErr(t, "Get(unknown)", err, apikey.ErrNotFound)
}

func (h harness) testList(t *testing.T) {
	seeds := fixture(t)
	s := h.open(t, seeds)
	var want []string
	for _, sd := range seeds {
		if sd.Key.Workspace == "acme" && sd.Key.RevokedAt.IsZero() {
			want = append(want, sd.Key.ID)
		}
	}
	sort.Strings(want)

	all, err := s.List(ctx(t), "acme", "", 100)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if got := ids(all); !slices.Equal(got, want) {
		t.Fatalf("List ids = %v, want %v (live keys of acme, by id)", got, want)
	}
	// Pages of 2 through the cursor give the same sequence.
	pages := paged(t, "List", 2, func(after string) ([]string, error) {
		page, err := s.List(ctx(t), "acme", after, 2)
		return ids(page), err
	})
	if !slices.Equal(pages, want) {
		t.Errorf("paged List ids = %v, want %v", pages, want)
	}
	// The cursor need not be an existing id.
	mid, err := s.List(ctx(t), "acme", want[1]+"!", 100)
	if err != nil {
		t.Fatalf("List(after non-id): %v", err)
	}
	if got := ids(mid); !slices.Equal(got, want[2:]) {
		t.Errorf("List(after %q) = %v, want %v", want[1]+"!", got, want[2:])
	}
	// Workspace isolation.
	other, err := s.List(ctx(t), "globex", "", 100)
	if err != nil {
		t.Fatalf("List(globex): %v", err)
	}
	if len(other) != 1 || other[0].Workspace != "globex" {
		t.Errorf("List(globex) = %v, want its one key", ids(other))
	}
	none, err := s.List(ctx(t), "nobody", "", 100)
	if err != nil || len(none) != 0 {
		t.Errorf("List(nobody) = %v, %v; want empty, nil", ids(none), err)
	}
	// Listed keys carry their fields.
	full := seedByName(t, seeds, "full")
	for _, k := range all {
		if k.ID == full.Key.ID {
			sameKey(t, k, full.Key)
		}
	}
}

func (h harness) testLookup(t *testing.T) {
	seeds := fixture(t)
	s := h.open(t, seeds)
	for _, sd := range seeds {
		k, err := s.Lookup(ctx(t), sd.Digest)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", sd.Key.Name, err)
		}
		sameKey(t, k, sd.Key)
		if k.PepperVersion != sd.Digest.Version {
			t.Errorf("Lookup(%s).PepperVersion = %d, want %d", sd.Key.Name, k.PepperVersion, sd.Digest.Version)
		}
		if sd.Key.RevokedAt.IsZero() {
			if !k.RevokedAt.IsZero() {
				t.Errorf("Lookup(%s).RevokedAt = %v, want zero", sd.Key.Name, k.RevokedAt)
			}
			continue
		}
		if k.RevokedAt.IsZero() || k.RevokedAt.Location() != time.UTC {
			t.Errorf("Lookup(revoked).RevokedAt = %v, want set (UTC)", k.RevokedAt)
		}
		wantErr(t, "Lookup(revoked).Valid", k.Valid(time.Now()), apikey.ErrRevoked)
	}
	_, err := s.Lookup(ctx(t), NewDigest(t, 1))
	wantErr(t, "Lookup(unknown digest)", err, apikey.ErrNotFound)
	// A digest is its sum and its pepper version.
	d := seedByName(t, seeds, "a").Digest
	d.Version++
	_, err = s.Lookup(ctx(t), d)
	wantErr(t, "Lookup(right sum, wrong version)", err, apikey.ErrNotFound)
}

func (h harness) testRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		edit func(k *apikey.Key)
	}{
		{"minimal", func(k *apikey.Key) {}},
		{"expiry", func(k *apikey.Key) { k.ExpiresAt = time.Now().Add(48 * time.Hour) }},
		{"not before", func(k *apikey.Key) { k.NotBefore = time.Now().Add(time.Hour) }},
		{"rate per second", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 10, Per: time.Second} }},
		{"rate odd period", func(k *apikey.Key) { k.RateLimit = apikey.Rate{N: 100, Per: 30 * time.Second} }},
		{"grants", func(k *apikey.Key) { k.Grants = []string{"z-org", "a-org", "m-org"} }},
		{"metadata", func(k *apikey.Key) { k.Metadata = map[string]string{"a": "1", "quote": `"x"`, "unicode": "ü"} }},
		{"non-UTC times", func(k *apikey.Key) {
			loc := time.FixedZone("minus7", -7*3600)
			k.CreatedAt = time.Date(2024, 5, 6, 7, 8, 9, 123_456_789, loc)
			k.ExpiresAt = time.Date(2030, 5, 6, 7, 8, 9, 987_654_321, loc)
		}},
	}
	var seeds []Seed
	for i, c := range cases {
		nk := NewKey(t, "rt", fmt.Sprintf("k%d", i))
		c.edit(&nk.Key)
		seeds = append(seeds, Seed{Key: nk.Key, Digest: nk.Digest})
	}
	s := h.open(t, seeds)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sd := seeds[i]
			g, err := s.Get(ctx(t), sd.Key.ID)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			sameKey(t, g, sd.Key)
			l, err := s.Lookup(ctx(t), sd.Digest)
			if err != nil {
				t.Fatalf("Lookup: %v", err)
			}
			sameKey(t, l, sd.Key)
		})
	}
}

// FarFutureTimes are the dates past 2262-04-11 (where Unix nanoseconds in an
// int64 wrap) up to the last second RFC 3339 can write: the admin API accepts
// them, so every store must keep them exactly and Valid must compare them right.
var FarFutureTimes = map[string]time.Time{
	"2262-04-12":           time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC),
	"2300-01-01":           time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC),
	"9999-12-31T23:59:59Z": time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
}

// testFarFutureTimes stores keys not valid before, or expiring at, each of
// FarFutureTimes and checks Get, List and Lookup give the times back exactly and
// that the keys are valid (expires_at) or not yet valid (not_before) now and on
// either side of the boundary.
func (h harness) testFarFutureTimes(t *testing.T) {
	type tc struct {
		field string
		at    time.Time
		seed  Seed
	}
	var (
		cases []tc
		seeds []Seed
	)
	for name, at := range FarFutureTimes {
		for _, field := range []string{"not_before", "expires_at"} {
			nk := NewKey(t, "far", field+" "+name)
			if field == "not_before" {
				nk.Key.NotBefore = at
			} else {
				nk.Key.ExpiresAt = at
			}
			sd := Seed{Key: nk.Key, Digest: nk.Digest}
			seeds = append(seeds, sd)
			cases = append(cases, tc{field, at, sd})
		}
	}
	s := h.open(t, seeds)
	listed, err := s.List(ctx(t), "far", "", 100)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, c := range cases {
		t.Run(c.seed.Key.Name, func(t *testing.T) {
			g, err := s.Get(ctx(t), c.seed.Key.ID)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			l, err := s.Lookup(ctx(t), c.seed.Digest)
			if err != nil {
				t.Fatalf("Lookup: %v", err)
			}
			i := slices.IndexFunc(listed, func(k apikey.Key) bool { return k.ID == c.seed.Key.ID })
			if i < 0 {
				t.Fatalf("List lacks the key")
			}
			for from, k := range map[string]apikey.Key{"Get": g, "Lookup": l, "List": listed[i]} {
				got, other := k.NotBefore, k.ExpiresAt
				if c.field == "expires_at" {
					got, other = k.ExpiresAt, k.NotBefore
				}
				if !got.Equal(c.at) || got.Location() != time.UTC {
					t.Errorf("%s: %s = %v, want exactly %v (UTC)", from, c.field, got, c.at)
				}
				if !other.IsZero() {
					t.Errorf("%s: the other time = %v, want zero", from, other)
				}
			}
			// Valid on either side of the boundary, and now.
			at := c.at
			var before, after, now error
			if c.field == "not_before" {
				before, after, now = apikey.ErrNotYetValid, nil, apikey.ErrNotYetValid
			} else {
				before, after, now = nil, apikey.ErrExpired, nil
			}
			for when, want := range map[string]struct {
				t   time.Time
				err error
			}{"1ns before": {at.Add(-time.Nanosecond), before}, "at": {at, after}, "now": {time.Now(), now}} {
				if err := l.Valid(want.t); err != want.err {
					t.Errorf("Lookup key Valid(%s %s) = %v, want %v", when, c.field, err, want.err)
				}
			}
		})
	}
}

func (h harness) testChangesConsistent(t *testing.T) {
	s := h.open(t, fixture(t))
	last, err := s.LastSeq(ctx(t))
	if err != nil {
		t.Fatalf("LastSeq: %v", err)
	}
	all, err := s.Changes(ctx(t), 0, 1_000_000)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	if len(all) == 0 {
		if last != 0 {
			t.Errorf("LastSeq = %d with an empty feed, want 0", last)
		}
		return
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq <= all[i-1].Seq {
			t.Errorf("Changes not strictly increasing: %d after %d", all[i].Seq, all[i-1].Seq)
		}
	}
	if got := all[len(all)-1].Seq; got != last {
		t.Errorf("LastSeq = %d, newest change Seq = %d", last, got)
	}
	tail, err := s.Changes(ctx(t), last, 100)
	if err != nil || len(tail) != 0 {
		t.Errorf("Changes(after LastSeq) = %d entries, %v; want none", len(tail), err)
	}
}

func (h harness) testAudit(t *testing.T) {
	s := h.open(t, nil)
	from := time.Now()
	base := time.Date(2025, 1, 2, 3, 4, 5, 6_000_000, time.FixedZone("Y", 3600))
	in := []apikey.Event{
		{At: base, Kind: "denied_after_revoke", Workspace: "w1", KeyID: "key_a", Actor: "check", Detail: "from 10.0.0.1"},
		{At: base.Add(time.Second), Kind: "created", Workspace: "w2", KeyID: "key_b", Actor: "cli"},
		{At: base.Add(2 * time.Second), Kind: "deleted", Workspace: "w1", KeyID: "key_c", Actor: "admin:ops", Detail: "x"},
		{Kind: "deleted", Workspace: "w1", KeyID: "key_d", Actor: "cli"}, // zero At: the store stamps it
	}
	for _, e := range in {
		if err := s.Audit(ctx(t), e); err != nil {
			t.Fatalf("Audit: %v", err)
		}
	}
	to := time.Now()
	got, err := s.Events(ctx(t), "w1", 0, 100)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	want := []apikey.Event{in[0], in[2], in[3]}
	if len(got) != len(want) {
		t.Fatalf("Events(w1) = %d events, want %d: %+v", len(got), len(want), got)
	}
	for i, e := range got {
		w := want[i]
		if e.Kind != w.Kind || e.Workspace != w.Workspace || e.KeyID != w.KeyID || e.Actor != w.Actor || e.Detail != w.Detail {
			t.Errorf("Events(w1)[%d] = %+v, want %+v", i, e, w)
		}
		if i > 0 && e.Seq <= got[i-1].Seq {
			t.Errorf("Events Seq not increasing: %d after %d", e.Seq, got[i-1].Seq)
		}
		if w.At.IsZero() {
			nowish(t, "Event.At (stamped)", e.At, from, to)
		} else {
			sameTime(t, "Event.At", e.At, w.At)
		}
	}
	page, err := s.Events(ctx(t), "w1", got[0].Seq, 1)
	if err != nil {
		t.Fatalf("Events(after): %v", err)
	}
	if len(page) != 1 || page[0].KeyID != "key_c" {
		t.Errorf("Events(w1, after first, limit 1) = %+v, want key_c's event", page)
	}
	w2, err := s.Events(ctx(t), "w2", 0, 100)
	if err != nil || len(w2) != 1 || w2[0].KeyID != "key_b" {
		t.Errorf("Events(w2) = %+v, %v; want key_b's event", w2, err)
	}
	none, err := s.Events(ctx(t), "w3", 0, 100)
	if err != nil || len(none) != 0 {
		t.Errorf("Events(w3) = %+v, %v; want none", none, err)
	}
}

func (h harness) testPingClose(t *testing.T) {
	s := h.open(t, fixture(t))
	if err := s.Ping(ctx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Ping(ctx(t)); err == nil {
		t.Errorf("Ping after Close = nil, want an error")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
}

// ---------------------------------------------------------------- read-only

func testWritesReadOnly(t *testing.T, s apikey.Store, seeds []Seed) {
	a := seeds[1]
	_, err := s.Create(ctx(t), NewKey(t, "acme", "new"))
	wantErr(t, "Create", err, apikey.ErrReadOnly)
	_, err = s.Refresh(ctx(t), a.Key.ID, NewDigest(t, 1), "kz_new1", 0, "t")
	wantErr(t, "Refresh", err, apikey.ErrReadOnly)
	wantErr(t, "Delete", s.Delete(ctx(t), a.Key.ID, "t"), apikey.ErrReadOnly)
	wantErr(t, "Rehash", s.Rehash(ctx(t), a.Digest, NewDigest(t, 2)), apikey.ErrReadOnly)
	if err := s.Touch(ctx(t), map[string]time.Time{a.Key.ID: time.Now()}); err != nil && !errors.Is(err, apikey.ErrReadOnly) {
		t.Errorf("Touch: %v, want nil or ErrReadOnly", err)
	}
	name, on := "renamed", true
	_, err = s.Update(ctx(t), a.Key.ID, apikey.KeyPatch{Name: &name, Disabled: &on}, "t")
	wantErr(t, "Update", err, apikey.ErrReadOnly)
	_, _, err = s.PutWorkspace(ctx(t), apikey.Workspace{ID: "acme", MaxKeys: 3}, "t")
	wantErr(t, "PutWorkspace", err, apikey.ErrReadOnly)
	_, err = s.PatchWorkspace(ctx(t), "acme", apikey.WorkspacePatch{Disabled: &on}, "t")
	wantErr(t, "PatchWorkspace", err, apikey.ErrReadOnly)
	hour := time.Now().UTC().Truncate(time.Hour)
	if err := s.AddUsage(ctx(t), []apikey.Usage{{KeyID: a.Key.ID, Hour: hour, Counts: [apikey.NumOutcomes]int64{1}}}); err != nil && !errors.Is(err, apikey.ErrReadOnly) {
		t.Errorf("AddUsage: %v, want nil or ErrReadOnly", err)
	}
	// Nothing changed.
	k, err := s.Get(ctx(t), a.Key.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	sameKey(t, k, a.Key)
	if _, err := s.GetWorkspace(ctx(t), "acme"); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("GetWorkspace after PutWorkspace: %v, want ErrNotFound", err)
	}
}

// ---------------------------------------------------------------- write tests

func testCreateRoundTrip(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.ExpiresAt = time.Now().Add(24 * time.Hour)
	nk.Key.NotBefore = time.Now().Add(-time.Minute)
	nk.Key.RateLimit = apikey.Rate{N: 600, Per: time.Minute}
	nk.Key.Grants = []string{"org1"}
	nk.Key.Metadata = map[string]string{"team": "x"}
	k := mustCreate(t, s, nk)
	sameKey(t, k, nk.Key)
	if !k.RevokedAt.IsZero() || !k.LastUsedAt.IsZero() {
		t.Errorf("created key RevokedAt=%v LastUsedAt=%v, want zero", k.RevokedAt, k.LastUsedAt)
	}
	g, err := s.Get(ctx(t), nk.Key.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	sameKey(t, g, nk.Key)
	if err := g.Valid(time.Now()); err != nil {
		t.Errorf("created key Valid = %v", err)
	}
}

func testCreateNormalizesTimes(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.CreatedAt = time.Time{}
	from := time.Now()
	k := mustCreate(t, s, nk)
	nowish(t, "CreatedAt (zero given)", k.CreatedAt, from, time.Now())
	g, err := s.Get(ctx(t), nk.Key.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	sameTime(t, "Get.CreatedAt", g.CreatedAt, k.CreatedAt)
}

func testListAfterDelete(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	mustDelete(t, s, a.ID)
	got, err := s.List(ctx(t), "acme", "", 10)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !slices.Equal(ids(got), []string{b.ID}) {
		t.Errorf("List after Delete = %v, want [%s]", ids(got), b.ID)
	}
}

func testLookupDeleted(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	from := time.Now()
	mustDelete(t, s, nk.Key.ID)
	to := time.Now()
	k, err := s.Lookup(ctx(t), nk.Digest)
	if err != nil {
		t.Fatalf("Lookup(deleted key's digest): %v, want the key with RevokedAt set", err)
	}
	if k.ID != nk.Key.ID {
		t.Errorf("Lookup(deleted).ID = %s, want %s", k.ID, nk.Key.ID)
	}
	nowish(t, "RevokedAt", k.RevokedAt, from, to)
	wantErr(t, "Lookup(deleted).Valid", k.Valid(time.Now()), apikey.ErrRevoked)
}

func testLimit(t *testing.T, s apikey.Store) {
	withMax := func(ws, name string, max int) apikey.NewKey {
		nk := NewKey(t, ws, name)
		nk.Max = max
		return nk
	}
	first := mustCreate(t, s, withMax("acme", "k1", 2))
	mustCreate(t, s, withMax("acme", "k2", 2))
	_, err := s.Create(ctx(t), withMax("acme", "k3", 2))
	wantErr(t, "third Create with Max 2", err, apikey.ErrLimit)
	mustCreate(t, s, withMax("globex", "k3", 2)) // another workspace is not affected
	mustDelete(t, s, first.ID)
	mustCreate(t, s, withMax("acme", "k3", 2)) // deleting frees a slot
	_, err = s.Create(ctx(t), withMax("acme", "k4", 2))
	wantErr(t, "Create over Max after reuse", err, apikey.ErrLimit)
	for i := range 3 { // Max 0: unbounded
		mustCreate(t, s, withMax("free", fmt.Sprintf("k%d", i), 0))
	}
	got, err := s.List(ctx(t), "acme", "", 100)
	if err != nil || len(got) != 2 {
		t.Errorf("List(acme) = %d keys, %v; want 2", len(got), err)
	}
}

func testNameTaken(t *testing.T, s apikey.Store) {
	k := mustCreate(t, s, NewKey(t, "acme", "ci"))
	_, err := s.Create(ctx(t), NewKey(t, "acme", "ci"))
	wantErr(t, "Create(same name)", err, apikey.ErrNameTaken)
	mustCreate(t, s, NewKey(t, "globex", "ci")) // same name, other workspace
	mustDelete(t, s, k.ID)
	mustCreate(t, s, NewKey(t, "acme", "ci")) // a deleted key's name can be reused
	_, err = s.Create(ctx(t), NewKey(t, "acme", "ci"))
	wantErr(t, "Create(same name again)", err, apikey.ErrNameTaken)
}

func testConcurrentCreate(t *testing.T, s apikey.Store) {
	const n, max = 20, 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		nk := NewKey(t, "acme", fmt.Sprintf("k%02d", i))
		nk.Max = max
		wg.Go(func() { _, errs[i] = s.Create(ctx(t), nk) })
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, apikey.ErrLimit):
			t.Errorf("Create #%d: %v, want nil or ErrLimit", i, err)
		}
	}
	if ok != max {
		t.Errorf("%d creates succeeded, want exactly %d", ok, max)
	}
	got, err := s.List(ctx(t), "acme", "", 100)
	if err != nil || len(got) != max {
		t.Errorf("List = %d keys, %v; want %d", len(got), err, max)
	}
}

func testRefreshNoGrace(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.Grants = []string{"org1"}
	mustCreate(t, s, nk)
	nd := NewDigest(t, 1)
	k, err := s.Refresh(ctx(t), nk.Key.ID, nd, "kz_new1", 0, "t")
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	want := nk.Key
	want.Display = "kz_new1" // Refresh replaces the display form, nothing else
	sameKey(t, k, want)
	if old, err := s.Lookup(ctx(t), nk.Digest); !unusable(old, err) {
		t.Errorf("Lookup(old digest) after Refresh(grace 0) = %+v, %v; want ErrNotFound or an invalid key", old, err)
	}
	got, err := s.Lookup(ctx(t), nd)
	if err != nil {
		t.Fatalf("Lookup(new digest): %v", err)
	}
	sameKey(t, got, want)
	if err := got.Valid(time.Now()); err != nil {
		t.Errorf("new digest's key Valid = %v", err)
	}
	g, err := s.Get(ctx(t), nk.Key.ID)
	if err != nil {
		t.Fatalf("Get after Refresh: %v", err)
	}
	sameKey(t, g, want)

	_, err = s.Refresh(ctx(t), "key_doesnotexist", NewDigest(t, 1), "kz_new1", 0, "t")
	wantErr(t, "Refresh(unknown)", err, apikey.ErrNotFound)
	mustDelete(t, s, nk.Key.ID)
	_, err = s.Refresh(ctx(t), nk.Key.ID, NewDigest(t, 1), "kz_new1", 0, "t")
	wantErr(t, "Refresh(deleted)", err, apikey.ErrNotFound)
}

func testRefreshGrace(t *testing.T, s apikey.Store) {
	const grace = time.Hour
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	nd := NewDigest(t, 1)
	from := time.Now()
	mustRefresh(t, s, nk.Key.ID, nd, grace)
	to := time.Now()
	old, err := s.Lookup(ctx(t), nk.Digest)
	if err != nil {
		t.Fatalf("Lookup(old digest) in grace: %v", err)
	}
	nowish(t, "old digest ExpiresAt", old.ExpiresAt, from.Add(grace), to.Add(grace))
	if err := old.Valid(time.Now()); err != nil {
		t.Errorf("old digest in grace Valid = %v, want nil", err)
	}
	if err := old.Valid(old.ExpiresAt.Add(-time.Millisecond)); err != nil {
		t.Errorf("old digest just before grace end Valid = %v, want nil", err)
	}
	wantErr(t, "old digest at grace end Valid", old.Valid(old.ExpiresAt), apikey.ErrExpired)
	cur, err := s.Lookup(ctx(t), nd)
	if err != nil {
		t.Fatalf("Lookup(new digest): %v", err)
	}
	if !cur.ExpiresAt.IsZero() {
		t.Errorf("new digest ExpiresAt = %v, want zero (key never expires)", cur.ExpiresAt)
	}
	g, err := s.Get(ctx(t), nk.Key.ID)
	if err != nil || !g.ExpiresAt.IsZero() {
		t.Errorf("Get after grace Refresh: ExpiresAt %v, %v; want zero (grace is per digest)", g.ExpiresAt, err)
	}
	// A second refresh without grace ends the first grace at once.
	if _, err := s.Refresh(ctx(t), nk.Key.ID, NewDigest(t, 1), "kz_new1", 0, "t"); err != nil {
		t.Fatalf("second Refresh: %v", err)
	}
	for _, d := range []apikey.Digest{nk.Digest, nd} {
		if k, err := s.Lookup(ctx(t), d); !unusable(k, err) {
			t.Errorf("Lookup(earlier digest) after Refresh(grace 0) = %+v, %v; want unusable", k, err)
		}
	}
}

func testRefreshGraceCapped(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.ExpiresAt = time.Now().Add(10 * time.Minute)
	mustCreate(t, s, nk)
	mustRefresh(t, s, nk.Key.ID, NewDigest(t, 1), 24*time.Hour)
	old, err := s.Lookup(ctx(t), nk.Digest)
	if err != nil {
		t.Fatalf("Lookup(old digest): %v", err)
	}
	sameTime(t, "old digest ExpiresAt (key expires before grace)", old.ExpiresAt, nk.Key.ExpiresAt)
}

func testDelete(t *testing.T, s apikey.Store) {
	wantErr(t, "Delete(unknown)", s.Delete(ctx(t), "key_doesnotexist", "t"), apikey.ErrNotFound)
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	nd := NewDigest(t, 1)
	mustRefresh(t, s, nk.Key.ID, nd, time.Hour)
	mustDelete(t, s, nk.Key.ID)
	_, err := s.Get(ctx(t), nk.Key.ID)
	wantErr(t, "Get(deleted)", err, apikey.ErrNotFound)
	for name, d := range map[string]apikey.Digest{"grace digest": nk.Digest, "current digest": nd} {
		k, err := s.Lookup(ctx(t), d)
		if !unusable(k, err) {
			t.Errorf("Lookup(%s) after Delete = %+v, %v; want unusable", name, k, err)
		}
	}
	wantErr(t, "second Delete", s.Delete(ctx(t), nk.Key.ID, "t"), apikey.ErrNotFound)
}

func testRehash(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	start, err := s.LastSeq(ctx(t))
	if err != nil {
		t.Fatalf("LastSeq: %v", err)
	}
	v2 := NewDigest(t, 2)
	if err := s.Rehash(ctx(t), nk.Digest, v2); err != nil {
		t.Fatalf("Rehash: %v", err)
	}
	// Every replica must drop both digests: the old one's positive entries, and
	// the new one's negative entries (a Check that missed under the new pepper
	// before the move), else the key is denied until the negative TTL ends.
	chs, err := s.Changes(ctx(t), start, 100)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	if len(chs) != 1 || chs[0].Kind != apikey.Rehashed || chs[0].KeyID != nk.Key.ID {
		t.Fatalf("Changes after Rehash = %+v, want one Rehashed entry for %s", chs, nk.Key.ID)
	}
	if !hasDigest(chs[0].Digests, nk.Digest) || !hasDigest(chs[0].Digests, v2) {
		t.Errorf("Rehashed change digests = %x, want the old and the new digest", chs[0].Digests)
	}
	k, err := s.Lookup(ctx(t), v2)
	if err != nil {
		t.Fatalf("Lookup(new version): %v", err)
	}
	if k.ID != nk.Key.ID || k.PepperVersion != 2 {
		t.Errorf("Lookup(new version) = %s v%d, want %s v2", k.ID, k.PepperVersion, nk.Key.ID)
	}
	_, err = s.Lookup(ctx(t), nk.Digest)
	wantErr(t, "Lookup(old version) after Rehash", err, apikey.ErrNotFound)
	wantErr(t, "Rehash(unknown)", s.Rehash(ctx(t), NewDigest(t, 1), NewDigest(t, 2)), apikey.ErrNotFound)

	// Rehashing a grace digest keeps its grace end.
	nd := NewDigest(t, 2)
	mustRefresh(t, s, nk.Key.ID, nd, time.Hour)
	before, err := s.Lookup(ctx(t), v2)
	if err != nil {
		t.Fatalf("Lookup(grace digest): %v", err)
	}
	v3 := NewDigest(t, 3)
	if err := s.Rehash(ctx(t), v2, v3); err != nil {
		t.Fatalf("Rehash(grace digest): %v", err)
	}
	after, err := s.Lookup(ctx(t), v3)
	if err != nil {
		t.Fatalf("Lookup(rehashed grace digest): %v", err)
	}
	sameTime(t, "rehashed grace digest ExpiresAt", after.ExpiresAt, before.ExpiresAt)
}

func testChanges(t *testing.T, s apikey.Store) {
	start, err := s.LastSeq(ctx(t))
	if err != nil {
		t.Fatalf("LastSeq: %v", err)
	}
	nk := NewKey(t, "acme", "ci")
	from := time.Now()
	mustCreate(t, s, nk)
	nd := NewDigest(t, 1)
	mustRefresh(t, s, nk.Key.ID, nd, time.Hour)
	mustDelete(t, s, nk.Key.ID)
	to := time.Now()
	all, err := s.Changes(ctx(t), start, 100)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	var created, refreshed, deleted *apikey.Change
	for i := range all {
		c := &all[i]
		if i > 0 && c.Seq <= all[i-1].Seq {
			t.Errorf("Seq not strictly increasing: %d after %d", c.Seq, all[i-1].Seq)
		}
		if c.Seq <= start {
			t.Errorf("Changes(after %d) returned Seq %d", start, c.Seq)
		}
		if c.KeyID != nk.Key.ID {
			continue
		}
		nowish(t, "Change.At", c.At, from, to)
		switch c.Kind {
		case apikey.Created:
			created = c
		case apikey.Refreshed:
			refreshed = c
		case apikey.Deleted:
			deleted = c
		}
	}
	if created == nil || refreshed == nil || deleted == nil {
		t.Fatalf("Changes = %+v, want created, refreshed and deleted entries for %s", all, nk.Key.ID)
	}
	if !(created.Seq < refreshed.Seq && refreshed.Seq < deleted.Seq) {
		t.Errorf("change order = %d, %d, %d; want created < refreshed < deleted", created.Seq, refreshed.Seq, deleted.Seq)
	}
	if !hasDigest(created.Digests, nk.Digest) {
		t.Errorf("Created change digests lack the new digest (negative cache entries must go)")
	}
	if !hasDigest(refreshed.Digests, nk.Digest) || hasDigest(refreshed.Digests, nd) {
		t.Errorf("Refreshed change digests = %x, want the old digest and not the new one", refreshed.Digests)
	}
	if !hasDigest(deleted.Digests, nk.Digest) || !hasDigest(deleted.Digests, nd) {
		t.Errorf("Deleted change digests = %x, want every digest of the key (grace and current)", deleted.Digests)
	}
	last, err := s.LastSeq(ctx(t))
	if err != nil || last != all[len(all)-1].Seq {
		t.Errorf("LastSeq = %d, %v; want %d", last, err, all[len(all)-1].Seq)
	}
	one, err := s.Changes(ctx(t), start, 1)
	if err != nil || len(one) != 1 || one[0].Seq != all[0].Seq {
		t.Errorf("Changes(limit 1) = %+v, %v; want the first entry", one, err)
	}
	rest, err := s.Changes(ctx(t), created.Seq, 100)
	if err != nil || len(rest) == 0 || rest[0].Seq <= created.Seq {
		t.Errorf("Changes(after created) = %+v, %v; want only later entries", rest, err)
	}
	if none, err := s.Changes(ctx(t), last, 100); err != nil || len(none) != 0 {
		t.Errorf("Changes(after LastSeq) = %+v, %v; want none", none, err)
	}
}

func testTouch(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	at := time.Now().Add(-time.Minute).Round(0)
	if err := s.Touch(ctx(t), map[string]time.Time{a.ID: at, "key_doesnotexist": at}); err != nil {
		t.Fatalf("Touch (with an unknown id among them): %v", err)
	}
	g, err := s.Get(ctx(t), a.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	sameTime(t, "Get.LastUsedAt", g.LastUsedAt, at)
	l, err := s.List(ctx(t), "acme", "", 10)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, k := range l {
		switch k.ID {
		case a.ID:
			sameTime(t, "List.LastUsedAt", k.LastUsedAt, at)
		case b.ID:
			if !k.LastUsedAt.IsZero() {
				t.Errorf("untouched key LastUsedAt = %v, want zero", k.LastUsedAt)
			}
		}
	}
	if err := s.Touch(ctx(t), nil); err != nil {
		t.Errorf("Touch(nil): %v", err)
	}
}

func testLifecycleAudit(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Actor = "admin:ops"
	from := time.Now()
	mustCreate(t, s, nk)
	if _, err := s.Refresh(ctx(t), nk.Key.ID, NewDigest(t, 1), "kz_new1", 0, "cli"); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if err := s.Delete(ctx(t), nk.Key.ID, "admin:root"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	to := time.Now()
	got, err := s.Events(ctx(t), "acme", 0, 100)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	want := []struct{ kind, actor string }{{"created", "admin:ops"}, {"refreshed", "cli"}, {"deleted", "admin:root"}}
	if len(got) != len(want) {
		t.Fatalf("Events = %+v, want %d lifecycle events", got, len(want))
	}
	for i, e := range got {
		if e.Kind != want[i].kind || e.Actor != want[i].actor || e.KeyID != nk.Key.ID || e.Workspace != "acme" {
			t.Errorf("event %d = %+v, want kind %s actor %s for %s", i, e, want[i].kind, want[i].actor, nk.Key.ID)
		}
		nowish(t, "Event.At", e.At, from, to)
	}
}

// testKeysByPepper counts the fixture: live keys under versions 1 and 2, the
// revoked key not at all.
func (h harness) testKeysByPepper(t *testing.T) {
	seeds := fixture(t)
	s := h.open(t, seeds)
	want := map[int]int{}
	for _, sd := range seeds {
		if sd.Key.RevokedAt.IsZero() {
			want[sd.Digest.Version]++
		}
	}
	if got := keysByPepper(t, s); !maps.Equal(got, want) {
		t.Fatalf("KeysByPepper = %v, want %v", got, want)
	}
}

// testKeysByPepperAfterWrites follows the counts through delete, refresh
// with and without grace, and rehash.
func testKeysByPepperAfterWrites(t *testing.T, s apikey.Store) {
	if got := keysByPepper(t, s); len(got) != 0 {
		t.Fatalf("KeysByPepper on an empty store = %v, want none", got)
	}
	a, b, c := NewKey(t, "acme", "a"), NewKey(t, "acme", "b"), NewKey(t, "acme", "c")
	for _, nk := range []apikey.NewKey{a, b, c} {
		mustCreate(t, s, nk)
	}
	check := func(what string, want map[int]int) {
		t.Helper()
		if got := keysByPepper(t, s); !maps.Equal(got, want) {
			t.Fatalf("KeysByPepper after %s = %v, want %v", what, got, want)
		}
	}
	check("3 creates", map[int]int{1: 3})
	mustDelete(t, s, c.Key.ID)
	check("a delete", map[int]int{1: 2})
	mustRefresh(t, s, a.Key.ID, NewDigest(t, 2), 0)
	check("a refresh to version 2", map[int]int{1: 1, 2: 1})
	mustRefresh(t, s, b.Key.ID, NewDigest(t, 2), time.Hour)
	check("a refresh to version 2 with grace", map[int]int{1: 1, 2: 2})
	e := NewKey(t, "acme", "e")
	mustCreate(t, s, e)
	if err := s.Rehash(ctx(t), e.Digest, NewDigest(t, 3)); err != nil {
		t.Fatalf("Rehash: %v", err)
	}
	check("a rehash to version 3", map[int]int{1: 1, 2: 2, 3: 1})
}
