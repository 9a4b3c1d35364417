package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// memStore accepts every Create without keeping anything (fuzzing writes nothing to disk).
type memStore struct {
	apikey.Store
	last apikey.NewKey
}

func (m *memStore) Create(_ context.Context, nk apikey.NewKey) (apikey.Key, error) {
	m.last = nk
	return nk.Key, nil
}

// fuzzSecret is a well-formed issued key (prefix kz) for the seeds: a secret pasted
// where it does not belong.
const fuzzSecret = "kz_FPUooxFUpqdI2voMSxvC36kmfikyYfCH12vMtiH4JL82pEM73"

// echoesPrefix reports whether an error answer repeats key-prefixed input: no
// message of the admin API holds the key prefix and '_' (in any case) of its own.
func echoesPrefix(answer []byte, prefix string) bool {
	return bytes.Contains(bytes.ToLower(answer), []byte(strings.ToLower(prefix)+"_"))
}

// keyIn returns the field of a stored key that holds an issued key, or "".
func keyIn(f *apikey.Format, k apikey.Key) string {
	switch {
	case f.HoldsKey(k.Workspace):
		return "workspace"
	case f.HoldsKey(k.Name):
		return "name"
	}
	for _, g := range k.Grants {
		if f.HoldsKey(g) {
			return "grants"
		}
	}
	for mk, mv := range k.Metadata {
		if f.HoldsKey(mk) || f.HoldsKey(mv) {
			return "metadata"
		}
	}
	return ""
}

// FuzzCreateBody feeds arbitrary bodies to POST …/api-keys: the answer is 201, 400
// naming a field, or 413 — never a panic or a fault (5xx) — no error answer echoes
// key-prefixed input, and what reaches the store is a valid Spec holding no API key.
func FuzzCreateBody(f *testing.F) {
	for _, s := range []string{
		`{"name":"ci"}`,
		`{"name":"ci","expires_at":"2040-01-02T03:04:05Z","rate_limit":"600/m","grants":["org1"],"metadata":{"a":"b"}}`,
		`{"name":"ci","expires_in_seconds":3600,"not_before":"2020-01-01T00:00:00.5+02:00"}`,
		`{"name":5}`, `{"name":"x","nme":1}`, `[]`, `null`, `{"name":"x"} {}`, `{"name":"\u0000"}`,
		`{"name":"x","grants":[null]}`, `{"name":"x","metadata":{"":""}}`, `{"name":"x","expires_in_seconds":1e400}`,
		`{"name":"x","rate_limit":"1/0s"}`, `{"NAME":"x"}`, "\xff\xfe", `{"name":"x","expires_at":null}`,
		// Issue 10: inputs that once went wrong (items 2, 13, 14, 15).
		`{"name":"x","expires_at":"0001-01-01T00:00:00Z"}`,
		`{"name":"x","expires_at":"0001-01-01T00:00:00+01:00"}`,
		`{"name":"x","grants":["` + fuzzSecret + `"]}`,
		`{"name":"x","grants":["` + fuzzSecret + ` "]}`,
		`{"name":"x","grants":["` + fuzzSecret[:12] + `!"]}`,
		`{"name":"` + fuzzSecret + `"}`,
		`{"name":"x","metadata":{"note":"` + fuzzSecret + `"}}`,
		`{"name":"x","` + fuzzSecret[:12] + `":1}`,
		`{"name":"x","expires_at":"` + fuzzSecret + `"}`,
		`{"name":"a\u0085b"}`, `{"name":"a\u2028b"}`, `{"name":"a\u202eb"}`, `{"name":"a\u200bb"}`,
		`{"name":"\ufeffa"}`, `{"name":"a\ud800b"}`, `{"name":"a\ufdd0"}`, "{\"name\":\"a\xc2\x85b\"}",
		strings.Repeat("[", 2000) + strings.Repeat("]", 2000),
		`{"name":"x","metadata":` + strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat("}", 40) + `}`,
	} {
		f.Add([]byte(s))
	}
	store := &memStore{}
	h, format := fuzzHandler(f, store)
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/workspaces/acme/api-keys", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+opsToken)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		store.last = apikey.NewKey{}
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusCreated:
			var v View
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || v.Key == "" || v.Name == "" {
				t.Fatalf("201 with body %s (%v)", rec.Body.Bytes(), err)
			}
			k := store.last.Key
			spec := apikey.Spec{Workspace: k.Workspace, Name: k.Name, ExpiresAt: k.ExpiresAt, NotBefore: k.NotBefore,
				RateLimit: k.RateLimit, Grants: k.Grants, Metadata: k.Metadata}
			if err := spec.Validate(k.CreatedAt.Add(-time.Second)); err != nil {
				t.Fatalf("stored an invalid key %+v: %v", k, err)
			}
			if f := keyIn(format, k); f != "" {
				t.Fatalf("stored an API key in %s", f)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			var e apiError
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" || e.Field == "" {
				t.Fatalf("%d without a message naming a field: %s (%v)", rec.Code, rec.Body.Bytes(), err)
			}
			if echoesPrefix(rec.Body.Bytes(), format.Prefix()) {
				t.Fatalf("%d answer echoes key-prefixed input: %s", rec.Code, rec.Body.Bytes())
			}
		default:
			t.Fatalf("status %d for body %q: %s", rec.Code, body, rec.Body.Bytes())
		}
	})
}

