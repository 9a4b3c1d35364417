# keyauthz: Envoy ext_authz API-key authorizer.
# The build step is the same command test/run.sh runs (keep them in sync; test/image checks it).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -tags vtprotobuf -ldflags "-s -w -X github.com/keyauthz/keyauthz/extauthz/cli.Version=docker" \
    -o /out/keyauthz ./cmd/keyauthz
# The state directory (SQLite store and generated pepper of the embedded defaults).
# The final image has no shell to mkdir/chown, so it is made here and copied with
# nonroot (uid/gid 65532 in distroless) as its owner.
RUN mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyauthz /usr/local/bin/keyauthz
COPY --from=build --chown=65532:65532 /out/state /var/lib/keyauthz
WORKDIR /var/lib/keyauthz
# gRPC ext_authz + health (9001), HTTP health/metrics/admin (9002). The default
# command serves the embedded defaults (store ./keyauthz.db, pepper ./keyauthz.pepper
# in /var/lib/keyauthz) on every interface, so kubelet probes reach it; the admin API
# stays off until a config names admin.tokens. In Kubernetes pass a config from a
# ConfigMap and secrets from a Secret: args: [serve, --config, /etc/keyauthz/keyauthz.yaml]
# (--grpc-listen unix:///run/keyauthz/grpc.sock, --http-listen $(POD_IP):9002 override
# the config's listen addresses); see envoy/kubernetes/.
EXPOSE 9001 9002
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/keyauthz"]
CMD ["serve", "--grpc-listen", ":9001", "--http-listen", ":9002"]
