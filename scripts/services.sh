#!/usr/bin/env bash
# Local PostgreSQL and RabbitMQ for development and CI on bare services (no Docker needed).
#   scripts/services.sh up                    start whichever is down and wait until both answer
#   scripts/services.sh sweep-test-databases  drop databases that interrupted test runs left behind, and the
#                                             migrated templates test databases are cloned from
#   scripts/services.sh tenant-queues         list the broker's tenant queues (tenant_<id>_queue|retry|dlq)
set -euo pipefail

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_PORT="${AMQP_PORT:-5672}"
# testkit/src/database.rs's TEMPLATE_LOCK ("template" in ASCII), in decimal.
TEMPLATE_LOCK=8387230210669507685

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port
    for _ in $(seq 1 120); do
        if port_open "$2" "$3"; then return 0; fi
        sleep 1
    done
    echo "$1 did not come up on $2:$3" >&2
    return 1
}

start_postgres() {
    if pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; then return 0; fi
    echo "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do
        pg_isready -q -h "$PGHOST" -p "$PGPORT" && return 0
        sleep 1
    done
    echo "PostgreSQL did not become ready" >&2
    return 1
}

start_rabbitmq() {
    if port_open 127.0.0.1 "$AMQP_PORT"; then return 0; fi
    echo "starting RabbitMQ"
    rabbitmq-server -detached
    wait_for RabbitMQ 127.0.0.1 "$AMQP_PORT"
}

case "${1:-up}" in
    up)
        start_postgres
        start_rabbitmq
        ;;
    sweep-test-databases)
        psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atc \
            "SELECT datname FROM pg_database WHERE datname LIKE 'tenantmq\_it\_%'" |
            while read -r db; do
                psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
            done
        # Templates (tenantmq_template_<migrations' fingerprint>, see testkit/src/database.rs) are swept too:
        # one per migration set ever tested would pile up, and the next run builds its own in one migration.
        # The kit clones only while holding advisory lock TEMPLATE_LOCK shared (on the postgres database), so
        # taking it exclusively in this session drops no template while a test database is cloned from it.
        templates=$(psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atc \
            "SELECT datname FROM pg_database WHERE datname LIKE 'tenantmq\_template\_%'")
        if [ -n "$templates" ]; then
            drops=(-c "SELECT pg_advisory_lock($TEMPLATE_LOCK)")
            for template in $templates; do
                drops+=(-c "DROP DATABASE IF EXISTS \"$template\" WITH (FORCE)")
            done
            psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -q "${drops[@]}" >/dev/null
        fi
        ;;
    tenant-queues)
        rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep -E '^tenant_[0-9a-f-]{36}_(queue|retry|dlq)$' | sort || true
        ;;
    *)
        echo "usage: $0 up|sweep-test-databases|tenant-queues" >&2
        exit 2
        ;;
esac