func (m *memStore) Get(context.Context, string) (apikey.Key, error) {
	return apikey.Key{}, apikey.ErrNotFound
}

func (m *memStore) List(context.Context, string, string, int) ([]apikey.Key, error) { return nil, nil }

func (m *memStore) GetWorkspace(context.Context, string) (apikey.Workspace, error) {
	return apikey.Workspace{}, apikey.ErrNotFound
}

func (m *memStore) Events(context.Context, string, int64, int) ([]apikey.Event, error) {
	return nil, nil
}

// escapeAll percent-encodes every byte of s but ASCII letters, digits, '-' and '_'
// ("." becomes "%2E"), so the server sees s only after decoding.
func escapeAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// FuzzAdminPath sends every route an arbitrary workspace and key id, percent-encoded:
// never a fault (5xx); a workspace outside apikey.ValidName is 400 naming workspace
// on every route; no error answer echoes key-prefixed input; and a created key's
// Location is a clean path naming it under its workspace.
func FuzzAdminPath(f *testing.F) {
	for _, s := range [][2]string{
		{"acme", "key_x"}, {".", "key_x"}, {"..", ".."}, {"...", "."}, {"a/..", "key_x"}, {"-x", "key_"},
		{fuzzSecret, fuzzSecret}, {fuzzSecret[:20], "key_" + fuzzSecret}, {"a\x00", "key_\x00"}, {"é", "key_é"},
		{strings.Repeat("a", 129), "key_" + strings.Repeat("a", 61)}, {"a.b", "key_a/b"}, {"/", "0"},
	} {
		f.Add(s[0], s[1])
	}
	h, format := fuzzHandler(f, &memStore{})
	f.Fuzz(func(t *testing.T, ws, id string) {
		if ws == "" || id == "" {
			return // an empty segment is another route (or a redirect), not a value
		}
		w, k := escapeAll(ws), escapeAll(id)
		for _, rt := range []struct{ method, path, body string }{
			{"POST", "/v1/workspaces/" + w + "/api-keys", `{"name":"n"}`},
			{"GET", "/v1/workspaces/" + w + "/api-keys", ""},
			{"GET", "/v1/workspaces/" + w + "/api-keys/" + k, ""},
			{"POST", "/v1/workspaces/" + w + "/api-keys/" + k + "/refresh", `{}`},
			{"DELETE", "/v1/workspaces/" + w + "/api-keys/" + k, ""},
			{"GET", "/v1/workspaces/" + w + "/audit", ""},
		} {
			req := httptest.NewRequest(rt.method, rt.path, strings.NewReader(rt.body))
			req.Header.Set("Authorization", "Bearer "+opsToken)
			if rt.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			switch {
			case rec.Code >= 500:
				t.Fatalf("%s %s: %d %s", rt.method, rt.path, rec.Code, rec.Body.Bytes())
			case !apikey.ValidName(ws):
				// 400 naming workspace; or, when ServeMux matches no route at all (a
				// workspace of "/" alone), the 404 "no such route".
				var e apiError
				err := json.Unmarshal(rec.Body.Bytes(), &e)
				if err != nil || !(rec.Code == http.StatusBadRequest && e.Field == "workspace" ||
					rec.Code == http.StatusNotFound && e.Message == "no such route") {
					t.Fatalf("%s %s: %d %s, want 400 naming workspace", rt.method, rt.path, rec.Code, rec.Body.Bytes())
				}
			case rec.Code == http.StatusCreated:
				var v View
				if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
					t.Fatal(err)
				}
				loc, err := url.Parse(rec.Header().Get("Location"))
				if want := "/v1/workspaces/" + ws + "/api-keys/" + v.ID; err != nil || loc.Path != want || path.Clean(loc.Path) != loc.Path || loc.Host != "" {
					t.Fatalf("Location %q (%v), want %q", rec.Header().Get("Location"), err, want)
				}
				continue
			}
			if rec.Code != http.StatusCreated && echoesPrefix(rec.Body.Bytes(), format.Prefix()) {
				t.Fatalf("%s %s: %d answer echoes key-prefixed input: %s", rt.method, rt.path, rec.Code, rec.Body.Bytes())
			}
		}
	})
}

// fuzzHandler returns an admin handler over store (token opsToken, 4 KiB
// bodies, 10 keys a workspace) and the key format it issues.
func fuzzHandler(f *testing.F, store *memStore) (*Handler, *apikey.Format) {
	f.Helper()
	format, err := apikey.NewFormat("kz", 256, false)
	if err != nil {
		f.Fatal(err)
	}
	hasher, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		f.Fatal(err)
	}
	m, err := apikey.NewManager(store, format, hasher, func(string) int { return 10 })
	if err != nil {
		f.Fatal(err)
	}
	h, err := New(m, []Token{{Name: "ops", Secret: []byte(opsToken)}}, Options{MaxBody: 4096}, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	return h, format
}
