package apikey

import (
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math/big"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
)

func TestFormatRoundTrip(t *testing.T) {
	for _, prefix := range []string{"kz", "sk_live", "salad"} {
		f, err := NewFormat(prefix, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for i := 0; i < 200; i++ {
			k, err := f.Generate()
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Check(k); err != nil {
				t.Fatalf("generated key rejected: %v", err)
			}
			if !strings.HasPrefix(k, prefix+"_") || len(k) != len(prefix)+1+bodyLen+sumLen {
				t.Fatalf("shape of %s…", k[:8])
			}
			if seen[k] {
				t.Fatal("duplicate key generated")
			}
			seen[k] = true
			if d := f.Display(k); d != k[:len(prefix)+5] {
				t.Fatalf("display %q", d)
			}
		}
	}
}

func TestFormatRejects(t *testing.T) {
	f, _ := NewFormat("kz", 256, false)
	imp, _ := NewFormat("kz", 256, true)
	k, _ := f.Generate()
	last := byte('a')
	if k[len(k)-1] == 'a' {
		last = 'b'
	}
	tests := []struct {
		name     string
		key      string
		want     error
		imported error
	}{
		{"empty", "", ErrEmpty, ErrEmpty},
		{"too long", strings.Repeat("a", 257), ErrTooLong, ErrTooLong},
		{"space", "kz_abc def", ErrAlphabet, ErrAlphabet},
		{"comma", "kz_abc,def", ErrAlphabet, ErrAlphabet},
		{"non-ascii", "kz_abcé", ErrAlphabet, ErrAlphabet},
		{"dash is imported alphabet", "legacy-key-123", ErrAlphabet, nil},
		{"wrong prefix", "sk" + k[2:], ErrPrefix, nil},
		{"short", k[:20], ErrPrefix, nil},
		{"checksum", k[:len(k)-1] + string(last), ErrChecksum, ErrChecksum},
		{"body edit", k[:5] + "_" + k[6:], ErrChecksum, ErrChecksum},
		{"valid", k, nil, nil},
	}
	for _, tc := range tests {
		if err := f.Check(tc.key); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if err := imp.Check(tc.key); !errors.Is(err, tc.imported) || (tc.imported == nil) != (err == nil) {
			t.Errorf("%s (imported): %v, want %v", tc.name, err, tc.imported)
		}
	}
	if _, err := NewFormat("bad prefix", 0, false); err == nil {
		t.Error("prefix with a space accepted")
	}
}

func TestCheckAllocatesNothing(t *testing.T) {
	f, _ := NewFormat("kz", 256, false)
	k, _ := f.Generate()
	if n := testing.AllocsPerRun(100, func() { _ = f.Check(k) }); n != 0 {
		t.Fatalf("Check allocates %v times", n)
	}
}

func TestHasher(t *testing.T) {
	p1 := []byte(strings.Repeat("1", 32))
	p2 := []byte(strings.Repeat("2", 32))
	h, err := NewHasher(map[int][]byte{1: p1, 2: p2}, 2)
	if err != nil {
		t.Fatal(err)
	}
	a, b := h.Sum("kz_x"), h.Sum("kz_y")
	if a == b || a.Version != 2 {
		t.Fatal("different keys share a digest or wrong version")
	}
	if h.Sum("kz_x") != a {
		t.Fatal("hash not deterministic")
	}
	old, err := h.SumVersion("kz_x", 1)
	if err != nil || old.Sum == a.Sum {
		t.Fatal("pepper version ignored")
	}
	// Known answer: HMAC-SHA-256 with key "1"*32 over "kz_x".
	if got := hex.EncodeToString(old.Sum[:]); got != "0c1f021121481589fff214b41875fdee6e0172cb1f5eba71c088a54738b95f71" {
		t.Fatalf("hex %q", got)
	}
	if _, err := NewHasher(map[int][]byte{1: []byte("short")}, 1); err == nil {
		t.Fatal("short pepper accepted")
	}
	if _, err := NewHasher(map[int][]byte{1: p1}, 2); err == nil {
		t.Fatal("missing current version accepted")
	}
	if got := h.Older(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("older %v", got)
	}
	d, err := ParseDigestHex(hex.EncodeToString(a.Sum[:]), 2)
	if err != nil || d != a {
		t.Fatalf("hex round trip: %v", err)
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		in   string
		want Rate
		bad  bool
	}{
		{"240/m", Rate{240, time.Minute}, false},
		{"10/s", Rate{10, time.Second}, false},
		{"1000/h", Rate{1000, time.Hour}, false},
		{"5/d", Rate{5, 24 * time.Hour}, false},
		{"100/30s", Rate{100, 30 * time.Second}, false},
		{"0/m", Rate{}, true},
		{"-1/m", Rate{}, true},
		{"10", Rate{}, true},
		{"10/fortnight", Rate{}, true},
	}
	for _, tc := range tests {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("%q: %v %v", tc.in, got, err)
		}
		if !tc.bad {
			back, err := ParseRate(got.String())
			if err != nil || back != got {
				t.Errorf("%q does not round-trip via %q", tc.in, got.String())
			}
		}
	}
}

