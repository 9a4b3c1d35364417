//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// Header names as the product defines them (Envoy lower-cases what clients type).
const (
	hKeyID     = "x-keyauthz-key-id"
	hWorkspace = "x-keyauthz-workspace"
)

// invalidBody is the exact 401 body users rely on.
const invalidBody = `{"message":"Invalid API key"}`

// stack is keyauthz, Envoy on one shipped config, and the upstreams behind it.
type stack struct {
	kz     *testenv.Keyauthz
	envoy  *testenv.Envoy
	app    *testenv.Upstream // the app (sidecar) or the api service (front proxy)
	public *testenv.Upstream // front proxy only
	client *http.Client
	conf   string
	unix   bool
	url    string // the front's listener when it is not Envoy (nginx)
}

// sidecarConfig makes /organizations/{org}/... name the organization a request targets.
const sidecarConfig = `ownership:
  path_templates: ["/organizations/{resource}"]
`

// newSidecar runs envoy/sidecar.yaml in front of one app.
func newSidecar(t *testing.T, unix bool) *stack {
	s := &stack{conf: "sidecar.yaml", unix: unix}
	s.kz = testenv.StartKeyauthz(t, testenv.KeyauthzOptions{Unix: unix, Extra: sidecarConfig})
	s.app = testenv.StartUpstream(t, "app")
	s.envoy = testenv.StartEnvoy(t, testenv.EnvoyOptions{
		Config:   s.conf,
		Keyauthz: s.kz.GRPCAddr,
		Ports:    map[int]int{testenv.DefaultAppPort: s.app.Port},
	})
	s.client = newClient(t)
	return s
}

// newFrontProxy runs envoy/front-proxy.yaml in front of an api and a public service;
// keyauthz has no path templates, so ownership comes from the routes' context_extensions.
func newFrontProxy(t *testing.T) *stack {
	s := &stack{conf: "front-proxy.yaml"}
	s.kz = testenv.StartKeyauthz(t, testenv.KeyauthzOptions{})
	s.app = testenv.StartUpstream(t, "api")
	s.public = testenv.StartUpstream(t, "public")
	s.envoy = testenv.StartEnvoy(t, testenv.EnvoyOptions{
		Config:   s.conf,
		Keyauthz: s.kz.GRPCAddr,
		Ports:    map[int]int{testenv.DefaultAppPort: s.app.Port, testenv.DefaultPublicPort: s.public.Port},
	})
	s.client = newClient(t)
	return s
}

func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport: tr,
		Timeout:   5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// reply is what the client saw.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) String() string {
	return fmt.Sprintf("%d %v %q", r.status, r.header, r.body)
}

// fromUpstream reports whether the named upstream produced the response.
func (r reply) fromUpstream(name string) bool {
	return r.header.Get(testenv.UpstreamHeader) == name
}

