//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"testing"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// TestCodec checks that keyauthz serves Envoy's Checks with the gRPC codec this
// run asked for (KEYAUTHZ_E2E_CODEC: test/run.sh runs the suite once with
// "standard"), as its "serving" log line reports, and that both answers work
// through it; every other test of the run shares that codec.
func TestCodec(t *testing.T) {
	want := os.Getenv(testenv.CodecEnv)
	if want == "" {
		want = "fast"
	}
	s := newSidecar(t, false)
	if s.kz.Codec != want {
		t.Fatalf("keyauthz configured with codec %q, want %q", s.kz.Codec, want)
	}
	ws := workspace(t)
	k := s.kz.CreateKey(t, ws, "codec")
	wantInvalid(t, s.get(t, "/organizations/"+ws+"/x", "X-API-KEY", breakChecksum(k.Secret)), s.app)
	wantStatus(t, s.get(t, "/organizations/"+ws+"/x", "X-API-KEY", k.Secret), http.StatusOK)
	if got := servingCodec(t, s.kz.Log); got != want {
		t.Fatalf("keyauthz serves with codec %q, want %q", got, want)
	}
	t.Logf("codec in use: %s", want)
}

// servingCodec returns the codec field of the last "serving" line in a keyauthz log.
func servingCodec(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	codec, found := "", false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Msg   string `json:"msg"`
			Codec string `json:"codec"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "serving" {
			codec, found = e.Codec, true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no \"serving\" line in %s", path)
	}
	return codec
}
