package fastgrpc

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var fixedNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// mapKeys is an in-memory key store keyed by digest.
type mapKeys struct {
	mu  sync.Mutex
	m   map[[32]byte]apikey.Key
	err error
}

func (k *mapKeys) Lookup(_ context.Context, d apikey.Digest) (apikey.Key, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return apikey.Key{}, k.err
	}
	key, ok := k.m[d.Sum]
	if !ok {
		return apikey.Key{}, apikey.ErrNotFound
	}
	key.PepperVersion = d.Version
	return key, nil
}

// fixedLimiter answers deterministically: keys in deny are over their limit.
type fixedLimiter struct{ deny map[string]bool }

func (l fixedLimiter) Allow(_ context.Context, key string, r apikey.Rate) (ratelimit.Decision, error) {
	if l.deny[key] {
		return ratelimit.Decision{Limit: r.N, Reset: 30 * time.Second, RetryAfter: 2 * time.Second, Window: r.Per}, nil
	}
	return ratelimit.Decision{Allowed: true, Limit: r.N, Remaining: r.N - 1, Reset: 250 * time.Millisecond, Window: r.Per}, nil
}

// fixture is a Check service over an in-memory store with one key of each kind.
type fixture struct {
	svc     *extauthz.Service
	keys    *mapKeys
	hasher  *apikey.Hasher
	rehash  atomic.Int64 // Rehash hook calls
	valid   string       // workspace acme
	granted string       // workspace acme, grant partner
	revoked string
	limited string // the limiter denies it
	old     string // stored under the older pepper: found via Rehash
	unknown string // well-formed, not stored
	meta    string // workspace acme, every forwarded metadata field (one escaped)
	partial string // workspace acme, one forwarded metadata field of two
}

// metaFields are the metadata fields the fixture forwards upstream.
var metaFields = []string{"team", "Plan"}

// fixedKey is a well-formed key every fixture stores (workspace acme), the same
// in every run, so that committed fuzz corpus entries can reach an allow.
const fixedKey = "kz_FuzzCorpusFixedKey00000000000000000000000000Q7Kjx"

// newFixture builds the fixture, forwarding metaFields; lim nil means a
// fixedLimiter denying fx.limited.
func newFixture(t testing.TB, lim extauthz.Limiter) *fixture {
	t.Helper()
	return newFixtureWith(t, lim, metaFields)
}

// newFixtureWith is newFixture forwarding the metadata fields meta.
func newFixtureWith(t testing.TB, lim extauthz.Limiter, meta []string) *fixture {
	t.Helper()
	return newFixtureOpts(t, lim, meta, nil)
}