// get sends GET path through Envoy with the headers given as name, value pairs,
// spelled exactly as given (no canonicalization), plus the test's tag.
func (s *stack) get(t *testing.T, path string, hv ...string) reply {
	t.Helper()
	r, err := s.tryGet(t, path, hv...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (s *stack) tryGet(t *testing.T, path string, hv ...string) (reply, error) {
	base := s.url
	if base == "" {
		base = s.envoy.URL
	}
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		return reply{}, err
	}
	req.Header[testenv.TagHeader] = []string{tag(t)}
	for i := 0; i+1 < len(hv); i += 2 {
		req.Header[hv[i]] = append(req.Header[hv[i]], hv[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, fmt.Errorf("GET %s: body: %w", path, err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// workspace returns a workspace name of the test's own (keyauthz caps keys per
// workspace, so parallel subtests must not share one).
func workspace(t *testing.T) string {
	name := t.Name()
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	var b strings.Builder
	b.WriteString("ws-")
	for _, c := range strings.ToLower(name) {
		if b.Len() >= 40 {
			break
		}
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

// tag identifies a test's requests at a shared upstream.
func tag(t *testing.T) string { return t.Name() }

// seen returns the requests of this test that reached u.
func seen(t *testing.T, u *testenv.Upstream) []testenv.Seen { return u.Tagged(tag(t)) }

// eventually polls path with the headers until the status is want, within d.
func (s *stack) eventually(t *testing.T, d time.Duration, want int, path string, hv ...string) reply {
	t.Helper()
	var last reply
	err := testenv.Poll(d, func() error {
		r, err := s.tryGet(t, path, hv...)
		if err != nil {
			return err
		}
		last = r
		if r.status != want {
			return fmt.Errorf("got %d, want %d (%q)", r.status, want, r.body)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("GET %s: not %d within %v: %v", path, want, d, err)
	}
	return last
}

// wantStatus fails the test unless r has the status.
func wantStatus(t *testing.T, r reply, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status %d, want %d; reply: %s", r.status, want, r)
	}
}

// wantJSONDeny checks a deny: status, application/json (exactly one), a body that
// is a JSON object with a non-empty "message", and that no upstream saw it.
func wantJSONDeny(t *testing.T, r reply, status int, ups ...*testenv.Upstream) {
	t.Helper()
	wantStatus(t, r, status)
	if ct := r.header.Values("content-type"); len(ct) != 1 || ct[0] != "application/json" {
		t.Errorf("content-type %q, want exactly [application/json]", ct)
	}
	var body struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil || body.Message == "" {
		t.Errorf("body %q: want a JSON object with a message (%v)", r.body, err)
	}
	for _, u := range ups {
		if u == nil {
			continue
		}
		if n := len(seen(t, u)); n != 0 {
			t.Errorf("upstream %s received %d requests of a denied test, want 0", u.Name, n)
		}
		if r.fromUpstream(u.Name) {
			t.Errorf("the deny came from upstream %s, not from Envoy", u.Name)
		}
	}
}

// wantInvalid checks the documented 401.
func wantInvalid(t *testing.T, r reply, ups ...*testenv.Upstream) {
	t.Helper()
	wantJSONDeny(t, r, http.StatusUnauthorized, ups...)
	if r.body != invalidBody {
		t.Errorf("401 body %q, want exactly %q", r.body, invalidBody)
	}
	if w := r.header.Get("www-authenticate"); !strings.HasPrefix(w, "ApiKey ") {
		t.Errorf("www-authenticate %q, want ApiKey realm=…", w)
	}
}

// wantRateHeaders checks the five rate-limit headers on a reply and returns
// x-ratelimit-remaining.
func wantRateHeaders(t *testing.T, r reply, limit int) int {
	t.Helper()
	for _, h := range []string{"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit-policy", "ratelimit"} {
		if v := r.header.Values(h); len(v) != 1 || v[0] == "" {
			t.Errorf("client saw %s = %q, want one value", h, v)
		}
	}
	if got := r.header.Get("x-ratelimit-limit"); got != strconv.Itoa(limit) {
		t.Errorf("x-ratelimit-limit %q, want %d", got, limit)
	}
	if got, want := r.header.Get("ratelimit-policy"), fmt.Sprintf(`"default";q=%d;`, limit); !strings.HasPrefix(got, want) {
		t.Errorf("ratelimit-policy %q, want prefix %q", got, want)
	}
	rem, err := strconv.Atoi(r.header.Get("x-ratelimit-remaining"))
	if err != nil || rem < 0 || rem >= limit {
		t.Errorf("x-ratelimit-remaining %q: want an integer in [0,%d)", r.header.Get("x-ratelimit-remaining"), limit)
	}
	if _, err := strconv.Atoi(r.header.Get("x-ratelimit-reset")); err != nil {
		t.Errorf("x-ratelimit-reset %q: want seconds", r.header.Get("x-ratelimit-reset"))
	}
	return rem
}

// wantIdentity checks what the upstream saw for an allowed request of key k: the
// identity headers once each, and no API-key header under any spelling.
func wantIdentity(t *testing.T, s testenv.Seen, k testenv.Key) {
	t.Helper()
	if v := s.Header.Values(hKeyID); len(v) != 1 || v[0] != k.ID {
		t.Errorf("upstream saw %s = %q, want [%s]", hKeyID, v, k.ID)
	}
	if v := s.Header.Values(hWorkspace); len(v) != 1 || v[0] != k.Workspace {
		t.Errorf("upstream saw %s = %q, want [%s]", hWorkspace, v, k.Workspace)
	}
	for name, vs := range s.Header {
		switch strings.ToLower(name) {
		case "x-api-key", "salad-api-key":
			t.Errorf("upstream saw the API key header %s (%d values)", name, len(vs))
		}
		for _, v := range vs {
			if strings.Contains(v, k.Secret) {
				t.Errorf("upstream saw the secret in header %s", name)
			}
		}
	}
}

// only returns the one request of this test at u, failing otherwise.
func only(t *testing.T, u *testenv.Upstream) testenv.Seen {
	t.Helper()
	got := seen(t, u)
	if len(got) != 1 {
		t.Fatalf("upstream %s received %d requests of this test, want 1", u.Name, len(got))
	}
	return got[0]
}

// unknownKey returns a well-formed key (valid checksum) that no store holds.
func unknownKey(t *testing.T) string {
	t.Helper()
	f, err := apikey.NewFormat(apikey.DefaultPrefix, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	k, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// breakChecksum changes the last character of a key, breaking its checksum.
func breakChecksum(k string) string {
	last := k[len(k)-1]
	c := byte('A')
	if last == 'A' {
		c = 'B'
	}
	return k[:len(k)-1] + string(c)
}
