package row

import (
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func TestMergeUsage(t *testing.T) {
	h := time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)
	in := []apikey.Usage{
		{KeyID: "key_b", Hour: h.Add(30 * time.Minute).In(time.FixedZone("X", 3600)), Counts: [apikey.NumOutcomes]int64{1, 2}},
		{KeyID: "key_a", Hour: h.Add(time.Hour), Counts: [apikey.NumOutcomes]int64{5}},
		{KeyID: "key_b", Hour: h, Counts: [apikey.NumOutcomes]int64{10, 0, 3}},
		{KeyID: "key_c", Hour: h}, // no counts: dropped
		{KeyID: "key_a", Hour: h, Counts: [apikey.NumOutcomes]int64{1}},
	}
	got := MergeUsage(in)
	want := []apikey.Usage{
		{KeyID: "key_a", Hour: h, Counts: [apikey.NumOutcomes]int64{1}},
		{KeyID: "key_a", Hour: h.Add(time.Hour), Counts: [apikey.NumOutcomes]int64{5}},
		{KeyID: "key_b", Hour: h, Counts: [apikey.NumOutcomes]int64{11, 2, 3}},
	}
	if len(got) != len(want) {
		t.Fatalf("MergeUsage = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].KeyID != want[i].KeyID || !got[i].Hour.Equal(want[i].Hour) || got[i].Hour.Location() != time.UTC || got[i].Counts != want[i].Counts {
			t.Errorf("MergeUsage[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestAddUsageSQL(t *testing.T) {
	q := AddUsageSQL(2, func(i int) string { return "$" + string(rune('0'+i%10)) })
	cols := 2 + int(apikey.NumOutcomes)
	if n := strings.Count(q, "$"); n != 2*cols {
		t.Errorf("placeholders = %d, want %d: %s", n, 2*cols, q)
	}
	for _, c := range UsageCounters {
		if !strings.Contains(q, c+" = key_usage."+c+" + excluded."+c) {
			t.Errorf("upsert does not add %s: %s", c, q)
		}
	}
	if UsageCounters[apikey.OutcomeUnavailable] != "limiter_unavailable" || UsageCounters[0] != "allowed" {
		t.Errorf("UsageCounters = %v", UsageCounters)
	}
	if s := Schema2(Dialect{Text: "TEXT"}); !strings.Contains(s, "not_yet_valid BIGINT NOT NULL DEFAULT 0") {
		t.Errorf("Schema2 lacks an outcome column:\n%s", s)
	}
}

func TestPatchFields(t *testing.T) {
	name, on := "x", true
	if got := KeyPatchFields(apikey.KeyPatch{Disabled: &on, Name: &name}); got != "name,disabled" {
		t.Errorf("KeyPatchFields = %q", got)
	}
	if got := KeyPatchFields(apikey.KeyPatch{}); got != "" {
		t.Errorf("KeyPatchFields(empty) = %q", got)
	}
	max := 3
	if got := WorkspacePatchFields(apikey.WorkspacePatch{MaxKeys: &max, Disabled: &on}); got != "max_keys,disabled" {
		t.Errorf("WorkspacePatchFields = %q", got)
	}
	a := apikey.Workspace{ID: "w", Grants: []string{"x"}, MaxKeys: 2}
	b := apikey.Workspace{ID: "w", Grants: []string{"y"}, MaxKeys: 2, RateLimit: apikey.Rate{N: 1, Per: time.Second}}
	if got := WorkspaceChangedFields(a, b); got != "rate_limit,grants" {
		t.Errorf("WorkspaceChangedFields = %q", got)
	}
}
