//! Tenant limits: their columns in the `tenants` read model (filled by the projector from `TenantLimitsSet`
//! events), and the shared token buckets that hold a tenant's publish rate across every instance.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
-- `limits_set` is false until the tenant's first TenantLimitsSet: until then the configured defaults apply,
-- and NULL limits are those defaults; afterwards NULL is unlimited.
ALTER TABLE tenants
    ADD COLUMN limits_set BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN publish_rate INTEGER CHECK (publish_rate > 0),
    ADD COLUMN publish_burst INTEGER CHECK (publish_burst > 0),
    ADD COLUMN max_queue_depth INTEGER CHECK (max_queue_depth > 0);

-- One token bucket per rate-limited tenant. Instances lease tokens from it in small chunks; `tokens` is what
-- was left at `refilled_at` (database time), and refills at the tenant's rate up to its burst.
CREATE TABLE publish_buckets (
    tenant_id   UUID PRIMARY KEY,
    tokens      DOUBLE PRECISION NOT NULL,
    refilled_at TIMESTAMPTZ NOT NULL
);

"#;

/// Takes `wanted` to `most` tokens from a tenant's bucket, as this migration made it (a later one replaced it,
/// and restores this on its way down).
pub(crate) const LEASE_PUBLISH_TOKENS: &str = r#"
-- Takes `wanted` to `most` tokens from the tenant's bucket (creating it full), all or nothing for `wanted`:
-- `granted` is 0 when fewer than `wanted` are there. `available` is what the bucket held, for Retry-After.
-- The row lock makes concurrent leases of one tenant, from any instance, take turns.
CREATE OR REPLACE FUNCTION lease_publish_tokens(tenant UUID, rate DOUBLE PRECISION, burst DOUBLE PRECISION,
                                     wanted INTEGER, most INTEGER,
                                     OUT granted INTEGER, OUT available DOUBLE PRECISION)
LANGUAGE plpgsql AS $$
DECLARE
    left_over DOUBLE PRECISION;
    since TIMESTAMPTZ;
    at TIMESTAMPTZ;
BEGIN
    SELECT tokens, refilled_at INTO left_over, since FROM publish_buckets WHERE tenant_id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO publish_buckets VALUES (tenant, burst, clock_timestamp()) ON CONFLICT (tenant_id) DO NOTHING;
        SELECT tokens, refilled_at INTO left_over, since FROM publish_buckets WHERE tenant_id = tenant FOR UPDATE;
    END IF;
    -- Read the clock once the row is ours: a lease that waited for the lock must not refill backwards.
    at := greatest(clock_timestamp(), since);
    available := least(burst, left_over + rate * extract(epoch FROM at - since)::double precision);
    granted := CASE WHEN available >= wanted THEN least(floor(available)::integer, most) ELSE 0 END;
    UPDATE publish_buckets SET tokens = available - granted, refilled_at = at WHERE tenant_id = tenant;
END;
$$;
"#;

const DOWN: &str = r#"
DROP FUNCTION lease_publish_tokens;
DROP TABLE publish_buckets;
ALTER TABLE tenants DROP COLUMN limits_set, DROP COLUMN publish_rate, DROP COLUMN publish_burst,
    DROP COLUMN max_queue_depth;
"#;

sql_migration!(&format!("{UP}{LEASE_PUBLISH_TOKENS}"), DOWN);
