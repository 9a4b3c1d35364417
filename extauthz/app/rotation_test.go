package app

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// rotation is a pepper rotation (current: 2, versions 1 and 2) over one SQLite
// store, with replicas built from the Check path's real parts.
type rotation struct {
	store  *sqlite.Store
	format *apikey.Format
	v1, v2 *apikey.Hasher // before and after the rotation
}

func newRotation(t *testing.T) *rotation {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "keys.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	r := &rotation{store: s}
	if r.format, err = apikey.NewFormat("kz", 256, false); err != nil {
		t.Fatal(err)
	}
	p1, p2 := []byte("pepper-one-pepper-one-pepper-one"), []byte("pepper-two-pepper-two-pepper-two")
	if r.v1, err = apikey.NewHasher(map[int][]byte{1: p1}, 1); err != nil {
		t.Fatal(err)
	}
	if r.v2, err = apikey.NewHasher(map[int][]byte{1: p1, 2: p2}, 2); err != nil {
		t.Fatal(err)
	}
	return r
}

// key stores a key issued before the rotation (its digest under pepper 1).
func (r *rotation) key(t *testing.T) (secret string, nk apikey.NewKey) {
	t.Helper()
	secret, err := r.format.Generate()
	if err != nil {
		t.Fatal(err)
	}
	nk = storetest.NewKey(t, "acme", "k")
	nk.Digest = r.v1.Sum(secret)
	if _, err := r.store.Create(context.Background(), nk); err != nil {
		t.Fatal(err)
	}
	return secret, nk
}

// replica is one keyauthz process after the rotation: cache (on a test clock)
// over the store's CheckReader, change-feed follower, background re-hasher
// (when run), Check service.
type replica struct {
	clock    *testenv.Clock
	cache    *keycache.Cache
	follower *keycache.Follower
	bg       *background
	check    *extauthz.Service
}

func (r *rotation) replica(t *testing.T, opt keycache.Options, rehash bool) *replica {
	t.Helper()
	rp := &replica{clock: testenv.NewClock(time.Now())}
	opt.Now = rp.clock.Now
	var err error
	if rp.cache, err = keycache.New(r.store.CheckReader(), opt, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rp.cache.Close() })
	if rp.follower, err = keycache.NewFollower(r.store, rp.cache, time.Hour, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if err := rp.follower.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	lim, err := ratelimit.NewLocal(100, ratelimit.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	m, err := extauthz.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	def := config.Default()
	opts := extauthz.Options{Headers: []string{"x-api-key"}, DefaultRate: apikey.Rate{N: 1_000_000, Per: time.Second},
		KeyIDHeader: def.Headers.KeyID, WorkspaceHeader: def.Headers.Workspace, Realm: def.Response.Realm,
		Body: def.Response.Body, RateHeaders: def.Response.RateHeaders, Reset: def.Response.Reset}
	if rehash {
		rp.bg = newBackground(r.store, rp.cache, r.v2, zap.NewNop())
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); rp.bg.run(ctx) }()
		t.Cleanup(func() { stop(); <-done })
		opts.Rehash = rp.bg.rehash
	}
	if rp.check, err = extauthz.New(r.format, r.v2, rp.cache, lim, m, opts, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	return rp
}

// status runs one Check with secret and returns its HTTP status.
func (rp *replica) status(t *testing.T, secret string) int {
	t.Helper()
	res, err := rp.check.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Path: "/", Headers: map[string]string{":path": "/", "x-api-key": secret},
		}},
	}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if res.GetOkResponse() != nil {
		return 200
	}
	return int(res.GetDeniedResponse().GetStatus().GetCode())
}

// rehashed waits until the key's digest under the current pepper is in the
// store and rp's background has nothing queued.
func (r *rotation) rehashed(t *testing.T, rp *replica, secret string) {
	t.Helper()
	waitFor(t, "the background re-hash", func() bool {
		if _, err := r.store.Lookup(context.Background(), r.v2.Sum(secret)); err != nil {
			return false
		}
		rp.bg.mu.Lock()
		defer rp.bg.mu.Unlock()
		return len(rp.bg.pending) == 0
	})
}

