#!/usr/bin/env bash
# A tour of the msgxc API with curl. Start the exchange first (scripts/serve.sh), then run:
#   examples/tour.sh            (MSGXC_URL defaults to http://127.0.0.1:8080, data dir ./data)
set -euo pipefail
cd "$(dirname "$0")/.."
URL="${MSGXC_URL:-http://127.0.0.1:8080}"
API="$URL/api/v1"
MSGXC="${MSGXC_BIN:-target/release/msgxc}"
[ -x "$MSGXC" ] || MSGXC=target/debug/msgxc
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
call() { # METHOD PATH TOKEN [BODY]
  local args=(-sS -X "$1" "$API$2" -H "Authorization: Bearer $3")
  [ $# -ge 4 ] && args+=(-H 'Content-Type: application/json' -d "$4")
  curl "${args[@]}" -w '  [%{http_code}]\n'
}

step "ping"
curl -sS "$API/ping" -w '  [%{http_code}]\n'

step "mint tokens (msgxc token signs with the same secret serve uses)"
ALICE=$("$MSGXC" token --sub alice)
BOB=$("$MSGXC" token --sub bob)
ADMIN=$("$MSGXC" token --sub root --admin)
echo "alice, bob and an admin have tokens"

step "bob enlists his iPhone and his e-mail address"
call POST /enlist "$BOB" '{"os":"ios","token":"ad62ea6ea23d6974871cf59a06cbdb2783b85adbafe3355c0007362249d3e75c"}'
call POST /enlist "$BOB" '{"os":"email","email":"bob@example.com"}'
call GET /devices "$BOB"

step "alice creates an open thread"
TID=$(curl -sS -X POST "$API/threads" -H "Authorization: Bearer $ALICE" \
  -d '{"name":"general","open_subscribe":true,"open_publish":true}' | sed -E 's/.*"tid":"([^"]+)".*/\1/')
echo "tid=$TID"

step "bob subscribes"
call POST /subscribe "$BOB" "{\"tid\":\"$TID\"}"

step "bob watches his WebSocket (examples/watch.rs) in the background"
cargo build -q --example watch
target/debug/examples/watch "${URL/http/ws}/api/v1/connect" "$BOB" &
WATCH=$!
trap 'kill $WATCH 2>/dev/null || true' EXIT
sleep 1

step "alice publishes (202 once the event is in JetStream); the socket prints the frame"
call POST /publish "$ALICE" "{\"tid\":\"$TID\",\"msg\":\"hello bob\",\"opts\":{\"urgency\":\"high\",\"data\":{\"k\":\"v\"}}}"
sleep 1

step "the admin sends bob a direct message, with an Idempotency-Key (retry-safe)"
for _ in 1 2; do
  curl -sS -X POST "$API/send" -H "Authorization: Bearer $ADMIN" -H 'Idempotency-Key: tour-1' \
    -d '{"msg":"welcome","uid":"bob"}' -w '  [%{http_code}]\n'
done
sleep 1

step "bob reads his inbox (newest first)"
call GET "/notifications?limit=10" "$BOB"

step "bob marks the first message read; his socket gets a read frame"
MID=$(curl -sS "$API/notifications?limit=1&offset=1" -H "Authorization: Bearer $BOB" | sed -E 's/.*"id":"([^"]+)".*/\1/')
call PATCH /notifications "$BOB" "{\"ids\":[\"$MID\"]}"
sleep 1

step "thread history"
call GET "/threads/$TID/messages" "$BOB"

step "the event log itself (msgxc replay, last 3 events)"
"$MSGXC" replay | tail -n 3
