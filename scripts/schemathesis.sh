#!/usr/bin/env bash
# Holds the OpenAPI document to the truth: schemathesis (every check, fixed seed; the intended exceptions in
# scripts/schemathesis/config.toml) against the running service, through scripts/with-service.sh.
#   scripts/schemathesis.sh [MAX_EXAMPLES]     default 30 per operation (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-tools.sh

max_examples="${1:-30}"
run() {
    local output status=0
    output=$(mktemp)
    "$PYTHON_TOOLS/bin/schemathesis" --config-file scripts/schemathesis/config.toml run "$TENANTMQ_URL/openapi.json" \
        --header "Authorization: Bearer $TENANTMQ_TOKEN" --max-examples "$max_examples" --no-color >"$output" 2>&1 ||
        status=$?
    # The whole report when something failed; its summary otherwise.
    if [ "$status" -ne 0 ]; then cat "$output"; else tail -n 25 "$output"; fi
    rm -f "$output"
    return "$status"
}
export -f run
export max_examples
scripts/with-service.sh bash -c run
