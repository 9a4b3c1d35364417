package app

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// app is wiring, run and shutdown; the command line (flags, commands, output)
// is extauthz/cli. No file of this package, tests included, imports flag or cli.
func TestNoCommandLineInWiring(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files: %v", err)
	}
	banned := map[string]bool{"flag": true, "github.com/keyauthz/keyauthz/extauthz/cli": true}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ast, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range ast.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); banned[p] {
				t.Errorf("%s imports %s: command-line code belongs in extauthz/cli", f, p)
			}
		}
	}
}
