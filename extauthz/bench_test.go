package extauthz

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// BenchmarkCheckCacheHit measures the Check handler for a valid key whose
// record is in the cache, with the local limiter (no network, no codec), as the
// server runs it: a request decoded off the wire, the answer built in reused storage.
func BenchmarkCheckCacheHit(b *testing.B) {
	fx := newFixture(b, nil, nil)
	c, err := keycache.New(fx.keys, keycache.Options{Size: 1000, TTL: time.Hour, NegativeSize: 1000, NegativeTTL: time.Minute}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fx.svc.keys = c
	fx.svc.opt.DefaultRate.N = 1 << 30 // stay under the limit for the whole run
	secret, _ := fx.add(b, "acme", nil)
	r := NewWireRequest("/organizations/acme/jobs", []KV{{"x-api-key", secret}, {"user-agent", "bench"}, {"accept", "*/*"}}, nil)
	ctx := context.Background()
	var a Answer
	resp, err := fx.svc.DecideInto(ctx, &r, &a)
	if o := result(b, resp, err); o.code != 200 {
		b.Fatalf("warm-up: %d", o.code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := fx.svc.DecideInto(ctx, &r, &a); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckMalformed measures the reject path for a checksum-broken key.
func BenchmarkCheckMalformed(b *testing.B) {
	fx := newFixture(b, nil, nil)
	secret, _ := fx.add(b, "acme", nil)
	r := req("/", map[string]string{"x-api-key": flipLast(secret)}, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := fx.svc.Check(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}
