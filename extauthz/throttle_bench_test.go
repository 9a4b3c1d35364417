package extauthz

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// BenchmarkCheckNegativeHit measures an unknown well-formed key answered from
// the negative cache (401, no store read), with the throttle off.
func BenchmarkCheckNegativeHit(b *testing.B) {
	benchUnknown(b, ThrottleOptions{}, 401)
}

// BenchmarkCheckNegativeHitThrottleOn is BenchmarkCheckNegativeHit with the
// throttle on and the source under its budget (counting each unknown key).
func BenchmarkCheckNegativeHitThrottleOn(b *testing.B) {
	benchUnknown(b, ThrottleOptions{UnknownKeys: apikey.Rate{N: 1 << 30, Per: time.Hour}, Sources: 1000}, 401)
}

// BenchmarkCheckThrottled measures a request from a throttled source whose
// key is not cached as valid (429, no store read).
func BenchmarkCheckThrottled(b *testing.B) {
	benchUnknown(b, ThrottleOptions{UnknownKeys: apikey.Rate{N: 1, Per: time.Hour}, Sources: 1000}, 429)
}

// BenchmarkCheckCacheHitThrottleOn is BenchmarkCheckCacheHit with the
// throttle on, a source throttled, and the request from another source.
func BenchmarkCheckCacheHitThrottleOn(b *testing.B) {
	fx := newFixture(b, nil, func(o *Options) {
		o.Throttle = ThrottleOptions{UnknownKeys: apikey.Rate{N: 1, Per: time.Hour}, Sources: 1000}
	})
	c, err := keycache.New(fx.keys, keycache.Options{Size: 1000, TTL: time.Hour, NegativeSize: 1000, NegativeTTL: time.Hour}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fx.svc.keys, fx.svc.peek = c, c.Cached
	fx.svc.opt.DefaultRate.N = 1 << 30
	secret, _ := fx.add(b, "acme", nil)
	unknown, _ := fx.format.Generate()
	ctx := context.Background()
	var a Answer
	flood := NewWireRequest("/", []KV{{"x-api-key", unknown}}, nil)
	flood.Source = "198.51.100.7"
	fx.svc.DecideInto(ctx, &flood, &a)
	r := NewWireRequest("/organizations/acme/jobs", []KV{{"x-api-key", secret}, {"user-agent", "bench"}, {"accept", "*/*"}}, nil)
	r.Source = "203.0.113.9"
	runDecide(b, fx, &r, 200)
}

func benchUnknown(b *testing.B, th ThrottleOptions, want int) {
	fx := newFixture(b, nil, func(o *Options) { o.Throttle = th })
	c, err := keycache.New(fx.keys, keycache.Options{Size: 1000, TTL: time.Hour, NegativeSize: 1000, NegativeTTL: time.Hour}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fx.svc.keys, fx.svc.evict = c, c.Evict
	if fx.svc.thr != nil {
		fx.svc.peek = c.Cached
	}
	unknown, _ := fx.format.Generate()
	r := NewWireRequest("/organizations/acme/jobs", []KV{{"x-api-key", unknown}, {"user-agent", "bench"}, {"accept", "*/*"}}, nil)
	r.Source = "198.51.100.7"
	var a Answer
	fx.svc.DecideInto(context.Background(), &r, &a) // the negative entry; with N 1, the source over
	runDecide(b, fx, &r, want)
}

func runDecide(b *testing.B, fx *fixture, r *Request, want int) {
	ctx := context.Background()
	var a Answer
	resp, err := fx.svc.DecideInto(ctx, r, &a)
	if o := result(b, resp, err); o.code != want {
		b.Fatalf("warm-up: %d, want %d", o.code, want)
	}
	reads := fx.keys.reads.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := fx.svc.DecideInto(ctx, r, &a); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := fx.keys.reads.Load() - reads; n != 0 {
		b.Fatalf("%d store reads during the run, want 0", n)
	}
}
