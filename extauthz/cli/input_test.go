package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
)

// Issue 10 items 2, 12 and 14: the CLI applies the Manager's rules for workspace ids,
// key names and lifetimes before it touches a store or a server.
func TestCLIRefusesBadInputUnsent(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusTeapot)
	}))
	defer srv.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("ops-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	remote := []string{"--server", srv.URL, "--token-file", tok}
	for _, tc := range []struct {
		args []string
		code int
		want string // in stderr
	}{
		{[]string{"keys", "create", "--workspace", "..", "--name", "x"}, 1, "--workspace"},
		{[]string{"keys", "create", "--workspace", ".", "--name", "x"}, 1, "--workspace"},
		{[]string{"keys", "create", "--workspace", "a/../b", "--name", "x"}, 1, "--workspace"},
		{[]string{"keys", "list", "--workspace", ".."}, 1, "--workspace"},
		{[]string{"audit", "--workspace", ".."}, 1, "--workspace"},
		{[]string{"keys", "refresh", "key_x", "--workspace", ".."}, 1, "--workspace"},
		{[]string{"keys", "delete", "key_x", "--workspace", "."}, 1, "--workspace"},
		{[]string{"keys", "create", "--workspace", "acme", "--name", "a\u202eb"}, 1, "--name"},
		{[]string{"keys", "create", "--workspace", "acme", "--name", "a\u2028b"}, 1, "--name"},
		{[]string{"keys", "create", "--workspace", "acme", "--name", "x", "--grant", "org1,.."}, 1, "invalid --grant: "},
		{[]string{"keys", "create", "--workspace", "acme", "--name", "x", "--expires-in", "0s"}, 2, "--expires-in"},
		{[]string{"keys", "create", "--workspace", "acme", "--name", "x", "--expires-in", "-1h"}, 2, "--expires-in"},
	} {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), append(tc.args, remote...), strings.NewReader(""), &out, &errOut, zap.NewNop(), zap.NewAtomicLevel())
		if code != tc.code || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d naming %s", tc.args, code, errOut.String(), tc.code, tc.want)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests reached the server", n)
	}
}
