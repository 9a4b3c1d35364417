package storetest

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// runRound4 runs the writable-store tests of key updates, workspace records,
// usage counts and unused keys.
func runRound4(t *testing.T, fresh func(t *testing.T) apikey.Store) {
	t.Run("UpdateFields", func(t *testing.T) { testUpdateFields(t, fresh(t)) })
	t.Run("UpdateNotFound", func(t *testing.T) { testUpdateNotFound(t, fresh(t)) })
	t.Run("UpdateNameTaken", func(t *testing.T) { testUpdateNameTaken(t, fresh(t)) })
	t.Run("UpdateChange", func(t *testing.T) { testUpdateChange(t, fresh(t)) })
	t.Run("UpdateAudit", func(t *testing.T) { testUpdateAudit(t, fresh(t)) })
	t.Run("UpdateDisabled", func(t *testing.T) { testUpdateDisabled(t, fresh(t)) })
	t.Run("UpdateFarFutureExpiry", func(t *testing.T) { testUpdateFarFutureExpiry(t, fresh(t)) })
	t.Run("PutWorkspace", func(t *testing.T) { testPutWorkspace(t, fresh(t)) })
	t.Run("PatchWorkspace", func(t *testing.T) { testPatchWorkspace(t, fresh(t)) })
	t.Run("ListWorkspaces", func(t *testing.T) { testListWorkspaces(t, fresh(t)) })
	t.Run("WorkspaceChanges", func(t *testing.T) { testWorkspaceChanges(t, fresh(t)) })
	t.Run("WorkspaceAudit", func(t *testing.T) { testWorkspaceAudit(t, fresh(t)) })
	t.Run("WorkspacePolicy", func(t *testing.T) { testWorkspacePolicy(t, fresh(t)) })
	t.Run("WorkspaceMaxKeys", func(t *testing.T) { testWorkspaceMaxKeys(t, fresh(t)) })
	t.Run("AddUsage", func(t *testing.T) { testAddUsage(t, fresh(t)) })
	t.Run("UsageTotals", func(t *testing.T) { testUsageTotals(t, fresh(t)) })
	t.Run("PruneUsage", func(t *testing.T) { testPruneUsage(t, fresh(t)) })
	t.Run("UsageManyRows", func(t *testing.T) { testUsageManyRows(t, fresh(t)) })
	t.Run("TouchManyKeys", func(t *testing.T) { testTouchManyKeys(t, fresh(t)) })
	t.Run("ListUnusedTouched", func(t *testing.T) { testListUnusedTouched(t, fresh(t)) })
}

// KeyFields are the names an "updated" audit event's Detail lists (comma
// separated) for the fields a KeyPatch sets.
var KeyFields = []string{"name", "rate_limit", "expires_at", "grants", "metadata", "disabled"}

// detailFields splits an audit Detail into its sorted field names.
func detailFields(d string) []string {
	var out []string
	for f := range strings.SplitSeq(d, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

func mustUpdate(t *testing.T, s apikey.Store, id string, p apikey.KeyPatch) apikey.Key {
	t.Helper()
	k, err := s.Update(ctx(t), id, p, "tester")
	if err != nil {
		t.Fatalf("Update(%s): %v", id, err)
	}
	return k
}

// updated checks that Update returned want and that Get and Lookup (through d) agree.
func updated(t *testing.T, s apikey.Store, what string, got, want apikey.Key, d apikey.Digest) {
	t.Helper()
	t.Run(what, func(t *testing.T) {
		sameKey(t, got, want)
		g, err := s.Get(ctx(t), want.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		sameKey(t, g, want)
		l, err := s.Lookup(ctx(t), d)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		sameKey(t, l, want)
	})
}

func testUpdateFields(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.ExpiresAt = time.Now().Add(24 * time.Hour)
	nk.Key.NotBefore = time.Now().Add(-time.Minute)
	nk.Key.RateLimit = apikey.Rate{N: 600, Per: time.Minute}
	nk.Key.Grants = []string{"org1"}
	nk.Key.Metadata = map[string]string{"team": "x"}
	mustCreate(t, s, nk)
	want := nk.Key

	k := mustUpdate(t, s, want.ID, apikey.KeyPatch{})
	updated(t, s, "empty patch", k, want, nk.Digest)

	name := "deploy"
	want.Name = name
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{Name: &name})
	updated(t, s, "name", k, want, nk.Digest)

	rate := apikey.Rate{N: 10, Per: 30 * time.Second}
	want.RateLimit = rate
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{RateLimit: &rate})
	updated(t, s, "rate_limit", k, want, nk.Digest)

	exp := time.Now().Add(72 * time.Hour).In(time.FixedZone("Z", -3600)).Round(0)
	want.ExpiresAt = exp
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{ExpiresAt: &exp})
	updated(t, s, "expires_at", k, want, nk.Digest)

	grants := []string{"org2", "org3/web"}
	want.Grants = grants
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{Grants: &grants})
	updated(t, s, "grants", k, want, nk.Digest)

	meta := map[string]string{"env": "prod", "quote": `"q"`}
	want.Metadata = meta
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{Metadata: &meta})
	updated(t, s, "metadata", k, want, nk.Digest)

	on := true
	want.Disabled = true
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{Disabled: &on})
	updated(t, s, "disabled", k, want, nk.Digest)

	// Back to the defaults: inherit the rate, never expire, no grants or metadata, enabled.
	var (
		noRate  apikey.Rate
		never   time.Time
		noGrant []string
		noMeta  map[string]string
		off     bool
	)
	want.RateLimit, want.ExpiresAt, want.Grants, want.Metadata, want.Disabled = noRate, never, nil, nil, false
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{RateLimit: &noRate, ExpiresAt: &never, Grants: &noGrant, Metadata: &noMeta, Disabled: &off})
	updated(t, s, "cleared", k, want, nk.Digest)

	// Several at once; untouched fields stay (NotBefore, CreatedAt, Display, Workspace).
	name2, rate2 := "both", apikey.Rate{N: 5, Per: time.Second}
	want.Name, want.RateLimit = name2, rate2
	k = mustUpdate(t, s, want.ID, apikey.KeyPatch{Name: &name2, RateLimit: &rate2})
	updated(t, s, "name and rate_limit", k, want, nk.Digest)
	if !k.RevokedAt.IsZero() {
		t.Errorf("updated key RevokedAt = %v, want zero", k.RevokedAt)
	}
}

