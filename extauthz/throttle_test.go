package extauthz

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// throttled is a fixture with the throttle on (20 unknown keys a minute per
// source unless mod says otherwise), a key cache in front of the counting
// store, and a clock the test moves.
type throttled struct {
	*fixture
	reg   *prometheus.Registry
	cache *keycache.Cache
	clock *time.Time
}

func newThrottled(t *testing.T, mod func(*Options)) *throttled {
	t.Helper()
	now := time.Now()
	fx := newFixture(t, nil, func(o *Options) {
		o.Now = func() time.Time { return now }
		o.Throttle = ThrottleOptions{UnknownKeys: apikey.Rate{N: 20, Per: time.Minute}, Sources: 100}
		if mod != nil {
			mod(o)
		}
	})
	c, err := keycache.New(fx.keys, keycache.Options{Size: 100, TTL: time.Hour, NegativeSize: 100, NegativeTTL: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	fx.svc.keys, fx.svc.peek, fx.svc.evict = c, c.Cached, c.Evict
	return &throttled{fixture: fx, reg: withRegistry(t, fx), cache: c, clock: &now}
}

// from builds a CheckRequest presenting key from peer address src, with x-forwarded-for xff when set.
func from(src, key, xff string) *authv3.CheckRequest {
	h := map[string]string{}
	if key != "" {
		h["x-api-key"] = key
	}
	if xff != "" {
		h["x-forwarded-for"] = xff
	}
	r := req("/", h, nil)
	r.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: src, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}}}}}
	return r
}

func (tf *throttled) check(t *testing.T, r *authv3.CheckRequest) outcome {
	t.Helper()
	resp, err := tf.svc.Check(context.Background(), r)
	return result(t, resp, err)
}

