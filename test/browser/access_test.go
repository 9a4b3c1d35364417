//go:build browser

package browser_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// TestAPIAccessPage drives the page in Chromium against keyauthz behind Envoy:
// the acceptance list of issue 13. Subtests run in order on one stack, each
// in its own tab.
func TestAPIAccessPage(t *testing.T) {
	s := newStack(t)

	t.Run("a wrong token shows a clear error", func(t *testing.T) {
		tb := s.newTab(t, 1280)
		tb.axe("sign-in")
		tb.fill("#token", "not-the-admin-token-0000000000")
		tb.click("#signin-submit")
		tb.until("sign-in error shown", `!document.getElementById("signin-err").hidden`)
		msg := tb.text("#signin-err")
		if !strings.Contains(msg, "not accepted") || !strings.Contains(msg, "401") {
			t.Errorf("sign-in error %q: want it to say the token was not accepted (401)", msg)
		}
		if role := eval[string](tb, `document.getElementById("signin-err").getAttribute("role")`); role != "alert" {
			t.Errorf("the sign-in error has role %q, want alert (announced)", role)
		}
		if !eval[bool](tb, `document.activeElement.id === "token" && document.getElementById("token").getAttribute("aria-invalid") === "true"`) {
			t.Error("focus is not back on the token input marked aria-invalid")
		}
		if n := eval[int](tb, `sessionStorage.length + localStorage.length`); n != 0 {
			t.Errorf("a refused token left %d items in web storage", n)
		}
		if !eval[bool](tb, `document.getElementById("workspaces-view").hidden`) {
			t.Error("the workspaces view is shown after a refused sign-in")
		}
		tb.axe("sign-in with an error")
	})

	t.Run("create, use through Envoy, refresh, delete", func(t *testing.T) {
		const ws, name = "acme", "Production CI/CD"
		s.createKey(t, ws, "Staging deploy")
		tb := s.newTab(t, 1280)
		tb.signIn(fullToken)
		if got := eval[string](tb, `sessionStorage.getItem("keyauthz.admin_token")`); got != fullToken {
			t.Errorf("sessionStorage holds %q, want the admin token", got)
		}
		if n := eval[int](tb, `localStorage.length`); n != 0 {
			t.Errorf("localStorage has %d items", n)
		}
		tb.axe("workspaces")
		tb.open(ws)
		tb.until("one key listed", `document.getElementById("key-count").textContent === "1 of 10 keys"`)

		// Create: focus moves into the dialog.
		tb.click("#create-open")
		tb.until("create dialog open, focus on the name", `document.getElementById("create-dialog").open && document.activeElement.id === "create-name"`)
		tb.fill("#create-name", name)
		tb.choose("#create-expiry", "7776000")
		tb.axe("create dialog")
		tb.click("#create-submit")
		tb.until("secret shown once", `document.getElementById("secret-dialog").open && document.getElementById("secret-value") !== null`)
		secret := tb.text("#secret-value")
		if len(secret) < 20 {
			t.Fatalf("secret read from the page: %q", secret)
		}
		if notice := tb.text("#secret-notice"); !strings.Contains(notice, "won't see this again") {
			t.Errorf("secret notice %q: want \"you won't see this again\"", notice)
		}
		if !eval[bool](tb, `document.activeElement.id === "secret-copy"`) {
			t.Error("focus is not on the Copy button when the secret is shown")
		}
		tb.axe("secret dialog")
		tb.screenshot("create-dialog-secret")
		tb.click("#secret-copy")
		tb.until("copy result announced", `document.getElementById("copy-status").textContent !== ""`)

		s.wantThrough(t, "the created key through Envoy", secret, http.StatusOK)

		tb.click("#secret-done")
		tb.until("secret dialog closed, focus back on Create", `!document.getElementById("secret-dialog").open && document.activeElement.id === "create-open"`)
		tb.noSecret(secret)

		tb.until("the new key listed", `document.getElementById("key-count").textContent === "2 of 10 keys"`)
		id := tb.keyID(name)
		row := `tr[data-key-id="` + id + `"]`
		if st := tb.text(row + " .status"); st != "Active" {
			t.Errorf("status %q, want Active", st)
		}
		if exp := tb.text(row + ` td[data-label="Expires"]`); exp == "Never" || exp == "" {
			t.Errorf("expires %q, want the date 90 days out", exp)
		}
		tb.until("sparkline drawn", `document.querySelector('`+row+` .spark svg') !== null`)
		tb.axe("keys list")
		tb.screenshot("keys-list")

		// Refresh: the confirm says when the old secret stops working.
		tb.click(row + " [data-action=refresh]")
		tb.until("refresh dialog open, focus inside", `document.getElementById("refresh-dialog").open && document.activeElement.id === "refresh-grace"`)
		if what := tb.text("#refresh-what"); !strings.Contains(what, "stops working at once") {
			t.Errorf("refresh confirm %q: want it to say the old secret stops working at once", what)
		}
		tb.choose("#refresh-grace", "300")
		if what := tb.text("#refresh-what"); !strings.Contains(what, "5 minutes") {
			t.Errorf("refresh confirm with a grace period %q: want the 5 minutes it keeps working", what)
		}
		tb.choose("#refresh-grace", "0")
		tb.axe("refresh dialog")
		tb.click("#refresh-submit")
		tb.until("new secret shown", `document.getElementById("secret-dialog").open && document.getElementById("secret-value") !== null`)
		fresh := tb.text("#secret-value")
		if fresh == secret || len(fresh) < 20 {
			t.Fatalf("refreshed secret %q is not new", fresh)
		}
		tb.click("#secret-done")
		tb.until("focus back on the row's Refresh button", `!document.getElementById("secret-dialog").open && document.activeElement.dataset.action === "refresh" && document.activeElement.closest("tr").dataset.keyId === `+jsString(id))
		s.wantThrough(t, "the old secret after refresh", secret, http.StatusUnauthorized)
		s.wantThrough(t, "the new secret after refresh", fresh, http.StatusOK)
		tb.noSecret(secret)
		tb.noSecret(fresh)

		// Delete, with a confirm.
		tb.click(row + " [data-action=delete]")
		tb.until("delete dialog open, focus inside", `document.getElementById("delete-dialog").open && document.getElementById("delete-dialog").contains(document.activeElement)`)
		if what := tb.text("#delete-what"); !strings.Contains(what, name) {
			t.Errorf("delete confirm %q does not name the key", what)
		}
		tb.axe("delete dialog")
		tb.click("#delete-submit")
		tb.until("key gone, focus on the list heading", `!document.getElementById("delete-dialog").open && document.querySelector('`+row+`') === null && document.activeElement.id === "keys-h"`)
		tb.until("deletion announced", `document.getElementById("status").textContent.includes("Deleted API key")`)
		if c := tb.text("#key-count"); c != "1 of 10 keys" {
			t.Errorf("count after delete %q", c)
		}
		s.wantThrough(t, "the deleted key", fresh, http.StatusUnauthorized)

		// Audit: who did what.
		tb.click("#tab-audit")
		tb.until("audit rows", `document.querySelectorAll("#audit-body tr").length >= 4`)
		trail := eval[[]string](tb, `[...document.querySelectorAll("#audit-body tr")].map(r => [...r.cells].slice(1).map(c => c.textContent).join("|"))`)
		for _, want := range []string{"Created|" + id + "|portal", "Refreshed|" + id + "|portal", "Deleted|" + id + "|portal"} {
			if !slices.ContainsFunc(trail, func(s string) bool { return strings.HasPrefix(s, want) }) {
				t.Errorf("audit trail lacks %q: %q", want, trail)
			}
		}
		tb.axe("audit trail")
		for _, sec := range []string{secret, fresh, fullToken} {
			tb.notInURLs(sec)
		}
	})

	t.Run("usage chart of allowed and denied requests", func(t *testing.T) {
		const ws = "usage-ws"
		var k struct {
			ID  string `json:"id"`
			Key string `json:"key"`
		}
		b := s.apiDo(t, fullToken, http.MethodPost, "/v1/workspaces/"+ws+"/api-keys", map[string]any{"name": "Metered", "rate_limit": "3/m"}, http.StatusCreated)
		if err := json.Unmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
		for range 5 { // 3 allowed, then 2 rate limited
			s.through(t, k.Key)
		}
		testenv.Eventually(t, 10*time.Second, "usage flushed", func() error {
			var u struct {
				Totals struct {
					Allowed int `json:"allowed"`
					Denied  struct {
						RateLimited int `json:"rate_limited"`
					} `json:"denied"`
				} `json:"totals"`
			}
			if err := json.Unmarshal(s.apiDo(t, fullToken, http.MethodGet, "/v1/workspaces/"+ws+"/api-keys/"+k.ID+"/usage", nil, http.StatusOK), &u); err != nil {
				return err
			}
			if u.Totals.Allowed != 3 || u.Totals.Denied.RateLimited != 2 {
				return fmt.Errorf("usage totals %+v, want 3 allowed and 2 rate limited", u.Totals)
			}
			return nil
		})
		tb := s.newTab(t, 1280)
		tb.signIn(fullToken)
		tb.open(ws)
		row := `tr[data-key-id="` + k.ID + `"]`
		tb.until("sparkline of 30 days", `document.querySelector('`+row+` .spark svg[role=img]') !== null`)
		if label := eval[string](tb, `document.querySelector('`+row+` .spark svg').getAttribute("aria-label")`); !strings.HasPrefix(label, "5 requests in the last 30 days") {
			t.Errorf("sparkline label %q: want 5 requests (requests_30d)", label)
		}
		tb.click(row + " [data-action=usage]")
		tb.until("hourly chart", `document.querySelector("#usage-svg") !== null`)
		tb.wantChart("hourly", 24, 3, 2)
		if tot := tb.text("#usage-totals"); !strings.Contains(tot, "3 allowed, 2 denied (rate limited 2)") {
			t.Errorf("usage totals %q", tot)
		}
		tb.axe("usage (hourly)")
		tb.screenshot("usage-chart")
		tb.choose("#usage-granularity", "day")
		tb.until("daily chart", `document.querySelectorAll("#usage-svg g[data-start]").length >= 30`)
		tb.wantChart("daily", 30, 3, 2)
		tb.axe("usage (daily)")
		tb.click("#usage-back")
		tb.until("back on the list, focus on the key's Usage button", `!document.getElementById("keys-view").hidden && document.activeElement.dataset.action === "usage"`)
	})

	t.Run("at the cap the create button is disabled with the reason", func(t *testing.T) {
		s.apiDo(t, fullToken, http.MethodPut, "/v1/workspaces/capped", map[string]any{"max_keys": 2}, http.StatusCreated)
		s.createKey(t, "capped", "one")
		s.createKey(t, "capped", "two")
		for i := range 10 {
			s.createKey(t, "full-by-default", fmt.Sprintf("key %d", i))
		}
		tb := s.newTab(t, 1280)
		tb.signIn(fullToken)
		for _, c := range []struct{ ws, count, reason string }{
			{"capped", "2 of 2 keys", "holds 2 of its 2 keys"},         // the record's max_keys
			{"full-by-default", "10 of 10 keys", "holds 10 of its 10"}, // no record: the default 10
		} {
			if eval[bool](tb, `document.getElementById("workspaces-view").hidden`) {
				tb.click("#back-to-workspaces")
				tb.visible("#workspaces-view")
			}
			tb.open(c.ws)
			tb.until(c.ws+" count", `document.getElementById("key-count").textContent === `+jsString(c.count))
			if !eval[bool](tb, `document.getElementById("create-open").disabled`) {
				t.Errorf("%s: the create button is enabled at the cap", c.ws)
			}
			if r := tb.text("#cap-reason"); !strings.Contains(r, c.reason) || !strings.Contains(r, "Delete a key") {
				t.Errorf("%s: cap reason %q", c.ws, r)
			}
			if !eval[bool](tb, `!document.getElementById("cap-reason").hidden && document.getElementById("create-open").getAttribute("aria-describedby") === "cap-reason"`) {
				t.Errorf("%s: the reason is hidden or not tied to the button", c.ws)
			}
		}
		tb.axe("keys at the cap")
		// Below the cap again, the button comes back.
		tb.click(`#keys-body tr:first-child [data-action=delete]`)
		tb.click("#delete-submit")
		tb.until("create enabled below the cap", `!document.getElementById("create-open").disabled && document.getElementById("cap-reason").hidden`)
	})

	t.Run("a scoped token sees only its workspaces", func(t *testing.T) {
		s.apiDo(t, fullToken, http.MethodPut, "/v1/workspaces/team-a", map[string]any{}, http.StatusCreated)
		s.apiDo(t, fullToken, http.MethodPut, "/v1/workspaces/team-b", map[string]any{"max_keys": 5}, http.StatusCreated)
		s.createKey(t, "team-b", "b secret stuff")
		records := `[...document.querySelectorAll("#ws-list [data-ws]")].map(b => b.dataset.ws).sort()`
		options := `[...document.querySelectorAll("#ws-options option")].map(o => o.value).sort()`

		all := s.newTab(t, 1280)
		all.signIn(fullToken)
		if got := eval[[]string](all, records); !slices.Contains(got, "team-a") || !slices.Contains(got, "team-b") {
			t.Errorf("the full token sees %v, want team-a and team-b among them", got)
		}

		tb := s.newTab(t, 1280)
		tb.signIn(scopedToken)
		if got := eval[[]string](tb, records); !slices.Equal(got, []string{"team-a"}) {
			t.Errorf("the team-a token sees workspace records %v, want only team-a", got)
		}
		if got := eval[[]string](tb, options); !slices.Equal(got, []string{"team-a"}) {
			t.Errorf("the team-a token's workspace suggestions %v, want only team-a", got)
		}
		tb.fill("#ws-input", "team-b")
		tb.click(`#ws-form button[type=submit]`)
		tb.until("refusal shown", `!document.getElementById("ws-err").hidden`)
		if msg := tb.text("#ws-err"); !strings.Contains(msg, "not allowed") || !strings.Contains(msg, "team-b") {
			t.Errorf("opening team-b with the team-a token: %q", msg)
		}
		if eval[bool](tb, `!document.getElementById("workspace-view").hidden || document.body.textContent.includes("b secret stuff")`) {
			t.Error("team-b's keys are shown to the team-a token")
		}
		tb.axe("workspaces with an error")
		tb.click(`#ws-list [data-ws="team-a"]`)
		tb.until("team-a open", `!document.getElementById("workspace-view").hidden && document.getElementById("ws-name").textContent === "team-a"`)
	})

	t.Run("server errors in the create dialog are shown and announced", func(t *testing.T) {
		s.createKey(t, "errors", "taken")
		tb := s.newTab(t, 1280)
		tb.signIn(fullToken)
		tb.open("errors")
		tb.click("#create-open")
		tb.click("#create-submit") // no name: refused before any request
		tb.until("name required", `!document.getElementById("create-err").hidden && document.activeElement.id === "create-name"`)
		tb.fill("#create-name", "taken")
		tb.click("#create-submit")
		tb.until("409 shown", `document.getElementById("create-err").textContent.includes("409")`)
		if !eval[bool](tb, `document.getElementById("create-err").getAttribute("role") === "alert" && document.activeElement.id === "create-name" && document.getElementById("create-name").getAttribute("aria-invalid") === "true"`) {
			t.Errorf("the name conflict is not announced (role=alert) with focus on the invalid name field")
		}
		tb.fill("#create-name", "fresh")
		tb.fill("#create-rate", "very fast")
		tb.click("#create-submit")
		tb.until("rate limit refused", `document.getElementById("create-err").textContent.includes("rate_limit") && document.activeElement.id === "create-rate" && document.getElementById("create-rate").getAttribute("aria-invalid") === "true"`)
		tb.axe("create dialog with an error")
		tb.do(chromedp.KeyEvent(kb.Escape))
		tb.until("dialog closed, focus back on Create", `!document.getElementById("create-dialog").open && document.activeElement.id === "create-open"`)
		if c := tb.text("#key-count"); c != "1 of 10 keys" {
			t.Errorf("count %q after refused creates", c)
		}
	})

	t.Run("keyboard only: into and out of dialogs", func(t *testing.T) {
		tb := s.newTab(t, 1280)
		tb.do(chromedp.Focus(chromedp.CSS("#token")), chromedp.KeyEvent(fullToken+kb.Enter))
		tb.visible("#workspaces-view")
		tb.until("focus on the workspace input", `document.activeElement.id === "ws-input"`)
		tb.do(chromedp.KeyEvent("keyboard-ws" + kb.Enter))
		tb.until("workspace open, focus on its heading", `!document.getElementById("workspace-view").hidden && document.activeElement.id === "wsname-h"`)
		tb.tabTo("create-open", 8)
		tb.do(chromedp.KeyEvent(kb.Enter))
		tb.until("create dialog, focus on the name", `document.getElementById("create-dialog").open && document.activeElement.id === "create-name"`)
		tb.do(chromedp.KeyEvent("Typed with keys" + kb.Enter))
		tb.until("secret dialog, focus on Copy", `document.getElementById("secret-dialog").open && document.activeElement.id === "secret-copy"`)
		secret := tb.text("#secret-value")
		tb.do(chromedp.KeyEvent(kb.Tab))
		tb.until("focus stays in the dialog", `document.getElementById("secret-dialog").contains(document.activeElement)`)
		tb.do(chromedp.KeyEvent(kb.Escape))
		tb.until("dialog closed, focus back on Create", `!document.getElementById("secret-dialog").open && document.activeElement.id === "create-open"`)
		tb.noSecret(secret)
		s.wantThrough(t, "the key made with the keyboard", secret, http.StatusOK)
	})

	t.Run("works 360 px wide", func(t *testing.T) {
		s.createKey(t, "narrow", "A key with a rather long descriptive name for phones")
		s.createKey(t, "narrow", "short")
		tb := s.newTab(t, 360)
		tb.noHorizontalScroll("sign-in")
		tb.signIn(fullToken)
		tb.noHorizontalScroll("workspaces")
		tb.open("narrow")
		tb.until("keys listed", `document.querySelectorAll("#keys-body tr").length === 2`)
		tb.noHorizontalScroll("keys list")
		tb.axe("keys list at 360 px")
		tb.click("#create-open")
		tb.noHorizontalScroll("create dialog")
		tb.do(chromedp.KeyEvent(kb.Escape))
		tb.click(`#keys-body tr:first-child [data-action=usage]`)
		tb.until("chart", `document.querySelector("#usage-svg") !== null`)
		tb.noHorizontalScroll("usage")
		tb.click("#tab-audit")
		tb.until("audit rows", `document.querySelectorAll("#audit-body tr").length === 2`)
		tb.noHorizontalScroll("audit")
		tb.axe("audit at 360 px")
	})

	t.Run("sign out forgets the token", func(t *testing.T) {
		tb := s.newTab(t, 1280)
		tb.signIn(fullToken)
		tb.open("acme")
		tb.do(chromedp.Reload())
		tb.visible("#workspaces-view") // still signed in in this tab after a reload
		tb.click("#sign-out")
		tb.until("signed out", `!document.getElementById("signin-view").hidden && document.activeElement.id === "token"`)
		if n := eval[int](tb, `sessionStorage.length + localStorage.length`); n != 0 {
			t.Errorf("%d items left in web storage after sign-out", n)
		}
		if eval[bool](tb, `document.getElementById("keys-body").children.length > 0 || document.getElementById("ws-list").children.length > 0`) {
			t.Error("workspace data left on the page after sign-out")
		}
		tb.do(chromedp.Reload())
		tb.visible("#signin-view")
		if !eval[bool](tb, `document.getElementById("workspaces-view").hidden`) {
			t.Error("signed in again after a reload")
		}
		tb.notInURLs(fullToken)
	})
}