func testUpdateNotFound(t *testing.T, s apikey.Store) {
	on := true
	_, err := s.Update(ctx(t), "key_doesnotexist", apikey.KeyPatch{Disabled: &on}, "t")
	wantErr(t, "Update(unknown)", err, apikey.ErrNotFound)
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	mustDelete(t, s, nk.Key.ID)
	name := "x"
	_, err = s.Update(ctx(t), nk.Key.ID, apikey.KeyPatch{Name: &name}, "t")
	wantErr(t, "Update(revoked)", err, apikey.ErrNotFound)
	_, err = s.Update(ctx(t), nk.Key.ID, apikey.KeyPatch{}, "t")
	wantErr(t, "Update(revoked, empty patch)", err, apikey.ErrNotFound)
	// The revoked key stays revoked and keeps its name.
	k, err := s.Lookup(ctx(t), nk.Digest)
	if err != nil {
		t.Fatalf("Lookup(revoked): %v", err)
	}
	if k.RevokedAt.IsZero() || k.Name != "ci" {
		t.Errorf("revoked key after Update = name %q revoked %v; want ci, revoked", k.Name, k.RevokedAt)
	}
}

func testUpdateNameTaken(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	mustCreate(t, s, NewKey(t, "globex", "c"))
	gone := mustCreate(t, s, NewKey(t, "acme", "gone"))
	mustDelete(t, s, gone.ID)

	name := "a"
	_, err := s.Update(ctx(t), b.ID, apikey.KeyPatch{Name: &name}, "t")
	wantErr(t, "Update(b, name of live a)", err, apikey.ErrNameTaken)
	if g, err := s.Get(ctx(t), b.ID); err != nil || g.Name != "b" {
		t.Errorf("Get(b) after refused rename = %q, %v; want b", g.Name, err)
	}
	mustUpdate(t, s, a.ID, apikey.KeyPatch{Name: &name}) // its own name
	for _, n := range []string{"c", "gone"} {            // another workspace's, a revoked key's
		k := mustUpdate(t, s, b.ID, apikey.KeyPatch{Name: &n})
		if k.Name != n {
			t.Errorf("Update(b, name %s) = %q", n, k.Name)
		}
	}
	// The renamed key's old name is free again.
	old := "a"
	other := "a2"
	mustUpdate(t, s, a.ID, apikey.KeyPatch{Name: &other})
	mustUpdate(t, s, b.ID, apikey.KeyPatch{Name: &old})
	_, err = s.Create(ctx(t), NewKey(t, "acme", "a"))
	wantErr(t, "Create(name taken by an update)", err, apikey.ErrNameTaken)
}

func testUpdateChange(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	nd := NewDigest(t, 1)
	mustRefresh(t, s, nk.Key.ID, nd, time.Hour) // two live digests: grace and current
	dropped := NewDigest(t, 1)
	other := NewKey(t, "acme", "other")
	mustCreate(t, s, other)
	mustRefresh(t, s, other.Key.ID, dropped, 0)
	start, err := s.LastSeq(ctx(t))
	if err != nil {
		t.Fatalf("LastSeq: %v", err)
	}
	from := time.Now()
	on := true
	mustUpdate(t, s, nk.Key.ID, apikey.KeyPatch{Disabled: &on})
	to := time.Now()
	chs, err := s.Changes(ctx(t), start, 100)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	if len(chs) != 1 {
		t.Fatalf("Changes after Update = %+v, want one entry", chs)
	}
	c := chs[0]
	if c.Kind != apikey.Updated || c.KeyID != nk.Key.ID || c.Workspace != "acme" {
		t.Errorf("change = {%s %s %q}, want {updated %s \"acme\"}", c.Kind, c.KeyID, c.Workspace, nk.Key.ID)
	}
	if !hasDigest(c.Digests, nk.Digest) || !hasDigest(c.Digests, nd) || len(c.Digests) != 2 {
		t.Errorf("Updated change digests = %x, want the key's live digests (grace and current)", c.Digests)
	}
	nowish(t, "Change.At", c.At, from, to)
	if last, err := s.LastSeq(ctx(t)); err != nil || last != c.Seq {
		t.Errorf("LastSeq = %d, %v; want %d", last, err, c.Seq)
	}
}

func testUpdateAudit(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	after := lastEvent(t, s, "acme")
	name, on := "renamed", true
	rate := apikey.Rate{N: 7, Per: time.Minute}
	from := time.Now()
	if _, err := s.Update(ctx(t), nk.Key.ID, apikey.KeyPatch{Name: &name, Disabled: &on, RateLimit: &rate}, "admin:ops"); err != nil {
		t.Fatalf("Update: %v", err)
	}
	to := time.Now()
	evs, err := s.Events(ctx(t), "acme", after, 100)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if len(evs) != 1 {
		t.Fatalf("Events after Update = %+v, want one", evs)
	}
	e := evs[0]
	if e.Kind != "updated" || e.Actor != "admin:ops" || e.KeyID != nk.Key.ID || e.Workspace != "acme" {
		t.Errorf("event = %+v, want kind updated, actor admin:ops, key %s, workspace acme", e, nk.Key.ID)
	}
	if got, want := detailFields(e.Detail), []string{"disabled", "name", "rate_limit"}; !slices.Equal(got, want) {
		t.Errorf("updated event Detail = %q, want the changed fields %v", e.Detail, want)
	}
	nowish(t, "Event.At", e.At, from, to)
	if strings.Contains(e.Detail, "renamed") {
		t.Errorf("Detail %q holds a value; want field names only", e.Detail)
	}
}

