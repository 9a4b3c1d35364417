package fastgrpc

import (
	"context"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Wire builders for AttributeContext.source: a Peer whose address is a
// socket_address (with the address when set, and a port), a pipe, or an
// envoy_internal_address.
func peerSocket(addr string) []byte {
	if addr == "" {
		return msg(1, msg(1, msg(1, varint(3, 443))))
	}
	return msg(1, msg(1, msg(1, strf(2, addr), varint(3, 443))))
}
func peerPipe() []byte     { return msg(1, msg(1, msg(2, strf(1, "/run/envoy.sock")))) }
func peerInternal() []byte { return msg(1, msg(1, msg(3, strf(1, "listener")))) }

// flooded is a source over its unknown-key budget in throttledFixture.
const flooded = "198.51.100.66"

// throttledFixture is the fixture with the throttle on (2 unknown keys a
// minute per source, one trusted proxy) and flooded already over its budget.
func throttledFixture(t *testing.T) *fixture {
	t.Helper()
	fx := newFixtureOpts(t, nil, metaFields, func(o *extauthz.Options) {
		o.Throttle = extauthz.ThrottleOptions{UnknownKeys: apikey.Rate{N: 2, Per: time.Minute}, TrustedProxies: 1, Sources: 1000}
	})
	for range 2 {
		if _, _, err := standard(fx, checkReq(peerSocket(flooded), httpReq(hdr("x-api-key", fx.unknown)))); err != nil {
			t.Fatal(err)
		}
	}
	return fx
}

// TestWireEquivalenceModes: both codecs read the source address alike (the
// Peer/Address merging and oneof rules of proto.Unmarshal included) and so
// throttle alike, and both apply report-only routes alike. Every case whose
// source is not flooded uses a source of its own: each case runs on both
// codecs, two unknown keys, which stays within the budget.
func TestWireEquivalenceModes(t *testing.T) {
	fx := throttledFixture(t)
	const k = "x-api-key"
	unknown, valid := fx.unknown, fx.valid
	report := ext(extauthz.ExtMode, extauthz.ModeReportOnly)
	for _, tc := range []struct {
		name string
		wire []byte
		code int
		mark string // WouldDenyHeader upstream on allow
	}{
		{"flooded peer, unknown key", checkReq(peerSocket(flooded), httpReq(hdr(k, unknown))), 429, ""},
		{"flooded peer, valid key not cached", checkReq(peerSocket(flooded), httpReq(hdr(k, valid))), 429, ""},
		{"flooded peer, no key", checkReq(peerSocket(flooded), httpReq(path("/"))), 401, ""},
		{"fresh peer, unknown key", checkReq(peerSocket("192.0.2.1"), httpReq(hdr(k, unknown))), 401, ""},
		{"fresh peer, valid key", checkReq(peerSocket("192.0.2.2"), httpReq(hdr(k, valid))), 200, ""},
		{"flooded client via proxy", checkReq(peerSocket("10.0.0.9"), httpReq(hdr(k, unknown), hdr("x-forwarded-for", flooded))), 429, ""},
		{"flooded client, peer appended", checkReq(peerSocket("10.0.0.9"), httpReq(hdr(k, unknown), hdr("x-forwarded-for", "spoof, "+flooded+", 10.0.0.9"))), 429, ""},
		{"fresh client via flooded proxy", checkReq(peerSocket(flooded), httpReq(hdr(k, unknown), hdr("x-forwarded-for", "192.0.2.3"))), 401, ""},
		{"x-forwarded-for in header_map", checkReq(peerSocket("10.0.0.9"), httpReq(hmap(hv(k, unknown, nil), hv("X-Forwarded-For", flooded, nil)))), 429, ""},
		{"pipe replaces socket", checkReq(peerSocket(flooded), peerPipe(), httpReq(hdr(k, unknown))), 401, ""},
		{"internal address replaces socket", checkReq(peerSocket(flooded), peerInternal(), httpReq(hdr(k, unknown))), 401, ""},
		{"socket after pipe", checkReq(peerPipe(), peerSocket(flooded), httpReq(hdr(k, unknown))), 429, ""},
		{"socket after pipe starts afresh", checkReq(peerSocket(flooded), peerPipe(), peerSocket(""), httpReq(hdr(k, unknown))), 401, ""},
		{"socket merge keeps the address", checkReq(peerSocket(flooded), peerSocket(""), httpReq(hdr(k, unknown))), 429, ""},
		{"later socket address wins", checkReq(peerSocket("192.0.2.4"), peerSocket(flooded), httpReq(hdr(k, unknown))), 429, ""},
		{"later socket address wins, fresh", checkReq(peerSocket(flooded), peerSocket("192.0.2.5"), httpReq(hdr(k, unknown))), 401, ""},
		{"source in a repeated attributes", cat(checkReq(peerSocket(flooded)), checkReq(httpReq(hdr(k, unknown)))), 429, ""},
		{"address merged across peers", checkReq(msg(1, msg(1, msg(1, strf(2, flooded)))), msg(1, msg(1, msg(1, varint(3, 1)))), httpReq(hdr(k, unknown))), 429, ""},
		{"address of another wire type", checkReq(msg(1, msg(1, msg(1, varint(2, 5)))), httpReq(hdr(k, unknown))), 401, ""},
		{"peer address of another wire type", checkReq(peerSocket(flooded), msg(1, varint(1, 1)), httpReq(hdr(k, unknown))), 429, ""},
		{"report-only route, no key", checkReq(report, httpReq(path("/"))), 200, "401"},
		{"report-only route, flooded", checkReq(report, peerSocket(flooded), httpReq(hdr(k, unknown))), 200, "429"},
		{"report-only route, valid key", checkReq(report, peerSocket("192.0.2.6"), httpReq(hdr(k, valid), hdr(extauthz.WouldDenyHeader, "401"))), 200, ""},
		{"report-only route, over the limit", checkReq(report, httpReq(hdr(k, fx.limited))), 200, "429"},
		{"report-only route, forbidden, metadata", checkReq(report, httpReq(path("/organizations/other/x"), hdr(k, fx.meta))), 200, "403"},
		{"report-only route, store ok, revoked", checkReq(report, httpReq(hdr(k, fx.revoked))), 200, "401"},
		{"enforce route", checkReq(ext(extauthz.ExtMode, extauthz.ModeEnforce), httpReq(hdr(k, fx.limited))), 429, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			std, stdErr, uerr := standard(fx, tc.wire)
			got, gotErr, derr := fast(fx, tc.wire)
			if uerr != nil || derr != nil {
				t.Fatalf("proto.Unmarshal %v, decode %v", uerr, derr)
			}
			same(t, std, stdErr, got, gotErr)
			if gotErr != nil || httpCode(got) != tc.code {
				t.Fatalf("answered %d (%v), want %d", httpCode(got), gotErr, tc.code)
			}
			mark := ""
			for _, h := range got.GetOkResponse().GetHeaders() {
				if h.GetHeader().GetKey() == extauthz.WouldDenyHeader {
					mark = h.GetHeader().GetValue()
				}
			}
			if mark != tc.mark {
				t.Fatalf("%s %q, want %q", extauthz.WouldDenyHeader, mark, tc.mark)
			}
		})
	}
	// The store-down case in report-only: allowed on both codecs.
	fx.keys.mu.Lock()
	fx.keys.err = context.DeadlineExceeded
	fx.keys.mu.Unlock()
	w := checkReq(report, httpReq(hdr(k, valid)))
	std, stdErr, _ := standard(fx, w)
	got, gotErr, _ := fast(fx, w)
	same(t, std, stdErr, got, gotErr)
	if gotErr != nil || httpCode(got) != 200 {
		t.Fatalf("store down, report-only: %d %v, want 200", httpCode(got), gotErr)
	}
}
