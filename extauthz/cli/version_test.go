package cli

import (
	"os"
	"reflect"
	"regexp"
	"testing"
)

// The linker's -X silently ignores a symbol that does not exist: test/run.sh's
// build() and the Dockerfile must name this package's Version.
func TestBuildsSetVersion(t *testing.T) {
	want := reflect.TypeFor[usageError]().PkgPath() + ".Version"
	x := regexp.MustCompile(`-X ([^ "=]+)=`)
	for _, f := range []string{"../../test/run.sh", "../../Dockerfile"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ms := x.FindAllSubmatch(b, -1)
		if len(ms) == 0 {
			t.Errorf("%s sets no -X variable; want %s", f, want)
		}
		for _, m := range ms {
			if string(m[1]) != want {
				t.Errorf("%s sets -X %s; want %s", f, m[1], want)
			}
		}
	}
}