// lastEvent returns the Seq of the workspace's newest audit event (0 when none).
func lastEvent(t *testing.T, s apikey.Store, ws string) int64 {
	t.Helper()
	evs, err := s.Events(ctx(t), ws, 0, 1_000_000)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

func testUpdateDisabled(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	bystander := NewKey(t, "acme", "other")
	mustCreate(t, s, bystander)
	on, off := true, false
	k := mustUpdate(t, s, nk.Key.ID, apikey.KeyPatch{Disabled: &on})
	if !k.Disabled {
		t.Errorf("Update(disabled) returned Disabled false")
	}
	check := func(what string, want bool) {
		t.Helper()
		l, err := s.Lookup(ctx(t), nk.Digest)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		g, err := s.Get(ctx(t), nk.Key.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		list, err := s.List(ctx(t), "acme", "", 10)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		i := slices.IndexFunc(list, func(k apikey.Key) bool { return k.ID == nk.Key.ID })
		if i < 0 {
			t.Fatalf("%s: a disabled key must stay listed", what)
		}
		for from, k := range map[string]apikey.Key{"Lookup": l, "Get": g, "List": list[i]} {
			if k.Disabled != want {
				t.Errorf("%s: %s Disabled = %v, want %v", what, from, k.Disabled, want)
			}
		}
		if err := l.Valid(time.Now()); want && !errors.Is(err, apikey.ErrDisabled) || !want && err != nil {
			t.Errorf("%s: Lookup key Valid = %v, want ErrDisabled %v", what, err, want)
		}
		o, err := s.Lookup(ctx(t), bystander.Digest)
		if err != nil || o.Disabled || o.Valid(time.Now()) != nil {
			t.Errorf("%s: another key of the workspace = Disabled %v, %v; want enabled", what, o.Disabled, err)
		}
	}
	check("disabled", true)
	mustUpdate(t, s, nk.Key.ID, apikey.KeyPatch{Disabled: &off})
	check("enabled again", false)
}

func testUpdateFarFutureExpiry(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.ExpiresAt = time.Now().Add(time.Hour)
	mustCreate(t, s, nk)
	for name, at := range FarFutureTimes {
		k := mustUpdate(t, s, nk.Key.ID, apikey.KeyPatch{ExpiresAt: &at})
		g, err := s.Get(ctx(t), nk.Key.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		l, err := s.Lookup(ctx(t), nk.Digest)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		for from, k := range map[string]apikey.Key{"Update": k, "Get": g, "Lookup": l} {
			if !k.ExpiresAt.Equal(at) || k.ExpiresAt.Location() != time.UTC {
				t.Errorf("%s: %s ExpiresAt = %v, want exactly %v (UTC)", name, from, k.ExpiresAt, at)
			}
		}
		if err := l.Valid(time.Now()); err != nil {
			t.Errorf("%s: Valid(now) = %v, want nil", name, err)
		}
		wantErr(t, name+": Valid(at)", l.Valid(at), apikey.ErrExpired)
	}
}

// ---------------------------------------------------------------- workspaces

// sameWorkspace compares the settings of two records (not the times).
func sameWorkspace(t *testing.T, what string, got, want apikey.Workspace) {
	t.Helper()
	if got.ID != want.ID || got.RateLimit != want.RateLimit || got.MaxKeys != want.MaxKeys ||
		!slices.Equal(got.Grants, want.Grants) || got.Disabled != want.Disabled {
		t.Errorf("%s = {%s %v max %d %q disabled %v}, want {%s %v max %d %q disabled %v}", what,
			got.ID, got.RateLimit, got.MaxKeys, got.Grants, got.Disabled,
			want.ID, want.RateLimit, want.MaxKeys, want.Grants, want.Disabled)
	}
}

func mustPut(t *testing.T, s apikey.Store, w apikey.Workspace) (apikey.Workspace, bool) {
	t.Helper()
	got, created, err := s.PutWorkspace(ctx(t), w, "tester")
	if err != nil {
		t.Fatalf("PutWorkspace(%s): %v", w.ID, err)
	}
	return got, created
}

func testPutWorkspace(t *testing.T, s apikey.Store) {
	_, err := s.GetWorkspace(ctx(t), "acme")
	wantErr(t, "GetWorkspace before PutWorkspace", err, apikey.ErrNotFound)
	w := apikey.Workspace{ID: "acme", RateLimit: apikey.Rate{N: 600, Per: time.Minute}, MaxKeys: 20,
		Grants: []string{"org1", "org2/web"}, Disabled: true}
	from := time.Now()
	first, created := mustPut(t, s, w)
	to := time.Now()
	if !created {
		t.Errorf("first PutWorkspace created = false, want true")
	}
	sameWorkspace(t, "PutWorkspace", first, w)
	nowish(t, "CreatedAt", first.CreatedAt, from, to)
	nowish(t, "UpdatedAt", first.UpdatedAt, from, to)
	g, err := s.GetWorkspace(ctx(t), "acme")
	if err != nil {
		t.Fatalf("GetWorkspace: %v", err)
	}
	sameWorkspace(t, "GetWorkspace", g, w)
	sameTime(t, "GetWorkspace.CreatedAt", g.CreatedAt, first.CreatedAt)
	sameTime(t, "GetWorkspace.UpdatedAt", g.UpdatedAt, first.UpdatedAt)

	// Wait out the clock's granularity (deterministic, not for luck): the
	// replace must carry a later UpdatedAt.
	for time.Since(first.UpdatedAt) < 5*time.Millisecond {
		time.Sleep(time.Millisecond)
	}
	repl := apikey.Workspace{ID: "acme", Grants: []string{"org3"}} // absent fields back to their defaults
	from = time.Now()
	second, created := mustPut(t, s, repl)
	to = time.Now()
	if created {
		t.Errorf("second PutWorkspace created = true, want false")
	}
	sameWorkspace(t, "replaced", second, repl)
	sameTime(t, "replaced CreatedAt (kept)", second.CreatedAt, first.CreatedAt)
	nowish(t, "replaced UpdatedAt", second.UpdatedAt, from, to)
	if !second.UpdatedAt.After(first.UpdatedAt) {
		t.Errorf("replaced UpdatedAt = %v, want after %v", second.UpdatedAt, first.UpdatedAt)
	}
	g, err = s.GetWorkspace(ctx(t), "acme")
	if err != nil {
		t.Fatalf("GetWorkspace: %v", err)
	}
	sameWorkspace(t, "GetWorkspace after replace", g, repl)
	sameTime(t, "GetWorkspace.CreatedAt after replace", g.CreatedAt, first.CreatedAt)
	sameTime(t, "GetWorkspace.UpdatedAt after replace", g.UpdatedAt, second.UpdatedAt)
	_, err = s.GetWorkspace(ctx(t), "globex")
	wantErr(t, "GetWorkspace(other)", err, apikey.ErrNotFound)
}

func testPatchWorkspace(t *testing.T, s apikey.Store) {
	on := true
	_, err := s.PatchWorkspace(ctx(t), "acme", apikey.WorkspacePatch{Disabled: &on}, "t")
	wantErr(t, "PatchWorkspace without a record", err, apikey.ErrNotFound)
	if _, err := s.GetWorkspace(ctx(t), "acme"); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("PatchWorkspace without a record created one (GetWorkspace: %v)", err)
	}
	want := apikey.Workspace{ID: "acme", RateLimit: apikey.Rate{N: 600, Per: time.Minute}, MaxKeys: 20, Grants: []string{"org1"}}
	first, _ := mustPut(t, s, want)
	patch := func(what string, p apikey.WorkspacePatch) {
		t.Helper()
		from := time.Now()
		got, err := s.PatchWorkspace(ctx(t), "acme", p, "tester")
		to := time.Now()
		if err != nil {
			t.Fatalf("%s: PatchWorkspace: %v", what, err)
		}
		sameWorkspace(t, what, got, want)
		sameTime(t, what+": CreatedAt (kept)", got.CreatedAt, first.CreatedAt)
		if p != (apikey.WorkspacePatch{}) { // an empty patch may leave UpdatedAt as it was
			nowish(t, what+": UpdatedAt", got.UpdatedAt, from, to)
		}
		g, err := s.GetWorkspace(ctx(t), "acme")
		if err != nil {
			t.Fatalf("%s: GetWorkspace: %v", what, err)
		}
		sameWorkspace(t, what+": GetWorkspace", g, want)
	}
	rate := apikey.Rate{N: 5, Per: time.Second}
	want.RateLimit = rate
	patch("rate_limit only", apikey.WorkspacePatch{RateLimit: &rate})
	want.Disabled = true
	patch("disabled only", apikey.WorkspacePatch{Disabled: &on})
	grants := []string{"org2", "org3/web"}
	max := 3
	want.Grants, want.MaxKeys = grants, max
	patch("grants and max_keys", apikey.WorkspacePatch{Grants: &grants, MaxKeys: &max})
	patch("empty patch", apikey.WorkspacePatch{})
	var (
		noRate  apikey.Rate
		noMax   int
		noGrant []string
		off     bool
	)
	want.RateLimit, want.MaxKeys, want.Grants, want.Disabled = noRate, 0, nil, false
	patch("back to defaults", apikey.WorkspacePatch{RateLimit: &noRate, MaxKeys: &noMax, Grants: &noGrant, Disabled: &off})
}

func testListWorkspaces(t *testing.T, s apikey.Store) {
	if got, err := s.ListWorkspaces(ctx(t), "", 10); err != nil || len(got) != 0 {
		t.Fatalf("ListWorkspaces on an empty store = %v, %v; want none", got, err)
	}
	want := []string{"alpha", "beta", "delta", "epsilon", "gamma"}
	for _, id := range []string{"gamma", "alpha", "epsilon", "beta", "delta"} {
		mustPut(t, s, apikey.Workspace{ID: id, MaxKeys: len(id)})
	}
	all, err := s.ListWorkspaces(ctx(t), "", 100)
	if err != nil {
		t.Fatalf("ListWorkspaces: %v", err)
	}
	wsIDs := func(ws []apikey.Workspace) []string {
		out := make([]string, len(ws))
		for i, w := range ws {
			out[i] = w.ID
		}
		return out
	}
	if got := wsIDs(all); !slices.Equal(got, want) {
		t.Fatalf("ListWorkspaces = %v, want %v (by id)", got, want)
	}
	for _, w := range all {
		if w.MaxKeys != len(w.ID) || w.CreatedAt.IsZero() || w.UpdatedAt.IsZero() {
			t.Errorf("listed record %+v: want MaxKeys %d and its times", w, len(w.ID))
		}
	}
	pages := paged(t, "ListWorkspaces", 2, func(after string) ([]string, error) {
		page, err := s.ListWorkspaces(ctx(t), after, 2)
		return wsIDs(page), err
	})
	if !slices.Equal(pages, want) {
		t.Errorf("paged ListWorkspaces = %v, want %v", pages, want)
	}
	mid, err := s.ListWorkspaces(ctx(t), "c", 100) // a cursor that is not an id
	if err != nil || !slices.Equal(wsIDs(mid), want[2:]) {
		t.Errorf("ListWorkspaces(after \"c\") = %v, %v; want %v", wsIDs(mid), err, want[2:])
	}
}

func testWorkspaceChanges(t *testing.T, s apikey.Store) {
	start, err := s.LastSeq(ctx(t))
	if err != nil {
		t.Fatalf("LastSeq: %v", err)
	}
	on := true
	from := time.Now()
	mustPut(t, s, apikey.Workspace{ID: "acme"})
	mustPut(t, s, apikey.Workspace{ID: "acme", MaxKeys: 2})
	if _, err := s.PatchWorkspace(ctx(t), "acme", apikey.WorkspacePatch{Disabled: &on}, "t"); err != nil {
		t.Fatalf("PatchWorkspace: %v", err)
	}
	mustPut(t, s, apikey.Workspace{ID: "globex"})
	to := time.Now()
	chs, err := s.Changes(ctx(t), start, 100)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	wantWS := []string{"acme", "acme", "acme", "globex"}
	if len(chs) != len(wantWS) {
		t.Fatalf("Changes = %+v, want %d WorkspaceChanged entries", chs, len(wantWS))
	}
	for i, c := range chs {
		if c.Kind != apikey.WorkspaceChanged || c.Workspace != wantWS[i] || c.KeyID != "" || len(c.Digests) != 0 {
			t.Errorf("change %d = {%s key %q ws %q %d digests}, want {workspace key \"\" ws %q no digests}",
				i, c.Kind, c.KeyID, c.Workspace, len(c.Digests), wantWS[i])
		}
		if i > 0 && c.Seq <= chs[i-1].Seq {
			t.Errorf("Seq not increasing: %d after %d", c.Seq, chs[i-1].Seq)
		}
		nowish(t, "Change.At", c.At, from, to)
	}
	// A refused patch records nothing.
	last, _ := s.LastSeq(ctx(t))
	if _, err := s.PatchWorkspace(ctx(t), "nobody", apikey.WorkspacePatch{Disabled: &on}, "t"); !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("PatchWorkspace(nobody) = %v, want ErrNotFound", err)
	}
	if now, _ := s.LastSeq(ctx(t)); now != last {
		t.Errorf("LastSeq moved from %d to %d on a refused patch", last, now)
	}
}

func testWorkspaceAudit(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	mustCreate(t, s, nk)
	after := lastEvent(t, s, "acme")
	from := time.Now()
	if _, _, err := s.PutWorkspace(ctx(t), apikey.Workspace{ID: "acme", MaxKeys: 5}, "admin:ops"); err != nil {
		t.Fatalf("PutWorkspace: %v", err)
	}
	rate, on := apikey.Rate{N: 1, Per: time.Second}, true
	if _, err := s.PatchWorkspace(ctx(t), "acme", apikey.WorkspacePatch{RateLimit: &rate, Disabled: &on}, "cli"); err != nil {
		t.Fatalf("PatchWorkspace: %v", err)
	}
	to := time.Now()
	evs, err := s.Events(ctx(t), "acme", after, 100)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if len(evs) != 2 {
		t.Fatalf("Events(acme) after put and patch = %+v, want 2", evs)
	}
	for i, want := range []struct{ actor, detail string }{{"admin:ops", "created"}, {"cli", "disabled,rate_limit"}} {
		e := evs[i]
		if e.Kind != "workspace_updated" || e.Workspace != "acme" || e.KeyID != "" || e.Actor != want.actor {
			t.Errorf("event %d = %+v, want workspace_updated in acme by %s with no key", i, e, want.actor)
		}
		if got := strings.Join(detailFields(e.Detail), ","); got != want.detail {
			t.Errorf("event %d Detail = %q, want %q (any order)", i, e.Detail, want.detail)
		}
		nowish(t, "Event.At", e.At, from, to)
	}
	if other, err := s.Events(ctx(t), "globex", 0, 100); err != nil || len(other) != 0 {
		t.Errorf("Events(globex) = %+v, %v; want none", other, err)
	}
}

// policyOf reads the key's Space through Lookup and Get and checks they agree.
func policyOf(t *testing.T, s apikey.Store, nk apikey.NewKey) apikey.Policy {
	t.Helper()
	l, err := s.Lookup(ctx(t), nk.Digest)
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	g, err := s.Get(ctx(t), nk.Key.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if l.Space.RateLimit != g.Space.RateLimit || !slices.Equal(l.Space.Grants, g.Space.Grants) || l.Space.Disabled != g.Space.Disabled {
		t.Errorf("Lookup Space %+v != Get Space %+v", l.Space, g.Space)
	}
	return l.Space
}

func samePolicy(t *testing.T, what string, got, want apikey.Policy) {
	t.Helper()
	if got.RateLimit != want.RateLimit || !slices.Equal(got.Grants, want.Grants) || got.Disabled != want.Disabled {
		t.Errorf("%s: Space = %+v, want %+v", what, got, want)
	}
}

func testWorkspacePolicy(t *testing.T, s apikey.Store) {
	nk := NewKey(t, "acme", "ci")
	nk.Key.RateLimit = apikey.Rate{N: 9, Per: time.Minute} // the key's own stays its own
	mustCreate(t, s, nk)
	other := NewKey(t, "globex", "ci")
	mustCreate(t, s, other)
	samePolicy(t, "no record", policyOf(t, s, nk), apikey.Policy{})

	w := apikey.Workspace{ID: "acme", RateLimit: apikey.Rate{N: 600, Per: time.Minute}, Grants: []string{"org1", "org2/web"}, MaxKeys: 9}
	mustPut(t, s, w)
	samePolicy(t, "record", policyOf(t, s, nk), w.Policy())
	samePolicy(t, "another workspace's key", policyOf(t, s, other), apikey.Policy{})
	l, _ := s.Lookup(ctx(t), nk.Digest)
	if l.RateLimit != nk.Key.RateLimit || len(l.Grants) != 0 {
		t.Errorf("key's own rate/grants = %v %q, want %v and none (the record goes in Space)", l.RateLimit, l.Grants, nk.Key.RateLimit)
	}
	if !l.Owns("org2/web/gpu-1") || l.Owns("org2/api") {
		t.Errorf("Owns through the workspace grants: org2/web/gpu-1 %v, org2/api %v; want true, false",
			l.Owns("org2/web/gpu-1"), l.Owns("org2/api"))
	}

	on := true
	if _, err := s.PatchWorkspace(ctx(t), "acme", apikey.WorkspacePatch{Disabled: &on}, "t"); err != nil {
		t.Fatalf("PatchWorkspace: %v", err)
	}
	w.Disabled = true
	samePolicy(t, "disabled record", policyOf(t, s, nk), w.Policy())
	l, _ = s.Lookup(ctx(t), nk.Digest)
	wantErr(t, "Valid with the workspace disabled", l.Valid(time.Now()), apikey.ErrDisabled)
	if l.Disabled {
		t.Errorf("key Disabled = true; want false (the workspace is)")
	}
	// Replacing with a bare record: the policy is gone again.
	mustPut(t, s, apikey.Workspace{ID: "acme"})
	samePolicy(t, "bare record", policyOf(t, s, nk), apikey.Policy{})
}

func testWorkspaceMaxKeys(t *testing.T, s apikey.Store) {
	create := func(ws, name string, max int) error {
		nk := NewKey(t, ws, name)
		nk.Max = max
		_, err := s.Create(ctx(t), nk)
		return err
	}
	// The record's MaxKeys wins over NewKey.Max, lower or higher.
	mustPut(t, s, apikey.Workspace{ID: "low", MaxKeys: 2})
	for i, n := range []string{"a", "b"} {
		if err := create("low", n, 10); err != nil {
			t.Fatalf("Create #%d in low: %v", i, err)
		}
	}
	wantErr(t, "third Create under record MaxKeys 2 (NewKey.Max 10)", create("low", "c", 10), apikey.ErrLimit)

	mustPut(t, s, apikey.Workspace{ID: "high", MaxKeys: 3})
	for _, n := range []string{"a", "b", "c"} {
		if err := create("high", n, 1); err != nil {
			t.Fatalf("Create %s under record MaxKeys 3 (NewKey.Max 1): %v", n, err)
		}
	}
	wantErr(t, "fourth Create under record MaxKeys 3", create("high", "d", 1), apikey.ErrLimit)

	// A record without MaxKeys falls back to NewKey.Max.
	mustPut(t, s, apikey.Workspace{ID: "inherit", Grants: []string{"x"}})
	if err := create("inherit", "a", 1); err != nil {
		t.Fatalf("Create: %v", err)
	}
	wantErr(t, "second Create (no record max, NewKey.Max 1)", create("inherit", "b", 1), apikey.ErrLimit)

	// Raising the record's MaxKeys at run time applies to the next Create.
	max := 3
	if _, err := s.PatchWorkspace(ctx(t), "low", apikey.WorkspacePatch{MaxKeys: &max}, "t"); err != nil {
		t.Fatalf("PatchWorkspace: %v", err)
	}
	if err := create("low", "c", 10); err != nil {
		t.Errorf("Create after raising MaxKeys to 3: %v", err)
	}
	wantErr(t, "Create over the raised MaxKeys", create("low", "d", 0), apikey.ErrLimit)
}

// ---------------------------------------------------------------- shared read tests

func (h harness) testDisabled(t *testing.T) {
	off := NewKey(t, "acme", "off")
	off.Key.Disabled = true
	on := NewKey(t, "acme", "on")
	seeds := []Seed{{Key: off.Key, Digest: off.Digest}, {Key: on.Key, Digest: on.Digest}}
	s := h.open(t, seeds)
	list, err := s.List(ctx(t), "acme", "", 10)
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %d keys, %v; want both (a disabled key stays listed)", len(list), err)
	}
	for _, sd := range seeds {
		l, err := s.Lookup(ctx(t), sd.Digest)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", sd.Key.Name, err)
		}
		g, err := s.Get(ctx(t), sd.Key.ID)
		if err != nil {
			t.Fatalf("Get(%s): %v", sd.Key.Name, err)
		}
		i := slices.IndexFunc(list, func(k apikey.Key) bool { return k.ID == sd.Key.ID })
		for from, k := range map[string]apikey.Key{"Lookup": l, "Get": g, "List": list[i]} {
			if k.Disabled != sd.Key.Disabled {
				t.Errorf("%s(%s).Disabled = %v, want %v", from, sd.Key.Name, k.Disabled, sd.Key.Disabled)
			}
		}
		if sd.Key.Disabled {
			wantErr(t, "Valid(disabled key)", l.Valid(time.Now()), apikey.ErrDisabled)
		} else if err := l.Valid(time.Now()); err != nil {
			t.Errorf("Valid(enabled key) = %v", err)
		}
	}
}

