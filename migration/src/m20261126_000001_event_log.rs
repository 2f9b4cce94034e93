//! The event log, projector checkpoints, the tenants read model and the partitioned messages table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE events (
    position    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id   UUID        NOT NULL,
    version     INTEGER     NOT NULL CHECK (version > 0),
    event_type  TEXT        NOT NULL,
    data        JSONB       NOT NULL,
    metadata    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

-- The log is the source of truth: the service only ever appends to it.
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% rejected)', TG_OP;
END;
$$;
CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

CREATE TABLE projector_checkpoints (
    name       TEXT PRIMARY KEY,
    position   BIGINT      NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id               UUID PRIMARY KEY,
    name             TEXT        NOT NULL,
    workers          INTEGER     NOT NULL CHECK (workers > 0),
    status           TEXT        NOT NULL CHECK (status IN ('active', 'deleted')),
    version          INTEGER     NOT NULL,
    created_position BIGINT      NOT NULL UNIQUE,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    deleted_at       TIMESTAMPTZ
);
-- GET /tenants pages live tenants in creation order.
CREATE INDEX tenants_active_by_creation ON tenants (created_position) WHERE status = 'active';

CREATE TABLE messages (
    tenant_id  UUID        NOT NULL,
    id         UUID        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
) PARTITION BY LIST (tenant_id);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS messages CASCADE;
DROP TABLE IF EXISTS tenants;
DROP TABLE IF EXISTS projector_checkpoints;
DROP TABLE IF EXISTS events;
DROP FUNCTION IF EXISTS events_are_append_only();
"#;

sql_migration!(UP, DOWN);
