#!/usr/bin/env bash
# Generates the Python client in clients/python/tenantmq_client from docs/openapi.json with the pinned
# openapi-python-client. With --check, generates into a scratch folder and fails when the committed client
# differs (CI runs it so, after the test that keeps docs/openapi.json equal to what the code produces).
#   scripts/generate-clients.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-tools.sh
# The generator formats its output with ruff, found on PATH.
export PATH="$PYTHON_TOOLS/bin:$PATH" RUFF_NO_CACHE=true

committed=clients/python/tenantmq_client
target=$committed
if [ "${1:-}" = "--check" ]; then
    target=$(mktemp -d)/tenantmq_client
fi
rm -rf "$target"
# A part of the document the generator cannot express (it warns and leaves it out) fails the run.
if ! generated=$(openapi-python-client generate --path docs/openapi.json --config clients/python/generator.yaml \
    --meta none --output-path "$target" 2>&1) || grep -qi "warning" <<<"$generated"; then
    echo "$generated" >&2
    exit 1
fi
if [ "$target" != "$committed" ]; then
    if ! diff -r "$committed" "$target"; then
        echo "clients/python is stale: run scripts/generate-clients.sh" >&2
        exit 1
    fi
    echo "clients/python matches docs/openapi.json"
fi