func (h harness) testNoWorkspaceRecord(t *testing.T) {
	seeds := fixture(t)
	s := h.open(t, seeds)
	for _, sd := range seeds {
		l, err := s.Lookup(ctx(t), sd.Digest)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", sd.Key.Name, err)
		}
		samePolicy(t, "Lookup "+sd.Key.Name, l.Space, apikey.Policy{})
		if sd.Key.RevokedAt.IsZero() {
			g, err := s.Get(ctx(t), sd.Key.ID)
			if err != nil {
				t.Fatalf("Get(%s): %v", sd.Key.Name, err)
			}
			samePolicy(t, "Get "+sd.Key.Name, g.Space, apikey.Policy{})
		}
	}
	_, err := s.GetWorkspace(ctx(t), "acme")
	wantErr(t, "GetWorkspace(acme) without a record", err, apikey.ErrNotFound)
	ws, err := s.ListWorkspaces(ctx(t), "", 100)
	if err != nil || len(ws) != 0 {
		t.Errorf("ListWorkspaces = %+v, %v; want none", ws, err)
	}
}

// unusedSeeds are keys around since = now-30d: three created before it and
// never used, one created after it, one revoked, one in another workspace.
func unusedSeeds(t *testing.T, since time.Time) (seeds []Seed, want []string) {
	t.Helper()
	old := since.Add(-10 * 24 * time.Hour)
	for _, n := range []string{"old1", "old2", "old3", "new", "gone"} {
		nk := NewKey(t, "acme", n)
		nk.Key.CreatedAt = old
		switch n {
		case "new":
			nk.Key.CreatedAt = since.Add(time.Hour)
		case "gone":
			nk.Key.RevokedAt = time.Now().Add(-time.Minute)
		default:
			want = append(want, nk.Key.ID)
		}
		seeds = append(seeds, Seed{Key: nk.Key, Digest: nk.Digest})
	}
	other := NewKey(t, "globex", "old")
	other.Key.CreatedAt = old
	seeds = append(seeds, Seed{Key: other.Key, Digest: other.Digest})
	slices.Sort(want)
	return seeds, want
}

