package postgres

import (
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// key_usage has one counter column per outcome, named by Outcome.String(),
// which the usage statements are built from.
func TestUsageColumnsMatchOutcomes(t *testing.T) {
	m2 := migrations[1]
	for o := range apikey.NumOutcomes {
		if !strings.Contains(m2, "\n\t"+o.String()+" ") {
			t.Errorf("migration 2 has no key_usage column %q", o.String())
		}
		if !strings.Contains(addUsageSQL, "EXCLUDED."+o.String()) {
			t.Errorf("addUsageSQL does not add %q", o.String())
		}
	}
	if got := strings.Count(m2[strings.Index(m2, "CREATE TABLE key_usage"):], "BIGINT NOT NULL DEFAULT 0"); got != int(apikey.NumOutcomes) {
		t.Errorf("key_usage has %d counter columns, want %d", got, apikey.NumOutcomes)
	}
}
