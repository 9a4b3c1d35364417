// Package browser tests the API Access page (extauthz/ui) in a real Chromium,
// driven with chromedp, against the real keyauthz binary behind a real Envoy.
// The tests need the browser build tag, Chromium (/usr/bin/chromium or
// CHROMIUM_BIN), ENVOY_BIN and axe-core in node_modules (npm ci here); they
// fail, never skip, when one is missing. test/run.sh browser sets all of it up.
package browser
