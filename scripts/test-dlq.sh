#!/usr/bin/env bash
# Walks through the dead-letter queue against a running service (`cargo run -- serve` in another terminal):
# creates a tenant, publishes a good message through the API and a bad one (not JSON) straight to the
# tenant's AMQP queue, shows the bad one arrive in the DLQ with its reason, replays it, purges the DLQ and
# deletes the tenant. Each step prints what it sends and what comes back.
#
#   scripts/test-dlq.sh                  # against http://127.0.0.1:8080, tokens minted with the local config
#   TENANTMQ_URL=http://host:9000 TENANTMQ_TOKEN=<admin JWT> scripts/test-dlq.sh
#   KEEP_TENANT=1 scripts/test-dlq.sh    # leave the demo tenant in place
set -euo pipefail
cd "$(dirname "$0")/.."

URL="${TENANTMQ_URL:-http://127.0.0.1:8080}"
command -v jq >/dev/null || { echo "this script needs jq (apt-get install jq)" >&2; exit 1; }
command -v curl >/dev/null || { echo "this script needs curl" >&2; exit 1; }

if [[ -z "${TENANTMQ_BIN:-}" ]]; then
    cargo build --quiet --bin tenantmq
    TENANTMQ_BIN="${CARGO_TARGET_DIR:-target}/debug/tenantmq"
fi
TOKEN="${TENANTMQ_TOKEN:-$("$TENANTMQ_BIN" token --admin --sub test-dlq --ttl 1h)}"

step() { printf '\n== %s\n' "$*"; }
# api METHOD PATH [JSON]: prints the request and the response, leaves the body in $BODY and status in $STATUS.
api() {
    local method=$1 path=$2 data=${3:-}
    printf '$ %s %s %s\n' "$method" "$path" "$data"
    local args=(-sS -X "$method" -H "Authorization: Bearer $TOKEN" -w '\n%{http_code}')
    [[ -n "$data" ]] && args+=(-H 'Content-Type: application/json' -d "$data")
    local out
    out=$(curl "${args[@]}" "$URL$path")
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
    printf '%s %s\n' "$STATUS" "$(jq -c . <<<"${BODY:-null}" 2>/dev/null || echo "$BODY")"
}
expect() { [[ "$STATUS" == "$1" ]] || { echo "expected HTTP $1, got $STATUS" >&2; exit 1; }; }
# wait_for DESCRIPTION PATH JQ_CONDITION: polls PATH until the condition holds (30 s at most).
wait_for() {
    local what=$1 path=$2 condition=$3
    printf 'waiting for %s' "$what"
    for _ in $(seq 1 60); do
        if curl -sS -H "Authorization: Bearer $TOKEN" "$URL$path" | jq -e "$condition" >/dev/null 2>&1; then
            echo " ok"
            return 0
        fi
        printf '.'
        sleep 0.5
    done
    echo " timed out" >&2
    exit 1
}

curl -sSf "$URL/healthz" >/dev/null || { echo "no service at $URL: start it with \`cargo run -- serve\`" >&2; exit 1; }

step "1. create a tenant"
api POST /tenants "{\"name\": \"dlq-demo-$(date +%s)\", \"workers\": 2}"
expect 201
TENANT=$(jq -r .id <<<"$BODY")
wait_for "its consumer" "/tenants/$TENANT" '.runtime.consumer_state == "running"'

step "2. publish a good message through the API"
api POST "/tenants/$TENANT/messages" '{"payload": {"order": 1, "status": "paid"}}'
expect 202

step "3. publish a bad message (not JSON) straight to the tenant's queue, as any AMQP producer could"
echo "\$ tenantmq publish --tenant $TENANT 'this is not JSON'"
BAD_ID=$("$TENANTMQ_BIN" publish --tenant "$TENANT" 'this is not JSON')
echo "published message $BAD_ID"

step "4. the good one is stored; the bad one is in the DLQ, with its reason"
wait_for "the good message to be stored" "/messages?tenant_id=$TENANT" '.data | length == 1'
api GET "/messages?tenant_id=$TENANT"
wait_for "the bad message in the DLQ" "/tenants/$TENANT/dlq" '.data | length == 1'
api GET "/tenants/$TENANT/dlq"
echo "reason: $(jq -r '.data[0].reason' <<<"$BODY"), attempts: $(jq -r '.data[0].attempts' <<<"$BODY")"
api GET "/tenants/$TENANT"
echo "queue depth $(jq '.runtime.queue_depth' <<<"$BODY"), retry depth $(jq '.runtime.retry_depth' <<<"$BODY"), DLQ depth $(jq '.runtime.dlq_depth' <<<"$BODY")"

step "5. replay it: it goes back to the tenant's queue (a fixed message would now be stored; this one is still not JSON, so it returns to the DLQ with a fresh history)"
api POST "/tenants/$TENANT/dlq/replay" "{\"ids\": [\"$BAD_ID\"]}"
expect 202
wait_for "the message back in the DLQ" "/tenants/$TENANT/dlq" "(.data | length) == 1 and .data[0].id == \"$BAD_ID\""
api GET "/tenants/$TENANT/dlq"

step "6. purge the DLQ"
api DELETE "/tenants/$TENANT/dlq"
expect 204
api GET "/tenants/$TENANT/dlq"
[[ $(jq '.data | length' <<<"$BODY") == 0 ]] || { echo "the DLQ is not empty" >&2; exit 1; }
api GET "/messages?tenant_id=$TENANT"
[[ $(jq '.data | length' <<<"$BODY") == 1 ]] || { echo "expected exactly one stored message" >&2; exit 1; }

if [[ -z "${KEEP_TENANT:-}" ]]; then
    step "7. delete the demo tenant (its queue, retry queue and DLQ go with it)"
    api DELETE "/tenants/$TENANT"
    expect 204
fi
printf '\nThe DLQ works: bad messages are kept with their reason, and can be replayed or purged.\n'
