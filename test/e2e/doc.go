// Package e2e runs keyauthz behind a real Envoy, on the configs shipped in envoy/,
// and asserts what an HTTP client and the upstream see. The tests need the e2e
// build tag and an Envoy binary in ENVOY_BIN; see README.md.
package e2e
