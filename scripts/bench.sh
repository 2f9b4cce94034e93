#!/usr/bin/env bash
# Benchmarks: builds the release bench and service binaries, makes sure PostgreSQL and RabbitMQ are up,
# runs the bench and prints one Markdown table (docs/benchmarks.md explains every figure).
#   scripts/bench.sh                  default sizes (under 10 minutes on a 2-core machine)
#   scripts/bench.sh --quick          small sizes, under a minute (a smoke test, not a measurement)
#   scripts/bench.sh --only broker,db --messages 200000    any option of `tenantmq-bench --help`
# Environment: TENANTMQ_BENCH_POSTGRES (postgres://postgres@127.0.0.1:5432), TENANTMQ_BENCH_AMQP.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== building (release): tenantmq-bench and the tenantmq binary" >&2
# One invocation for both, so features unify once and the second run is a no-op.
cargo build --release -p tenantmq-bench -p tenantmq >&2

scripts/services.sh up >&2

TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export TENANTMQ_BENCH_RUSTC="${TENANTMQ_BENCH_RUSTC:-$(rustc -V)}"
if [[ -z "${TENANTMQ_BENCH_RABBITMQ:-}" ]]; then
    TENANTMQ_BENCH_RABBITMQ="$(timeout 30 rabbitmqctl version 2>/dev/null ||
        dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)"
    export TENANTMQ_BENCH_RABBITMQ
fi

echo "== running: tenantmq-bench $*" >&2
export TENANTMQ_BENCH_SERVICE_BIN="${TENANTMQ_BENCH_SERVICE_BIN:-$TARGET_DIR/release/tenantmq}"
exec "$TARGET_DIR/release/tenantmq-bench" "$@"
