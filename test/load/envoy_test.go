package load

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/test/testenv"
)

func TestHistPct(t *testing.T) {
	h := Hist{}
	for v := int64(1); v <= 100; v++ { // 1..100 µs, once each
		h[v]++
	}
	h.Merge(Hist{1000: 1})
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 51 * time.Microsecond}, {99, 100 * time.Microsecond}, {100, time.Millisecond}, {0.1, time.Microsecond}} {
		if got := h.Pct(c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if n := h.N(); n != 101 {
		t.Errorf("N = %d, want 101", n)
	}
	if got := (Hist{}).Pct(99); got != 0 {
		t.Errorf("empty p99 = %v, want 0", got)
	}
}

// TestEnvoyTimingConfig renders the shipped sidecar config as the Envoy part
// does and checks that both arms log the timing fields and only the "without"
// arm lost the filter; then it reads the fields back from access-log lines.
func TestEnvoyTimingConfig(t *testing.T) {
	with, err := testenv.TryRenderEnvoyConfig(testenv.EnvoyOptions{Config: "sidecar.yaml", Keyauthz: "127.0.0.1:1234", Ports: map[int]int{testenv.DefaultAppPort: 4321}})
	if err != nil {
		t.Fatal(err)
	}
	if with, err = withTiming(with); err != nil {
		t.Fatal(err)
	}
	without, err := withoutExtAuthz(with)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]string{"with": with, "without": without} {
		if !strings.Contains(cfg, "kzwait=%COMMON_DURATION(DS_RX_END:US_TX_BEG:us)%") {
			t.Errorf("%s: no timing fields in the access-log format", name)
		}
	}
	const filter = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz" // and ExtAuthzPerRoute
	if !strings.Contains(with, filter) || strings.Contains(without, filter) {
		t.Errorf("ext_authz config: with %v, without %v; want only with", strings.Contains(with, filter), strings.Contains(without, filter))
	}

	log := filepath.Join(t.TempDir(), "envoy.log")
	lines := []string{
		`[2026-01-01T00:00:00.000Z] "GET /x HTTP/1.1" 200 - 1ms key_id=k workspace=w details=via_upstream kzwait=480 kztotal=900 kzpath=` + wrkPath,
		`[2026-01-01T00:00:00.000Z] "GET /x HTTP/1.1" 200 - 1ms key_id=k workspace=w details=via_upstream kzwait=520 kztotal=950 kzpath=` + wrkPath,
		`[2026-01-01T00:00:00.000Z] "GET /x HTTP/1.1" 200 - 9ms key_id=k workspace=w details=via_upstream kzwait=9000 kztotal=9500 kzpath=` + wrkPath + "&phase=warmup",
		`[2026-01-01 00:00:00.000][1][warning][main] unrelated`,
	}
	if err := os.WriteFile(log, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wait, total, err := envoyTimings(log, wrkPath)
	if err != nil {
		t.Fatal(err)
	}
	if wait.N() != 2 || wait.Pct(100) != 520*time.Microsecond || total.Pct(50) != 900*time.Microsecond {
		t.Errorf("read %v / %v; want the two measured lines only (wait 480, 520; total 900, 950)", wait, total)
	}
}
