package admin

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// maxExpiresIn bounds expires_in_seconds (about 100 years), keeping time arithmetic exact.
const maxExpiresIn = 100 * 365 * 24 * 3600

// createBody is the JSON body of POST /v1/workspaces/{ws}/api-keys.
type createBody struct {
	Name             string             `json:"name"`
	ExpiresAt        *string            `json:"expires_at"`         // RFC 3339
	ExpiresInSeconds *int64             `json:"expires_in_seconds"` // alternative to expires_at
	NotBefore        *string            `json:"not_before"`         // RFC 3339
	RateLimit        *string            `json:"rate_limit"`         // e.g. "600/m"
	Grants           []string           `json:"grants"`
	Metadata         map[string]*string `json:"metadata"` // a null value is refused, not read as ""
}

// refreshBody is the JSON body of POST …/api-keys/{id}/refresh (the body may be empty).
type refreshBody struct {
	GraceSeconds *int64 `json:"grace_seconds"`
}

func invalid(field, msg string) *apiError {
	return &apiError{Code: "invalid", Field: field, Message: field + ": " + msg}
}

// spec turns the body into a key Spec at now; the Manager validates the rest.
func (b *createBody) spec(ws string, now time.Time) (apikey.Spec, *apiError) {
	s := apikey.Spec{Workspace: ws, Name: b.Name, Grants: b.Grants}
	var e *apiError
	if s.Metadata, e = metaValues(b.Metadata); e != nil {
		return s, e
	}
	if b.ExpiresAt != nil && b.ExpiresInSeconds != nil {
		return s, invalid("expires_in_seconds", "set expires_at or expires_in_seconds, not both")
	}
	var err error
	if b.ExpiresAt != nil {
		if s.ExpiresAt, err = time.Parse(time.RFC3339Nano, *b.ExpiresAt); err != nil {
			return s, invalid("expires_at", "must be an RFC 3339 time such as 2030-01-02T15:04:05Z")
		}
		// Checked here, not only by Spec.Validate: there a zero ExpiresAt means "never",
		// and 0001-01-01T00:00:00Z parses to exactly that zero time.
		if !s.ExpiresAt.After(now) {
			return s, invalid("expires_at", "must be in the future")
		}
	}
	if b.ExpiresInSeconds != nil {
		n := *b.ExpiresInSeconds
		if n <= 0 || n > maxExpiresIn {
			return s, invalid("expires_in_seconds", fmt.Sprintf("must be from 1 to %d", maxExpiresIn))
		}
		s.ExpiresAt = now.Add(time.Duration(n) * time.Second)
	}
	if b.NotBefore != nil {
		if s.NotBefore, err = time.Parse(time.RFC3339Nano, *b.NotBefore); err != nil {
			return s, invalid("not_before", "must be an RFC 3339 time such as 2030-01-02T15:04:05Z")
		}
	}
	if b.RateLimit != nil && *b.RateLimit != "" {
		if s.RateLimit, err = apikey.ParseRate(*b.RateLimit); err != nil {
			return s, invalid("rate_limit", "must be a rate such as 600/m, 10/s, 1000/h or 100/30s")
		}
	}
	if err := s.Validate(now); err != nil {
		var fe *apikey.FieldError
		if errors.As(err, &fe) {
			return s, invalid(fe.Field, fe.Msg)
		}
		return s, invalid("body", "not a valid API key request")
	}
	return s, nil
}

// grace returns the requested grace period, checked.
func (b *refreshBody) grace() (time.Duration, *apiError) {
	if b.GraceSeconds == nil {
		return 0, nil
	}
	n := *b.GraceSeconds
	if n < 0 || n > int64(MaxGrace/time.Second) {
		return 0, invalid("grace_seconds", fmt.Sprintf("must be from 0 to %d", int64(MaxGrace/time.Second)))
	}
	return time.Duration(n) * time.Second, nil
}