// pagedUnused lists ListUnused(ws, since) in pages of size, checking each page's bound.
func pagedUnused(t *testing.T, s apikey.Store, ws string, since time.Time, size int) []string {
	t.Helper()
	return paged(t, "ListUnused", size, func(after string) ([]string, error) {
		page, err := s.ListUnused(ctx(t), ws, since, after, size)
		return ids(page), err
	})
}

func (h harness) testListUnused(t *testing.T) {
	since := time.Now().Add(-30 * 24 * time.Hour)
	seeds, want := unusedSeeds(t, since)
	s := h.open(t, seeds)
	all, err := s.ListUnused(ctx(t), "acme", since, "", 100)
	if err != nil {
		t.Fatalf("ListUnused: %v", err)
	}
	if got := ids(all); !slices.Equal(got, want) {
		t.Fatalf("ListUnused = %v, want %v (live keys created before since, never used, by id)", got, want)
	}
	for _, k := range all {
		sameKey(t, k, seedByName(t, seeds, k.Name).Key)
	}
	if got := pagedUnused(t, s, "acme", since, 2); !slices.Equal(got, want) {
		t.Errorf("paged ListUnused = %v, want %v", got, want)
	}
	// Everything was created before now; nothing before a year ago.
	if got, err := s.ListUnused(ctx(t), "acme", since.Add(-365*24*time.Hour), "", 100); err != nil || len(got) != 0 {
		t.Errorf("ListUnused(since a year before) = %v, %v; want none", ids(got), err)
	}
	if got, err := s.ListUnused(ctx(t), "nobody", since, "", 100); err != nil || len(got) != 0 {
		t.Errorf("ListUnused(nobody) = %v, %v; want none", ids(got), err)
	}
}