func (tf *throttled) unknownKey(t *testing.T) string {
	t.Helper()
	k, err := tf.format.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestThrottleUnknownKeysPerSource(t *testing.T) {
	tf := newThrottled(t, nil)
	const attacker, other = "198.51.100.7", "203.0.113.9"
	cachedKey, _ := tf.add(t, "acme", nil)
	uncached, _ := tf.add(t, "acme", nil)
	if o := tf.check(t, from(other, cachedKey, "")); o.code != 200 { // now cached as valid
		t.Fatalf("warm-up: %d", o.code)
	}

	codes := map[int]int{}
	var first429 outcome
	for i := range 30 {
		before := tf.keys.reads.Load()
		o := tf.check(t, from(attacker, tf.unknownKey(t), ""))
		codes[o.code]++
		read := tf.keys.reads.Load() - before
		switch {
		case o.code == 401 && read != 1:
			t.Fatalf("unknown key %d: 401 after %d store reads, want 1", i, read)
		case o.code == 429 && read != 0:
			t.Fatalf("unknown key %d: throttled after %d store reads, want 0", i, read)
		case o.code == 429 && first429.code == 0:
			first429 = o
		}
	}
	if codes[401] != 20 || codes[429] != 10 {
		t.Fatalf("30 unknown keys at 20/m: %v, want 20×401 then 10×429", codes)
	}
	if first429.body != `{"message":"Too many unknown API keys"}` || first429.headers["content-type"] != "application/json" {
		t.Fatalf("throttled answer: %s %v", first429.body, first429.headers)
	}
	if ra, _ := strconv.Atoi(first429.headers["retry-after"]); ra < 59 || ra > 60 {
		t.Fatalf("retry-after %q, want the rest of the 60s window", first429.headers["retry-after"])
	}
	if got := checksTotalMode(t, tf.reg, "enforce", "denied", reasonThrottled); got != 10 {
		t.Fatalf("checks_total{denied,throttled} = %v, want 10", got)
	}
	if got := avoided(t, tf); got != 10 {
		t.Fatalf("store reads avoided = %v, want 10", got)
	}

	// The throttled source: a key cached as valid still works; anything else is 429, no store read.
	reads := tf.keys.reads.Load()
	if o := tf.check(t, from(attacker, cachedKey, "")); o.code != 200 {
		t.Fatalf("cached valid key from the throttled source: %d, want 200", o.code)
	}
	if o := tf.check(t, from(attacker, uncached, "")); o.code != 429 {
		t.Fatalf("uncached valid key from the throttled source: %d, want 429", o.code)
	}
	if o := tf.check(t, from(attacker, "", "")); o.code != 401 {
		t.Fatalf("no key from the throttled source: %d, want 401", o.code)
	}
	if tf.keys.reads.Load() != reads {
		t.Fatalf("%d store reads for a throttled source, want 0", tf.keys.reads.Load()-reads)
	}
	// A key negative-cached already costs no store read: throttled, but not counted as avoided.
	known := tf.unknownKey(t)
	tf.check(t, from(other, known, ""))
	was := avoided(t, tf)
	if o := tf.check(t, from(attacker, known, "")); o.code != 429 || avoided(t, tf) != was {
		t.Fatalf("negative-cached key: %d, avoided %v → %v; want 429, unchanged", o.code, was, avoided(t, tf))
	}

	// Other sources are unaffected.
	if o := tf.check(t, from(other, tf.unknownKey(t), "")); o.code != 401 {
		t.Fatalf("unknown key from another source: %d, want 401", o.code)
	}
	if o := tf.check(t, from(other, uncached, "")); o.code != 200 {
		t.Fatalf("valid key from another source: %d, want 200", o.code)
	}

	// The next window starts afresh.
	*tf.clock = tf.clock.Add(time.Minute)
	if o := tf.check(t, from(attacker, tf.unknownKey(t), "")); o.code != 401 {
		t.Fatalf("unknown key in the next window: %d, want 401", o.code)
	}
}

// TestThrottleForwardedFor: with trusted proxies, the source is the hop that
// many before the peer in x-forwarded-for, whether or not Envoy appended the
// peer; a client's own entries left of it do not matter.
func TestThrottleForwardedFor(t *testing.T) {
	tf := newThrottled(t, func(o *Options) {
		o.Throttle.TrustedProxies = 1
		o.Throttle.UnknownKeys.N = 3
	})
	const lb = "10.0.0.2"
	for i, xff := range []string{"192.0.2.1", "spoofed-" + strconv.Itoa(1) + ", 192.0.2.1", "192.0.2.1, " + lb} {
		if o := tf.check(t, from(lb, tf.unknownKey(t), xff)); o.code != 401 {
			t.Fatalf("unknown key %d via the proxy: %d, want 401", i, o.code)
		}
	}
	if o := tf.check(t, from(lb, tf.unknownKey(t), "spoofed-2, 192.0.2.1")); o.code != 429 {
		t.Fatalf("client 192.0.2.1 over its budget: %d, want 429", o.code)
	}
	if o := tf.check(t, from(lb, tf.unknownKey(t), "192.0.2.99, "+lb)); o.code != 401 {
		t.Fatalf("another client behind the same proxy: %d, want 401", o.code)
	}
	if o := tf.check(t, from(lb, tf.unknownKey(t), "")); o.code != 401 {
		t.Fatalf("no x-forwarded-for: the peer is the source: %d, want 401", o.code)
	}
	for _, c := range []struct {
		xff, peer string
		n         int
		want      string
	}{
		{"a", "p", 1, "a"},
		{"a, b", "p", 1, "b"},
		{"a, b", "p", 2, "a"},
		{"a, b", "p", 3, "p"},
		{"a, b, p", "p", 1, "b"},
		{"a,b ,, p ", "p", 2, "a"},
		{"", "p", 1, "p"},
		{" , ", "p", 1, "p"},
	} {
		if got := forwardedHop(c.xff, c.peer, c.n); got != c.want {
			t.Errorf("forwardedHop(%q, %q, %d) = %q, want %q", c.xff, c.peer, c.n, got, c.want)
		}
	}
}

// TestThrottleBounded: the sources tracked stay within throttle.sources, the
// least recently seen dropped first.
func TestThrottleBounded(t *testing.T) {
	tf := newThrottled(t, func(o *Options) { o.Throttle.Sources = 8; o.Throttle.UnknownKeys.N = 2 })
	for i := range 100 {
		tf.check(t, from(fmt.Sprintf("192.0.2.%d", i), tf.unknownKey(t), ""))
		if n := tf.svc.thr.len(); n > 8 {
			t.Fatalf("%d sources tracked, bound 8", n)
		}
	}
	// The latest source is tracked: its second unknown key puts it over.
	tf.check(t, from("192.0.2.99", tf.unknownKey(t), ""))
	if o := tf.check(t, from("192.0.2.99", tf.unknownKey(t), "")); o.code != 429 {
		t.Fatalf("recent source: %d, want 429", o.code)
	}
	// The first one was dropped: it starts from zero.
	tf.check(t, from("192.0.2.0", tf.unknownKey(t), ""))
	if o := tf.check(t, from("192.0.2.0", tf.unknownKey(t), "")); o.code != 401 {
		t.Fatalf("evicted source: %d, want 401 (its count restarted)", o.code)
	}
}

// TestThrottleReportOnly: in report-only mode a throttled request is allowed,
// marked 429, still without a store read.
func TestThrottleReportOnly(t *testing.T) {
	tf := newThrottled(t, func(o *Options) { o.ReportOnly = true; o.Throttle.UnknownKeys.N = 1 })
	tf.check(t, from("198.51.100.7", tf.unknownKey(t), ""))
	reads := tf.keys.reads.Load()
	o := tf.check(t, from("198.51.100.7", tf.unknownKey(t), ""))
	wantWouldDeny(t, "throttled", o, "429")
	wantAnonymous(t, "throttled", o)
	if tf.keys.reads.Load() != reads {
		t.Fatal("a throttled request read the store in report-only mode")
	}
	if got := checksTotalMode(t, tf.reg, "report_only", "denied", reasonThrottled); got != 1 {
		t.Fatalf("checks_total{denied,throttled,report_only} = %v, want 1", got)
	}
}

// TestThrottleOff: without the option no source is tracked, whatever it presents.
func TestThrottleOff(t *testing.T) {
	fx := newFixture(t, nil, nil)
	if fx.svc.thr != nil {
		t.Fatal("throttle on without options")
	}
	for range 30 {
		k, _ := fx.format.Generate()
		resp, err := fx.svc.Check(context.Background(), from("198.51.100.7", k, ""))
		if o := result(t, resp, err); o.code != 401 {
			t.Fatalf("throttle off: %d, want 401", o.code)
		}
	}
}

// avoided is keyauthz_throttle_store_reads_avoided_total.
func avoided(t *testing.T, tf *throttled) float64 {
	t.Helper()
	var m dto.Metric
	if err := tf.svc.metrics.avoided.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
