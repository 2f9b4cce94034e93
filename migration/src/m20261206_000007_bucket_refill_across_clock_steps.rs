//! The shared token buckets refill from the time of their last lease to now, whichever way the database's
//! clock was stepped meanwhile. The first version kept the later of the two times, so after the clock was set
//! back (an NTP correction, a failover to a host behind) a bucket did not refill until the clock caught up:
//! every publish of a rate-limited tenant past what was left answered 429 for as long as the step. And a
//! bucket never holds fewer than no tokens: one set to `-Infinity` by hand refused its tenant for good.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A step back loses the refill since the last lease; a step forward refills at most to the burst.
const UP: &str = r#"
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
    -- The clock is read once the row is ours, so leases that took turns read it in their order; a time before
    -- the last lease's is a clock set back, which refills nothing and restarts the refill from now.
    at := clock_timestamp();
    available := greatest(0, least(burst, left_over + rate * greatest(0, extract(epoch FROM at - since))::double precision));
    granted := CASE WHEN available >= wanted THEN least(floor(available)::integer, most) ELSE 0 END;
    UPDATE publish_buckets SET tokens = available - granted, refilled_at = at WHERE tenant_id = tenant;
END;
$$;
"#;

// Down: the function as the first version made it.
sql_migration!(UP, super::m20261202_000004_tenant_limits::LEASE_PUBLISH_TOKENS);