func TestKeyValidAndOwns(t *testing.T) {
	now := time.Now()
	k := Key{Workspace: "acme", Grants: []string{"partner"}}
	if k.Valid(now) != nil || !k.Owns("acme") || !k.Owns("partner") || k.Owns("other") {
		t.Fatal("plain key")
	}
	k.ExpiresAt = now
	if !errors.Is(k.Valid(now), ErrExpired) {
		t.Fatal("expiry at now must be expired")
	}
	k.ExpiresAt, k.NotBefore = time.Time{}, now.Add(time.Second)
	if !errors.Is(k.Valid(now), ErrNotYetValid) {
		t.Fatal("not-before")
	}
	k.RevokedAt = now.Add(-time.Second)
	if !errors.Is(k.Valid(now), ErrRevoked) {
		t.Fatal("revoked")
	}
}

// FuzzFormatCheck checks Format.Check against wantCheck, an independent
// statement of the key format rules, for issued-only, imported and short formats.
func FuzzFormatCheck(f *testing.F) {
	formats := []struct {
		prefix   string
		maxLen   int
		imported bool
	}{{"kz", 256, false}, {"kz", 256, true}, {"sk_live", 60, false}}
	fms := make([]*Format, len(formats))
	for i, c := range formats {
		fm, err := NewFormat(c.prefix, c.maxLen, c.imported)
		if err != nil {
			f.Fatal(err)
		}
		fms[i] = fm
		k, err := fm.Generate()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(k)
		f.Add(k[:len(k)-1] + "0")                            // checksum off by one character
		f.Add(k[:len(k)-1])                                  // one byte short
		f.Add(k + "0")                                       // one byte long
		f.Add("X" + k[1:])                                   // another prefix, same shape
		f.Add(k[:len(c.prefix)] + "-" + k[len(c.prefix)+1:]) // '-' in place of '_'
		// Keys whose checksum is not Generate's: a valid one with '_' in its body
		// and a small CRC, so that checksum rules are checked independently.
		for _, body := range []string{"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabc_efg", strings.Repeat("0", bodyLen)} {
			head := c.prefix + "_" + body
			f.Add(head + wantSum(head))
		}
	}
	for _, s := range []string{"", "a", "kz_", "kz_a,b", "kz_ a", "kz_\x7f", "kz_\xff", "a!#$%&'()*+-./:;<=>?@[\\]^`{|}~", strings.Repeat("a", 257)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, c := range formats {
			err := fms[i].Check(s)
			if want := wantCheck(s, c.prefix, c.maxLen, c.imported); err != want {
				t.Fatalf("format %+v: Check(%q) = %v, want %v", c, s, err, want)
			}
			if err != nil && len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatal("error message contains the key")
			}
		}
	})
}

var (
	issuedAlphabet   = regexp.MustCompile(`^[0-9A-Za-z_]+$`)
	importedAlphabet = regexp.MustCompile(`^[!-+\--~]+$`) // 0x21-0x7e without ','
	shapesMu         sync.Mutex
	issuedShapes     = map[string]*regexp.Regexp{} // by prefix, under shapesMu
)

// wantCheck states the key format rules independently of Format.Check: a key
// is 1 to maxLen bytes; issued keys are prefix "_" then 43 body and 6 checksum
// characters from [0-9A-Za-z_], the checksum being the CRC-32 (IEEE) of what
// precedes it in 6 base-62 digits (0-9, A-Z, a-z); with imported keys allowed,
// any other key of visible ASCII other than ',' is accepted as is.
func wantCheck(s, prefix string, maxLen int, imported bool) error {
	shapesMu.Lock()
	issuedShape := issuedShapes[prefix]
	if issuedShape == nil {
		issuedShape = regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `_[0-9A-Za-z_]{49}$`)
		issuedShapes[prefix] = issuedShape
	}
	shapesMu.Unlock()
	switch {
	case s == "":
		return ErrEmpty
	case len(s) > maxLen:
		return ErrTooLong
	case !issuedAlphabet.MatchString(s) && !(imported && importedAlphabet.MatchString(s)):
		return ErrAlphabet
	case !issuedShape.MatchString(s):
		if imported {
			return nil
		}
		return ErrPrefix
	}
	if head, sum := s[:len(s)-6], s[len(s)-6:]; sum != wantSum(head) {
		return ErrChecksum
	}
	return nil
}

// wantSum is an issued key's checksum computed independently of encodeSum.
func wantSum(head string) string {
	crc := crc32.Checksum([]byte(head), crc32.MakeTable(crc32.IEEE))
	// big.Int writes base 62 as 0-9, a-z, A-Z: swapping case gives 0-9, A-Z, a-z.
	digits := strings.Map(func(r rune) rune {
		switch {
		case unicode.IsLower(r):
			return unicode.ToUpper(r)
		case unicode.IsUpper(r):
			return unicode.ToLower(r)
		}
		return r
	}, new(big.Int).SetUint64(uint64(crc)).Text(62))
	return strings.Repeat("0", 6-len(digits)) + digits
}

func BenchmarkHasher(b *testing.B) {
	h, _ := NewHasher(map[int][]byte{1: []byte(strings.Repeat("p", 32))}, 1)
	f, _ := NewFormat("kz", 256, false)
	k, _ := f.Generate()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = h.Sum(k)
		}
	})
}

func BenchmarkFormatCheck(b *testing.B) {
	f, _ := NewFormat("kz", 256, false)
	k, _ := f.Generate()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = f.Check(k)
	}
}
