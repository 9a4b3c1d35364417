package usage

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingToucher records every Touch call; err makes Touch fail.
type countingToucher struct {
	next  Toucher // optional real store
	mu    sync.Mutex
	calls []map[string]time.Time
	err   error
}

func (c *countingToucher) Touch(ctx context.Context, used map[string]time.Time) error {
	c.mu.Lock()
	cp := make(map[string]time.Time, len(used))
	for k, v := range used {
		cp[k] = v
	}
	c.calls = append(c.calls, cp)
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if c.next != nil {
		return c.next.Touch(ctx, used)
	}
	return nil
}

func (c *countingToucher) snapshot() []map[string]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]time.Time(nil), c.calls...)
}

var _ Toucher = (*countingToucher)(nil)
var _ Toucher = (*sqlite.Store)(nil)

func newRecorder(t *testing.T, s Toucher, interval time.Duration) *Recorder {
	t.Helper()
	r, err := New(s, interval, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name     string
		s        Toucher
		interval time.Duration
		log      *zap.Logger
	}{
		{"nil store", nil, time.Second, zap.NewNop()},
		{"zero interval", &countingToucher{}, 0, zap.NewNop()},
		{"negative interval", &countingToucher{}, -time.Second, zap.NewNop()},
		{"nil logger", &countingToucher{}, time.Second, nil},
	} {
		if _, err := New(tc.s, tc.interval, tc.log); err == nil {
			t.Errorf("%s: New succeeded, want an error", tc.name)
		}
	}
}

// 1,000 uses across 3 keys from many goroutines are one Touch with 3 entries,
// each holding that key's latest use.
func TestFlushCoalesces(t *testing.T) {
	ct := &countingToucher{}
	r := newRecorder(t, ct, time.Hour)
	ids := []string{"key_a", "key_b", "key_c"}
	base := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				n := g*100 + i
				r.Used(ids[n%3], base.Add(time.Duration(n)*time.Millisecond))
			}
		}()
	}
	wg.Wait()
	if got := r.Stats().Pending; got != 3 {
		t.Errorf("Pending = %d, want 3", got)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	calls := ct.snapshot()
	if len(calls) != 1 {
		t.Fatalf("Touch calls = %d, want 1", len(calls))
	}
	// the latest n per key: 999 % 3 = 0 (a), 997 % 3 = 1 (b), 998 % 3 = 2 (c)
	want := map[string]time.Time{
		"key_a": base.Add(999 * time.Millisecond),
		"key_b": base.Add(997 * time.Millisecond),
		"key_c": base.Add(998 * time.Millisecond),
	}
	if len(calls[0]) != len(want) {
		t.Fatalf("Touch got %d keys, want %d: %v", len(calls[0]), len(want), calls[0])
	}
	for id, at := range want {
		if !calls[0][id].Equal(at) {
			t.Errorf("Touch[%s] = %v, want %v (the latest use)", id, calls[0][id], at)
		}
	}
	// Nothing pending: no store write at all.
	if err := r.Flush(context.Background()); err != nil {
		t.Fatalf("second Flush: %v", err)
	}
	if n := len(ct.snapshot()); n != 1 {
		t.Errorf("Touch calls after an idle flush = %d, want 1", n)
	}
	if st := r.Stats(); st.Pending != 0 || st.Flushes != 1 {
		t.Errorf("Stats = %+v, want no pending and 1 flush", st)
	}
}

func TestUsedKeepsLatestTime(t *testing.T) {
	ct := &countingToucher{}
	r := newRecorder(t, ct, time.Hour)
	late := time.Date(2030, 1, 1, 0, 0, 10, 0, time.UTC)
	r.Used("key_a", late)
	r.Used("key_a", late.Add(-5*time.Second)) // out of order: must not move it back
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ct.snapshot()[0]["key_a"]; !got.Equal(late) {
		t.Errorf("Touch[key_a] = %v, want %v", got, late)
	}
}

func TestFailedFlushIsRetried(t *testing.T) {
	ct := &countingToucher{err: errors.New("store down")}
	r := newRecorder(t, ct, time.Hour)
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	r.Used("key_a", at)
	if err := r.Flush(context.Background()); err == nil {
		t.Fatal("Flush with a failing store returned nil")
	}
	r.Used("key_b", at)
	ct.mu.Lock()
	ct.err = nil
	ct.mu.Unlock()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatalf("Flush after recovery: %v", err)
	}
	calls := ct.snapshot()
	if len(calls) != 2 || len(calls[1]) != 2 || !calls[1]["key_a"].Equal(at) {
		t.Errorf("Touch calls = %v; want the failed key_a retried together with key_b", calls)
	}
	if st := r.Stats(); st.Failures != 1 || st.Flushes != 1 || st.Pending != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

// Run flushes on its own every interval: at most one Touch per interval, and
// every use ends up in the store.
func TestRunFlushesPeriodically(t *testing.T) {
	ct := &countingToucher{}
	const interval = 50 * time.Millisecond
	r := newRecorder(t, ct, interval)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	at := time.Now()
	for i := range 1000 {
		r.Used([]string{"key_a", "key_b", "key_c"}[i%3], at)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		seen := map[string]bool{}
		for _, c := range ct.snapshot() {
			for id := range c {
				seen[id] = true
			}
		}
		if len(seen) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Run did not flush all keys within 5s; calls: %v", ct.snapshot())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	elapsed := time.Since(start)
	calls := ct.snapshot()
	if max := int(elapsed/interval) + 1; len(calls) > max {
		t.Errorf("Touch calls = %d in %v, want at most %d (one per interval)", len(calls), elapsed, max)
	}
	for _, c := range calls {
		if len(c) == 0 {
			t.Errorf("Run made an empty Touch call")
		}
	}
}

// Against the real sqlite store: last_used_at is visible after a flush.
func TestFlushToSQLite(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "keys.db"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k, err := s.Create(ctx, storetest.NewKey(t, "acme", "ci"))
	if err != nil {
		t.Fatal(err)
	}
	r := newRecorder(t, s, time.Hour)
	at := time.Now().UTC().Truncate(time.Microsecond)
	for range 1000 {
		r.Used(k.ID, at)
	}
	if g, _ := s.Get(ctx, k.ID); !g.LastUsedAt.IsZero() {
		t.Fatalf("LastUsedAt before flush = %v; Used must not write to the store", g.LastUsedAt)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	g, err := s.Get(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !g.LastUsedAt.Equal(at) {
		t.Errorf("LastUsedAt after flush = %v, want %v", g.LastUsedAt, at)
	}
}

func TestUsedDoesNotAllocate(t *testing.T) {
	r := newRecorder(t, &countingToucher{}, time.Hour)
	at := time.Now()
	r.Used("key_a", at)
	if n := testing.AllocsPerRun(1000, func() { r.Used("key_a", at) }); n != 0 {
		t.Errorf("Used of a pending key allocates %v times, want 0", n)
	}
}

func BenchmarkUsed(b *testing.B) {
	r, err := New(&countingToucher{}, time.Hour, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 1024)
	for i := range ids {
		ids[i], _ = apikey.NewID()
	}
	at := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Used(ids[i&1023], at)
			i++
		}
	})
}