// keyID is the id of the listed key named name.
func (tb *tab) keyID(name string) string {
	tb.t.Helper()
	id := eval[string](tb, `([...document.querySelectorAll("#keys-body tr")].find(r => r.querySelector(".name").textContent === `+jsString(name)+`) || {dataset: {keyId: ""}}).dataset.keyId`)
	if !strings.HasPrefix(id, "key_") {
		tb.t.Fatalf("key %q is not listed (id %q)", name, id)
	}
	return id
}

// choose selects a value of a <select> as a user would, firing change.
func (tb *tab) choose(sel, value string) {
	tb.t.Helper()
	if !eval[bool](tb, `(e => { e.value = `+jsString(value)+`; e.dispatchEvent(new Event("change", {bubbles: true})); return e.value === `+jsString(value)+` })(document.querySelector(`+jsString(sel)+`))`) {
		tb.t.Fatalf("%s has no option %q", sel, value)
	}
}

// tabTo presses Tab until the element with id has focus, at most n times.
func (tb *tab) tabTo(id string, n int) {
	tb.t.Helper()
	for range n {
		if eval[string](tb, `document.activeElement.id`) == id {
			return
		}
		tb.do(chromedp.KeyEvent(kb.Tab))
	}
	tb.t.Fatalf("#%s not reached with %d Tab presses (focus on %q)", id, n, eval[string](tb, `document.activeElement.outerHTML.slice(0, 80)`))
}

