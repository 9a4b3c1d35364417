package config

import (
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// Redacted is what RedactURL writes in place of a password.
const Redacted = "xxxxx"

const (
	unparsableURL = "(unparsable URL, not shown)"
	unparsableDSN = "(unparsable connection string, not shown)"
)

var urlScheme = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*$`)

// RedactURL returns a store URL fit for a log line or an error: the userinfo
// password, the value of every query parameter whose name holds "password"
// and any fragment of a URL, or the password field of a key=value
// connection string, become "xxxxx". A string that cannot be parsed, or that
// Go's URL parser and libpq's (pgx's) would split differently, is never
// echoed: only its scheme is shown. It is the one redactor of store URLs.
func RedactURL(raw string) string {
	s, _, _ := redact(raw)
	return s
}

// URLSecrets returns the passwords a store URL or key=value connection string
// holds, as written and percent-decoded, so that a message quoting them (a
// driver's error) can be scrubbed. ok is false when raw cannot be parsed: then
// no message derived from raw may be shown, since it may quote any part of it.
func URLSecrets(raw string) (secrets []string, ok bool) {
	_, secrets, ok = redact(raw)
	return secrets, ok
}

// redact does RedactURL and URLSecrets in one pass.
func redact(raw string) (safe string, secrets []string, ok bool) {
	scheme, _, isURL := strings.Cut(raw, "://")
	if !isURL {
		return redactDSN(raw)
	}
	if !urlScheme.MatchString(scheme) {
		return unparsableURL, nil, false
	}
	if _, err := url.Parse(raw); err != nil {
		return scheme + "://" + unparsableURL, nil, false
	}
	// url.Parse accepted raw, so it splits the way url.Parse does: the fragment
	// at the first '#', the query at the first '?', the authority up to the first
	// '/', the userinfo up to the authority's last '@'.
	whole := raw[len(scheme)+3:]
	rest, frag, hasFrag := strings.Cut(whole, "#")
	rest, query, hasQuery := strings.Cut(rest, "?")
	authority, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		authority, path = rest[:i], rest[i:]
	}
	userinfo, at := "", strings.LastIndexByte(authority, '@')
	if at >= 0 {
		userinfo = authority[:at]
	}
	// libpq and pgx take the userinfo up to the first '@' before any '/', even
	// past a '?' or '#': where the two readings differ ("u:p@ss@host",
	// "host?password=a@b"), a part of the password would be shown as a host or
	// user name, so such a URL counts as unparsable.
	libpqInfo := ""
	if i := strings.IndexAny(whole, "@/"); i >= 0 && whole[i] == '@' {
		libpqInfo = whole[:i]
	}
	if libpqInfo != userinfo {
		return scheme + "://" + unparsableURL, nil, false
	}
	var b strings.Builder
	b.WriteString(scheme + "://")
	if at >= 0 {
		user, pw, hasPW := strings.Cut(userinfo, ":")
		b.WriteString(user)
		if hasPW {
			secrets = addSecret(secrets, pw)
			b.WriteString(":" + Redacted)
		}
		authority = authority[at:]
	}
	b.WriteString(authority + path)
	if hasQuery {
		b.WriteByte('?')
		for query != "" {
			part, sep := query, ""
			if i := strings.IndexAny(query, "&;"); i >= 0 {
				part, sep, query = query[:i], query[i:i+1], query[i+1:]
			} else {
				query = ""
			}
			k, v, hasV := strings.Cut(part, "=")
			dk, err := url.QueryUnescape(k)
			switch {
			case err != nil:
				secrets = addSecret(secrets, part)
				part = Redacted
			case secretName(dk) && hasV:
				secrets = addSecret(secrets, v)
				part = k + "=" + Redacted
			}
			b.WriteString(part + sep)
		}
	}
	if hasFrag {
		secrets = addSecret(secrets, frag)
		b.WriteString("#" + Redacted)
	}
	return b.String(), secrets, true
}

// redactDSN redacts a key=value connection string ("host=db password='a b'"),
// tokenized as libpq does: values unquoted up to whitespace or single-quoted,
// with backslash escapes in both.
func redactDSN(raw string) (string, []string, bool) {
	var (
		b       strings.Builder
		secrets []string
	)
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' }
	i := 0
	for {
		for i < len(raw) && isSpace(raw[i]) {
			b.WriteByte(raw[i])
			i++
		}
		if i == len(raw) {
			break
		}
		eq := strings.IndexByte(raw[i:], '=')
		if eq < 0 {
			return unparsableDSN, nil, false
		}
		key := strings.TrimSpace(raw[i : i+eq])
		if key == "" || strings.ContainsAny(key, " \t\n\r\v\f'\\") {
			return unparsableDSN, nil, false
		}
		b.WriteString(raw[i : i+eq+1])
		i += eq + 1
		for i < len(raw) && isSpace(raw[i]) {
			b.WriteByte(raw[i])
			i++
		}
		start := i
		var val strings.Builder
		if i < len(raw) && raw[i] == '\'' {
			i++
			for {
				if i >= len(raw) {
					return unparsableDSN, nil, false // unterminated quote
				}
				if raw[i] == '\\' && i+1 < len(raw) {
					val.WriteByte(raw[i+1])
					i += 2
					continue
				}
				if raw[i] == '\'' {
					i++
					break
				}
				val.WriteByte(raw[i])
				i++
			}
		} else {
			for i < len(raw) && !isSpace(raw[i]) {
				if raw[i] == '\\' && i+1 < len(raw) {
					val.WriteByte(raw[i+1])
					i += 2
					continue
				}
				val.WriteByte(raw[i])
				i++
			}
		}
		if secretName(key) {
			secrets = addSecret(secrets, raw[start:i])
			secrets = addSecret(secrets, val.String())
			b.WriteString(Redacted)
		} else {
			b.WriteString(raw[start:i])
		}
	}
	return b.String(), secrets, true
}

// secretName reports whether a URL parameter or DSN key names a password
// (password, sslpassword …).
func secretName(k string) bool { return strings.Contains(strings.ToLower(k), "password") }

// addSecret appends s and its percent-decoded form, skipping empty ones.
func addSecret(secrets []string, s string) []string {
	if s == "" {
		return secrets
	}
	secrets = append(secrets, s)
	if d, err := url.PathUnescape(s); err == nil && d != s {
		secrets = append(secrets, d)
	}
	if d, err := url.QueryUnescape(s); err == nil && !slices.Contains(secrets, d) {
		secrets = append(secrets, d)
	}
	return secrets
}