func (h harness) testUsageEmpty(t *testing.T) {
	seeds := fixture(t)
	s := h.open(t, seeds)
	now := time.Now()
	id := seeds[0].Key.ID
	u, err := s.Usage(ctx(t), id, now.Add(-48*time.Hour), now)
	if err != nil || len(u) != 0 {
		t.Errorf("Usage on a store without usage = %+v, %v; want none", u, err)
	}
	tot, err := s.UsageTotals(ctx(t), []string{id, seeds[1].Key.ID}, now.Add(-30*24*time.Hour))
	if err != nil {
		t.Fatalf("UsageTotals: %v", err)
	}
	for k, n := range tot {
		if n != 0 {
			t.Errorf("UsageTotals[%s] = %d, want none", k, n)
		}
	}
	if n, err := s.PruneUsage(ctx(t), now); err != nil || n != 0 {
		t.Errorf("PruneUsage = %d, %v; want 0, nil", n, err)
	}
	if tot, err := s.UsageTotals(ctx(t), nil, now); err != nil || len(tot) != 0 {
		t.Errorf("UsageTotals(no ids) = %v, %v; want empty", tot, err)
	}
}

// ---------------------------------------------------------------- usage

// counts returns usage counts with c[i] = base*(i+1) for every outcome.
func counts(base int64) [apikey.NumOutcomes]int64 {
	var c [apikey.NumOutcomes]int64
	for i := range c {
		c[i] = base * int64(i+1)
	}
	return c
}

