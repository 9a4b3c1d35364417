//go:build browser

package browser_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// Admin tokens of the stack: one for every workspace, one limited to team-a.
const (
	fullToken   = "browser-test-admin-token-0123456789"
	scopedToken = "browser-test-team-a-token-0123456789"
)

// stepTimeout bounds each browser step (an action or a wait).
const stepTimeout = 20 * time.Second

// stack is keyauthz (admin API and page on), Envoy's sidecar config in front
// of an upstream app, and one headless Chromium.
type stack struct {
	kz      *testenv.Keyauthz
	envoy   *testenv.Envoy
	app     *testenv.Upstream
	uiURL   string
	browser context.Context
}

func newStack(t *testing.T) *stack {
	t.Helper()
	dir := t.TempDir()
	full, scoped := filepath.Join(dir, "admin-token"), filepath.Join(dir, "team-a-token")
	for f, tok := range map[string]string{full: fullToken, scoped: scopedToken} {
		if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := &stack{app: testenv.StartUpstream(t, "app")}
	s.kz = testenv.StartKeyauthz(t, testenv.KeyauthzOptions{Extra: fmt.Sprintf(`admin:
  tokens:
  - {name: portal, file: %q}
  - {name: team-a-portal, file: %q, workspaces: [team-a]}
usage:
  flush_interval: 1s
`, full, scoped)})
	s.envoy = testenv.StartEnvoy(t, testenv.EnvoyOptions{
		Config: "sidecar.yaml", Keyauthz: s.kz.GRPCAddr,
		Ports: map[int]int{testenv.DefaultAppPort: s.app.Port},
	})
	s.uiURL = "http://" + s.kz.HTTPAddr + "/ui/"
	s.browser = startBrowser(t)
	return s
}

// startBrowser starts headless Chromium as the machine's notes say: no
// sandbox (root), no GPU, none of the background traffic a closed network refuses.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumBin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("lang", "en-US"),
		chromedp.WindowSize(1280, 860),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// Starts the browser. Not under a shorter context: the browser belongs to
	// the context of its first run, and would end with it.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start Chromium %s: %v (%s)", chromiumBin, err, chromiumHelp)
	}
	return bctx
}

// tab is one browser tab on the page (its own sessionStorage), recording the
// URL of every request it makes and every script error or CSP violation.
type tab struct {
	t   *testing.T
	s   *stack
	ctx context.Context

	mu       sync.Mutex
	urls     []string
	problems []string
}

// newTab opens the page in a new tab, width px wide.
func (s *stack) newTab(t *testing.T, width int64) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(s.browser)
	t.Cleanup(cancel)
	tb := &tab{t: t, s: s, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	if err := chromedp.Listen(ctx, tb.event); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		for _, p := range tb.problems {
			t.Errorf("page problem: %s", p)
		}
		for _, u := range tb.urls {
			if pu, err := url.Parse(u); err != nil || pu.Host != s.kz.HTTPAddr {
				t.Errorf("the page requested %q: only its own origin %s is allowed", u, s.kz.HTTPAddr)
			}
		}
	})
	tb.do(chromedp.EmulateViewport(width, 860), chromedp.Navigate(s.uiURL))
	tb.visible("#signin-view")
	return tb
}

// event runs in chromedp's event loop: record and return at once.
func (tb *tab) event(ev any) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	switch e := ev.(type) {
	case *network.EventRequestWillBeSent:
		tb.urls = append(tb.urls, e.Request.URL+e.Request.URLFragment)
	case *runtime.EventExceptionThrown:
		tb.problems = append(tb.problems, "uncaught exception: "+e.ExceptionDetails.Text+" "+describe(e.ExceptionDetails.Exception))
	case *runtime.EventConsoleAPICalled:
		if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range e.Args {
				args = append(args, describe(a))
			}
			tb.problems = append(tb.problems, "console."+string(e.Type)+": "+strings.Join(args, " "))
		}
	case *log.EventEntryAdded:
		if e.Entry.Source == log.EntrySourceSecurity || e.Entry.Source == log.EntrySourceViolation ||
			strings.Contains(e.Entry.Text, "Content Security Policy") {
			tb.problems = append(tb.problems, "security log ("+string(e.Entry.Source)+"): "+e.Entry.Text)
		}
	}
}

func describe(o *runtime.RemoteObject) string {
	if o == nil {
		return ""
	}
	if o.Description != "" {
		return o.Description
	}
	return string(o.Value)
}

// URLs returns the URLs the tab requested so far.
func (tb *tab) URLs() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]string(nil), tb.urls...)
}

// do runs browser actions within stepTimeout, failing the test on error.
func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatalf("browser: %v\n%s", err, tb.shown())
	}
}

// eval evaluates a JavaScript expression (no await) and decodes its result.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.t.Fatalf("evaluate %s: %v\n%s", expr, err, tb.shown())
	}
	return v
}

