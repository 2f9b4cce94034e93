#!/usr/bin/env bash
# Runs COMMAND against the service built by `cargo build`, started on a free-standing database of its own:
# COMMAND sees TENANTMQ_URL (the base URL) and TENANTMQ_TOKEN (an admin token). Afterwards the tenants it made
# are deleted through the API (which retires them: consumers stopped, queues deleted) and the database dropped.
#   scripts/with-service.sh COMMAND [ARGS…]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet --bin tenantmq
binary="$CARGO_TARGET_DIR/debug/tenantmq"
port="${TENANTMQ_SERVICE_PORT:-18480}"
database="tenantmq_script_$$"
log=$(mktemp)

TENANTMQ_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$database" TENANTMQ_SERVER__PORT="$port" \
    TENANTMQ_LOG__LEVEL=warn "$binary" serve >"$log" 2>&1 &
service=$!
export TENANTMQ_URL="http://127.0.0.1:$port"
TENANTMQ_TOKEN=$("$binary" token --admin --sub scripts)
export TENANTMQ_TOKEN

cleanup() {
    python3 - <<'PY' || true
import json, os, sys, urllib.request
base, token = os.environ["TENANTMQ_URL"], os.environ["TENANTMQ_TOKEN"]
def call(method, path):
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")
ids, cursor = [], None
while True:
    page = call("GET", "/tenants?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
    ids += [tenant["id"] for tenant in page["data"]]
    cursor = page["next_cursor"]
    if not cursor:
        break
for tenant in ids:
    try:
        call("DELETE", f"/tenants/{tenant}")
    except Exception as error:
        print(f"cannot delete tenant {tenant}: {error}", file=sys.stderr)
PY
    kill "$service" 2>/dev/null || true
    wait "$service" 2>/dev/null || true
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

for _ in $(seq 1 60); do
    curl -fs "$TENANTMQ_URL/readyz" >/dev/null 2>&1 && break
    if ! kill -0 "$service" 2>/dev/null; then cat "$log" >&2; exit 1; fi
    sleep 1
done
"$@"
