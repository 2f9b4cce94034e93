//! The hash chain over the event log: `hash` and `prev_hash` on every event (docs/audit.md), backfilled here for
//! the events recorded before it.
//!
//! Both are `bytea` of exactly 32 bytes: half the size of hex text, one spelling per hash, and `encode(hash,
//! 'hex')` gives the lowercase hex the API and the exports show. The service computes new hashes itself
//! (`src/domain/audit.rs`); the backfill computes the same encoding in SQL, once, because this crate cannot use
//! the service's code. The integration test `the_backfill_chains_events_recorded_before_the_migration` checks
//! that the two agree.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE events ADD COLUMN prev_hash BYTEA, ADD COLUMN hash BYTEA;

-- Canonical JSON: no whitespace, members sorted by key as UTF-8 bytes (COLLATE "C"), strings escaped by
-- to_json (as serde_json escapes them), numbers as jsonb prints them.
CREATE FUNCTION pg_temp.audit_canonical_json(value jsonb) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE jsonb_typeof(value)
        WHEN 'object' THEN '{' || COALESCE((
            SELECT string_agg(to_json(key)::text || ':' || pg_temp.audit_canonical_json(item), ',' ORDER BY key COLLATE "C")
            FROM jsonb_each(value) AS member(key, item)), '') || '}'
        WHEN 'array' THEN '[' || COALESCE((
            SELECT string_agg(pg_temp.audit_canonical_json(item), ',' ORDER BY index)
            FROM jsonb_array_elements(value) WITH ORDINALITY AS element(item, index)), '') || ']'
        ELSE value::text
    END;
END;
$$;

-- Each field as a 4-byte big-endian length (int4send) and its bytes.
CREATE FUNCTION pg_temp.audit_field(bytes bytea) RETURNS bytea LANGUAGE sql IMMUTABLE
    AS $$ SELECT int4send(octet_length(bytes)) || bytes $$;

-- The service's own rule forbids UPDATE; this one-off backfill is the exception, inside this transaction.
ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;

DO $$
DECLARE
    event record;
    previous bytea;
    chained_stream uuid;
BEGIN
    FOR event IN SELECT * FROM events ORDER BY stream_id, version LOOP
        IF chained_stream IS DISTINCT FROM event.stream_id THEN
            chained_stream := event.stream_id;
            previous := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        END IF;
        UPDATE events SET prev_hash = previous, hash = sha256(
                pg_temp.audit_field(convert_to('tenantmq.event.v1', 'UTF8'))
                || pg_temp.audit_field(convert_to(event.stream_id::text, 'UTF8'))
                || pg_temp.audit_field(convert_to(event.version::text, 'UTF8'))
                || pg_temp.audit_field(convert_to(event.position::text, 'UTF8'))
                || pg_temp.audit_field(convert_to(event.event_type, 'UTF8'))
                || pg_temp.audit_field(convert_to(pg_temp.audit_canonical_json(event.data), 'UTF8'))
                || pg_temp.audit_field(convert_to(pg_temp.audit_canonical_json(event.metadata), 'UTF8'))
                || pg_temp.audit_field(convert_to(
                    to_char(event.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'UTF8'))
                || pg_temp.audit_field(previous))
            WHERE position = event.position
            RETURNING hash INTO previous;
    END LOOP;
END;
$$;

ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;

ALTER TABLE events
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL,
    ADD CONSTRAINT events_hashes_are_sha256 CHECK (octet_length(prev_hash) = 32 AND octet_length(hash) = 32);

DROP FUNCTION pg_temp.audit_field(bytea);
DROP FUNCTION pg_temp.audit_canonical_json(jsonb);
"#;

const DOWN: &str = "ALTER TABLE events DROP CONSTRAINT IF EXISTS events_hashes_are_sha256, \
                    DROP COLUMN IF EXISTS hash, DROP COLUMN IF EXISTS prev_hash;";

sql_migration!(UP, DOWN);
