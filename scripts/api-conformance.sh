#!/usr/bin/env bash
# Runs schemathesis (pinned, in .tools/schemathesis) against a live exchange: `msgxc serve` on a
# free port with its own nats-server and store in a temp dir, an admin token and a user token.
# Every operation of /api/v1/openapi.json gets generated requests (valid and invalid); the run
# fails on a 5xx, on a status the document does not list, on a wrong content type, or on an
# answer that does not match its documented schema. The live streams (/connect, /stream)
# are left out: they do not end.
#
# Usage: scripts/api-conformance.sh [MAX_EXAMPLES]   (MSGXC_BIN: the binary, default
# target/debug/msgxc; 30 examples per operation by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION="4.32.5"
examples="${1:-30}"
bin="${MSGXC_BIN:-$PWD/target/debug/msgxc}"
tools="$PWD/.tools"
st="$tools/schemathesis"
if ! "$st/bin/python" -m pip show schemathesis 2>/dev/null | grep -qx "Version: $SCHEMATHESIS_VERSION"; then
  echo "api-conformance: installing schemathesis==$SCHEMATHESIS_VERSION into $st" >&2
  python3 -m venv "$st"
  "$st/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/msgxc-conformance-XXXXXX")"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
secret="conformance-secret-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export MSGXC_DATA_DIR="$work" MSGXC_JWT_SECRET="$secret" MSGXC_LOG=warn \
  MSGXC_TOOLS_DIR="$tools" MSGXC_WRITE_RATE=0 MSGXC_IP_WRITE_RATE=0
"$bin" serve --listen "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
serve=$!
cleanup() {
  kill "$serve" 2>/dev/null || true
  wait "$serve" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/api/v1/ping" > /dev/null 2>&1 && break
  sleep 0.1
done
admin="$("$bin" token --sub conformance-admin --admin --ttl 2h)"
# Generated requests as an admin (every operation is reachable), then as a plain user.
# (run from the temp dir: hypothesis and schemathesis keep their databases in the cwd)
run() {
  (cd "$work" && "$st/bin/st" run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --header "Authorization: Bearer $1" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --exclude-path /api/v1/connect --exclude-path /api/v1/stream \
    --max-examples "$examples" --seed 20261206 --workers 2 \
    --request-timeout 10 --no-color "${@:2}")
}
user="$("$bin" token --sub conformance-user --ttl 2h)"
for who in admin user; do
  echo "api-conformance: generated requests as the $who" >&2
  if ! run "${!who}"; then
    echo "api-conformance: FAILED as the $who (server log follows)" >&2
    tail -50 "$work/serve.log" >&2
    exit 1
  fi
done