func mustAddUsage(t *testing.T, s apikey.Store, rows []apikey.Usage) {
	t.Helper()
	if err := s.AddUsage(ctx(t), rows); err != nil {
		t.Fatalf("AddUsage(%d rows): %v", len(rows), err)
	}
}

func mustUsage(t *testing.T, s apikey.Store, id string, from, to time.Time) []apikey.Usage {
	t.Helper()
	u, err := s.Usage(ctx(t), id, from, to)
	if err != nil {
		t.Fatalf("Usage(%s): %v", id, err)
	}
	return u
}

func sameUsage(t *testing.T, what string, got, want []apikey.Usage) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d buckets, want %d: %+v", what, len(got), len(want), got)
		return
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.KeyID != w.KeyID || !g.Hour.Equal(w.Hour) || g.Hour.Location() != time.UTC || g.Counts != w.Counts {
			t.Errorf("%s[%d] = {%s %v %v}, want {%s %v %v} (UTC)", what, i, g.KeyID, g.Hour, g.Counts, w.KeyID, w.Hour, w.Counts)
		}
	}
}

func testAddUsage(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	h0 := time.Now().UTC().Truncate(time.Hour).Add(-5 * time.Hour)
	h := func(i int) time.Time { return h0.Add(time.Duration(i) * time.Hour) }
	if err := s.AddUsage(ctx(t), nil); err != nil {
		t.Fatalf("AddUsage(nil): %v", err)
	}
	mustAddUsage(t, s, []apikey.Usage{
		{KeyID: a.ID, Hour: h(2), Counts: counts(1)},
		{KeyID: a.ID, Hour: h(0), Counts: counts(10)},
		{KeyID: b.ID, Hour: h(2), Counts: counts(100)},
		{KeyID: "key_doesnotexist", Hour: h(2), Counts: counts(1)}, // may be dropped, must not fail
	})
	// A second flush (another replica) adds to the same buckets.
	mustAddUsage(t, s, []apikey.Usage{
		{KeyID: a.ID, Hour: h(2), Counts: counts(2)},
		{KeyID: a.ID, Hour: h(3), Counts: [apikey.NumOutcomes]int64{apikey.OutcomeAllowed: 7, apikey.OutcomeUnavailable: 1}},
	})
	got := mustUsage(t, s, a.ID, h(0), h(5))
	sameUsage(t, "Usage(a, [h0,h5))", got, []apikey.Usage{
		{KeyID: a.ID, Hour: h(0), Counts: counts(10)},
		{KeyID: a.ID, Hour: h(2), Counts: counts(3)},
		{KeyID: a.ID, Hour: h(3), Counts: [apikey.NumOutcomes]int64{apikey.OutcomeAllowed: 7, apikey.OutcomeUnavailable: 1}},
	})
	// [from, to): from included, to excluded.
	sameUsage(t, "Usage(a, [h2,h3))", mustUsage(t, s, a.ID, h(2), h(3)), []apikey.Usage{{KeyID: a.ID, Hour: h(2), Counts: counts(3)}})
	sameUsage(t, "Usage(a, [h1,h2))", mustUsage(t, s, a.ID, h(1), h(2)), nil)
	sameUsage(t, "Usage(b)", mustUsage(t, s, b.ID, h(0), h(5)), []apikey.Usage{{KeyID: b.ID, Hour: h(2), Counts: counts(100)}})
	sameUsage(t, "Usage(unknown key)", mustUsage(t, s, "key_nobody", h(0), h(5)), nil)
	// Every outcome has a column of its own.
	one := mustCreate(t, s, NewKey(t, "acme", "one"))
	var rows []apikey.Usage
	var want []apikey.Usage
	for o := range apikey.NumOutcomes {
		var c [apikey.NumOutcomes]int64
		c[o] = int64(o) + 1
		rows = append(rows, apikey.Usage{KeyID: one.ID, Hour: h(int(o)), Counts: c})
		want = append(want, rows[len(rows)-1])
	}
	mustAddUsage(t, s, rows)
	sameUsage(t, "Usage(one outcome per hour)", mustUsage(t, s, one.ID, h(0), h(int(apikey.NumOutcomes))), want)
	// Non-UTC bounds mean the same instants.
	loc := time.FixedZone("P", -8*3600)
	sameUsage(t, "Usage(non-UTC bounds)", mustUsage(t, s, b.ID, h(2).In(loc), h(3).In(loc)), []apikey.Usage{{KeyID: b.ID, Hour: h(2), Counts: counts(100)}})
}