// wantChart checks the usage chart's buckets: at least minBuckets bars whose
// allowed and denied counts sum to the totals.
func (tb *tab) wantChart(what string, minBuckets, allowed, denied int) {
	tb.t.Helper()
	got := eval[[]int](tb, `(gs => [gs.length, gs.reduce((a, g) => a + Number(g.dataset.allowed), 0), gs.reduce((a, g) => a + Number(g.dataset.denied), 0),
		document.querySelectorAll("#usage-svg rect.bar-allowed").length, document.querySelectorAll("#usage-svg rect.bar-denied").length])([...document.querySelectorAll("#usage-svg g[data-start]")])`)
	if got[0] < minBuckets || got[1] != allowed || got[2] != denied || got[3] < 1 || got[4] < 1 {
		tb.t.Errorf("%s chart: %d buckets, %d allowed, %d denied, %d allowed bars, %d denied bars; want ≥%d buckets, %d allowed, %d denied, bars of both",
			what, got[0], got[1], got[2], got[3], got[4], minBuckets, allowed, denied)
	}
}

// noSecret fails if secret is anywhere the page keeps things: the DOM
// (markup, field values, text), localStorage, sessionStorage, its URL or any
// URL it requested.
func (tb *tab) noSecret(secret string) {
	tb.t.Helper()
	where := eval[[]string](tb, `(s => {
		const where = [];
		if (document.documentElement.outerHTML.includes(s)) where.push("DOM markup");
		if (document.body.innerText.includes(s) || document.body.textContent.includes(s)) where.push("DOM text");
		for (const e of document.querySelectorAll("input, textarea, output, select")) {
			if (String(e.value || "").includes(s)) where.push("value of #" + e.id);
		}
		for (const [name, st] of [["localStorage", localStorage], ["sessionStorage", sessionStorage]]) {
			for (let i = 0; i < st.length; i++) {
				const k = st.key(i);
				if (k.includes(s) || String(st.getItem(k)).includes(s)) where.push(name);
			}
		}
		if (location.href.includes(s) || document.title.includes(s)) where.push("location or title");
		for (const e of performance.getEntries()) {
			if (e.name.includes(s)) where.push("a resource URL");
		}
		return where;
	})(`+jsString(secret)+`)`)
	if len(where) > 0 {
		tb.t.Errorf("the secret is still in: %v", where)
	}
	tb.notInURLs(secret)
}

// notInURLs fails if s appears in a URL the tab requested.
func (tb *tab) notInURLs(s string) {
	tb.t.Helper()
	urls := tb.URLs()
	if len(urls) == 0 {
		tb.t.Fatal("no requests recorded: the network listener is not working")
	}
	for _, u := range urls {
		if strings.Contains(u, s) {
			tb.t.Errorf("a requested URL holds a secret: %.40s…", u)
		}
	}
}
