package file

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
	"github.com/keyauthz/keyauthz/test/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// noWatch turns fsnotify off so only the poll fallback reloads.
func noWatch(s *Store) { s.watch = false }

func entries(seeds []storetest.Seed) []Entry {
	out := make([]Entry, len(seeds))
	for i, sd := range seeds {
		out[i] = NewEntry(sd.Key, sd.Digest)
	}
	return out
}

func write(t *testing.T, path string, es []Entry) {
	t.Helper()
	var b bytes.Buffer
	if err := Encode(&b, es); err != nil {
		t.Fatalf("Encode: %v", err)
	}
	replace(t, path, b.Bytes())
}

// replace swaps the file's content atomically (write + rename), as editors and tools do.
func replace(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, path string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, zaptest.NewLogger(t), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.RunReadOnly(t, func(t *testing.T, seeds []storetest.Seed) apikey.Store {
		path := filepath.Join(t.TempDir(), "keys.yaml")
		write(t, path, entries(seeds))
		s, err := Open(context.Background(), path, zaptest.NewLogger(t))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

func TestDocumentedExample(t *testing.T) {
	for name, doc := range map[string]string{
		"yaml": `keys:
  - id: key_abc
    workspace: acme
    name: ci
    digest: ` + strings.Repeat("ab", 32) + `
    pepper_version: 1
    expires_at: 2027-01-01T00:00:00Z   # optional
    not_before: 2026-01-01T00:00:00+02:00
    rate_limit: 600/m
    grants: [org1]
    metadata: {team: x}
`,
		"json": "{\n\t\"keys\": [{\"id\": \"key_abc\", \"workspace\": \"acme\", \"name\": \"ci\",\n\t\t\"digest\": \"" + strings.Repeat("ab", 32) +
			"\", \"pepper_version\": 1, \"expires_at\": \"2027-01-01T00:00:00Z\", \"not_before\": \"2026-01-01T00:00:00+02:00\",\n\t\t\"rate_limit\": \"600/m\", \"grants\": [\"org1\"], \"metadata\": {\"team\": \"x\"}}]\n}\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys")
			if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			s := open(t, path)
			d, _ := apikey.ParseDigestHex(strings.Repeat("ab", 32), 1)
			k, err := s.Lookup(context.Background(), d)
			if err != nil {
				t.Fatalf("Lookup: %v", err)
			}
			want := apikey.Key{ID: "key_abc", Workspace: "acme", Name: "ci",
				ExpiresAt: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), NotBefore: time.Date(2025, 12, 31, 22, 0, 0, 0, time.UTC),
				RateLimit: apikey.Rate{N: 600, Per: time.Minute}, PepperVersion: 1}
			if k.ID != want.ID || k.Workspace != want.Workspace || k.Name != want.Name || !k.ExpiresAt.Equal(want.ExpiresAt) ||
				!k.NotBefore.Equal(want.NotBefore) || k.NotBefore.Location() != time.UTC || k.RateLimit != want.RateLimit ||
				k.PepperVersion != 1 || len(k.Grants) != 1 || k.Grants[0] != "org1" || k.Metadata["team"] != "x" {
				t.Errorf("Lookup = %+v, want %+v with grants [org1], metadata team=x", k, want)
			}
		})
	}
}

