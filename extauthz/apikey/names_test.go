package apikey

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Issue 10 item 12: the one id rule, for workspaces and grants.
func TestValidName(t *testing.T) {
	valid := []string{"a", "acme", "Acme-1", "a.b", "a..b", "a_", "a.", "0", strings.Repeat("a", MaxGrantLen)}
	invalid := []string{"", ".", "..", "...", ".a", "-a", "_a", "a/b", "a b", "a%2e", "é", "a\x00", "a\n",
		strings.Repeat("a", MaxGrantLen+1)}
	cases := map[string]bool{}
	for _, s := range valid {
		cases[s] = true
	}
	for _, s := range invalid {
		cases[s] = false
	}
	for s, want := range cases {
		if got := ValidName(s); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", s, got, want)
		}
		var fe *FieldError
		if err := CheckWorkspace(s); want != (err == nil) || err != nil && (!errors.As(err, &fe) || fe.Field != "workspace" || len(s) > 3 && strings.Contains(fe.Msg, s)) {
			t.Errorf("CheckWorkspace(%q) = %v", s, err)
		}
	}
}

// Issue 10 item 14: key names refuse Cc, Cf, Zl, Zp, Co, Cs, noncharacters, U+FFFD
// and invalid UTF-8, and take any other text.
func TestCheckKeyName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"deploy key", true},
		{"Café – prod", true},
		{"本番キー", true},
		{"مفتاح", true},
		{"e\u0301", true},
		{"key 🔑", true},
		{"a\u00a0b", true}, // no-break space is Zs, visible as a space
		{strings.Repeat("é", MaxNameLen/2), true},
		{"", false},
		{"   ", false},
		{"\u3000", false}, // ideographic space only: blank
		{strings.Repeat("n", MaxNameLen+1), false},
		{"a\x00", false},
		{"a\t", false},
		{"a\n", false},
		{"a\x7f", false},
		{"a\u0085", false},
		{"a\u009f", false},
		{"a\u00ad", false},
		{"a\u061c", false},
		{"a\u200b", false},
		{"a\u200d", false},
		{"a\u200e", false},
		{"a\u202a", false},
		{"a\u202e", false},
		{"a\u2066", false},
		{"a\u2069", false},
		{"a\u2028", false},
		{"a\u2029", false},
		{"a\ufeff", false},
		{"a\ufff9", false},
		{"a\U000E0001", false},
		{"a\ue000", false},
		{"a\U000F0000", false},
		{"a\U0010FFFD", false},
		{"a\ufdd0", false},
		{"a\ufdef", false},
		{"a\ufffe", false},
		{"a\uffff", false},
		{"a\U0001FFFE", false},
		{"a\U0010FFFF", false},
		{"a\ufffd", false},
		{"a\xff", false},
		{"a\xed\xa0\x80", false}, // a surrogate, UTF-8 encoded
		{"a\xc0\x80", false},     // overlong NUL
	} {
		err := CheckKeyName(tc.name)
		var fe *FieldError
		switch {
		case tc.ok && err != nil:
			t.Errorf("CheckKeyName(%+q) = %v, want nil", tc.name, err)
		case !tc.ok && (!errors.As(err, &fe) || fe.Field != "name"):
			t.Errorf("CheckKeyName(%+q) = %v, want a FieldError naming name", tc.name, err)
		}
		s := Spec{Workspace: "acme", Name: tc.name}
		if err := s.Validate(time.Now()); (err == nil) != tc.ok {
			t.Errorf("Validate with name %+q = %v", tc.name, err)
		}
	}
}

// Issue 10 item 13: a secret pasted into a key's fields is refused (it would be
// stored and listed in clear), naming the field and not echoing the secret.
func TestHoldsKey(t *testing.T) {
	f, err := NewFormat("kz", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	k, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{
		k: true, "x" + k: true, k + "x": true, "kz_kz_" + k: true, "a " + k + " b": true,
		"": false, "kz_": false, k[:len(k)-1]: false, k[:len(k)-1] + "!": false,
		strings.Replace(k, "kz_", "zz_", 1): false, strings.ToUpper(k[:3]) + k[3:]: false,
	} {
		if got := f.HoldsKey(s); got != want {
			t.Errorf("HoldsKey(%.12q…) = %v, want %v", s, got, want)
		}
	}
	spec := Spec{Workspace: "acme", Name: "n"}
	for field, mut := range map[string]func(s *Spec){
		"workspace": func(s *Spec) { s.Workspace = k },
		"name":      func(s *Spec) { s.Name = "pasted " + k },
		"grants":    func(s *Spec) { s.Grants = []string{"org1", k} },
		"metadata":  func(s *Spec) { s.Metadata = map[string]string{"note": k} },
	} {
		s := spec
		mut(&s)
		if got := f.keyField(&s); got != field {
			t.Errorf("keyField with a key in %s = %q", field, got)
		}
	}
	if got := f.keyField(&spec); got != "" {
		t.Errorf("keyField of a clean spec = %q", got)
	}
}