// newFixtureOpts is newFixtureWith with the service's options changed by mod.
func newFixtureOpts(t testing.TB, lim extauthz.Limiter, meta []string, mod func(*extauthz.Options)) *fixture {
	t.Helper()
	format, err := apikey.NewFormat("kz", 256, false)
	if err != nil {
		t.Fatal(err)
	}
	h, err := apikey.NewHasher(map[int][]byte{
		1: []byte("0123456789abcdef0123456789abcdef"),
		2: []byte("fedcba9876543210fedcba9876543210"),
	}, 2)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{keys: &mapKeys{m: map[[32]byte]apikey.Key{}}, hasher: h}
	gen := func() string {
		s, err := format.Generate()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	add := func(d apikey.Digest, k apikey.Key) {
		k.CreatedAt = fixedNow.Add(-time.Hour)
		fx.keys.m[d.Sum] = k
	}
	fx.valid, fx.granted, fx.revoked, fx.limited, fx.old, fx.unknown = gen(), gen(), gen(), gen(), gen(), gen()
	fx.meta, fx.partial = gen(), gen()
	add(h.Sum(fx.valid), apikey.Key{ID: "key_valid", Workspace: "acme"})
	add(h.Sum(fx.meta), apikey.Key{ID: "key_meta", Workspace: "acme",
		Metadata: map[string]string{"team": "ml ops", "Plan": "pro\r\nx-evil: 1 é", "other": "not forwarded"}})
	add(h.Sum(fx.partial), apikey.Key{ID: "key_partial", Workspace: "acme", Metadata: map[string]string{"Plan": "free"}})
	add(h.Sum(fixedKey), apikey.Key{ID: "key_fixed", Workspace: "acme"})
	add(h.Sum(fx.granted), apikey.Key{ID: "key_granted", Workspace: "acme", Grants: []string{"partner"}})
	add(h.Sum(fx.revoked), apikey.Key{ID: "key_revoked", Workspace: "acme", RevokedAt: fixedNow.Add(-time.Minute)})
	add(h.Sum(fx.limited), apikey.Key{ID: "key_limited", Workspace: "acme", RateLimit: apikey.Rate{N: 5, Per: time.Second}})
	d1, err := h.SumVersion(fx.old, 1)
	if err != nil {
		t.Fatal(err)
	}
	add(d1, apikey.Key{ID: "key_old", Workspace: "acme"})
	if lim == nil {
		lim = fixedLimiter{deny: map[string]bool{"key_limited": true}}
	}
	m, err := extauthz.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	def := config.Default()
	opt := extauthz.Options{
		Headers:     []string{"x-api-key", "salad-api-key"},
		Bearer:      true,
		KeyIDHeader: def.Headers.KeyID, WorkspaceHeader: def.Headers.Workspace, Realm: def.Response.Realm,
		Body: def.Response.Body, RateHeaders: def.Response.RateHeaders, Reset: def.Response.Reset,
		Templates:   []string{"/organizations/{resource}"},
		DefaultRate: apikey.Rate{N: 240, Per: time.Minute},
		Metadata:    meta,
		Now:         func() time.Time { return fixedNow },
		// As the app's hook does: the digest is computed now, the key never kept.
		Rehash: func(_ apikey.Digest, key string) { _ = h.Sum(key); fx.rehash.Add(1) },
	}
	if mod != nil {
		mod(&opt)
	}
	fx.svc, err = extauthz.New(format, h, fx.keys, lim, m, opt, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

// Wire-format builders for hand-made CheckRequests.

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// msg is a length-delimited field holding parts.
func msg(num protowire.Number, parts ...[]byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, cat(parts...))
}

func strf(num protowire.Number, s string) []byte { return msg(num, []byte(s)) }

func entryOf(num protowire.Number, k, v string) []byte { return msg(num, strf(1, k), strf(2, v)) }

func varint(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
}

func fixed32(num protowire.Number) []byte {
	return protowire.AppendFixed32(protowire.AppendTag(nil, num, protowire.Fixed32Type), 7)
}

func fixed64(num protowire.Number) []byte {
	return protowire.AppendFixed64(protowire.AppendTag(nil, num, protowire.Fixed64Type), 7)
}

func group(num protowire.Number, inner ...[]byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.StartGroupType)
	b = append(b, cat(inner...)...)
	return protowire.AppendTag(b, num, protowire.EndGroupType)
}

// checkReq wraps attribute fields in CheckRequest.attributes.
func checkReq(attrs ...[]byte) []byte { return msg(1, attrs...) }

// httpReq is AttributeContext.request.http holding fields.
func httpReq(fields ...[]byte) []byte { return msg(4, msg(2, fields...)) }

func hdr(k, v string) []byte   { return entryOf(3, k, v) }
func path(p string) []byte     { return strf(4, p) }
func ext(k, v string) []byte   { return entryOf(10, k, v) }
func hmap(hv ...[]byte) []byte { return msg(13, hv...) }

// hv is one HeaderMap.headers element; raw is set when non-nil.
func hv(k, v string, raw []byte) []byte {
	parts := [][]byte{strf(1, k)}
	if v != "" {
		parts = append(parts, strf(2, v))
	}
	if raw != nil {
		parts = append(parts, msg(3, raw))
	}
	return msg(1, parts...)
}

// httpCode is the HTTP status a response gives the client (200 on allow).
func httpCode(r *authv3.CheckResponse) int {
	if r.GetOkResponse() != nil {
		return 200
	}
	return int(r.GetDeniedResponse().GetStatus().GetCode())
}
