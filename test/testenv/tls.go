package testenv

import (
	"io"
	"net/http"
	"os"
	"testing"
	"time"
)

// Signal sends sig to the running keyauthz.
func (k *Keyauthz) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := k.proc.Signal(sig); err != nil {
		t.Fatalf("signal keyauthz: %v", err)
	}
}

// Running reports whether keyauthz has not exited.
func (k *Keyauthz) Running() bool {
	done, _ := k.proc.Exited()
	return !done
}

// Metrics returns the text of keyauthz's /metrics.
func (k *Keyauthz) Metrics(t testing.TB) string {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	r, err := hc.Get("http://" + k.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// LogText returns keyauthz's log so far.
func (k *Keyauthz) LogText(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(k.Log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