// readJSON decodes the request body (at most Options.MaxBody bytes, one JSON object,
// no unknown fields) into dst. With allowEmpty, an empty body leaves dst as it is.
func (h *Handler) readJSON(r *http.Request, dst any, allowEmpty bool) *apiError {
	ct := r.Header.Get("Content-Type")
	if ct != "" && !isJSON(ct) {
		return &apiError{Code: "unsupported_media_type", Message: "Content-Type must be application/json", http: http.StatusUnsupportedMediaType}
	}
	body, e := readBody(r.Body, h.opt.MaxBody)
	if e != nil {
		return e
	}
	if allowEmpty && len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if ct == "" {
		return &apiError{Code: "unsupported_media_type", Message: "Content-Type must be application/json", http: http.StatusUnsupportedMediaType}
	}
	return decodeJSON(body, dst, h.m.Format().Prefix())
}

// isJSON reports whether a Content-Type value names JSON.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

func readBody(rc io.Reader, max int64) ([]byte, *apiError) {
	if rc == nil {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, &apiError{Code: "invalid", Field: "body", Message: "body: could not be read"}
	}
	if int64(len(b)) > max {
		return nil, &apiError{Code: "too_large", Field: "body", Message: fmt.Sprintf("body: larger than %d bytes", max), http: http.StatusRequestEntityTooLarge}
	}
	return b, nil
}

// maxDepth bounds how deeply a request body's arrays and objects nest; the deepest
// valid body nests 2 levels ({"metadata":{…}}), encoding/json's own bound is 10000.
const maxDepth = 32

// tooDeep reports whether b's arrays and objects nest more than maxDepth levels. It
// counts brackets outside strings; on malformed input its answer only decides which
// error is reported.
func tooDeep(b []byte) bool {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			if depth++; depth > maxDepth {
				return true
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return false
}

// decodeJSON decodes exactly one JSON object from b into dst, naming the field at
// fault. No message echoes a value from b; an unknown field's name is echoed only when
// plausibleField says it is a plain field name holding no key prefix.
func decodeJSON(b []byte, dst any, prefix string) *apiError {
	if len(bytes.TrimSpace(b)) == 0 {
		return invalid("body", "a JSON object is required")
	}
	if tooDeep(b) {
		return invalid("body", fmt.Sprintf("nesting too deep (more than %d levels of arrays and objects)", maxDepth))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		if dec.Decode(&struct{}{}) != io.EOF {
			return invalid("body", "must hold exactly one JSON object")
		}
		if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
			return invalid("body", "must be a JSON object")
		}
		return nil
	}
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn):
		return invalid("body", fmt.Sprintf("malformed JSON at byte %d", syn.Offset))
	case errors.As(err, &typ):
		if typ.Field == "" {
			return invalid("body", "must be a JSON object")
		}
		return invalid(topField(typ.Field), "must be "+jsonType(typ.Type.Kind().String()))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body", "truncated JSON")
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		f, uerr := strconv.Unquote(name)
		if uerr != nil || !plausibleField(f, prefix) {
			return invalid("body", "holds an unknown field") // not echoed: it could be anything, a secret too
		}
		return &apiError{Code: "invalid", Field: f, Message: f + ": unknown field"}
	}
	return invalid("body", "not valid JSON for this request")
}

// plausibleField reports whether an unknown field's name is short and plain enough to
// echo: at most 32 bytes (shorter than any issued key) of lower-case letters, digits
// and '_', not holding the key prefix and '_' (in any case).
func plausibleField(f, prefix string) bool {
	if f == "" || len(f) > 32 || strings.Contains(strings.ToLower(f), strings.ToLower(prefix)+"_") {
		return false
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// topField returns the top-level field of a dotted JSON path ("metadata.x" → "metadata").
func topField(f string) string {
	if i := strings.IndexAny(f, ".["); i > 0 {
		return f[:i]
	}
	return f
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "slice":
		return "an array"
	case "map", "struct":
		return "an object"
	case "ptr":
		return "a value of the documented type"
	}
	return "of the documented type"
}

// ---------------------------------------------------------------- pagination

// maxCursor bounds an accepted cursor's length.
const maxCursor = 512

// encodeCursor makes an opaque cursor of kind ("k" keys, "a" audit) for workspace ws.
func encodeCursor(kind, ws, after string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(kind + "|" + ws + "|" + after))
}