// A pepper rotation causes no denial: a key issued under pepper 1 answers 200
// on its first Check (which misses under pepper 2, leaving a negative entry,
// and queues the re-hash) and on 100 Checks spread over the 35 s after the
// re-hash — longer than the 30 s negative TTL the old code denied for.
func TestPepperRotationNoDenials(t *testing.T) {
	r := newRotation(t)
	secret, _ := r.key(t)
	rp := r.replica(t, keycache.Options{Size: 100, TTL: 5 * time.Minute, NegativeSize: 100, NegativeTTL: 30 * time.Second}, true)
	if got := rp.status(t, secret); got != 200 {
		t.Fatalf("first Check after the rotation: %d, want 200", got)
	}
	r.rehashed(t, rp, secret)
	for i := 1; i <= 100; i++ {
		rp.clock.Add(350 * time.Millisecond)
		if got := rp.status(t, secret); got != 200 {
			t.Fatalf("Check %d, %v after the re-hash: %d, want 200", i, time.Duration(i)*350*time.Millisecond, got)
		}
	}
	if _, err := r.store.Lookup(context.Background(), r.v1.Sum(secret)); err == nil {
		t.Error("the digest under pepper 1 is still stored after the re-hash")
	}
}

// Another replica sees the re-hash only through the change feed, some time
// after the store write. It denies nothing meanwhile, even when its positive
// entry for the old digest has gone (cache TTL shorter than the negative TTL)
// and the store no longer knows that digest, and nothing after the follower
// has applied the change.
func TestPepperRotationOtherReplicaNoDenials(t *testing.T) {
	r := newRotation(t)
	secret, _ := r.key(t)
	opt := keycache.Options{Size: 100, TTL: 10 * time.Second, NegativeSize: 100, NegativeTTL: 30 * time.Second}
	a := r.replica(t, opt, true)
	b := r.replica(t, opt, false) // its re-hash would race a's; a does it

	if got := b.status(t, secret); got != 200 { // b: negative entry under pepper 2, positive under 1
		t.Fatalf("first Check on b: %d, want 200", got)
	}
	if got := a.status(t, secret); got != 200 {
		t.Fatalf("first Check on a: %d, want 200", got)
	}
	r.rehashed(t, a, secret)

	// b has not read the change feed yet; its entry for the old digest is past
	// its TTL, its negative entry for the new one is not.
	b.clock.Add(11 * time.Second)
	if got := b.status(t, secret); got != 200 {
		t.Fatalf("Check on b before its follower applied the re-hash: %d, want 200", got)
	}
	if err := b.follower.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		a.clock.Add(350 * time.Millisecond)
		b.clock.Add(350 * time.Millisecond)
		for name, rp := range map[string]*replica{"a": a, "b": b} {
			if got := rp.status(t, secret); got != 200 {
				t.Fatalf("Check %d on %s: %d, want 200", i, name, got)
			}
		}
	}
}

// The same on a replica whose old-digest entry is still fresh: only the change
// feed tells it the key moved, and it must drop its negative entry for the new
// digest along with the old digest's entry.
func TestPepperRotationFollowerEvictsNewDigest(t *testing.T) {
	r := newRotation(t)
	secret, _ := r.key(t)
	opt := keycache.Options{Size: 100, TTL: 5 * time.Minute, NegativeSize: 100, NegativeTTL: 30 * time.Second}
	a := r.replica(t, opt, true)
	b := r.replica(t, opt, false)
	if got := b.status(t, secret); got != 200 {
		t.Fatalf("first Check on b: %d, want 200", got)
	}
	if got := a.status(t, secret); got != 200 {
		t.Fatalf("first Check on a: %d, want 200", got)
	}
	r.rehashed(t, a, secret)
	if err := b.follower.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := b.cache.Stats().NegativeHits
	for i := 1; i <= 100; i++ {
		b.clock.Add(350 * time.Millisecond)
		if got := b.status(t, secret); got != 200 {
			t.Fatalf("Check %d on b: %d, want 200", i, got)
		}
	}
	if n := b.cache.Stats().NegativeHits - before; n != 0 {
		t.Errorf("b answered %d lookups from a negative entry after the change feed moved the key, want 0", n)
	}
}
