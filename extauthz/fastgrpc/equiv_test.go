package fastgrpc

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/keyauthz/keyauthz/extauthz"
)

// wireCase is one serialized CheckRequest and what both paths must make of it.
type wireCase struct {
	name      string
	wire      []byte
	code      int  // HTTP status of the answer; 0 when a gRPC error is expected
	protoErr  bool // proto.Unmarshal rejects the bytes
	decodeErr bool // the fast decoder rejects the bytes
	storeDown bool // the key store fails during the call
}

func wireCases(t testing.TB, fx *fixture) []wireCase {
	t.Helper()
	const k = "x-api-key"
	valid, unknown := fx.valid, fx.unknown
	envoy, err := proto.Marshal(envoyRequest(valid, 15))
	if err != nil {
		t.Fatal(err)
	}
	unknowns := cat(varint(50, 1), fixed32(51), fixed64(52), strf(53, "x"), group(54, varint(1, 2), strf(2, "y")))
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	return []wireCase{
		{name: "headers map allowed", wire: checkReq(httpReq(path("/v1/things"), hdr(":path", "/v1/things"), hdr(k, valid))), code: 200},
		{name: "second configured header", wire: checkReq(httpReq(hdr("salad-api-key", valid))), code: 200},
		{name: "bearer", wire: checkReq(httpReq(hdr("authorization", "Bearer "+valid))), code: 200},
		{name: "missing key", wire: checkReq(httpReq(path("/"), hdr("accept", "*/*"))), code: 401},
		{name: "empty request", wire: nil, code: 401},
		{name: "no http", wire: checkReq(ext("resource", "acme")), code: 401},
		{name: "unknown key", wire: checkReq(httpReq(hdr(k, unknown))), code: 401},
		{name: "revoked key", wire: checkReq(httpReq(hdr(k, fx.revoked))), code: 401},
		{name: "rate limited", wire: checkReq(httpReq(hdr(k, fx.limited))), code: 429},
		{name: "older pepper rehashed", wire: checkReq(httpReq(hdr(k, fx.old))), code: 200},
		{name: "store down", wire: checkReq(httpReq(hdr(k, valid))), code: 0, storeDown: true},
		{name: "duplicate map key last valid", wire: checkReq(httpReq(hdr(k, unknown), hdr(k, valid))), code: 200},
		{name: "duplicate map key last unknown", wire: checkReq(httpReq(hdr(k, valid), hdr(k, unknown))), code: 401},
		{name: "conflicting headers", wire: checkReq(httpReq(hdr(k, valid), hdr("salad-api-key", unknown))), code: 400},
		{name: "comma joined values", wire: checkReq(httpReq(hdr(k, valid+","+unknown))), code: 400},
		{name: "header_map value", wire: checkReq(httpReq(hmap(hv(k, valid, nil)))), code: 200},
		{name: "header_map raw_value", wire: checkReq(httpReq(hmap(hv(k, "", []byte(valid))))), code: 200},
		{name: "header_map value wins over raw_value", wire: checkReq(httpReq(hmap(hv(k, valid, []byte(unknown))))), code: 200},
		{name: "header_map explicit empty value", wire: checkReq(httpReq(hmap(msg(1, strf(1, k), strf(2, ""), msg(3, []byte(valid)))))), code: 200},
		{name: "header_map repeated same key", wire: checkReq(httpReq(hmap(hv(k, valid, nil), hv("accept", "*/*", nil), hv(k, valid, nil)))), code: 200},
		{name: "header_map repeated different keys", wire: checkReq(httpReq(hmap(hv(k, valid, nil), hv(k, unknown, nil)))), code: 400},
		{name: "header_map merged across fields", wire: checkReq(httpReq(hmap(hv(k, valid, nil)), hmap(hv(k, unknown, nil)))), code: 400},
		{name: "header_map repeated empty value", wire: checkReq(httpReq(hmap(hv(k, valid, nil), hv(k, "", nil)))), code: 200},
		{name: "header_map mixed case name", wire: checkReq(httpReq(hmap(hv("X-Api-Key", valid, nil)))), code: 200},
		{name: "header_map kelvin sign folds to k", wire: checkReq(httpReq(hmap(hv("x-api-\u212Aey", valid, nil)))), code: 200},
		{name: "header_map long s folds to s", wire: checkReq(httpReq(hmap(hv("\u017Falad-api-key", valid, nil)))), code: 200},
		{name: "header_map other non-ascii not matched", wire: checkReq(httpReq(hmap(hv("x-api-k\u00e9y", valid, nil)))), code: 401},
		{name: "header_map case variants joined", wire: checkReq(httpReq(hmap(hv("X-API-KEY", valid, nil), hv(k, unknown, nil)))), code: 400},
		{name: "header_map bearer", wire: checkReq(httpReq(hmap(hv("Authorization", "bearer "+valid, nil)))), code: 200},
		{name: "headers map wins over header_map", wire: checkReq(httpReq(hdr("accept", "*/*"), hmap(hv(k, valid, nil)))), code: 401},
		{name: "header_map before headers map", wire: checkReq(httpReq(hmap(hv(k, valid, nil)), hdr("accept", "*/*"))), code: 401},
		{name: "empty headers entry still wins", wire: checkReq(httpReq(msg(3), hmap(hv(k, valid, nil)))), code: 401},
		{name: "headers of another wire type then header_map", wire: checkReq(httpReq(varint(3, 1), hmap(hv(k, valid, nil)))), code: 200},
		{name: "headers as a group then header_map", wire: checkReq(httpReq(group(3, varint(1, 1)), hmap(hv(k, valid, nil)))), code: 200},
		{name: "header_map then headers of another wire type", wire: checkReq(httpReq(hmap(hv(k, valid, nil)), fixed64(3))), code: 200},
		{name: "fixed corpus key", wire: checkReq(httpReq(hdr(k, fixedKey))), code: 200},
		{name: "headers in a later http merge", wire: checkReq(httpReq(hmap(hv(k, valid, nil))), httpReq(hdr(k, unknown))), code: 401},
		{name: "own workspace by template", wire: checkReq(httpReq(path("/organizations/acme/x"), hdr(k, valid))), code: 200},
		{name: "other workspace by template", wire: checkReq(httpReq(path("/organizations/other/x"), hdr(k, valid))), code: 403},
		{name: "path last wins", wire: checkReq(httpReq(path("/organizations/other/x"), path("/organizations/acme/x"), hdr(k, valid))), code: 200},
		{name: "granted resource", wire: checkReq(httpReq(path("/organizations/partner/x?a=1"), hdr(k, fx.granted))), code: 200},
		{name: "ext resource other", wire: checkReq(ext("resource", "other"), httpReq(hdr(k, valid))), code: 403},
		{name: "duplicate ext last wins deny", wire: checkReq(ext("resource", "acme"), ext("resource", "other"), httpReq(hdr(k, valid))), code: 403},
		{name: "duplicate ext last wins allow", wire: checkReq(ext("resource", "other"), ext("resource", "acme"), httpReq(hdr(k, valid))), code: 200},
		{name: "ext resource segment", wire: checkReq(ext("resource_segment", "2"), httpReq(path("/teams/acme/x"), hdr(k, valid))), code: 200},
		{name: "ext bad segment fails closed", wire: checkReq(ext("resource_segment", "x"), httpReq(path("/teams/acme/x"), hdr(k, valid))), code: 403},
		{name: "ext entry without value", wire: checkReq(msg(10, strf(1, "resource")), httpReq(hdr(k, valid))), code: 200},
		{name: "attributes repeated merge", wire: cat(checkReq(ext("resource", "other")), checkReq(httpReq(hdr(k, valid)))), code: 403},
		{name: "attributes repeated merge path", wire: cat(checkReq(httpReq(path("/organizations/other/x"))), checkReq(httpReq(hdr(k, valid)))), code: 403},
		{name: "map entry without key", wire: checkReq(httpReq(msg(3, strf(2, valid)))), code: 401},
		{name: "map entry key repeated", wire: checkReq(httpReq(msg(3, strf(1, "accept"), strf(1, k), strf(2, valid)))), code: 200},
		{name: "unknown fields everywhere", code: 200, wire: cat(unknowns, checkReq(unknowns,
			msg(4, unknowns, msg(2, unknowns, strf(4, "/organizations/acme/x"), msg(3, unknowns, strf(1, k), unknowns, strf(2, valid), unknowns), unknowns)),
			msg(10, unknowns, strf(1, "x"), strf(2, "y"), unknowns)), unknowns)},
		{name: "unknown fields in header_map", code: 200, wire: checkReq(httpReq(msg(13, unknowns, msg(1, unknowns, strf(1, k), unknowns, strf(2, valid), unknowns), unknowns)))},
		{name: "known fields with other wire types", code: 200, wire: cat(varint(1, 3), checkReq(fixed32(4), varint(10, 1),
			msg(4, varint(2, 1), msg(2, varint(3, 1), varint(4, 9), fixed64(13), hdr(k, valid), group(3, varint(1, 1)))),
			msg(4, msg(2, hmap(varint(1, 1))))))},
		{name: "nested groups skipped", code: 200, wire: cat(group(99, group(100, varint(1, 1), group(101)), fixed64(2)), checkReq(httpReq(hdr(k, valid))))},
		{name: "largest field number", code: 200, wire: cat(varint(protowire.MaxValidNumber, 1), checkReq(httpReq(hdr(k, valid))))},
		{name: "envoy shaped request", wire: envoy, code: 200},
		{name: "metadata forwarded", wire: checkReq(httpReq(hdr(k, fx.meta), hdr("x-keyauthz-meta-team", "spoofed"))), code: 200},
		{name: "metadata partial removes the other", wire: checkReq(httpReq(hdr(k, fx.partial), hdr("x-keyauthz-meta-team", "spoofed"))), code: 200},
		{name: "metadata header_map", wire: checkReq(httpReq(hmap(hv(k, fx.meta, nil), hv("X-Keyauthz-Meta-Plan", "spoofed", nil)))), code: 200},
		{name: "metadata key forbidden", wire: checkReq(httpReq(path("/organizations/other/x"), hdr(k, fx.meta))), code: 403},
		{name: "source peer address", wire: checkReq(peerSocket("192.0.2.1"), httpReq(hdr(k, valid))), code: 200},
		{name: "source pipe replaces socket", wire: checkReq(peerSocket("192.0.2.1"), peerPipe(), httpReq(hdr(k, valid))), code: 200},
		{name: "source socket after pipe", wire: checkReq(peerPipe(), peerSocket(""), peerSocket("192.0.2.2"), httpReq(hdr(k, unknown))), code: 401},
		{name: "report-only route", wire: checkReq(ext("keyauthz_mode", "report_only"), httpReq(hdr(k, unknown))), code: 200},

		{name: "invalid utf-8 value", wire: checkReq(httpReq(hdr(k, "\xff"))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 elsewhere", wire: checkReq(httpReq(hdr("x-\xff", "y"), hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in header_map key", wire: checkReq(httpReq(hmap(hv("x-\xc3", "y", nil), hv(k, valid, nil)))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in header_map value", wire: checkReq(httpReq(hmap(hv(k, valid, nil), hv("accept", "\xe2\x82", nil)))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in raw_value is bytes", wire: checkReq(httpReq(hmap(hv(k, valid, nil), hv("accept", "", []byte("\xff"))))), code: 200},
		{name: "invalid utf-8 in path", wire: checkReq(httpReq(path("/\xff"), hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in ext", wire: checkReq(ext("x", "\xff"), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in skipped method", wire: checkReq(httpReq(strf(2, "G\xffT"), hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in skipped body", wire: checkReq(httpReq(hdr(k, valid), strf(11, "\xff"))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in raw_body is bytes", wire: checkReq(httpReq(hdr(k, valid), strf(12, "\xff"))), code: 200},
		{name: "invalid utf-8 in peer address", wire: checkReq(msg(1, msg(1, msg(1, strf(2, "\xff")))), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in peer label key", wire: checkReq(msg(2, msg(3, strf(1, "\xff"), strf(2, "v"))), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "invalid utf-8 in unknown field", wire: checkReq(strf(99, "\xff"), httpReq(hdr(k, valid))), code: 200},
		{name: "invalid utf-8 in struct metadata", wire: checkReq(msg(11, msg(1, strf(1, "f"), msg(2, msg(1, strf(1, "s"), msg(2, strf(3, "\xff")))))), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "valid struct metadata", wire: checkReq(msg(11, msg(1, strf(1, "f"), msg(2, msg(1, strf(1, "s"), msg(2, strf(3, "\u00e9")))))), httpReq(hdr(k, valid))), code: 200},
		{name: "invalid utf-8 in any type_url", wire: checkReq(msg(11, msg(2, strf(1, "f"), msg(2, strf(1, "\xff")))), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "string field of another wire type", wire: checkReq(httpReq(varint(4, 1), fixed32(2), hdr(k, valid))), code: 200},

		{name: "truncated tag", wire: []byte{0x80}, protoErr: true, decodeErr: true},
		{name: "overlong varint", wire: bytes.Repeat([]byte{0xff}, 11), protoErr: true, decodeErr: true},
		{name: "truncated message", wire: checkReq(httpReq(hdr(k, valid)))[:20], protoErr: true, decodeErr: true},
		{name: "length beyond end", wire: []byte{0x0a, 0x05, 0x01}, protoErr: true, decodeErr: true},
		{name: "field number zero", wire: []byte{0x02, 0x00}, protoErr: true, decodeErr: true},
		{name: "field number too large", wire: cat(tag(protowire.MaxValidNumber+1, protowire.VarintType), []byte{1}), protoErr: true, decodeErr: true},
		{name: "stray end group", wire: tag(5, protowire.EndGroupType), protoErr: true, decodeErr: true},
		{name: "mismatched end group", wire: cat(tag(5, protowire.StartGroupType), tag(6, protowire.EndGroupType)), protoErr: true, decodeErr: true},
		{name: "unterminated group", wire: cat(tag(5, protowire.StartGroupType), varint(1, 1)), protoErr: true, decodeErr: true},
		{name: "bad wire type", wire: []byte{0x0e, 0x00}, protoErr: true, decodeErr: true},
		{name: "malformed in http", wire: checkReq(httpReq([]byte{0x1a, 0x05})), protoErr: true, decodeErr: true},
		{name: "malformed in map entry", wire: checkReq(httpReq(msg(3, []byte{0x0a, 0x09, 'a'}))), protoErr: true, decodeErr: true},
		{name: "malformed in ext entry", wire: checkReq(msg(10, tag(3, protowire.EndGroupType))), protoErr: true, decodeErr: true},
		{name: "malformed in header value", wire: checkReq(httpReq(hmap(msg(1, []byte{0xff})))), protoErr: true, decodeErr: true},
		{name: "malformed in header_map", wire: checkReq(httpReq(hmap([]byte{0x0a}))), protoErr: true, decodeErr: true},
		{name: "malformed in skipped group", wire: group(9, []byte{0x0a, 0x10}), protoErr: true, decodeErr: true},
		{name: "end group inside http", wire: checkReq(httpReq(tag(7, protowire.EndGroupType))), protoErr: true, decodeErr: true},
		{name: "malformed in skipped source peer", wire: checkReq(msg(1, []byte{0x0a, 0x05}), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "malformed in skipped timestamp", wire: checkReq(msg(4, msg(1, []byte{0x08}), msg(2, hdr(k, valid)))), protoErr: true, decodeErr: true},
		{name: "malformed in skipped tls session", wire: checkReq(msg(12, []byte{0x0a, 0x02, 'a'}), httpReq(hdr(k, valid))), protoErr: true, decodeErr: true},
		{name: "end group in map entry", wire: checkReq(httpReq(msg(3, strf(1, k), tag(5, protowire.EndGroupType)))), protoErr: true, decodeErr: true},
	}
}

// standard answers b the way the generated handler does: proto.Unmarshal, then Check.
func standard(fx *fixture, b []byte) (*authv3.CheckResponse, error, error) {
	var req authv3.CheckRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		return nil, nil, err
	}
	resp, err := fx.svc.Check(context.Background(), &req)
	return resp, err, nil
}

// fast answers b with the wire decoder and Decide, over a private copy of b that
// is overwritten once Decide returns: the response must not point into it.
func fast(fx *fixture, b []byte) (*authv3.CheckResponse, error, error) {
	buf := bytes.Clone(b)
	var r request
	if err := r.decode(buf); err != nil {
		return nil, nil, err
	}
	w := extauthz.NewWireRequest(r.path, r.headers, r.ext)
	w.Source = r.source
	resp, err := fx.svc.Decide(context.Background(), &w)
	for i := range buf {
		buf[i] = 0xAA
	}
	r.reset()
	return resp, err, nil
}

// same fails unless both answers are equal responses or equal gRPC errors.
func same(t testing.TB, std *authv3.CheckResponse, stdErr error, got *authv3.CheckResponse, gotErr error) {
	t.Helper()
	if stdErr != nil || gotErr != nil {
		if (stdErr == nil) != (gotErr == nil) || status.Code(stdErr) != status.Code(gotErr) ||
			status.Convert(stdErr).Message() != status.Convert(gotErr).Message() {
			t.Fatalf("errors differ: standard %v, fast %v", stdErr, gotErr)
		}
		return
	}
	if !proto.Equal(std, got) {
		t.Fatalf("responses differ:\nstandard %v\nfast     %v", std, got)
	}
}

func TestWireEquivalence(t *testing.T) {
	fx := newFixture(t, nil)
	for _, tc := range wireCases(t, fx) {
		t.Run(tc.name, func(t *testing.T) {
			if tc.storeDown {
				fx.keys.mu.Lock()
				fx.keys.err = errors.New("store down")
				fx.keys.mu.Unlock()
				defer func() { fx.keys.mu.Lock(); fx.keys.err = nil; fx.keys.mu.Unlock() }()
			}
			std, stdErr, uerr := standard(fx, tc.wire)
			before := fx.rehash.Load()
			got, gotErr, derr := fast(fx, tc.wire)
			if (uerr != nil) != tc.protoErr {
				t.Fatalf("proto.Unmarshal error %v, want error %v", uerr, tc.protoErr)
			}
			if (derr != nil) != tc.decodeErr {
				t.Fatalf("decode error %v, want error %v", derr, tc.decodeErr)
			}
			if derr != nil {
				return
			}
			if uerr == nil {
				same(t, std, stdErr, got, gotErr)
			}
			switch {
			case tc.code == 0 && gotErr == nil:
				t.Fatalf("answered %d, want a gRPC error", httpCode(got))
			case tc.code != 0 && gotErr != nil:
				t.Fatalf("error %v, want %d", gotErr, tc.code)
			case tc.code != 0 && httpCode(got) != tc.code:
				t.Fatalf("answered %d, want %d", httpCode(got), tc.code)
			}
			if tc.name == "older pepper rehashed" && fx.rehash.Load() == before {
				t.Fatal("Rehash hook not called on the fast path")
			}
		})
	}
}

// FuzzWireEquivalence checks that the two codecs decide every input alike: the
// fast path rejects exactly what proto.Unmarshal rejects (the standard codec's
// gRPC error), and otherwise answers exactly as Check does: the same status,
// headers, body and metadata, or the same gRPC error.
func FuzzWireEquivalence(f *testing.F) {
	fx := newFixture(f, nil)
	for _, tc := range wireCases(f, fx) {
		if !tc.storeDown {
			f.Add(tc.wire)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		std, stdErr, uerr := standard(fx, b)
		got, gotErr, derr := fast(fx, b)
		if (uerr != nil) != (derr != nil) {
			t.Fatalf("the codecs disagree: proto.Unmarshal error %v, decode error %v", uerr, derr)
		}
		if uerr == nil {
			same(t, std, stdErr, got, gotErr)
		}
	})
}

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic, reject
// exactly what proto.Unmarshal rejects, and decode the rest to the same path,
// headers and context extensions as extauthz reads them from the proto.
func FuzzDecode(f *testing.F) {
	fx := newFixture(f, nil)
	for _, tc := range wireCases(f, fx) {
		f.Add(tc.wire)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r request
		derr := r.decode(b)
		var pb authv3.CheckRequest
		uerr := proto.Unmarshal(b, &pb)
		if (uerr != nil) != (derr != nil) {
			t.Fatalf("proto.Unmarshal error %v, decode error %v", uerr, derr)
		}
		if uerr == nil {
			agree(t, &r, &pb)
		}
	})
}

// agree fails unless r reads like pb does in extauthz.Service.Check.
func agree(t *testing.T, r *request, pb *authv3.CheckRequest) {
	t.Helper()
	http := pb.GetAttributes().GetRequest().GetHttp()
	if r.path != http.GetPath() {
		t.Fatalf("path %q, want %q", r.path, http.GetPath())
	}
	if want := pb.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress(); r.source != want {
		t.Fatalf("source %q, want %q", r.source, want)
	}
	if m := http.GetHeaders(); len(m) > 0 { // an empty map is read as absent, as Check does
		if !r.hasHeaders {
			t.Fatal("headers map present but not seen")
		}
		sameMap(t, "headers", r.headers, m, lastMatch)
	} else {
		if r.hasHeaders {
			t.Fatal("headers map seen but absent")
		}
		probes := map[string]bool{"x-api-key": true, "salad-api-key": true, "authorization": true}
		for _, h := range http.GetHeaderMap().GetHeaders() {
			if l := strings.ToLower(h.GetKey()); isLowerASCII(l) {
				probes[l] = true
			}
		}
		for name := range probes {
			want, wok := rawGet(http.GetHeaderMap(), name)
			n := 0
			got := ""
			for _, p := range r.headers {
				if p.K == name {
					n++
					got = p.V
				}
			}
			if n > 1 || (n == 1) != wok || got != want {
				t.Fatalf("header_map %q: got %q (%d entries), want %q (found %v)", name, got, n, want, wok)
			}
		}
	}
	sameMap(t, "context_extensions", r.ext, pb.GetAttributes().GetContextExtensions(), firstMatch)
}

func isLowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || 'A' <= s[i] && s[i] <= 'Z' {
			return false
		}
	}
	return true
}

func lastMatch(p []extauthz.KV, k string) (string, bool) {
	v, ok := "", false
	for _, kv := range p {
		if kv.K == k {
			v, ok = kv.V, true
		}
	}
	return v, ok
}

func firstMatch(p []extauthz.KV, k string) (string, bool) {
	for _, kv := range p {
		if kv.K == k {
			return kv.V, true
		}
	}
	return "", false
}

// sameMap checks that looking p up with get gives m, key for key.
func sameMap(t *testing.T, what string, p []extauthz.KV, m map[string]string, get func([]extauthz.KV, string) (string, bool)) {
	t.Helper()
	for k, want := range m {
		if got, ok := get(p, k); !ok || got != want {
			t.Fatalf("%s[%q] = %q (found %v), want %q", what, k, got, ok, want)
		}
	}
	for _, kv := range p {
		if _, ok := m[kv.K]; !ok {
			t.Fatalf("%s has %q, proto map does not", what, kv.K)
		}
	}
}

// rawGet is how extauthz reads a header from header_map (extract.go): names
// compared with strings.EqualFold, value else raw_value, repeats joined by ','.
func rawGet(hm *corev3.HeaderMap, name string) (string, bool) {
	out, found := "", false
	for _, h := range hm.GetHeaders() {
		if !strings.EqualFold(h.GetKey(), name) {
			continue
		}
		v := h.GetValue()
		if v == "" {
			v = string(h.GetRawValue())
		}
		if found {
			out += "," + v
		} else {
			out, found = v, true
		}
	}
	return out, found
}