func TestBadFiles(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	entry := func(extra string) string {
		return "keys:\n  - id: key_a\n    workspace: w\n    digest: " + hex + "\n    pepper_version: 1\n" + extra
	}
	cases := []struct{ name, doc, want string }{
		{"empty", "  \n", "empty"},
		{"no keys field", "{}", "keys: missing"},
		{"unknown top-level field", "key: []\n", "key"},
		{"unknown entry field", entry("    expires: 2027-01-01\n"), "field expires"},
		{"unknown json field", `{"keys": [], "extra": 1}`, `"extra"`},
		{"missing id", "keys:\n  - workspace: w\n    digest: " + hex + "\n    pepper_version: 1\n", "keys[0].id"},
		{"missing workspace", "keys:\n  - id: key_a\n    digest: " + hex + "\n    pepper_version: 1\n", "keys[0].workspace"},
		{"short digest", "keys:\n  - id: key_a\n    workspace: w\n    digest: abcd\n    pepper_version: 1\n", "keys[0].digest"},
		{"no pepper version", "keys:\n  - id: key_a\n    workspace: w\n    digest: " + hex + "\n", "keys[0].pepper_version"},
		{"bad time", entry("    expires_at: next year\n"), "keys[0].expires_at"},
		{"bad rate", entry("    rate_limit: lots\n"), "keys[0].rate_limit"},
		{"rate period past a year", entry("    rate_limit: 1/2562047h\n"), "keys[0].rate_limit"},
		{"rate period of max int64 ns", entry("    rate_limit: 1/9223372036854775807ns\n"), "keys[0].rate_limit"},
		{"rate count past a billion", entry("    rate_limit: 1000000001/s\n"), "keys[0].rate_limit"},
		{"duplicate id", entry("") + "  - id: key_a\n    workspace: w\n    digest: " + strings.Repeat("cd", 32) + "\n    pepper_version: 1\n", "keys[1].id"},
		{"duplicate digest", entry("") + "  - id: key_b\n    workspace: w\n    digest: " + hex + "\n    pepper_version: 1\n", "keys[1].digest"},
		{"duplicate live name", entry("    name: ci\n") + "  - id: key_b\n    workspace: w\n    name: ci\n    digest: " + strings.Repeat("cd", 32) + "\n    pepper_version: 1\n", "keys[1].name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.yaml")
			if err := os.WriteFile(path, []byte(c.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(context.Background(), path, zap.NewNop())
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded, want an error mentioning %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "missing.yaml"), zap.NewNop()); err == nil {
		t.Error("Open(missing file) succeeded")
	}
}

func TestRevokedNameReusable(t *testing.T) {
	a, b := storetest.NewKey(t, "w", "ci"), storetest.NewKey(t, "w", "ci")
	a.Key.RevokedAt = time.Now()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	write(t, path, entries([]storetest.Seed{{Key: a.Key, Digest: a.Digest}, {Key: b.Key, Digest: b.Digest}}))
	open(t, path)
}

// waitFor waits until cond holds, for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Until(t, 5*time.Second, what, cond)
}

func changesByKey(t *testing.T, s *Store, after int64) map[string]apikey.Change {
	t.Helper()
	cs, err := s.Changes(context.Background(), after, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]apikey.Change{}
	for i, c := range cs {
		if i > 0 && c.Seq <= cs[i-1].Seq {
			t.Errorf("Seq not increasing: %d after %d", c.Seq, cs[i-1].Seq)
		}
		m[c.KeyID] = c
	}
	return m
}

func TestReload(t *testing.T) {
	for name, opts := range map[string][]Option{
		"watch": nil,
		"poll":  {noWatch, WithPollInterval(20 * time.Millisecond)},
	} {
		t.Run(name, func(t *testing.T) { testReload(t, opts...) })
	}
}

