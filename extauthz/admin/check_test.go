package admin

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func (e *env) refresh(ws, id string, body string) View {
	e.t.Helper()
	ct := ""
	var b []byte
	if body != "" {
		ct, b = "application/json", []byte(body)
	}
	r := e.call("POST", "/v1/workspaces/"+ws+"/api-keys/"+id+"/refresh", opsToken, ct, b)
	if r.code != http.StatusOK {
		e.t.Fatalf("refresh %s: %d %s", id, r.code, r.body)
	}
	var v View
	r.json(e.t, &v)
	return v
}

// Acceptance 3: without grace the old secret is denied by Check at once on this
// replica; with grace_seconds 2 it is allowed for about 2 s and then denied,
// while the new one is allowed throughout. Delete denies at once too.
func TestRefreshTakesEffectOnCheck(t *testing.T) {
	e := newEnv(t, envOpt{})
	k := e.create("acme", "ci")
	if !e.allowed(k.Key) {
		t.Fatal("new key denied")
	}
	if !e.allowed(k.Key) { // now cached (TTL one hour)
		t.Fatal("new key denied on the second check")
	}

	t.Run("no grace", func(t *testing.T) {
		before := e.changes.Load()
		v := e.refresh("acme", k.ID, "")
		if e.changes.Load() == before {
			t.Error("refresh did not call OnChange")
		}
		if e.allowed(k.Key) {
			t.Error("old secret still allowed right after a refresh without grace")
		}
		if !e.allowed(v.Key) {
			t.Error("new secret denied")
		}
		k = v
	})

	t.Run("grace 2s", func(t *testing.T) {
		old := k
		t0 := time.Now()
		v := e.refresh("acme", old.ID, `{"grace_seconds":2}`)
		t1 := time.Now()
		var lastAllowed, firstDenied time.Time
		deadline := t1.Add(5 * time.Second)
		for time.Now().Before(deadline) {
			now := time.Now()
			ok := e.allowed(old.Key)
			if !e.allowed(v.Key) {
				t.Fatalf("new secret denied %v after the refresh", time.Since(t0))
			}
			if ok {
				if !firstDenied.IsZero() {
					t.Fatalf("old secret allowed again %v after the refresh, after being denied", now.Sub(t0))
				}
				lastAllowed = now
			} else if firstDenied.IsZero() {
				firstDenied = now
			}
			if !firstDenied.IsZero() && now.Sub(firstDenied) > 200*time.Millisecond {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		switch {
		case firstDenied.IsZero():
			t.Fatalf("old secret still allowed %v after a 2 s grace", time.Since(t0))
		case firstDenied.Sub(t0) < 2*time.Second-time.Millisecond:
			t.Errorf("old secret denied after %v, before its 2 s grace ended", firstDenied.Sub(t0))
		case firstDenied.Sub(t1) > 3*time.Second:
			t.Errorf("old secret denied only %v after the refresh answered; want about 2 s", firstDenied.Sub(t1))
		case lastAllowed.Sub(t1) < time.Second:
			t.Errorf("old secret last allowed %v after the refresh; want allowed for about 2 s", lastAllowed.Sub(t1))
		}
		if !e.allowed(v.Key) {
			t.Error("new secret denied after the grace period")
		}
		k = v
	})

	t.Run("delete", func(t *testing.T) {
		if r := e.call("DELETE", "/v1/workspaces/acme/api-keys/"+k.ID, opsToken, "", nil); r.code != 204 {
			t.Fatalf("delete: %d", r.code)
		}
		if e.allowed(k.Key) {
			t.Error("deleted key still allowed right after the delete")
		}
	})
}

// Acceptance 4: no list/get/audit answer, audit entry or log line holds a secret.
func TestNoSecretLeaks(t *testing.T) {
	e := newEnv(t, envOpt{touchInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.rec.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var secrets []View
	texts := map[string]string{}
	a := e.create("acme", "a")
	b := e.create("acme", "b")
	secrets = append(secrets, a, b)
	for i := range 20 {
		e.allowed([]string{a.Key, b.Key}[i%2])
	}
	ra := e.refresh("acme", a.ID, `{"grace_seconds":60}`)
	rb := e.refresh("acme", b.ID, "")
	secrets = append(secrets, ra, rb)
	e.allowed(ra.Key)
	e.allowed(b.Key) // revoked secret presented
	if r := e.call("DELETE", "/v1/workspaces/acme/api-keys/"+b.ID, opsToken, "", nil); r.code != 204 {
		t.Fatal(r.code)
	}
	// bad input that holds a secret must not be echoed either
	r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json", []byte(`{"name":"x","`+a.Key+`":1}`))
	texts["400 answer"] = string(r.body)
	r = e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json", []byte(`{"name":"x","rate_limit":"`+a.Key+`"}`))
	texts["400 answer (rate_limit)"] = string(r.body)

	deadline := time.Now().Add(5 * time.Second)
	for {
		g := e.call("GET", "/v1/workspaces/acme/api-keys/"+a.ID, opsToken, "", nil)
		var v View
		g.json(t, &v)
		if v.LastUsedAt != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("last_used_at not recorded within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range []string{
		"/v1/workspaces/acme/api-keys", "/v1/workspaces/acme/api-keys?limit=1",
		"/v1/workspaces/acme/api-keys/" + a.ID, "/v1/workspaces/acme/audit",
	} {
		r := e.call("GET", p, opsToken, "", nil)
		if r.code != 200 {
			t.Fatalf("GET %s: %d", p, r.code)
		}
		texts["GET "+p] = string(r.body)
		if strings.Contains(string(r.body), `"key":`) {
			t.Errorf("GET %s answer has a key field: %s", p, r.body)
		}
	}
	evs, err := e.store.Events(context.Background(), "acme", 0, 0)
	if err != nil || len(evs) < 5 {
		t.Fatalf("audit events: %d, %v", len(evs), err)
	}
	for _, ev := range evs {
		texts[fmt.Sprintf("audit event %d", ev.Seq)] = fmt.Sprintf("%+v", ev)
	}
	cancel()
	<-done
	if err := e.rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	texts["log"] = e.logs.String()
	if !strings.Contains(texts["log"], "key created") || !strings.Contains(texts["log"], a.ID) {
		t.Fatalf("the log does not hold the expected lines; is logging captured?\n%s", texts["log"])
	}
	for _, l := range leaks(secrets, texts) {
		t.Error(l)
	}
}

// Acceptance 5: last_used_at moves after traffic, and the store sees at most one
// write per key per flush interval under 1,000 checks.
func TestLastUsedCoalesced(t *testing.T) {
	const interval = 200 * time.Millisecond
	e := newEnv(t, envOpt{touchInterval: interval})
	keys := []View{e.create("acme", "a"), e.create("acme", "b"), e.create("acme", "c")}
	for _, k := range keys {
		if v := e.get("acme", k.ID); v.LastUsedAt != nil {
			t.Fatalf("last_used_at %v before any traffic", v.LastUsedAt)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { e.rec.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for i := range 1000 {
		if !e.allowed(keys[i%3].Key) {
			t.Fatalf("check %d denied", i)
		}
	}
	first := map[string]time.Time{}
	deadline := time.Now().Add(5 * time.Second)
	for len(first) < 3 {
		for _, k := range keys {
			if v := e.get("acme", k.ID); v.LastUsedAt != nil {
				first[k.ID] = *v.LastUsedAt
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("last_used_at not recorded within 5s for all keys: %v", first)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for id, at := range first {
		if at.Before(start.Add(-time.Second)) || at.After(time.Now()) {
			t.Errorf("%s last_used_at %v, want during the traffic", id, at)
		}
	}
	// More traffic on one key moves its last_used_at forward.
	time.Sleep(2 * time.Millisecond) // distinct microsecond timestamps
	for range 10 {
		e.allowed(keys[0].Key)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		v := e.get("acme", keys[0].ID)
		if v.LastUsedAt != nil && v.LastUsedAt.After(first[keys[0].ID]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("last_used_at did not move after more traffic: %v", v.LastUsedAt)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	elapsed := time.Since(start)
	if err := e.rec.Flush(context.Background()); err != nil { // shutdown flush
		t.Fatal(err)
	}
	total, perKey := e.store.touchCounts()
	max := int(elapsed/interval) + 1 // one per tick, plus the shutdown flush
	for _, k := range keys {
		if n := perKey[k.ID]; n < 1 || n > max {
			t.Errorf("key %s written %d times in %v; want 1..%d (at most once per %v)", k.ID, n, elapsed, max, interval)
		}
	}
	if total > max {
		t.Errorf("%d Touch calls in %v for 1,010 checks; want at most %d", total, elapsed, max)
	}
}

func (e *env) get(ws, id string) View {
	e.t.Helper()
	r := e.call("GET", "/v1/workspaces/"+ws+"/api-keys/"+id, opsToken, "", nil)
	if r.code != 200 {
		e.t.Fatalf("get %s: %d %s", id, r.code, r.body)
	}
	var v View
	r.json(e.t, &v)
	return v
}
