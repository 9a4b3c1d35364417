package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
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

// FuzzCreateBody feeds arbitrary bodies to POST …/api-keys: the answer is 201, 400
// naming a field, or 413 — never a panic or a fault — and what reaches the store
// is a valid Spec.
func FuzzCreateBody(f *testing.F) {
	for _, s := range []string{
		`{"name":"ci"}`,
		`{"name":"ci","expires_at":"2040-01-02T03:04:05Z","rate_limit":"600/m","grants":["org1"],"metadata":{"a":"b"}}`,
		`{"name":"ci","expires_in_seconds":3600,"not_before":"2020-01-01T00:00:00.5+02:00"}`,
		`{"name":5}`, `{"name":"x","nme":1}`, `[]`, `null`, `{"name":"x"} {}`, `{"name":"\u0000"}`,
		`{"name":"x","grants":[null]}`, `{"name":"x","metadata":{"":""}}`, `{"name":"x","expires_in_seconds":1e400}`,
		`{"name":"x","rate_limit":"1/0s"}`, `{"NAME":"x"}`, "\xff\xfe", `{"name":"x","expires_at":null}`,
	} {
		f.Add([]byte(s))
	}
	format, err := apikey.NewFormat("kz", 256, false)
	if err != nil {
		f.Fatal(err)
	}
	hasher, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		f.Fatal(err)
	}
	store := &memStore{}
	m, err := apikey.NewManager(store, format, hasher, func(string) int { return 10 })
	if err != nil {
		f.Fatal(err)
	}
	h, err := New(m, []Token{{Name: "ops", Secret: []byte(opsToken)}}, Options{MaxBody: 4096}, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/workspaces/acme/api-keys", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+opsToken)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		store.last = apikey.NewKey{}
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusCreated:
			var v apikey.View
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || v.Key == "" || v.Name == "" {
				t.Fatalf("201 with body %s (%v)", rec.Body.Bytes(), err)
			}
			k := store.last.Key
			spec := apikey.Spec{Workspace: k.Workspace, Name: k.Name, ExpiresAt: k.ExpiresAt, NotBefore: k.NotBefore,
				RateLimit: k.RateLimit, Grants: k.Grants, Metadata: k.Metadata}
			if err := spec.Validate(k.CreatedAt.Add(-time.Second)); err != nil {
				t.Fatalf("stored an invalid key %+v: %v", k, err)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			var e apiError
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" || e.Field == "" {
				t.Fatalf("%d without a message naming a field: %s (%v)", rec.Code, rec.Body.Bytes(), err)
			}
		default:
			t.Fatalf("status %d for body %q: %s", rec.Code, body, rec.Body.Bytes())
		}
	})
}