// decodeCursor reads a cursor made by encodeCursor for the same kind and workspace.
func decodeCursor(c, kind, ws string) (string, bool) {
	if len(c) > maxCursor {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return "", false
	}
	parts := strings.SplitN(string(b), "|", 3)
	if len(parts) != 3 || parts[0] != kind || parts[1] != ws || parts[2] == "" {
		return "", false
	}
	return parts[2], true
}

// page reads ?limit and ?cursor.
func page(r *http.Request, kind, ws string) (int, string, *apiError) {
	q := r.URL.Query()
	limit := DefaultPageSize
	if v := q.Get("limit"); v != "" || q.Has("limit") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			return 0, "", invalid("limit", fmt.Sprintf("must be an integer from 1 to %d", MaxPageSize))
		}
		limit = n
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		var ok bool
		if after, ok = decodeCursor(c, kind, ws); !ok {
			return 0, "", errCursor
		}
	}
	return limit, after, nil
}

// ---------------------------------------------------------------- patches

// workspaceBody is the JSON body of PUT and PATCH /v1/workspaces/{ws}. Each
// field stays raw so that absent (nil) and null differ (JSON merge patch).
type workspaceBody struct {
	RateLimit json.RawMessage `json:"rate_limit"`
	MaxKeys   json.RawMessage `json:"max_keys"`
	Grants    json.RawMessage `json:"grants"`
	Disabled  json.RawMessage `json:"disabled"`
}

// keyPatchBody is the JSON body of PATCH /v1/workspaces/{ws}/api-keys/{id}.
type keyPatchBody struct {
	Name      json.RawMessage `json:"name"`
	RateLimit json.RawMessage `json:"rate_limit"`
	ExpiresAt json.RawMessage `json:"expires_at"`
	Grants    json.RawMessage `json:"grants"`
	Metadata  json.RawMessage `json:"metadata"`
	Disabled  json.RawMessage `json:"disabled"`
}

// metaValues returns metadata with every value present: a null value is 400
// metadata (JSON null into a string would silently be "").
func metaValues(m map[string]*string) (map[string]string, *apiError) {
	if m == nil {
		return nil, nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		if v == nil {
			return nil, invalid("metadata", "values must be strings, not null")
		}
		out[k] = *v
	}
	return out, nil
}

// isNull reports whether a present field is JSON null.
func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// field decodes one present, non-null field into dst; the error names field
// and the type it wants, never the value.
func field(raw json.RawMessage, dst any, name, want string) *apiError {
	if err := json.Unmarshal(raw, dst); err != nil {
		return invalid(name, "must be "+want)
	}
	return nil
}

// rateField reads a rate_limit: null or "" is the zero Rate (inherit).
func rateField(raw json.RawMessage) (apikey.Rate, *apiError) {
	if isNull(raw) {
		return apikey.Rate{}, nil
	}
	var s string
	if e := field(raw, &s, "rate_limit", "a string such as 600/m, or null"); e != nil {
		return apikey.Rate{}, e
	}
	if s == "" {
		return apikey.Rate{}, nil
	}
	r, err := apikey.ParseRate(s)
	if err == nil {
		err = r.Check()
	}
	if err != nil {
		return apikey.Rate{}, invalid("rate_limit", "must be a rate such as 600/m, 10/s, 1000/h or 100/30s")
	}
	return r, nil
}

// grantsField reads a grants list: null is none.
func grantsField(raw json.RawMessage) ([]string, *apiError) {
	var g []string
	if isNull(raw) {
		return nil, nil
	}
	if e := field(raw, &g, "grants", "an array of resource paths, or null"); e != nil {
		return nil, e
	}
	if g == nil {
		g = []string{}
	}
	return g, nil
}

