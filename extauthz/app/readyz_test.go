package app

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

// feedStore is a store whose change feed fails while broken is set.
type feedStore struct {
	apikey.Store
	broken atomic.Bool
}

func (f *feedStore) Changes(ctx context.Context, after int64, limit int) ([]apikey.Change, error) {
	if f.broken.Load() {
		return nil, errors.New("feed down")
	}
	return f.Store.Changes(ctx, after, limit)
}

func (f *feedStore) LastSeq(ctx context.Context) (int64, error) {
	if f.broken.Load() {
		return 0, errors.New("feed down")
	}
	return f.Store.LastSeq(ctx)
}

// A change feed that keeps failing while the store answers makes /readyz say
// degraded (still 200), with a reason, and ready again once it recovers.
func TestReadyzReportsFailingChangeFeed(t *testing.T) {
	cfg := testConfig(t)
	cfg.Store.FollowInterval = 10 * time.Millisecond
	p, _ := sqlitePath(cfg.Store.URL)
	st, err := sqlite.Open(context.Background(), p, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	fs := &feedStore{Store: st}
	a, err := New(context.Background(), cfg, zap.NewNop(), Options{Embedded: true, Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	a.feedGrace = 200 * time.Millisecond
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	readyz := func() (code int, body map[string]string) {
		r, err := hc.Get("http://" + a.HTTPAddr().String() + "/readyz")
		if err != nil {
			return 0, nil
		}
		defer r.Body.Close()
		_ = json.NewDecoder(r.Body).Decode(&body)
		return r.StatusCode, body
	}
	status := func(want string) func() bool {
		return func() bool { code, b := readyz(); return code == http.StatusOK && b["status"] == want }
	}
	waitFor(t, "ready", status("ready"))

	fs.broken.Store(true)
	start := time.Now()
	waitFor(t, "degraded", status("degraded"))
	if d := time.Since(start); d < a.feedGrace {
		t.Errorf("degraded %v after the feed broke, before the %v grace", d, a.feedGrace)
	}
	if _, b := readyz(); b["reason"] == "" {
		t.Errorf("/readyz = %v: degraded without a reason", b)
	}

	fs.broken.Store(false)
	waitFor(t, "ready again", status("ready"))
}
