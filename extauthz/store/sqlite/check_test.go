package sqlite

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

// checkPart is what CheckReader promises of a Key.
func checkPart(k apikey.Key) apikey.Key {
	return apikey.Key{ID: k.ID, Workspace: k.Workspace, ExpiresAt: k.ExpiresAt, NotBefore: k.NotBefore,
		RevokedAt: k.RevokedAt, RateLimit: k.RateLimit, Grants: k.Grants, PepperVersion: k.PepperVersion,
		Metadata: k.Metadata, Disabled: k.Disabled, Space: k.Space}
}

func sameCheckPart(t *testing.T, what string, got, want apikey.Key) {
	t.Helper()
	g, w := checkPart(got), checkPart(want)
	if g.ID != w.ID || g.Workspace != w.Workspace || !g.ExpiresAt.Equal(w.ExpiresAt) || !g.NotBefore.Equal(w.NotBefore) ||
		!g.RevokedAt.Equal(w.RevokedAt) || g.RateLimit != w.RateLimit || !slices.Equal(g.Grants, w.Grants) ||
		g.PepperVersion != w.PepperVersion || !maps.Equal(g.Metadata, w.Metadata) || g.Disabled != w.Disabled ||
		g.Space.RateLimit != w.Space.RateLimit || !slices.Equal(g.Space.Grants, w.Space.Grants) || g.Space.Disabled != w.Space.Disabled {
		t.Errorf("%s: CheckReader = %+v, want %+v", what, g, w)
	}
	if !g.ExpiresAt.IsZero() && g.ExpiresAt.Location() != time.UTC {
		t.Errorf("%s: ExpiresAt %v not UTC", what, g.ExpiresAt)
	}
}

// CheckReader answers what Lookup answers for every field the Check path reads:
// plain, fully populated, revoked and grace-period keys, unknown digests.
func TestCheckReaderAgreesWithLookup(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "keys.db"))
	defer s.Close()
	ctx := context.Background()
	create := func(name string, edit func(k *apikey.Key)) apikey.NewKey {
		nk := storetest.NewKey(t, "acme", name)
		edit(&nk.Key)
		if _, err := s.Create(ctx, nk); err != nil {
			t.Fatalf("Create(%s): %v", name, err)
		}
		return nk
	}
	now := time.Now()
	plain := create("plain", func(*apikey.Key) {})
	full := create("full", func(k *apikey.Key) {
		k.ExpiresAt, k.NotBefore = now.Add(48*time.Hour), now.Add(-time.Hour)
		k.RateLimit = apikey.Rate{N: 100, Per: 30 * time.Second}
		k.Grants = []string{"org-b", "org-a"}
		k.Metadata = map[string]string{"team": "x"}
	})
	revoked := create("revoked", func(*apikey.Key) {})
	if err := s.Delete(ctx, revoked.Key.ID, "tester"); err != nil {
		t.Fatal(err)
	}
	// Grace digests: the old digest's expiry is the grace end, or the key's own
	// expiry when that comes first.
	graceNear := create("grace-near", func(k *apikey.Key) { k.ExpiresAt = now.Add(30 * 24 * time.Hour) })
	graceFar := create("grace-far", func(k *apikey.Key) { k.ExpiresAt = now.Add(time.Minute) })
	for _, nk := range []apikey.NewKey{graceNear, graceFar} {
		if _, err := s.Refresh(ctx, nk.Key.ID, storetest.NewDigest(t, 2), "kz_new", time.Hour, "tester"); err != nil {
			t.Fatal(err)
		}
	}

	// Past 2262-04-11, where Unix nanoseconds wrap, up to the end of 9999.
	var far []apikey.NewKey
	for name, at := range storetest.FarFutureTimes {
		far = append(far,
			create("not-before-"+name, func(k *apikey.Key) { k.NotBefore = at }),
			create("expires-"+name, func(k *apikey.Key) { k.ExpiresAt = at }))
	}

	// A disabled key, the workspace's record, and a key of a workspace without one.
	disabled := create("disabled", func(*apikey.Key) {})
	on := true
	if _, err := s.Update(ctx, disabled.Key.ID, apikey.KeyPatch{Disabled: &on}, "tester"); err != nil {
		t.Fatal(err)
	}
	space := apikey.Workspace{ID: "acme", RateLimit: apikey.Rate{N: 60, Per: time.Minute}, Grants: []string{"org1", "org2/web"}, Disabled: true}
	if _, _, err := s.PutWorkspace(ctx, space, "tester"); err != nil {
		t.Fatal(err)
	}
	bare := storetest.NewKey(t, "bare", "k")
	if _, err := s.Create(ctx, bare); err != nil {
		t.Fatal(err)
	}

	r := s.CheckReader()
	if got, err := r.Lookup(ctx, disabled.Digest); err != nil || !got.Disabled || !got.Space.Disabled ||
		got.Space.RateLimit != space.RateLimit || !slices.Equal(got.Space.Grants, space.Grants) {
		t.Errorf("CheckReader(disabled key of a recorded workspace) = %+v, %v; want Disabled and the record's Space", got, err)
	}
	if got, err := r.Lookup(ctx, full.Digest); err != nil || got.Metadata["team"] != "x" {
		t.Errorf("CheckReader(full).Metadata = %v, %v; want team=x", got.Metadata, err)
	}
	for _, nk := range append([]apikey.NewKey{plain, full, revoked, graceNear, graceFar, disabled, bare}, far...) {
		want, err := s.Lookup(ctx, nk.Digest)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", nk.Key.Name, err)
		}
		got, err := r.Lookup(ctx, nk.Digest)
		if err != nil {
			t.Fatalf("CheckReader Lookup(%s): %v", nk.Key.Name, err)
		}
		sameCheckPart(t, nk.Key.Name, got, want)
	}
	got, _ := r.Lookup(ctx, graceNear.Digest)
	if d := time.Until(got.ExpiresAt); d <= 0 || d > time.Hour {
		t.Errorf("grace digest expires in %v, want the grace end (within the hour)", d)
	}
	if got, _ := r.Lookup(ctx, revoked.Digest); got.RevokedAt.IsZero() {
		t.Error("revoked key read without RevokedAt")
	}
	if _, err := r.Lookup(ctx, storetest.NewDigest(t, 1)); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("unknown digest: %v, want ErrNotFound", err)
	}
	d := plain.Digest
	d.Version++
	if _, err := r.Lookup(ctx, d); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("right sum, wrong version: %v, want ErrNotFound", err)
	}
}

// More concurrent reads than connections wait their turn; a canceled wait
// returns; after Close reads fail instead of hanging.
func TestCheckReaderConcurrencyAndClose(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "keys.db"))
	defer s.Close() // also on failure; closing twice is fine
	ctx := context.Background()
	nk := storetest.NewKey(t, "acme", "k")
	if _, err := s.Create(ctx, nk); err != nil {
		t.Fatal(err)
	}
	r := s.CheckReader()
	var g errgroup.Group
	for range 8 * checkConns {
		g.Go(func() error {
			for range 20 {
				k, err := r.Lookup(ctx, nk.Digest)
				if err == nil && k.ID != nk.Key.ID {
					err = errors.New("wrong key " + k.ID)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}

	// Every connection busy: a caller whose context ends stops waiting.
	var held []*checkConn
	for range checkConns {
		held = append(held, <-s.checks)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := r.Lookup(cctx, nk.Digest); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("lookup with every connection busy: %v, want DeadlineExceeded", err)
	}
	for _, c := range held {
		s.checks <- c
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup(ctx, nk.Digest); err == nil || errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("lookup after Close: %v, want an error", err)
	}
}