func testReload(t *testing.T, opts ...Option) {
	ctx := context.Background()
	gone, rotated, edited, kept, revoked := storetest.NewKey(t, "w", "gone"), storetest.NewKey(t, "w", "rotated"),
		storetest.NewKey(t, "w", "edited"), storetest.NewKey(t, "w", "kept"), storetest.NewKey(t, "w", "revoked")
	seeds := []storetest.Seed{{Key: gone.Key, Digest: gone.Digest}, {Key: rotated.Key, Digest: rotated.Digest},
		{Key: edited.Key, Digest: edited.Digest}, {Key: kept.Key, Digest: kept.Digest}, {Key: revoked.Key, Digest: revoked.Digest}}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	write(t, path, entries(seeds))
	s := open(t, path, opts...)
	if last, _ := s.LastSeq(ctx); last != 0 {
		t.Errorf("LastSeq after first load = %d, want 0", last)
	}

	added := storetest.NewKey(t, "w", "added")
	newDigest := storetest.NewDigest(t, 1)
	next := []storetest.Seed{
		{Key: rotated.Key, Digest: newDigest},
		{Key: edited.Key, Digest: edited.Digest},
		{Key: kept.Key, Digest: kept.Digest},
		{Key: revoked.Key, Digest: revoked.Digest},
		{Key: added.Key, Digest: added.Digest},
	}
	next[1].Key.Grants = []string{"org9"}
	next[3].Key.RevokedAt = time.Now()
	write(t, path, entries(next))

	waitFor(t, "the removed key's Lookup to fail", func() bool {
		_, err := s.Lookup(ctx, gone.Digest)
		return errors.Is(err, apikey.ErrNotFound)
	})
	if _, err := s.Lookup(ctx, rotated.Digest); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("Lookup(rotated key's old digest) = %v, want ErrNotFound", err)
	}
	if k, err := s.Lookup(ctx, newDigest); err != nil || k.ID != rotated.Key.ID {
		t.Errorf("Lookup(rotated key's new digest) = %s, %v", k.ID, err)
	}
	if k, err := s.Lookup(ctx, revoked.Digest); err != nil || k.RevokedAt.IsZero() {
		t.Errorf("Lookup(revoked) = %+v, %v; want RevokedAt set", k, err)
	}
	if k, err := s.Get(ctx, edited.Key.ID); err != nil || len(k.Grants) != 1 || k.Grants[0] != "org9" {
		t.Errorf("Get(edited) = %+v, %v; want grants [org9]", k, err)
	}
	if _, err := s.Get(ctx, added.Key.ID); err != nil {
		t.Errorf("Get(added): %v", err)
	}

	ch := changesByKey(t, s, 0)
	want := map[string]struct {
		kind apikey.ChangeKind
		d    apikey.Digest
	}{
		gone.Key.ID:    {apikey.Deleted, gone.Digest},
		rotated.Key.ID: {apikey.Refreshed, rotated.Digest},
		edited.Key.ID:  {apikey.Refreshed, edited.Digest},
		revoked.Key.ID: {apikey.Deleted, revoked.Digest},
		added.Key.ID:   {apikey.Created, added.Digest},
	}
	if len(ch) != len(want) {
		t.Errorf("Changes = %+v, want %d entries (kept key unchanged)", ch, len(want))
	}
	for id, w := range want {
		c, ok := ch[id]
		if !ok || c.Kind != w.kind || len(c.Digests) != 1 || c.Digests[0] != w.d.Sum {
			t.Errorf("change for %s = %+v, want %s with digest %x", id, c, w.kind, w.d.Sum[:4])
		}
	}
	last, err := s.LastSeq(ctx)
	if err != nil || last != int64(len(want)) {
		t.Errorf("LastSeq = %d, %v; want %d", last, err, len(want))
	}

	// Rewriting the same content adds nothing to the feed.
	write(t, path, entries(next))
	// A bad file keeps the previous keys and adds nothing either; the good file
	// after it is picked up.
	replace(t, path, []byte("keys:\n  - id: broken\n"))
	final := storetest.NewKey(t, "w", "final")
	write(t, path, entries(append(next, storetest.Seed{Key: final.Key, Digest: final.Digest})))
	waitFor(t, "the key added after a bad file", func() bool {
		_, err := s.Lookup(ctx, final.Digest)
		return err == nil
	})
	if _, err := s.Lookup(ctx, kept.Digest); err != nil {
		t.Errorf("Lookup(kept) after reloads: %v", err)
	}
	ch = changesByKey(t, s, last)
	if len(ch) != 1 || ch[final.Key.ID].Kind != apikey.Created {
		t.Errorf("Changes after last = %+v, want only final's creation", ch)
	}
}

