package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func TestNewClientValidates(t *testing.T) {
	for _, tc := range []struct{ base, token string }{
		{"", opsToken},
		{"127.0.0.1:9002", opsToken},
		{"ftp://host", opsToken},
		{"http://", opsToken},
		{"http://127.0.0.1:9002", "  \n"},
	} {
		if _, err := NewClient(tc.base, tc.token, nil); err == nil {
			t.Errorf("NewClient(%q, %q) succeeded", tc.base, tc.token)
		}
	}
}

// The client drives the whole lifecycle through the real server and maps error
// answers to the apikey errors the CLI explains.
func TestClient(t *testing.T) {
	e := newEnv(t, envOpt{})
	ctx := context.Background()
	c, err := NewClient(e.srv.URL+"/", opsToken+"\n", e.srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	k, err := c.Create(ctx, "acme", CreateRequest{Name: "ci", ExpiresAt: &exp, RateLimit: "600/m", Grants: []string{"org1"}, Metadata: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if k.Key == "" || k.Workspace != "acme" || k.ExpiresAt == nil || !k.ExpiresAt.Equal(exp) || k.RateLimit != "600/m" {
		t.Errorf("Create = %+v", k)
	}
	if !e.allowed(k.Key) {
		t.Error("created key denied")
	}
	for i := range 4 {
		if _, err := c.Create(ctx, "acme", CreateRequest{Name: fmt.Sprintf("k%d", i), ExpiresInSeconds: 60}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := c.List(ctx, "acme", "", 2)
	if err != nil || len(p.Items) != 2 || p.NextCursor == "" {
		t.Fatalf("List page = %+v, %v", p, err)
	}
	all, err := c.ListAll(ctx, "acme")
	if err != nil || len(all) != 5 {
		t.Fatalf("ListAll = %d keys, %v; want 5", len(all), err)
	}
	for _, v := range all {
		if v.Key != "" {
			t.Errorf("ListAll returned a secret for %s", v.ID)
		}
	}
	g, err := c.Get(ctx, "acme", k.ID)
	if err != nil || g.ID != k.ID || g.Key != "" {
		t.Errorf("Get = %+v, %v", g, err)
	}
	r, err := c.Refresh(ctx, "acme", k.ID, 1500*time.Millisecond) // rounded up to 2 s
	if err != nil || r.Key == "" || r.Key == k.Key {
		t.Fatalf("Refresh = %+v, %v", r, err)
	}
	evs, _ := e.store.Events(ctx, "acme", 0, 0)
	if last := evs[len(evs)-1]; last.Kind != "refreshed" || last.Detail != "grace 2s" || last.Actor != "ops" {
		t.Errorf("refresh audit event %+v, want grace 2s by ops", last)
	}
	r2, err := c.Refresh(ctx, "acme", k.ID, 0)
	if err != nil || r2.Key == r.Key {
		t.Fatalf("Refresh without grace = %+v, %v", r2, err)
	}
	if e.allowed(r.Key) {
		t.Error("secret replaced without grace still allowed")
	}
	if err := c.Delete(ctx, "acme", k.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	ap, err := c.Audit(ctx, "acme", "", 2)
	if err != nil || len(ap.Items) != 2 || ap.NextCursor == "" {
		t.Fatalf("Audit page = %+v, %v", ap, err)
	}
	events, err := c.AuditAll(ctx, "acme")
	var kinds []string
	for _, ev := range events {
		kinds = append(kinds, ev.Kind)
	}
	if want := "created,created,created,created,created,refreshed,refreshed,deleted"; err != nil || strings.Join(kinds, ",") != want {
		t.Errorf("AuditAll = %v, %v; want %s", kinds, err, want)
	}

	// Errors carry the server's message and map to apikey errors.
	_, err = c.Get(ctx, "acme", k.ID)
	var ae *Error
	if !errors.Is(err, apikey.ErrNotFound) || !errors.As(err, &ae) || ae.Status != 404 || ae.Error() != "API key not found" {
		t.Errorf("Get(deleted) error = %v", err)
	}
	_, err = c.Create(ctx, "acme", CreateRequest{Name: "k0"})
	if !errors.Is(err, apikey.ErrNameTaken) {
		t.Errorf("Create(duplicate) error = %v, want ErrNameTaken", err)
	}
	_, err = c.Create(ctx, "acme", CreateRequest{Name: "x", RateLimit: "lots"})
	var fe *apikey.FieldError
	if !errors.As(err, &fe) || fe.Field != "rate_limit" || strings.HasPrefix(fe.Msg, "rate_limit") {
		t.Errorf("Create(bad rate) error = %v (%+v), want a FieldError for rate_limit", err, fe)
	}
	for i := range 6 {
		if _, err := c.Create(ctx, "acme", CreateRequest{Name: fmt.Sprintf("fill%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.Create(ctx, "acme", CreateRequest{Name: "eleventh"})
	if !errors.Is(err, apikey.ErrLimit) || !strings.Contains(err.Error(), "maximum") {
		t.Errorf("Create(11th) error = %v, want ErrLimit with the server's message", err)
	}
	if _, err := c.Refresh(ctx, "acme", k.ID, -time.Second); err == nil {
		t.Error("Refresh with a negative grace succeeded")
	}
	bad, _ := NewClient(e.srv.URL, "not-the-token-at-all", e.srv.Client())
	if _, err := bad.ListAll(ctx, "acme"); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("wrong token: %v, want a 401 Error", err)
	}
	down, _ := NewClient("http://127.0.0.1:1", opsToken, nil)
	if _, err := down.Get(ctx, "acme", "key_x"); err == nil || strings.Contains(err.Error(), opsToken) {
		t.Errorf("unreachable server: %v", err)
	}
}

// The client's workspace, update, usage and unused-list calls through the real server.
func TestClientWorkspacesAndUpdates(t *testing.T) {
	e := newEnv(t, envOpt{tokens: []Token{{Name: "team", Secret: []byte(teamToken), Workspaces: []string{"acme"}}}})
	ctx := context.Background()
	c, err := NewClient(e.srv.URL, opsToken, e.srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetWorkspace(ctx, "acme"); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("GetWorkspace of no record: %v, want ErrNotFound", err)
	}
	if _, err := c.PatchWorkspace(ctx, "acme", WorkspaceRequest{Disabled: Value(true)}); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("PatchWorkspace of no record: %v, want ErrNotFound", err)
	}
	w, created, err := c.PutWorkspace(ctx, "acme", WorkspaceRequest{RateLimit: Value("600/m"), MaxKeys: Value(3), Grants: Value([]string{"org/web"})})
	if err != nil || !created || w.RateLimit != "600/m" || w.MaxKeys != 3 || len(w.Grants) != 1 {
		t.Fatalf("PutWorkspace = %+v, %v, %v", w, created, err)
	}
	if _, created, err = c.PutWorkspace(ctx, "acme", WorkspaceRequest{RateLimit: Value("600/m"), MaxKeys: Value(3)}); err != nil || created {
		t.Errorf("PutWorkspace again: created %v, %v", created, err)
	}
	w, err = c.PatchWorkspace(ctx, "acme", WorkspaceRequest{RateLimit: Null[string]()})
	if err != nil || w.RateLimit != "" || w.MaxKeys != 3 {
		t.Errorf("PatchWorkspace rate null = %+v, %v", w, err)
	}
	if _, err := c.PatchWorkspace(ctx, "acme", WorkspaceRequest{RateLimit: Value("fast")}); !isField(err, "rate_limit") {
		t.Errorf("bad rate: %v, want a FieldError naming rate_limit", err)
	}
	if _, _, err := c.PutWorkspace(ctx, "zeta", WorkspaceRequest{}); err != nil {
		t.Fatal(err)
	}
	all, err := c.ListAllWorkspaces(ctx)
	if err != nil || len(all) != 2 {
		t.Errorf("ListAllWorkspaces = %+v, %v", all, err)
	}

	k, err := c.Create(ctx, "acme", CreateRequest{Name: "ci", ExpiresInSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Update(ctx, "acme", k.ID, KeyUpdate{Name: Value("deploy"), ExpiresAt: Null[time.Time](), Metadata: Value(map[string]string{"a": "b"}), Disabled: Value(true)})
	if err != nil || v.Name != "deploy" || v.ExpiresAt != nil || v.Metadata["a"] != "b" || !v.Disabled {
		t.Errorf("Update = %+v, %v", v, err)
	}
	if e.allowed(k.Key) {
		t.Error("disabled through the client but still allowed")
	}
	if v, err = c.Update(ctx, "acme", k.ID, KeyUpdate{}); err != nil || v.Name != "deploy" {
		t.Errorf("empty Update = %+v, %v", v, err)
	}
	if _, err := c.Update(ctx, "zeta", k.ID, KeyUpdate{Name: Value("x")}); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("Update in another workspace: %v", err)
	}
	var n [apikey.NumOutcomes]int64
	n[apikey.OutcomeAllowed], n[apikey.OutcomeDisabled] = 2, 9
	if err := e.store.AddUsage(ctx, []apikey.Usage{{KeyID: k.ID, Hour: time.Now().UTC().Truncate(time.Hour), Counts: n}}); err != nil {
		t.Fatal(err)
	}
	u, err := c.Usage(ctx, "acme", k.ID, time.Time{}, time.Time{}, "day")
	if err != nil || u.Granularity != "day" || u.Totals.Allowed != 2 || u.Totals.Denied.Disabled != 9 || len(u.Buckets) != 31 {
		t.Errorf("Usage = %s %d buckets %+v, %v", u.Granularity, len(u.Buckets), u.Totals, err)
	}
	if _, err := c.Usage(ctx, "acme", k.ID, time.Now(), time.Now().Add(-time.Hour), ""); !isField(err, "from") {
		t.Errorf("Usage from after to: %v", err)
	}
	if p, err := c.ListUnused(ctx, "acme", 30*24*time.Hour, "", 0); err != nil || len(p.Items) != 0 {
		t.Errorf("ListUnused = %+v, %v", p, err)
	}
	if l, err := c.ListAll(ctx, "acme"); err != nil || len(l) != 1 || l[0].Requests30d != 11 {
		t.Errorf("ListAll = %+v, %v; want requests_30d 11", l, err)
	}

	// A scoped token: 403 maps to ErrForbidden; its list holds its workspace only.
	team, err := NewClient(e.srv.URL, teamToken, e.srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := team.GetWorkspace(ctx, "zeta"); !errors.Is(err, ErrForbidden) || err.Error() != "token not allowed for this workspace" {
		t.Errorf("scoped GetWorkspace outside: %v", err)
	}
	if ws, err := team.ListAllWorkspaces(ctx); err != nil || len(ws) != 1 || ws[0].ID != "acme" {
		t.Errorf("scoped ListAllWorkspaces = %+v, %v", ws, err)
	}
}

func isField(err error, field string) bool {
	var fe *apikey.FieldError
	return errors.As(err, &fe) && fe.Field == field
}

// Field encodes as absent, null or its value.
func TestFieldJSON(t *testing.T) {
	b, err := json.Marshal(KeyUpdate{Name: Value("n"), RateLimit: Null[string](), Disabled: Value(false)})
	if err != nil || string(b) != `{"name":"n","rate_limit":null,"disabled":false}` {
		t.Errorf("KeyUpdate JSON = %s, %v", b, err)
	}
	if b, _ := json.Marshal(WorkspaceRequest{}); string(b) != `{}` {
		t.Errorf("empty WorkspaceRequest JSON = %s", b)
	}
}