// shown is what the page shows as errors, for failure messages.
func (tb *tab) shown() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 3*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[...document.querySelectorAll("[role=alert]")].filter(e => !e.hidden && e.textContent).map(e => e.id + ": " + e.textContent).join("\n") || "(no error shown)"`))
	if err != nil {
		return "(page unreadable: " + err.Error() + ")"
	}
	return "page errors: " + s
}

// until polls a JavaScript condition (every 50 ms, from Go: the page's CSP
// forbids the eval chromedp.Poll needs) until it is true or stepTimeout ends.
func (tb *tab) until(what, cond string) {
	tb.t.Helper()
	deadline := time.Now().Add(stepTimeout)
	for {
		ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+cond+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("%s: not within %v (%s; last error %v)\n%s", what, stepTimeout, cond, err, tb.shown())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (tb *tab) visible(sel string) {
	tb.t.Helper()
	tb.do(chromedp.WaitVisible(chromedp.CSS(sel)))
}

func (tb *tab) click(sel string) {
	tb.t.Helper()
	tb.do(chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel)))
}

func (tb *tab) text(sel string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		tb.t.Fatalf("text of %s: %v\n%s", sel, err, tb.shown())
	}
	return strings.TrimSpace(s)
}

// fill replaces an input's value by typing.
func (tb *tab) fill(sel, v string) {
	tb.t.Helper()
	tb.do(chromedp.WaitVisible(chromedp.CSS(sel)))
	eval[bool](tb, `(document.querySelector(`+jsString(sel)+`).value = "") === ""`)
	tb.do(chromedp.SendKeys(chromedp.CSS(sel), v))
}

// signIn signs in with tok and waits for the workspaces view.
func (tb *tab) signIn(tok string) {
	tb.t.Helper()
	tb.fill("#token", tok)
	tb.click("#signin-submit")
	tb.visible("#workspaces-view")
}

// open types a workspace id and opens it.
func (tb *tab) open(ws string) {
	tb.t.Helper()
	tb.fill("#ws-input", ws)
	tb.click(`#ws-form button[type=submit]`)
	tb.until("workspace "+ws+" open", `!document.getElementById("workspace-view").hidden && document.getElementById("ws-name").textContent === `+jsString(ws))
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// screenshot writes the viewport as test/browser/screenshots/name.png.
func (tb *tab) screenshot(name string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	b, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll("screenshots", 0o755); err != nil {
		tb.t.Fatal(err)
	}
	p := filepath.Join("screenshots", name+".png")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Logf("wrote %s (%d bytes)", p, len(b))
}

// axeViolation is one axe-core finding.
type axeViolation struct {
	ID      string   `json:"id"`
	Impact  string   `json:"impact"`
	Help    string   `json:"help"`
	Targets []string `json:"targets"`
}

// axe runs axe-core in the page (injected through the DevTools protocol, so
// the page's CSP stays as served) and fails on serious or critical violations.
func (tb *tab) axe(view string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](axeSource)); err != nil {
		tb.t.Fatalf("inject axe-core: %v", err)
	}
	vs, err := chromedp.Run(ctx, chromedp.Evaluate[[]axeViolation](`axe.run(document, {
		runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]},
		resultTypes: ["violations"],
	}).then(r => r.violations.map(v => ({id: v.id, impact: v.impact || "", help: v.help,
		targets: v.nodes.map(n => n.target.join(" "))})))`, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.t.Fatalf("axe.run on %s: %v", view, err)
	}
	for _, v := range vs {
		if v.Impact == "serious" || v.Impact == "critical" {
			tb.t.Errorf("axe on %s: %s %s: %s at %v", view, v.Impact, v.ID, v.Help, v.Targets)
		} else {
			tb.t.Logf("axe on %s (%s, not failing): %s: %s at %v", view, v.Impact, v.ID, v.Help, v.Targets)
		}
	}
}

// noHorizontalScroll fails when the page is wider than the viewport.
func (tb *tab) noHorizontalScroll(view string) {
	tb.t.Helper()
	if w := eval[[]int](tb, `[document.documentElement.scrollWidth, window.innerWidth]`); w[0] > w[1] {
		tb.t.Errorf("%s: page is %d px wide in a %d px viewport (horizontal scrolling)", view, w[0], w[1])
	}
}

// ------------------------------------------------------------ admin API and Envoy, from Go

// apiDo calls the admin API directly (test setup), failing unless it answers want.
func (s *stack) apiDo(t *testing.T, tok, method, path string, body any, want int) []byte {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+s.kz.HTTPAddr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	return b
}

// createKey creates a key through the admin API and returns its id.
func (s *stack) createKey(t *testing.T, ws, name string) string {
	t.Helper()
	var v struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(s.apiDo(t, fullToken, http.MethodPost, "/v1/workspaces/"+ws+"/api-keys", map[string]any{"name": name}, http.StatusCreated), &v); err != nil || v.ID == "" {
		t.Fatalf("create key: %v", err)
	}
	return v.ID
}

// through sends GET /v1/things through Envoy with the key and returns the status.
func (s *stack) through(t *testing.T, secret string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.envoy.URL+"/v1/things", nil)
	req.Header.Set("X-API-KEY", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("request through Envoy: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// wantThrough waits (up to a second: the admin API evicts this replica's cache
// at once) until a request with secret through Envoy answers code.
func (s *stack) wantThrough(t *testing.T, what, secret string, code int) {
	t.Helper()
	testenv.Eventually(t, time.Second, what, func() error {
		if got := s.through(t, secret); got != code {
			return fmt.Errorf("through Envoy: %d, want %d", got, code)
		}
		return nil
	})
}
