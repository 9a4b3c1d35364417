package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func run(args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, strings.NewReader(""), &out, &errOut, zap.NewNop(), zap.NewAtomicLevel())
	return out.String(), errOut.String(), code
}

// Every command's --help and -h print its own usage and flags on stdout and exit 0.
func TestEveryCommandHasHelp(t *testing.T) {
	for name := range commands {
		for _, h := range []string{"--help", "-h"} {
			out, errOut, code := run(append(strings.Fields(name), h)...)
			if code != 0 || !strings.HasPrefix(out, "usage: keyauthz "+name) || !strings.Contains(out, "  --config") || errOut != "" {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want exit 0 and its usage", name, h, code, out, errOut)
			}
		}
	}
	for _, args := range [][]string{{"keys", "--help"}, {"keys", "-h"}, {"help", "keys"}} {
		if out, _, code := run(args...); code != 0 || !strings.Contains(out, "keyauthz keys COMMAND") {
			t.Errorf("%q: exit %d, %q; want the keys usage", args, code, out)
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		if out, _, code := run(args...); code != 0 || !strings.Contains(out, "keys create") || !strings.Contains(out, "migrate") {
			t.Errorf("%q: exit %d, %q; want the command list", args, code, out)
		}
	}
	if out, _, code := run("help", "keys", "create"); code != 0 || !strings.Contains(out, "--name") {
		t.Errorf("help keys create: exit %d, %q", code, out)
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		if out, _, code := run(args...); code != 0 || out != "keyauthz "+Version+"\n" {
			t.Errorf("%q: exit %d, %q; want the version", args, code, out)
		}
	}
}

// Required flags are reported in one wording: "--flag is required".
func TestRequiredFlagWording(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "list"}, "--workspace is required"},
		{[]string{"audit"}, "--workspace is required"},
		{[]string{"keys", "create", "--name", "ci"}, "--workspace is required"},
		{[]string{"keys", "create", "--workspace", "acme"}, "--name is required"},
		{[]string{"check"}, "--key is required"},
		{[]string{"keys", "list", "--workspace", "acme", "--server", "http://127.0.0.1:1"}, "--token-file is required with --server"},
	} {
		_, errOut, code := run(c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 with %q", c.args, code, errOut, c.want)
		}
	}
}

// --store sqlite:// is a store URL problem, not a pepper one.
func TestEmptyStorePathNamesTheStoreURL(t *testing.T) {
	for _, s := range []string{"sqlite://", "file://"} {
		_, errOut, code := run("keys", "list", "--workspace", "acme", "--store", s)
		if code != 1 || !strings.Contains(errOut, "store.url: "+s+": want a file path") || strings.Contains(errOut, "pepper") {
			t.Errorf("--store %s: exit %d, %q; want a store.url error", s, code, errOut)
		}
	}
}