// disabledField reads the disabled flag: null is false.
func disabledField(raw json.RawMessage) (bool, *apiError) {
	var b bool
	if isNull(raw) {
		return false, nil
	}
	return b, field(raw, &b, "disabled", "true, false or null")
}

// present parses a field of a merge-patch body into *dst when the body has
// the field (raw non-nil), leaving *dst nil when it does not.
func present[T any](raw json.RawMessage, dst **T, parse func(json.RawMessage) (T, *apiError)) *apiError {
	if raw == nil {
		return nil
	}
	v, e := parse(raw)
	if e != nil {
		return e
	}
	*dst = &v
	return nil
}

// patch returns the workspace patch the body asks for: absent fields are left
// out, null ones reset (inherit, none, false). For PUT, applied to an empty
// record, absent and null are alike.
func (b *workspaceBody) patch() (apikey.WorkspacePatch, *apiError) {
	var p apikey.WorkspacePatch
	if e := present(b.RateLimit, &p.RateLimit, rateField); e != nil {
		return p, e
	}
	if b.MaxKeys != nil {
		n := 0
		if !isNull(b.MaxKeys) {
			var v int64
			if e := field(b.MaxKeys, &v, "max_keys", "an integer, or null"); e != nil {
				return p, e
			}
			if v < 0 || v > apikey.MaxKeysLimit {
				return p, invalid("max_keys", fmt.Sprintf("must be from 0 (inherit) to %d, or null", apikey.MaxKeysLimit))
			}
			n = int(v)
		}
		p.MaxKeys = &n
	}
	if e := present(b.Grants, &p.Grants, grantsField); e != nil {
		return p, e
	}
	if e := present(b.Disabled, &p.Disabled, disabledField); e != nil {
		return p, e
	}
	return p, nil
}

// patch returns the key patch the body asks for at now; absent fields are left
// out, null ones reset (rate inherited, never expires, no grants, no metadata,
// enabled). A name cannot be null.
func (b *keyPatchBody) patch(now time.Time) (apikey.KeyPatch, *apiError) {
	var p apikey.KeyPatch
	if b.Name != nil {
		var s string
		if isNull(b.Name) {
			return p, invalid("name", "must be a string (a key always has a name)")
		}
		if e := field(b.Name, &s, "name", "a string"); e != nil {
			return p, e
		}
		p.Name = &s
	}
	if e := present(b.RateLimit, &p.RateLimit, rateField); e != nil {
		return p, e
	}
	if b.ExpiresAt != nil {
		var t time.Time
		if !isNull(b.ExpiresAt) {
			var s string
			if e := field(b.ExpiresAt, &s, "expires_at", "an RFC 3339 time such as 2030-01-02T15:04:05Z, or null"); e != nil {
				return p, e
			}
			var err error
			if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return p, invalid("expires_at", "must be an RFC 3339 time such as 2030-01-02T15:04:05Z, or null")
			}
			// Checked here: 0001-01-01T00:00:00Z parses to the zero time, which means "never".
			if !t.After(now) {
				return p, invalid("expires_at", "must be in the future")
			}
		}
		p.ExpiresAt = &t
	}
	if e := present(b.Grants, &p.Grants, grantsField); e != nil {
		return p, e
	}
	if b.Metadata != nil {
		var m map[string]string
		if !isNull(b.Metadata) {
			var raw map[string]*string
			if e := field(b.Metadata, &raw, "metadata", "an object of strings, or null"); e != nil {
				return p, e
			}
			var e *apiError
			if m, e = metaValues(raw); e != nil {
				return p, e
			}
		}
		p.Metadata = &m
	}
	if e := present(b.Disabled, &p.Disabled, disabledField); e != nil {
		return p, e
	}
	return p, nil
}

// empty reports whether p changes nothing.
func emptyKeyPatch(p *apikey.KeyPatch) bool {
	return p.Name == nil && p.RateLimit == nil && p.ExpiresAt == nil && p.Grants == nil && p.Metadata == nil && p.Disabled == nil
}
