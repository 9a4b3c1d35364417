package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func TestPrinters(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	v := admin.View{ID: "key_a", Workspace: "acme", Name: "ci", Display: "kz_abcd", CreatedAt: at, LastUsedAt: &at}
	var b bytes.Buffer
	if err := printKeys(&b, []admin.View{v}, false); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); !strings.Contains(s, "key_a") || !strings.Contains(s, "kz_abcd…") || !strings.Contains(s, "2030-01-02T03:04:05Z") {
		t.Errorf("printKeys table:\n%s", s)
	}
	b.Reset()
	_ = printKeys(&b, nil, true)
	if strings.TrimSpace(b.String()) != `{"items":[]}` {
		t.Errorf("printKeys JSON of none = %s", b.String())
	}
	b.Reset()
	v.Key = "kz_secret"
	_ = printSecret(&b, v, false, "Created")
	if s := b.String(); !strings.HasPrefix(s, "Created key key_a") || !strings.Contains(s, "kz_secret") {
		t.Errorf("printSecret:\n%s", s)
	}
	b.Reset()
	evs := events([]apikey.Event{{Seq: 7, At: at, Kind: "refreshed", Workspace: "acme", KeyID: "key_a", Actor: "ops", Detail: "grace 1m0s"}})
	_ = printAudit(&b, evs, false)
	if s := b.String(); !strings.Contains(s, "7") || !strings.Contains(s, "refreshed") || !strings.Contains(s, "grace 1m0s") || !strings.Contains(s, "ops") {
		t.Errorf("printAudit table:\n%s", s)
	}
	b.Reset()
	_ = printAudit(&b, evs, true)
	var got struct{ Items []admin.Event }
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || len(got.Items) != 1 || got.Items[0].Seq != 7 || got.Items[0].KeyID != "key_a" {
		t.Errorf("printAudit JSON = %s (%v)", b.String(), err)
	}
}

func TestReadTokenFile(t *testing.T) {
	const opsToken = "ops-token-0123456789abcdef"
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(opsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := readTokenFile(file); err != nil || tok != opsToken {
		t.Errorf("readTokenFile = %q, %v", tok, err)
	}
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := readTokenFile(empty); err == nil {
		t.Error("readTokenFile(empty) succeeded")
	}
	if _, err := readTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("readTokenFile(missing) succeeded")
	}
}
