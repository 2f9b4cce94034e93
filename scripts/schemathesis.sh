#!/usr/bin/env bash
# Holds the OpenAPI document to the truth: runs schemathesis (every check, fixed seed; intended exclusions in
# scripts/schemathesis/config.toml) against the service built by `cargo build`, on its own database, with an
# admin token. Deletes the tenants it made (and so their queues) and its database afterwards.
#   scripts/schemathesis.sh [MAX_EXAMPLES]     default 30 per operation (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
max_examples="${1:-30}"
venv="${TENANTMQ_SCHEMATHESIS_VENV:-$CARGO_TARGET_DIR/schemathesis-venv}"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$(sed -n 's/^schemathesis==//p' scripts/schemathesis/requirements.txt)"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/schemathesis/requirements.txt
fi

cargo build --quiet --bin tenantmq
binary="$CARGO_TARGET_DIR/debug/tenantmq"
port="${TENANTMQ_SCHEMATHESIS_PORT:-18480}"
database="tenantmq_schemathesis_$$"
export TENANTMQ_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$database"
export TENANTMQ_SERVER__PORT="$port" TENANTMQ_LOG__LEVEL=warn
base="http://127.0.0.1:$port"
log=$(mktemp)

"$binary" serve >"$log" 2>&1 &
service=$!
token=$("$binary" token --admin)

cleanup() {
    # Deleting each tenant through the API retires it: its consumers stop and its queues go.
    python3 - "$base" "$token" <<'PY' || true
import json, sys, urllib.request
base, token = sys.argv[1], sys.argv[2]
def call(method, path):
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")
cursor = ""
ids = []
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
    curl -fs "$base/readyz" >/dev/null 2>&1 && break
    if ! kill -0 "$service" 2>/dev/null; then cat "$log" >&2; exit 1; fi
    sleep 1
done

output=$(mktemp)
status=0
"$venv/bin/schemathesis" --config-file scripts/schemathesis/config.toml run "$base/openapi.json" \
    --header "Authorization: Bearer $token" --max-examples "$max_examples" --no-color >"$output" 2>&1 || status=$?
# The whole report when something failed; its summary otherwise.
if [ "$status" -ne 0 ]; then cat "$output"; else tail -n 25 "$output"; fi
rm -f "$output"
exit "$status"
