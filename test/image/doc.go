// Package image checks the container image the repository's Dockerfile builds,
// without a container engine: no Docker daemon runs where the tests run, and the
// base images (golang, distroless) cannot be pulled there. The unit tests read the
// Dockerfile and .dockerignore; the e2e test (build tag e2e) reproduces the final
// image's user, directories and ENTRYPOINT+CMD with the locally built binary
// (KEYAUTHZ_BIN, built as the Dockerfile builds it) and runs them.
package image