func TestBadFileKeepsKeys(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	nk := storetest.NewKey(t, "w", "a")
	path := filepath.Join(t.TempDir(), "keys.yaml")
	write(t, path, entries([]storetest.Seed{{Key: nk.Key, Digest: nk.Digest}}))
	s, err := Open(context.Background(), path, zap.New(core), WithPollInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	replace(t, path, []byte("keys:\n  - id: key_x\n    workspace: w\n    digest: nothex\n    pepper_version: 1\n"))
	waitFor(t, "the bad file to be logged", func() bool { return logs.FilterMessage("bad key file; keeping the previous keys").Len() > 0 })
	if _, err := s.Lookup(context.Background(), nk.Digest); err != nil {
		t.Errorf("Lookup after a bad file: %v, want the previous key", err)
	}
	if last, _ := s.LastSeq(context.Background()); last != 0 {
		t.Errorf("LastSeq after a bad file = %d, want 0", last)
	}
	// The same bad content is logged once, not at every poll.
	n := logs.FilterMessage("bad key file; keeping the previous keys").Len()
	for range 3 {
		s.reload()
	}
	if m := logs.FilterMessage("bad key file; keeping the previous keys").Len(); m != n {
		t.Errorf("bad file logged %d times over several polls, want once", m)
	}
}

// Kubernetes updates a Secret volume by writing a new timestamped directory and
// swapping the ..data symlink; the key file itself is a symlink through ..data.
func TestKubernetesSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	a, b := storetest.NewKey(t, "w", "a"), storetest.NewKey(t, "w", "b")
	mk := func(name string, seeds []storetest.Seed) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "keys.yaml"), entries(seeds))
	}
	mk("..2026_01_01", []storetest.Seed{{Key: a.Key, Digest: a.Digest}})
	if err := os.Symlink("..2026_01_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/keys.yaml", filepath.Join(dir, "keys.yaml")); err != nil {
		t.Fatal(err)
	}
	s := open(t, filepath.Join(dir, "keys.yaml")) // default poll: only the watch can see the swap in time
	mk("..2026_01_02", []storetest.Seed{{Key: b.Key, Digest: b.Digest}})
	if err := os.Symlink("..2026_01_02", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the swapped-in key", func() bool {
		_, err := s.Lookup(context.Background(), b.Digest)
		return err == nil
	})
	if _, err := s.Lookup(context.Background(), a.Digest); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("Lookup(swapped-out key) = %v, want ErrNotFound", err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	nk := storetest.NewKey(t, "w", "a")
	nk.Key.ExpiresAt = time.Date(2030, 1, 1, 0, 0, 0, 123_000_000, time.UTC)
	nk.Key.RateLimit = apikey.Rate{N: 5, Per: 30 * time.Second}
	nk.Key.Metadata = map[string]string{"k": "v: with colon"}
	var buf bytes.Buffer
	if err := Encode(&buf, []Entry{NewEntry(nk.Key, nk.Digest)}); err != nil {
		t.Fatal(err)
	}
	snap, err := parse(buf.Bytes())
	if err != nil {
		t.Fatalf("parse(Encode(...)): %v\n%s", err, buf.String())
	}
	r := snap.byDigest[nk.Digest.Sum]
	if r == nil || !sameKey(r.key, apikey.Key{ID: nk.Key.ID, Workspace: "w", Name: "a", Display: nk.Key.Display,
		CreatedAt: nk.Key.CreatedAt, ExpiresAt: nk.Key.ExpiresAt, RateLimit: nk.Key.RateLimit, Metadata: nk.Key.Metadata}) {
		t.Errorf("round trip = %+v", r)
	}
	var empty bytes.Buffer
	if err := Encode(&empty, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := parse(empty.Bytes()); err != nil {
		t.Errorf("parse(Encode(nil)) = %v, want an empty key set", err)
	}
}

func BenchmarkLookup(b *testing.B) {
	var seeds []storetest.Seed
	for i := range 1000 {
		nk := storetest.NewKey(b, "w", "k"+string(rune(i)))
		nk.Key.Grants = []string{"org1"}
		seeds = append(seeds, storetest.Seed{Key: nk.Key, Digest: nk.Digest})
	}
	path := filepath.Join(b.TempDir(), "keys.yaml")
	var buf bytes.Buffer
	if err := Encode(&buf, entries(seeds)); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	s, err := Open(context.Background(), path, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.Lookup(context.Background(), seeds[i%len(seeds)].Digest); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// A key's disabled flag is read from the file, and toggling it in a reload
// evicts the key (a Refreshed change with its digest).
func TestDisabledFlag(t *testing.T) {
	nk := storetest.NewKey(t, "w", "a")
	path := filepath.Join(t.TempDir(), "keys.yaml")
	write(t, path, entries([]storetest.Seed{{Key: nk.Key, Digest: nk.Digest}}))
	s := open(t, path, noWatch, WithPollInterval(time.Hour))
	ctx := context.Background()
	if k, err := s.Lookup(ctx, nk.Digest); err != nil || k.Disabled {
		t.Fatalf("Lookup = Disabled %v, %v; want enabled", k.Disabled, err)
	}
	replace(t, path, []byte(strings.Replace(string(mustEncode(t, nk)), "pepper_version: 1", "pepper_version: 1\n    disabled: true", 1)))
	s.reload()
	k, err := s.Lookup(ctx, nk.Digest)
	if err != nil || !k.Disabled || !errors.Is(k.Valid(time.Now()), apikey.ErrDisabled) {
		t.Fatalf("Lookup after disabled: true = Disabled %v, %v; want a disabled key", k.Disabled, err)
	}
	chs, err := s.Changes(ctx, 0, 10)
	if err != nil || len(chs) != 1 || chs[0].Kind != apikey.Refreshed || chs[0].KeyID != nk.Key.ID ||
		len(chs[0].Digests) != 1 || chs[0].Digests[0] != nk.Digest.Sum {
		t.Errorf("Changes after disabling = %+v, %v; want one Refreshed entry with the key's digest", chs, err)
	}
}

func mustEncode(t *testing.T, nk apikey.NewKey) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Encode(&b, []Entry{NewEntry(nk.Key, nk.Digest)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "pepper_version: 1\n") {
		t.Fatalf("encoded entry lacks pepper_version: 1:\n%s", b.String())
	}
	return b.Bytes()
}
