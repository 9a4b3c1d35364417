package extauthz

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func TestAppendHeaderSafe(t *testing.T) {
	a255 := strings.Repeat("a", 255)
	for _, tc := range []struct{ in, want string }{
		{"ml", "ml"},
		{"pro plan", "pro plan"},
		{" lead", "%20lead"},
		{"trail ", "trail%20"},
		{"a  b", "a%20%20b"},
		{" ", "%20"},
		{"100%", "100%25"},
		{"é", "%C3%A9"},
		{"\r\nX-Evil: 1", "%0D%0AX-Evil: 1"},
		{"tab\there", "tab%09here"},
		{"\x7f\x00", "%7F%00"},
		{strings.Repeat("a", 300), strings.Repeat("a", 256)},
		{a255 + "é", a255}, // an escape is never cut
		{strings.Repeat("a", 254) + "%", strings.Repeat("a", 254)}, // %25 does not fit in 2 bytes
		{a255 + " b", a255}, // the cut would end on a kept space
	} {
		got := string(appendHeaderSafe(nil, tc.in))
		if got != tc.want {
			t.Errorf("appendHeaderSafe(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if headerSafe(tc.in) != (got == tc.in) {
			t.Errorf("headerSafe(%q) = %v, but the safe form is %q", tc.in, headerSafe(tc.in), got)
		}
	}
}

// FuzzHeaderSafe: the safe form is a header value of at most 256 bytes (visible
// ASCII and single inner spaces) that percent-decodes to a prefix of the input.
func FuzzHeaderSafe(f *testing.F) {
	for _, s := range []string{"", "a b", " x ", "%%", "é\x00\r\n", strings.Repeat("é ", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := string(appendHeaderSafe([]byte("prefix"), in))[len("prefix"):]
		if len(out) > maxMetaValue {
			t.Fatalf("%d bytes", len(out))
		}
		for i := 0; i < len(out); i++ {
			c := out[i]
			if c == ' ' && (i == 0 || i == len(out)-1 || out[i-1] == ' ' || out[i+1] == ' ') || c != ' ' && (c < 0x21 || c > 0x7E) {
				t.Fatalf("%q: byte %d (%q) not header-safe", out, i, c)
			}
		}
		var dec []byte
		for i := 0; i < len(out); i++ {
			if out[i] == '%' {
				if i+2 >= len(out) {
					t.Fatalf("%q: escape cut at %d", out, i)
				}
				var b byte
				for _, h := range out[i+1 : i+3] {
					b = b<<4 | byte(strings.IndexRune("0123456789ABCDEF", h))
				}
				dec, i = append(dec, b), i+2
				continue
			}
			dec = append(dec, out[i])
		}
		if !strings.HasPrefix(in, string(dec)) {
			t.Fatalf("%q decodes to %q, not a prefix of %q", out, dec, in)
		}
		if len(in) <= maxMetaValue && headerSafe(in) && out != in {
			t.Fatalf("a safe value %q changed to %q", in, out)
		}
	})
}

func TestNewRefusesBadMetadata(t *testing.T) {
	fx := newFixture(t, nil, nil)
	for _, fields := range [][]string{{""}, {"a b"}, {"team", "TEAM"}, {"-x"}, make([]string, 17)} {
		for i := range fields {
			if fields[i] == "" && len(fields) > 1 {
				fields[i] = "f" + strings.Repeat("x", i)
			}
		}
		opt := fx.svc.opt
		opt.Metadata = fields
		if _, err := New(fx.format, fx.hasher, fx.keys, fx.svc.limiter, fx.svc.metrics, opt, fx.svc.log); err == nil {
			t.Errorf("New accepted metadata fields %q", fields)
		}
	}
}

// metaWant is what an allowed answer must forward for a key.
type metaWant struct {
	up      map[string]string // metadata headers set upstream
	removed []string          // headers_to_remove, in order
	dyn     map[string]string // dynamic metadata "metadata" struct; nil = absent
}

func checkMeta(t *testing.T, name string, fx *fixture, secret string, a *Answer, want metaWant) {
	t.Helper()
	r := NewWireRequest("/", []KV{{"x-api-key", secret}, {"x-keyauthz-meta-team", "spoofed"}}, nil)
	resp, err := fx.svc.DecideInto(context.Background(), &r, a)
	o := result(t, resp, err)
	if o.code != 200 {
		t.Fatalf("%s: %d", name, o.code)
	}
	got := map[string]string{}
	for k, v := range o.up {
		if strings.HasPrefix(k, "x-keyauthz-meta-") {
			got[k] = v
		}
	}
	if len(got) != len(want.up) {
		t.Errorf("%s: metadata headers %v, want %v", name, got, want.up)
	}
	for k, v := range want.up {
		if got[k] != v {
			t.Errorf("%s: header %s = %q, want %q", name, k, got[k], v)
		}
	}
	if !slices.Equal(o.removed, want.removed) {
		t.Errorf("%s: headers_to_remove %v, want %v", name, o.removed, want.removed)
	}
	fields := resp.GetDynamicMetadata().GetFields()
	md, ok := fields[MetadataFields]
	if (want.dyn != nil) != ok {
		t.Fatalf("%s: dynamic metadata %v, want metadata %v", name, fields, want.dyn)
	}
	if ok {
		st := md.GetStructValue().GetFields()
		if len(st) != len(want.dyn) {
			t.Errorf("%s: dynamic metadata %v, want %v", name, st, want.dyn)
		}
		for k, v := range want.dyn {
			if st[k].GetStringValue() != v {
				t.Errorf("%s: dynamic metadata %s = %v, want %q", name, k, st[k], v)
			}
		}
	}
	if fields[MetadataKeyID].GetStringValue() == "" {
		t.Errorf("%s: key id missing from dynamic metadata %v", name, fields)
	}
}

// Configured metadata fields go upstream as headers and dynamic metadata;
// headers of fields the key lacks are removed; one Answer reused across
// keys (as the fast path's pool does) keeps nothing of an earlier answer.
func TestMetadataForwarded(t *testing.T) {
	fx := newFixture(t, nil, func(o *Options) { o.Metadata = []string{"team", "Plan", "region"} })
	all, _ := fx.add(t, "acme", func(k *apikey.Key) {
		k.Metadata = map[string]string{"team": "ml", "Plan": "pro plan", "region": "eu\r\nx-evil: 1", "other": "not forwarded"}
	})
	some, _ := fx.add(t, "acme", func(k *apikey.Key) { k.Metadata = map[string]string{"Plan": "free", "team": ""} })
	none, _ := fx.add(t, "acme", func(k *apikey.Key) { k.Metadata = map[string]string{"other": "x"} })
	bare, _ := fx.add(t, "acme", nil)
	keyHeaders := []string{"x-api-key", "salad-api-key"}
	allMeta := append(slices.Clone(keyHeaders), "x-keyauthz-meta-team", "x-keyauthz-meta-plan", "x-keyauthz-meta-region")
	wantAll := metaWant{
		up:      map[string]string{"x-keyauthz-meta-team": "ml", "x-keyauthz-meta-plan": "pro plan", "x-keyauthz-meta-region": "eu%0D%0Ax-evil: 1"},
		removed: keyHeaders,
		dyn:     map[string]string{"team": "ml", "Plan": "pro plan", "region": "eu%0D%0Ax-evil: 1"},
	}
	wantSome := metaWant{
		up:      map[string]string{"x-keyauthz-meta-plan": "free"},
		removed: append(slices.Clone(keyHeaders), "x-keyauthz-meta-team", "x-keyauthz-meta-region"),
		dyn:     map[string]string{"Plan": "free"},
	}
	wantNone := metaWant{removed: allMeta}

	var a Answer
	for _, step := range []struct {
		name, key string
		want      metaWant
	}{
		{"all fields", all, wantAll}, {"some fields", some, wantSome}, {"none of the fields", none, wantNone},
		{"no metadata", bare, wantNone}, {"all again", all, wantAll}, {"none after all", bare, wantNone},
		{"some after none", some, wantSome},
	} {
		checkMeta(t, step.name, fx, step.key, &a, step.want)
		var fresh Answer
		checkMeta(t, step.name+" (fresh answer)", fx, step.key, &fresh, step.want)
	}
}

// Without headers.metadata nothing changes: the API-key headers alone are
// removed and no metadata is forwarded, whatever the key holds.
func TestMetadataOffByDefault(t *testing.T) {
	fx := newFixture(t, nil, nil)
	key, _ := fx.add(t, "acme", func(k *apikey.Key) { k.Metadata = map[string]string{"team": "ml"} })
	var a Answer
	checkMeta(t, "default", fx, key, &a, metaWant{removed: []string{"x-api-key", "salad-api-key"}})
}

// Allowed answers built in a reused Answer allocate nothing, with or
// without forwarded metadata, escapes included.
func TestAllowedAnswerDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	for _, tc := range []struct {
		name   string
		fields []string
		meta   map[string]string
		path   string
	}{
		{"no metadata configured", nil, map[string]string{"team": "ml"}, "/organizations/acme/x"},
		{"key without metadata", []string{"team", "plan"}, nil, "/organizations/acme/x"},
		{"key with metadata", []string{"team", "plan"}, map[string]string{"team": "ml", "plan": "pro"}, "/organizations/acme/x"},
		{"escaped and partial", []string{"team", "plan"}, map[string]string{"team": "m l\n√"}, "/organizations/acme/x"},
		{"hierarchical resource", nil, nil, "/organizations/acme/projects/web/x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, nil, func(o *Options) {
				o.Metadata = tc.fields
				o.Templates = []string{"/organizations/{organization}/projects/{project}"}
				o.Used = func(string, time.Time, apikey.Outcome) {}
			})
			fx.svc.opt.DefaultRate.N = 1 << 30
			key, _ := fx.add(t, "acme", func(k *apikey.Key) { k.Metadata = tc.meta })
			r := NewWireRequest(tc.path, []KV{{"x-api-key", key}}, nil)
			var a Answer
			ctx := context.Background()
			resp, err := fx.svc.DecideInto(ctx, &r, &a)
			if o := result(t, resp, err); o.code != 200 {
				t.Fatalf("%d", o.code)
			}
			if n := testing.AllocsPerRun(200, func() { _, _ = fx.svc.DecideInto(ctx, &r, &a) }); n != 0 {
				t.Errorf("%v allocations per allowed Check, want 0", n)
			}
		})
	}
}
