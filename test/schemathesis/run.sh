#!/usr/bin/env bash
# Property-based test of the admin API against its own OpenAPI document with
# schemathesis (PyPI), bounded to about a minute: no 5xx, every status code,
# content type and body as the served /v1/openapi.yaml says.
#
#   KEYAUTHZ_BIN=/path/to/keyauthz test/schemathesis/run.sh
#
# test/run.sh runs it as its schemathesis stage (after building the binary).
# It installs schemathesis $SCHEMATHESIS_VERSION into .venv/ when missing,
# serves keyauthz from a temp dir (SQLite store, pepper and admin token files,
# free loopback ports), runs schemathesis with the admin token, and stops the
# server and removes the temp dir whatever happens. Any failure exits non-zero.
#
# Knobs: SCHEMATHESIS_MAX_TIME (seconds, default 60), SCHEMATHESIS_MAX_EXAMPLES
# (per operation, default 100), SCHEMATHESIS_SEED (to replay a run),
# SCHEMATHESIS_CHECKS (comma-separated schemathesis checks).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SCHEMATHESIS_VERSION=4.32.5
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-60}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
CHECKS=${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance}

die() { printf 'test/schemathesis: %s\n' "$*" >&2; exit 1; }

[ -n "${KEYAUTHZ_BIN:-}" ] && [ -x "$KEYAUTHZ_BIN" ] || die "KEYAUTHZ_BIN must name the built keyauthz binary (test/run.sh schemathesis builds it)"

py=$ROOT/.venv/bin/python
if [ ! -x "$py" ]; then
  python3 -m venv "$ROOT/.venv" || die "python3 -m venv failed: install python3-venv"
fi
if ! "$py" -c "import importlib.metadata as m,sys; sys.exit(m.version('schemathesis')!='$SCHEMATHESIS_VERSION')" 2>/dev/null; then
  echo "installing schemathesis==$SCHEMATHESIS_VERSION into .venv" >&2
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2 ||
    die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
fi
st=$ROOT/.venv/bin/schemathesis
[ -x "$st" ] || die "no schemathesis executable in .venv/bin"

tmp=$(mktemp -d)
pid=
cleanup() {
  local rc=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if ((rc != 0)) && [ -s "$tmp/server.log" ]; then
    echo "--- keyauthz server log (last 40 lines)" >&2
    tail -n 40 "$tmp/server.log" >&2
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two free loopback ports, chosen by the kernel.
read -r gport hport < <("$py" - <<'PY'
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
for s in ss:
    s.close()
PY
)

umask 077
head -c 32 /dev/urandom >"$tmp/pepper"
token=$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')
printf '%s\n' "$token" >"$tmp/admin.token"
cat >"$tmp/keyauthz.yaml" <<YAML
grpc:
  listen: 127.0.0.1:$gport
http:
  listen: 127.0.0.1:$hport
store:
  url: sqlite://$tmp/keys.db
pepper:
  current: 1
  versions:
    - {version: 1, file: $tmp/pepper}
admin:
  tokens:
    - {name: schemathesis, file: $tmp/admin.token}
log:
  level: warn
YAML

"$KEYAUTHZ_BIN" serve --config "$tmp/keyauthz.yaml" >"$tmp/server.log" 2>&1 &
pid=$!
base=http://127.0.0.1:$hport
for i in $(seq 100); do
  if "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$base/readyz" 2>/dev/null; then
    break
  fi
  kill -0 "$pid" 2>/dev/null || die "keyauthz serve exited while starting"
  ((i < 100)) || die "keyauthz not ready at $base/readyz after 10 s"
  sleep 0.1
done

# Some records to find, so that not every generated call is a 404: a workspace
# record and keys in it (schemathesis' random ids still mostly miss them).
"$py" - "$base" "$token" <<'PY' || die "seeding the admin API failed"
import json, sys, urllib.request
base, token = sys.argv[1], sys.argv[2]
def call(method, path, body):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status in (200, 201), r.status
call("PUT", "/v1/workspaces/acme", {"rate_limit": "600/m", "max_keys": 5, "grants": ["acme/web"]})
for n in ("ci", "deploy"):
    call("POST", "/v1/workspaces/acme/api-keys", {"name": n})
PY

cat >"$tmp/schemathesis.toml" <<'TOML'
headers = { Authorization = "Bearer ${KEYAUTHZ_SCHEMATHESIS_TOKEN}" }

# positive_data_acceptance: a request the schema allows must not be refused.
# These operations take inputs whose rules no JSON Schema states, and refuse
# them with 400 naming the field, as the document says: an opaque cursor this
# list did not issue; a usage range with from after to or longer than 40/400
# days; times that must be in the future; a rate's grammar and bounds; names
# without control or direction characters; values holding an API key. Every
# other operation, and negative_data_rejection everywhere, stays strict.
[[operations]]
include-name = [
  "GET /v1/workspaces",
  "GET /v1/workspaces/{ws}/api-keys",
  "GET /v1/workspaces/{ws}/audit",
  "GET /v1/workspaces/{ws}/api-keys/{id}/usage",
  "POST /v1/workspaces/{ws}/api-keys",
  "PATCH /v1/workspaces/{ws}/api-keys/{id}",
  "PUT /v1/workspaces/{ws}",
  "PATCH /v1/workspaces/{ws}",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
TOML

seed=()
[ -z "${SCHEMATHESIS_SEED:-}" ] || seed=(--seed "$SCHEMATHESIS_SEED")
# The token reaches schemathesis through the environment (the config file reads
# it), not the command line; a hard timeout stops a run that would hang.
KEYAUTHZ_SCHEMATHESIS_TOKEN=$token timeout --kill-after 10 $((MAX_TIME + 120)) \
  "$st" --config-file "$tmp/schemathesis.toml" --no-color run "$base/v1/openapi.yaml" \
  --url "$base" \
  --checks "$CHECKS" \
  --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --workers 1 \
  --request-timeout 10 --generation-database none "${seed[@]}" ||
  die "schemathesis found failures (above)"
kill -0 "$pid" 2>/dev/null || die "keyauthz serve exited during the run"
echo "schemathesis: no failures"
