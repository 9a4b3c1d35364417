package usage

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
	"github.com/keyauthz/keyauthz/test/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeStore records every call; touchErr and addErr make those calls fail.
type fakeStore struct {
	next     Store // optional real store
	mu       sync.Mutex
	touches  []map[string]time.Time
	adds     [][]apikey.Usage
	prunes   []time.Time
	touchErr error
	addErr   error
}

func (f *fakeStore) Touch(ctx context.Context, used map[string]time.Time) error {
	f.mu.Lock()
	f.touches = append(f.touches, maps.Clone(used))
	err := f.touchErr
	f.mu.Unlock()
	if err == nil && f.next != nil {
		return f.next.Touch(ctx, used)
	}
	return err
}

func (f *fakeStore) AddUsage(ctx context.Context, rows []apikey.Usage) error {
	f.mu.Lock()
	f.adds = append(f.adds, append([]apikey.Usage(nil), rows...))
	err := f.addErr
	f.mu.Unlock()
	if err == nil && f.next != nil {
		return f.next.AddUsage(ctx, rows)
	}
	return err
}

func (f *fakeStore) PruneUsage(ctx context.Context, before time.Time) (int64, error) {
	f.mu.Lock()
	f.prunes = append(f.prunes, before)
	f.mu.Unlock()
	if f.next != nil {
		return f.next.PruneUsage(ctx, before)
	}
	return 3, nil
}

func (f *fakeStore) fail(touch, add error) {
	f.mu.Lock()
	f.touchErr, f.addErr = touch, add
	f.mu.Unlock()
}

// calls returns copies of the Touch, AddUsage and PruneUsage calls so far.
func (f *fakeStore) calls() ([]map[string]time.Time, [][]apikey.Usage, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]time.Time(nil), f.touches...), append([][]apikey.Usage(nil), f.adds...), append([]time.Time(nil), f.prunes...)
}

const retention = 35 * 24 * time.Hour

// bucketKey names one key's hour: the key id and the hour's start in Unix seconds.
type bucketKey struct {
	id   string
	hour int64
}

