//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/keyauthz/keyauthz/test/testenv"
)

func TestMain(m *testing.M) {
	v, err := testenv.EnvoyVersion()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("e2e: envoy:", v)
	if os.Getenv(testenv.KeyauthzBinEnv) == "" {
		dir, err := os.MkdirTemp("", "keyauthz-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		code := func() int {
			defer os.RemoveAll(dir)
			wd, _ := os.Getwd()
			bin, err := testenv.BuildKeyauthz(filepath.Join(wd, "..", ".."), dir)
			if err != nil {
				fmt.Fprintln(os.Stderr, "e2e: FAIL:", err, "\n"+testenv.KeyauthzHelp)
				return 1
			}
			fmt.Println("e2e: built", bin, "(KEYAUTHZ_BIN unset)")
			os.Setenv(testenv.KeyauthzBinEnv, bin)
			return run(m)
		}()
		os.Exit(code)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goleak:", err)
			return 1
		}
	}
	return code
}
