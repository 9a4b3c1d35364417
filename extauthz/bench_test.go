package extauthz

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/keycache"
)

// BenchmarkCheckCacheHit measures the Check handler for a valid key whose
// record is in the cache, with the local limiter (no network, no codec), as the
// server runs it: a request decoded off the wire, the answer built in reused storage.
func BenchmarkCheckCacheHit(b *testing.B) {
	cacheHit(b, nil, nil, "/organizations/acme/jobs")
}

// BenchmarkCheckCacheHitMetadata is BenchmarkCheckCacheHit forwarding two
// metadata fields the key holds (one escaped), removing a third it lacks, on
// a two-level resource path granted by the key's workspace record, with usage
// counted.
func BenchmarkCheckCacheHitMetadata(b *testing.B) {
	fields := []string{"team", "plan", "region"}
	cacheHit(b, fields, func(k *apikey.Key) {
		k.Metadata = map[string]string{"team": "ml", "plan": "pro plan\n", "other": "x"}
		k.Space = apikey.Policy{Grants: []string{"partner/web"}}
	}, "/organizations/partner/projects/web/jobs")
}

func cacheHit(b *testing.B, fields []string, mod func(*apikey.Key), path string) {
	fx := newFixture(b, nil, func(o *Options) {
		o.Metadata = fields
		if fields != nil {
			o.Templates = []string{"/organizations/{organization}/projects/{project}"}
			o.Used = func(string, time.Time, apikey.Outcome) {}
		}
	})
	c, err := keycache.New(fx.keys, keycache.Options{Size: 1000, TTL: time.Hour, NegativeSize: 1000, NegativeTTL: time.Minute, Metadata: fields}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fx.svc.keys = c
	fx.svc.opt.DefaultRate.N = 1 << 30 // stay under the limit for the whole run
	secret, _ := fx.add(b, "acme", mod)
	r := NewWireRequest(path, []KV{{"x-api-key", secret}, {"user-agent", "bench"}, {"accept", "*/*"}}, nil)
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
