//go:build browser

package browser_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// chromiumEnv names the variable that may point at another Chromium binary.
const chromiumEnv = "CHROMIUM_BIN"

// chromiumHelp says how to get Chromium; part of every "no Chromium" failure.
const chromiumHelp = "install Debian's Chromium (apt-get install -y chromium) or set CHROMIUM_BIN; test/run.sh browser does it"

// axeHelp says how to get axe-core.
const axeHelp = "run `npm ci` in test/browser (test/run.sh browser does it)"

var (
	chromiumBin string // the browser the tests drive
	axeSource   string // node_modules/axe-core/axe.min.js
)

// TestMain fails (never skips) without Chromium, Envoy or axe-core, and builds
// keyauthz when KEYAUTHZ_BIN is unset.
func TestMain(m *testing.M) {
	os.Exit(mainRun(m))
}

func mainRun(m *testing.M) int {
	chromiumBin = os.Getenv(chromiumEnv)
	if chromiumBin == "" {
		chromiumBin = "/usr/bin/chromium"
	}
	out, err := exec.Command(chromiumBin, "--headless", "--no-sandbox", "--version").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "browser: FAIL: no Chromium at %s (%v): %s\n", chromiumBin, err, chromiumHelp)
		return 1
	}
	fmt.Println("browser:", strings.TrimSpace(string(out)))
	v, err := testenv.EnvoyVersion()
	if err != nil {
		fmt.Fprintln(os.Stderr, "browser: FAIL:", err)
		return 1
	}
	fmt.Println("browser: envoy:", v)
	b, err := os.ReadFile(filepath.Join("node_modules", "axe-core", "axe.min.js"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "browser: FAIL: axe-core: %v: %s\n", err, axeHelp)
		return 1
	}
	axeSource = string(b)
	if os.Getenv(testenv.KeyauthzBinEnv) == "" {
		dir, err := os.MkdirTemp("", "keyauthz-browser-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "browser:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		wd, _ := os.Getwd()
		bin, err := testenv.BuildKeyauthz(filepath.Join(wd, "..", ".."), dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "browser: FAIL:", err, "\n"+testenv.KeyauthzHelp)
			return 1
		}
		fmt.Println("browser: built", bin, "(KEYAUTHZ_BIN unset)")
		os.Setenv(testenv.KeyauthzBinEnv, bin)
	}
	return m.Run()
}
