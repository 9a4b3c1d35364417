// Package kube checks the Kubernetes, Istio and Envoy Gateway manifests shipped
// under envoy/kubernetes, envoy/istio and envoy/gateway: every document decodes
// strictly into its published Go API type (an unknown field fails), the
// keyauthz configs they carry load, and (build tag e2e) the Envoy configs
// validate with a real Envoy and the sidecar pod runs as its manifest says.
package kube
