package extauthz

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

// Check through the production read path — the key cache over SQLite's
// CheckReader — honours not_before and expires_at past 2262-04-11 (where Unix
// nanoseconds wrap) on every Check: the first (a store read) and the later ones
// (cache hits).
func TestFarFutureTimesThroughCacheAndSQLite(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "keys.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cache, err := keycache.New(st.CheckReader(), keycache.Options{Size: 100, TTL: time.Hour, NegativeSize: 100, NegativeTTL: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	f, h := formatHasher(t)
	lim, err := ratelimit.NewLocal(100)
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(f, h, cache, lim, m, defaultOptions([]string{"x-api-key"}, apikey.Rate{N: 1000, Per: time.Minute}), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	for name, at := range storetest.FarFutureTimes {
		for _, field := range []string{"not_before", "expires_at"} {
			t.Run(field+" "+name, func(t *testing.T) {
				secret, err := f.Generate()
				if err != nil {
					t.Fatal(err)
				}
				nk := storetest.NewKey(t, "acme", field+" "+name)
				nk.Digest = h.Sum(secret)
				want := 200 // expires_at far ahead: valid now
				if field == "not_before" {
					nk.Key.NotBefore, want = at, 401
				} else {
					nk.Key.ExpiresAt = at
				}
				if _, err := st.Create(ctx, nk); err != nil {
					t.Fatal(err)
				}
				for i := 1; i <= 3; i++ {
					resp, err := svc.Check(ctx, req("/", map[string]string{"x-api-key": secret}, nil))
					if o := result(t, resp, err); o.code != want {
						t.Fatalf("Check %d: %d, want %d", i, o.code, want)
					}
				}
			})
		}
	}
}
