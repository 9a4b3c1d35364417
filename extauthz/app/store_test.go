package app

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/config"
)

// store.password goes into the URL's userinfo, percent-encoded, where the one
// redactor finds it; a URL without it is left as written.
func TestWithPassword(t *testing.T) {
	const raw = "postgres://keyauthz@db:5432/keys?sslmode=disable"
	if got, err := withPassword(raw, config.Secret{}); err != nil || got != raw {
		t.Fatalf("withPassword without a password = %q, %v", got, err)
	}
	const pw = "p@ss:w/rd?#%"
	t.Setenv("KEYAUTHZ_TEST_PG_PASSWORD", pw+"\n")
	got, err := withPassword(raw, config.Secret{Env: "KEYAUTHZ_TEST_PG_PASSWORD"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(got)
	if err != nil {
		t.Fatalf("withPassword = an invalid URL: %v", err)
	}
	if p, _ := u.User.Password(); u.User.Username() != "keyauthz" || p != pw || u.Host != "db:5432" || u.Path != "/keys" || u.RawQuery != "sslmode=disable" {
		t.Fatalf("withPassword = %s (password %q)", config.RedactURL(got), p)
	}
	if safe := config.RedactURL(got); strings.Contains(safe, "w/rd") || strings.Contains(safe, "p%40ss") {
		t.Fatalf("RedactURL shows the injected password: %s", safe)
	}
	if secrets, ok := config.URLSecrets(got); !ok || !slices.Contains(secrets, pw) {
		t.Fatalf("URLSecrets does not list the injected password: %v", ok)
	}
	_, err = withPassword(raw, config.Secret{Env: "KEYAUTHZ_TEST_UNSET_VARIABLE"})
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Path != "store.password.env" {
		t.Fatalf("withPassword with an unset variable = %v, want an error at store.password.env", err)
	}
}