func newRecorder(t *testing.T, s Store, interval time.Duration) *Recorder {
	t.Helper()
	r, err := New(s, interval, retention, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func flush(t *testing.T, r *Recorder) {
	t.Helper()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

// sums adds up rows by key and hour, failing on a (key, hour) seen twice.
func sums(t *testing.T, rows []apikey.Usage) map[bucketKey][apikey.NumOutcomes]int64 {
	t.Helper()
	out := map[bucketKey][apikey.NumOutcomes]int64{}
	for _, u := range rows {
		k := bucketKey{u.KeyID, u.Hour.Unix()}
		if _, dup := out[k]; dup {
			t.Fatalf("AddUsage got two rows for %s at %v", u.KeyID, u.Hour)
		}
		if u.Hour.Location() != time.UTC || !u.Hour.Equal(u.Hour.Truncate(time.Hour)) {
			t.Fatalf("row hour %v is not the start of a UTC hour", u.Hour)
		}
		out[k] = u.Counts
	}
	return out
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name                string
		s                   Store
		interval, retention time.Duration
		log                 *zap.Logger
	}{
		{"nil store", nil, time.Second, retention, zap.NewNop()},
		{"zero interval", &fakeStore{}, 0, retention, zap.NewNop()},
		{"negative interval", &fakeStore{}, -time.Second, retention, zap.NewNop()},
		{"zero retention", &fakeStore{}, time.Second, 0, zap.NewNop()},
		{"nil logger", &fakeStore{}, time.Second, retention, nil},
	} {
		if _, err := New(tc.s, tc.interval, tc.retention, tc.log); err == nil {
			t.Errorf("%s: New succeeded, want an error", tc.name)
		}
	}
}

var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// 1,000 uses of 3 keys with every outcome, from 10 goroutines, are one Touch
// (each key's latest allowed use) and one AddUsage of 3 rows with exact counts.
func TestFlushSumsExactly(t *testing.T) {
	fs := &fakeStore{}
	r := newRecorder(t, fs, time.Hour)
	ids := []string{"key_a", "key_b", "key_c"}
	want := map[bucketKey][apikey.NumOutcomes]int64{}
	wantLast := map[string]time.Time{}
	for n := range 1000 {
		id, o := ids[n%3], apikey.Outcome(n%7%int(apikey.NumOutcomes))
		c := want[bucketKey{id, base.Truncate(time.Hour).Unix()}]
		c[o]++
		want[bucketKey{id, base.Truncate(time.Hour).Unix()}] = c
		if at := base.Add(time.Duration(n) * time.Millisecond); o == apikey.OutcomeAllowed && at.After(wantLast[id]) {
			wantLast[id] = at
		}
	}
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Go(func() {
			for i := range 100 {
				n := g*100 + i
				r.Used(ids[n%3], base.Add(time.Duration(n)*time.Millisecond), apikey.Outcome(n%7%int(apikey.NumOutcomes)))
			}
		})
	}
	wg.Wait()
	if got := r.Stats().Pending; got != 3 {
		t.Errorf("Pending = %d, want 3", got)
	}
	flush(t, r)
	touches, adds, _ := fs.calls()
	if len(touches) != 1 || len(adds) != 1 {
		t.Fatalf("Touch calls %d, AddUsage calls %d; want one each", len(touches), len(adds))
	}
	if got := sums(t, adds[0]); !maps.Equal(got, want) {
		t.Errorf("AddUsage sums %v\nwant %v", got, want)
	}
	if !maps.EqualFunc(touches[0], wantLast, time.Time.Equal) {
		t.Errorf("Touch %v, want %v (the latest allowed use per key)", touches[0], wantLast)
	}
	var total int64
	for _, u := range adds[0] {
		total += u.Total()
	}
	if total != 1000 {
		t.Errorf("rows count %d uses, want 1000", total)
	}
	if st := r.Stats(); st.Pending != 0 || st.Flushes != 1 || st.LastRows != 3 || st.RowsWritten != 3 || st.LastTouched != 3 || st.Adds != 1 || st.Touches != 1 {
		t.Errorf("Stats = %+v", st)
	}
	// Nothing pending: no store write at all.
	flush(t, r)
	if touches, adds, _ := fs.calls(); len(touches) != 1 || len(adds) != 1 {
		t.Errorf("an idle flush wrote: %d touches, %d adds", len(touches), len(adds))
	}
}

// Denials count but never set last-used; a flush of denials only makes no Touch.
func TestOnlyAllowedUsesTouch(t *testing.T) {
	fs := &fakeStore{}
	r := newRecorder(t, fs, time.Hour)
	r.Used("key_a", base, apikey.OutcomeRateLimited)
	r.Used("key_a", base, apikey.OutcomeDisabled)
	r.Used("key_a", base, apikey.NumOutcomes) // out of range: ignored
	flush(t, r)
	touches, adds, _ := fs.calls()
	if len(touches) != 0 {
		t.Errorf("Touch %v for denials only", touches)
	}
	var want [apikey.NumOutcomes]int64
	want[apikey.OutcomeRateLimited], want[apikey.OutcomeDisabled] = 1, 1
	if len(adds) != 1 || len(adds[0]) != 1 || adds[0][0].Counts != want {
		t.Errorf("AddUsage %v, want one row %v", adds, want)
	}
}

// Uses on both sides of an hour boundary are two rows of one key.
func TestHourRollover(t *testing.T) {
	fs := &fakeStore{}
	r := newRecorder(t, fs, time.Hour)
	h := time.Date(2030, 1, 2, 11, 0, 0, 0, time.UTC)
	r.Used("key_a", h.Add(-time.Nanosecond), apikey.OutcomeAllowed)
	r.Used("key_a", h.Add(-time.Minute), apikey.OutcomeForbidden)
	r.Used("key_a", h, apikey.OutcomeAllowed)
	r.Used("key_a", h.Add(59*time.Minute).In(time.FixedZone("X", 3600)), apikey.OutcomeAllowed) // zone does not matter
	flush(t, r)
	touches, adds, _ := fs.calls()
	got := sums(t, adds[0])
	var before, after [apikey.NumOutcomes]int64
	before[apikey.OutcomeAllowed], before[apikey.OutcomeForbidden], after[apikey.OutcomeAllowed] = 1, 1, 2
	want := map[bucketKey][apikey.NumOutcomes]int64{{"key_a", h.Add(-time.Hour).Unix()}: before, {"key_a", h.Unix()}: after}
	if !maps.Equal(got, want) {
		t.Errorf("rows %v, want %v", adds[0], want)
	}
	if !touches[0]["key_a"].Equal(h.Add(59 * time.Minute)) {
		t.Errorf("Touch %v, want the latest allowed use", touches[0])
	}
}

// Failed writes keep their counts, summed with later uses into one row per
// key and hour; the counts are exact once a flush succeeds.
func TestFailureThenSuccessKeepsCounts(t *testing.T) {
	fs := &fakeStore{}
	fs.fail(errors.New("store down"), errors.New("store down"))
	r := newRecorder(t, fs, time.Hour)
	for range 5 {
		r.Used("key_a", base, apikey.OutcomeAllowed)
		r.Used("key_b", base, apikey.OutcomeExpired)
	}
	if err := r.Flush(context.Background()); err == nil {
		t.Fatal("Flush with a failing store returned nil")
	}
	if st := r.Stats(); st.Failures != 1 || st.Pending != 2 {
		t.Errorf("Stats after the failure = %+v", st)
	}
	for range 3 {
		r.Used("key_a", base.Add(time.Second), apikey.OutcomeAllowed)
	}
	// Touch recovers first: the next flush touches, its AddUsage still fails.
	fs.fail(nil, errors.New("still down"))
	if err := r.Flush(context.Background()); err == nil {
		t.Fatal("Flush with AddUsage failing returned nil")
	}
	fs.fail(nil, nil)
	r.Used("key_a", base, apikey.OutcomeRevoked)
	flush(t, r)

	touches, adds, _ := fs.calls()
	if len(touches) != 2 || len(adds) != 3 {
		t.Fatalf("%d touches, %d adds; want 2 (the failed one, then one that wrote) and 3", len(touches), len(adds))
	}
	if !touches[1]["key_a"].Equal(base.Add(time.Second)) || len(touches[1]) != 1 {
		t.Errorf("Touch after the failure = %v, want key_a at its latest use", touches[1])
	}
	var a, b [apikey.NumOutcomes]int64
	a[apikey.OutcomeAllowed], a[apikey.OutcomeRevoked], b[apikey.OutcomeExpired] = 8, 1, 5
	want := map[bucketKey][apikey.NumOutcomes]int64{{"key_a", base.Truncate(time.Hour).Unix()}: a, {"key_b", base.Truncate(time.Hour).Unix()}: b}
	if got := sums(t, adds[2]); !maps.Equal(got, want) {
		t.Errorf("rows written %v, want %v", adds[2], want)
	}
	if st := r.Stats(); st.Failures != 2 || st.Flushes != 1 || st.Pending != 0 || st.RowsWritten != 2 {
		t.Errorf("Stats = %+v", st)
	}
}

// With maxPending buckets held, uses needing another bucket are dropped and
// counted; uses of pending buckets still count.
func TestMaxPendingBoundsMemory(t *testing.T) {
	fs := &fakeStore{}
	r := newRecorder(t, fs, time.Hour)
	r.max = 2
	r.Used("key_a", base, apikey.OutcomeAllowed)
	r.Used("key_b", base, apikey.OutcomeAllowed)
	r.Used("key_c", base, apikey.OutcomeAllowed)                // dropped
	r.Used("key_a", base.Add(time.Hour), apikey.OutcomeAllowed) // another hour: dropped
	r.Used("key_a", base, apikey.OutcomeForbidden)              // counted
	if st := r.Stats(); st.Dropped != 2 || st.Pending != 2 {
		t.Errorf("Stats = %+v, want 2 dropped, 2 pending", st)
	}
	flush(t, r)
	_, adds, _ := fs.calls()
	if len(adds[0]) != 2 {
		t.Errorf("rows %v, want key_a and key_b", adds[0])
	}
}

// Run flushes every interval and prunes at its first tick, then not again
// until an hour has passed, with before = now - retention.
func TestRunFlushesAndPrunesHourly(t *testing.T) {
	fs := &fakeStore{}
	r := newRecorder(t, fs, time.Millisecond)
	clock := testenv.NewClock(base)
	var ticks atomic.Int64
	r.now = func() time.Time { ticks.Add(1); return clock.Now() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	r.Used("key_a", base, apikey.OutcomeAllowed)
	testenv.Until(t, 5*time.Second, "a flush", func() bool { return r.Stats().Flushes == 1 })
	n := ticks.Load()
	testenv.Until(t, 5*time.Second, "more ticks", func() bool { return ticks.Load() >= n+5 })
	if _, _, prunes := fs.calls(); len(prunes) != 1 || !prunes[0].Equal(base.Add(-retention)) {
		t.Fatalf("prunes %v within the first hour, want one before %v", prunes, base.Add(-retention))
	}
	clock.Add(time.Hour)
	testenv.Until(t, 5*time.Second, "a second prune", func() bool { _, _, p := fs.calls(); return len(p) == 2 })
	if _, _, prunes := fs.calls(); !prunes[1].Equal(base.Add(time.Hour - retention)) {
		t.Errorf("second prune before %v, want %v", prunes[1], base.Add(time.Hour-retention))
	}
	if st := r.Stats(); st.Prunes != 2 || st.Pruned != 6 {
		t.Errorf("Stats = %+v, want 2 prunes of 3 rows", st)
	}
}

// Against the real sqlite store: last_used_at and the hourly counts are
// visible after a flush, and Used alone writes nothing.
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
	for i := range 1000 {
		o := apikey.OutcomeAllowed
		if i%10 == 0 {
			o = apikey.OutcomeRateLimited
		}
		r.Used(k.ID, at, o)
	}
	if g, _ := s.Get(ctx, k.ID); !g.LastUsedAt.IsZero() {
		t.Fatalf("LastUsedAt before flush = %v; Used must not write to the store", g.LastUsedAt)
	}
	flush(t, r)
	g, err := s.Get(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !g.LastUsedAt.Equal(at) {
		t.Errorf("LastUsedAt after flush = %v, want %v", g.LastUsedAt, at)
	}
	rows, err := s.Usage(ctx, k.ID, at.Add(-time.Hour), at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Counts[apikey.OutcomeAllowed] != 900 || rows[0].Counts[apikey.OutcomeRateLimited] != 100 || !rows[0].Hour.Equal(at.Truncate(time.Hour)) {
		t.Errorf("Usage = %+v, want one bucket of 900 allowed and 100 rate limited", rows)
	}
}

func TestUsedDoesNotAllocate(t *testing.T) {
	r := newRecorder(t, &fakeStore{}, time.Hour)
	at := time.Now()
	r.Used("key_a", at, apikey.OutcomeAllowed)
	if n := testing.AllocsPerRun(1000, func() {
		r.Used("key_a", at, apikey.OutcomeAllowed)
		r.Used("key_a", at, apikey.OutcomeForbidden)
	}); n != 0 {
		t.Errorf("Used of a key pending in the same hour allocates %v times, want 0", n)
	}
}

func BenchmarkUsed(b *testing.B) {
	r, err := New(&fakeStore{}, time.Hour, retention, zap.NewNop())
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
			r.Used(ids[i&1023], at, apikey.OutcomeAllowed)
			i++
		}
	})
}

// TestBucketCountsSaturate: a count never wraps around (a wrapped uint32
// would report 4 billion requests as a handful).
func TestBucketCountsSaturate(t *testing.T) {
	var b bucket
	b.add(apikey.OutcomeAllowed, 1<<32-2)
	b.add(apikey.OutcomeAllowed, 5)
	b.add(apikey.OutcomeForbidden, 3)
	b.add(apikey.OutcomeForbidden, -1) // ignored, as a put-back never sends one
	c := b.counts()
	if c[apikey.OutcomeAllowed] != 1<<32-1 || c[apikey.OutcomeForbidden] != 3 || c[apikey.OutcomeRateLimited] != 0 {
		t.Fatalf("counts %v", c)
	}
	if got := unsafe.Sizeof(b); got != 32 {
		t.Fatalf("bucket is %d bytes, want 32 (one per key used between flushes)", got)
	}
}