func testUsageTotals(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	c := mustCreate(t, s, NewKey(t, "acme", "c"))
	now := time.Now().UTC().Truncate(time.Hour)
	mustAddUsage(t, s, []apikey.Usage{
		{KeyID: a.ID, Hour: now.Add(-40 * 24 * time.Hour), Counts: counts(1000)}, // before since
		{KeyID: a.ID, Hour: now.Add(-29 * 24 * time.Hour), Counts: counts(1)},
		{KeyID: a.ID, Hour: now, Counts: [apikey.NumOutcomes]int64{apikey.OutcomeAllowed: 5, apikey.OutcomeForbidden: 2}},
		{KeyID: b.ID, Hour: now.Add(-time.Hour), Counts: counts(2)},
	})
	since := now.Add(-30 * 24 * time.Hour)
	sum := func(c [apikey.NumOutcomes]int64) int64 { u := apikey.Usage{Counts: c}; return u.Total() }
	got, err := s.UsageTotals(ctx(t), []string{a.ID, b.ID, c.ID, "key_nobody"}, since)
	if err != nil {
		t.Fatalf("UsageTotals: %v", err)
	}
	want := map[string]int64{a.ID: sum(counts(1)) + 7, b.ID: sum(counts(2))}
	for id, n := range got {
		if n == 0 {
			delete(got, id) // a key without requests may be absent or 0
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("UsageTotals = %v, want %v", got, want)
	}
	only, err := s.UsageTotals(ctx(t), []string{b.ID}, since)
	if err != nil || len(only) != 1 || only[b.ID] != sum(counts(2)) {
		t.Errorf("UsageTotals(b) = %v, %v; want only b's %d", only, err, sum(counts(2)))
	}
	// since is inclusive of its hour.
	at, err := s.UsageTotals(ctx(t), []string{a.ID}, now)
	if err != nil || at[a.ID] != 7 {
		t.Errorf("UsageTotals(a, since this hour) = %v, %v; want 7", at, err)
	}
}

func testPruneUsage(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	now := time.Now().UTC().Truncate(time.Hour)
	cut := now.Add(-35 * 24 * time.Hour)
	mustAddUsage(t, s, []apikey.Usage{
		{KeyID: a.ID, Hour: cut.Add(-2 * time.Hour), Counts: counts(1)},
		{KeyID: a.ID, Hour: cut.Add(-time.Hour), Counts: counts(1)},
		{KeyID: b.ID, Hour: cut.Add(-time.Hour), Counts: counts(1)},
		{KeyID: a.ID, Hour: cut, Counts: counts(2)}, // at the cut: kept
		{KeyID: b.ID, Hour: now, Counts: counts(3)},
	})
	n, err := s.PruneUsage(ctx(t), cut)
	if err != nil || n != 3 {
		t.Fatalf("PruneUsage = %d, %v; want 3", n, err)
	}
	from := cut.Add(-24 * time.Hour)
	sameUsage(t, "Usage(a) after prune", mustUsage(t, s, a.ID, from, now.Add(time.Hour)), []apikey.Usage{{KeyID: a.ID, Hour: cut, Counts: counts(2)}})
	sameUsage(t, "Usage(b) after prune", mustUsage(t, s, b.ID, from, now.Add(time.Hour)), []apikey.Usage{{KeyID: b.ID, Hour: now, Counts: counts(3)}})
	if n, err := s.PruneUsage(ctx(t), cut); err != nil || n != 0 {
		t.Errorf("second PruneUsage = %d, %v; want 0", n, err)
	}
}

// testUsageManyRows flushes more rows than a bounded statement holds, twice.
func testUsageManyRows(t *testing.T, s apikey.Store) {
	const hours = 400
	var keys []apikey.Key
	for _, n := range []string{"a", "b", "c"} {
		keys = append(keys, mustCreate(t, s, NewKey(t, "acme", n)))
	}
	h0 := time.Now().UTC().Truncate(time.Hour).Add(-hours * time.Hour)
	var rows []apikey.Usage
	for _, k := range keys {
		for i := range hours {
			rows = append(rows, apikey.Usage{KeyID: k.ID, Hour: h0.Add(time.Duration(i) * time.Hour),
				Counts: [apikey.NumOutcomes]int64{apikey.OutcomeAllowed: int64(i + 1), apikey.OutcomeRevoked: 1}})
		}
	}
	mustAddUsage(t, s, rows)
	mustAddUsage(t, s, rows)
	for _, k := range keys {
		got := mustUsage(t, s, k.ID, h0, h0.Add(hours*time.Hour))
		if len(got) != hours {
			t.Fatalf("Usage(%s) = %d buckets, want %d", k.Name, len(got), hours)
		}
		for i, u := range got {
			want := [apikey.NumOutcomes]int64{apikey.OutcomeAllowed: 2 * int64(i+1), apikey.OutcomeRevoked: 2}
			if !u.Hour.Equal(h0.Add(time.Duration(i)*time.Hour)) || u.Counts != want {
				t.Fatalf("Usage(%s)[%d] = %v %v, want %v %v", k.Name, i, u.Hour, u.Counts, h0.Add(time.Duration(i)*time.Hour), want)
			}
		}
	}
	tot, err := s.UsageTotals(ctx(t), []string{keys[0].ID}, h0)
	if want := int64(hours*(hours+1) + 2*hours); err != nil || tot[keys[0].ID] != want {
		t.Errorf("UsageTotals = %v, %v; want %d", tot, err, want)
	}
}

// testTouchManyKeys touches more ids than a bounded statement holds, most of them unknown.
func testTouchManyKeys(t *testing.T, s apikey.Store) {
	a := mustCreate(t, s, NewKey(t, "acme", "a"))
	b := mustCreate(t, s, NewKey(t, "acme", "b"))
	at := time.Now().Add(-time.Minute).Round(0)
	used := map[string]time.Time{a.ID: at, b.ID: at.Add(-time.Hour)}
	for len(used) < 1200 {
		id, err := apikey.NewID()
		if err != nil {
			t.Fatal(err)
		}
		used[id] = at
	}
	if err := s.Touch(ctx(t), used); err != nil {
		t.Fatalf("Touch(%d ids): %v", len(used), err)
	}
	for id, want := range map[string]time.Time{a.ID: at, b.ID: at.Add(-time.Hour)} {
		g, err := s.Get(ctx(t), id)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		sameTime(t, "LastUsedAt", g.LastUsedAt, want)
	}
	// A time never moves backwards.
	if err := s.Touch(ctx(t), map[string]time.Time{a.ID: at.Add(-time.Hour)}); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	g, err := s.Get(ctx(t), a.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	sameTime(t, "LastUsedAt after an older Touch", g.LastUsedAt, at)
}

func testListUnusedTouched(t *testing.T, s apikey.Store) {
	now := time.Now()
	since := now.Add(-30 * 24 * time.Hour)
	mk := func(name string, created time.Time) apikey.Key {
		nk := NewKey(t, "acme", name)
		nk.Key.CreatedAt = created
		return mustCreate(t, s, nk)
	}
	old := since.Add(-10 * 24 * time.Hour)
	never := mk("never", old)
	longAgo := mk("long-ago", old)
	recent := mk("recent", old)
	mk("new", now.Add(-time.Hour))
	gone := mk("gone", old)
	mustDelete(t, s, gone.ID)
	if err := s.Touch(ctx(t), map[string]time.Time{longAgo.ID: since.Add(-time.Hour), recent.ID: since.Add(time.Hour)}); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	want := []string{never.ID, longAgo.ID}
	slices.Sort(want)
	if got := pagedUnused(t, s, "acme", since, 1); !slices.Equal(got, want) {
		t.Errorf("ListUnused = %v, want %v (never used, or last used before since)", got, want)
	}
	all, err := s.ListUnused(ctx(t), "acme", since, "", 100)
	if err != nil || !slices.Equal(ids(all), want) {
		t.Errorf("ListUnused = %v, %v; want %v", ids(all), err, want)
	}
	for _, k := range all {
		if k.ID == longAgo.ID {
			sameTime(t, "listed LastUsedAt", k.LastUsedAt, since.Add(-time.Hour))
		}
	}
	// A use after since takes the key off the list.
	if err := s.Touch(ctx(t), map[string]time.Time{never.ID: now}); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if got := pagedUnused(t, s, "acme", since, 10); !slices.Equal(got, []string{longAgo.ID}) {
		t.Errorf("ListUnused after a use = %v, want [%s]", got, longAgo.ID)
	}
}
