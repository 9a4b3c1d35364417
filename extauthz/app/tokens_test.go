package app

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/config"
)

func TestAdminTokens(t *testing.T) {
	const (
		opsToken = "ops-token-0123456789abcdef"
		ciToken  = "ci-token-0123456789abcdef"
	)
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(opsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYAUTHZ_TEST_ADMIN_TOKEN", ciToken)
	toks, err := adminTokens([]config.Token{{Name: "ops", Secret: config.Secret{File: file}}, {Name: "ci", Secret: config.Secret{Env: "KEYAUTHZ_TEST_ADMIN_TOKEN"}}})
	if err != nil || len(toks) != 2 || string(toks[0].Secret) != opsToken || toks[1].Name != "ci" || string(toks[1].Secret) != ciToken {
		t.Fatalf("adminTokens = %+v, %v", toks, err)
	}
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("abc"), 0o600)
	for _, tc := range []struct {
		tok  config.Token
		path string
	}{
		{config.Token{Name: "a", Secret: config.Secret{File: filepath.Join(dir, "missing")}}, "admin.tokens[0].file"},
		{config.Token{Name: "a", Secret: config.Secret{Env: "KEYAUTHZ_TEST_UNSET_VARIABLE"}}, "admin.tokens[0].env"},
		{config.Token{Name: "a", Secret: config.Secret{File: short}}, "admin.tokens[0]"},
	} {
		_, err := adminTokens([]config.Token{tc.tok})
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Path != tc.path {
			t.Errorf("adminTokens(%+v) = %v, want an error at %s", tc.tok, err, tc.path)
		} else if strings.Contains(err.Error(), "abc") {
			t.Errorf("error holds the token: %v", err)
		}
	}
}
