package fastgrpc

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/keyauthz/keyauthz/extauthz"
)

// TestFoldMatchesEqualFold checks fold against strings.EqualFold for every rune:
// a rune folds to a lower-case ASCII letter exactly when EqualFold says it
// equals that letter, and otherwise stays non-ASCII or itself.
func TestFoldMatchesEqualFold(t *testing.T) {
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		s := string(r)
		got := fold(s)
		var ascii rune = -1 // the lower-case ASCII member of r's case orbit, if any
		for f := r; ; {
			if f < utf8.RuneSelf && !('A' <= f && f <= 'Z') {
				ascii = f
			}
			if f = unicode.SimpleFold(f); f == r {
				break
			}
		}
		if ascii >= 0 {
			if got != string(ascii) || !strings.EqualFold(s, got) {
				t.Fatalf("fold(%U) = %q, want %q", r, got, string(ascii))
			}
		} else if got != s {
			t.Fatalf("fold(%U) = %q, want it unchanged", r, got)
		}
	}
	if got := fold("X-\xffApi"); got != "x-\uFFFDapi" {
		t.Fatalf("invalid UTF-8: %q", got)
	}
	if s := "x-api-key"; fold(s) != s {
		t.Fatal("lower-case name changed")
	}
}

func TestJoinFolded(t *testing.T) {
	src := []extauthz.KV{
		{K: "X-Api-Key", V: "a"}, {K: "accept", V: "*/*"}, {K: "x-api-key", V: ""}, {K: "x-api-\u212Aey", V: "c"},
		{K: "Accept", V: "text/html"}, {K: "x-other", V: "o"},
	}
	got := joinFolded(nil, src)
	want := map[string]string{"x-api-key": "a,,c", "accept": "*/*,text/html", "x-other": "o"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, kv := range got {
		if want[kv.K] != kv.V {
			t.Fatalf("%q = %q, want %q", kv.K, kv.V, want[kv.K])
		}
	}
}

// TestDecodeResets: a pooled request decodes the next message from scratch,
// and an oversized one does not keep its capacity.
func TestDecodeResets(t *testing.T) {
	var r request
	first := checkReq(ext("resource", "a"), httpReq(path("/p"), hdr("x-api-key", "k")))
	if err := r.decode(first); err != nil {
		t.Fatal(err)
	}
	if r.path != "/p" || len(r.headers) != 1 || len(r.ext) != 1 || !r.hasHeaders {
		t.Fatalf("first decode: %+v", r)
	}
	second := checkReq(httpReq(hmap(hv("accept", "*/*", nil))))
	if err := r.decode(second); err != nil {
		t.Fatal(err)
	}
	if r.path != "" || len(r.ext) != 0 || r.hasHeaders || len(r.headers) != 1 || r.headers[0] != (extauthz.KV{K: "accept", V: "*/*"}) {
		t.Fatalf("second decode kept state: %+v", r)
	}
	var many [][]byte
	for i := 0; i < maxPooled+1; i++ {
		many = append(many, hdr("h", "v"))
	}
	if err := r.decode(checkReq(httpReq(many...))); err != nil {
		t.Fatal(err)
	}
	r.reset()
	if cap(r.headers) != 0 {
		t.Fatalf("reset kept capacity %d", cap(r.headers))
	}
	if err := r.decode([]byte{0x80}); err == nil {
		t.Fatal("truncated input decoded")
	}
}
