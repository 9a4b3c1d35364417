# keyauthz: Envoy ext_authz API-key authorizer.
# The build step is the same command test/run.sh runs (keep them in sync).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -tags vtprotobuf -ldflags "-s -w -X github.com/keyauthz/keyauthz/extauthz/app.Version=docker" \
    -o /out/keyauthz ./cmd/keyauthz

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyauthz /usr/local/bin/keyauthz
WORKDIR /var/lib/keyauthz
# gRPC ext_authz + health, HTTP health/metrics/admin. In a pod, bind 0.0.0.0 or a
# unix socket shared with Envoy via --config (the defaults listen on loopback only).
EXPOSE 9001 9002
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/keyauthz"]
CMD ["serve"]
