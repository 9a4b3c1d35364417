package apikey

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// IDRule describes, for error messages and documentation, what ValidName accepts.
const IDRule = "must be 1-128 characters of ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"

// ValidName reports whether s is a usable workspace id or resource (grant) id:
// ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ (at most MaxGrantLen bytes). A first character
// that is a letter or digit rules out "." and "..", every dot-only id and option-like
// ids ("-x"), so an id is always one plain URL path segment; ids are case-sensitive.
// This is the one rule for ids: the admin API (path and body), its Go client, the
// CLI, the config's workspaces and the Manager all apply it, and openapi.yaml
// documents it as the Name schema's pattern.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxGrantLen || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

// MaxLevels is the most levels a resource path (a grant) may have.
const MaxLevels = 8

// GrantRule describes, for error messages and documentation, what ValidGrant accepts.
const GrantRule = "must be a resource path of 1-8 ids joined by '/' (e.g. acme or acme/web), each id " + IDRule

// ValidGrant reports whether s is a usable grant: a resource path of 1 to
// MaxLevels ids (ValidName each) joined by '/', from the top level down, e.g.
// "acme" (an organization) or "acme/web" (project web of organization acme).
func ValidGrant(s string) bool {
	for n := 1; ; n++ {
		i := strings.IndexByte(s, '/')
		if i < 0 {
			return ValidName(s)
		}
		if n == MaxLevels || !ValidName(s[:i]) {
			return false
		}
		s = s[i+1:]
	}
}

// CheckGrants returns a *FieldError naming field unless gs holds at most
// MaxGrants entries, each ValidGrant. Entries are not echoed: one could be a pasted secret.
func CheckGrants(field string, gs []string) error {
	if len(gs) > MaxGrants {
		return &FieldError{field, fmt.Sprintf("at most %d entries", MaxGrants)}
	}
	for i, g := range gs {
		if !ValidGrant(g) {
			return &FieldError{field, fmt.Sprintf("entry %d: %s", i, GrantRule)}
		}
	}
	return nil
}

// CheckWorkspace returns a *FieldError naming "workspace" (never echoing ws) unless
// ValidName(ws).
func CheckWorkspace(ws string) error {
	if !ValidName(ws) {
		return &FieldError{"workspace", IDRule}
	}
	return nil
}

// CheckKeyName returns a *FieldError naming "name" unless s is a usable key name:
// valid UTF-8, 1 to MaxNameLen bytes, not blank, and free of characters that are
// invisible or reorder text — control (Cc, e.g. U+0085), format (Cf: U+200B zero
// width space, U+202E right-to-left override, U+FEFF, …), line and paragraph
// separators (Zl U+2028, Zp U+2029), private use (Co), surrogates (Cs), Unicode
// noncharacters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF) and U+FFFD (the mark of a
// decoding error). The error never echoes s.
func CheckKeyName(s string) error {
	switch {
	case strings.TrimSpace(s) == "" || len(s) > MaxNameLen:
		return &FieldError{"name", fmt.Sprintf("must be non-empty and at most %d bytes", MaxNameLen)}
	case !utf8.ValidString(s):
		return &FieldError{"name", "must be valid UTF-8"}
	}
	for _, r := range s {
		if !nameRune(r) {
			return &FieldError{"name", "must not contain control, format, separator, private-use or noncharacter code points"}
		}
	}
	return nil
}

// nameRune reports whether r may appear in a key name.
func nameRune(r rune) bool {
	switch {
	case r == utf8.RuneError, noncharacter(r):
		return false
	case unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co, unicode.Cs):
		return false
	}
	return true
}

// noncharacter reports whether r is one of Unicode's 66 noncharacters.
func noncharacter(r rune) bool {
	return r >= 0xFDD0 && r <= 0xFDEF || r&0xFFFE == 0xFFFE && r <= unicode.MaxRune
}

// HoldsKey reports whether s contains a string of the issued-key shape (prefix, '_',
// body and a matching checksum): a secret pasted where it does not belong. Imported
// keys have no recognizable shape and are not detected.
func (f *Format) HoldsKey(s string) bool {
	head := f.prefix + "_"
	n := len(head) + bodyLen + sumLen
	strict := Format{prefix: f.prefix, maxLen: n}
	for i := 0; ; i++ {
		j := strings.Index(s[i:], head)
		if j < 0 || i+j+n > len(s) {
			return false
		}
		i += j
		if strict.Check(s[i:i+n]) == nil {
			return true
		}
	}
}

// keyField returns the field of spec holding an issued key (see HoldsKey), or "".
func (f *Format) keyField(spec *Spec) string {
	switch {
	case f.HoldsKey(spec.Workspace):
		return "workspace"
	case f.HoldsKey(spec.Name):
		return "name"
	}
	if f.grantsHoldKey(spec.Grants) {
		return "grants"
	}
	if f.metadataHoldsKey(spec.Metadata) {
		return "metadata"
	}
	return ""
}

// patchKeyField is keyField for a key update.
func (f *Format) patchKeyField(p *KeyPatch) string {
	switch {
	case p.Name != nil && f.HoldsKey(*p.Name):
		return "name"
	case p.Grants != nil && f.grantsHoldKey(*p.Grants):
		return "grants"
	case p.Metadata != nil && f.metadataHoldsKey(*p.Metadata):
		return "metadata"
	}
	return ""
}

func (f *Format) grantsHoldKey(gs []string) bool {
	for _, g := range gs {
		if f.HoldsKey(g) {
			return true
		}
	}
	return false
}

func (f *Format) metadataHoldsKey(m map[string]string) bool {
	for k, v := range m {
		if f.HoldsKey(k) || f.HoldsKey(v) {
			return true
		}
	}
	return false
}
