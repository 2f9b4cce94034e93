//! What happens to a message that could not be persisted: the policy, with no I/O. A failed write is
//! classified ([`classify`]); a message that failed is retried later, through the tenant's retry queue, or
//! dead-lettered ([`RetryPolicy::decide`]). The history it carries is in
//! [`failure_headers`](crate::broker::failure_headers); a worker (`consumer/processing.rs`) publishes the copy
//! with a confirm, and only then acks the original: a crash in between leaves the original unacked
//! (redelivered), never lost.

use std::time::Duration;

use sea_orm::sqlx;

use crate::{broker::failure_headers::FailureRecord, store::messages};

/// What a failed write of messages says about them, which decides what happens to them next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The database cannot be reached or is shutting down, or the tenant's partition is not there yet:
    /// nothing is wrong with the messages; hold them back until it is back, without counting an attempt.
    Unavailable,
    /// This write failed, another may not (a lock or statement timeout, a missing grant, a deadlock).
    Transient,
    /// The database refuses a row's data ([`messages::refuses_row`]). Permanent for that row only:
    /// [`MessageWriter::insert_isolating`](crate::store::messages::MessageWriter::insert_isolating) keeps it
    /// from failing the rest of its batch.
    Refused,
}

pub fn classify(error: &sqlx::Error) -> WriteFailure {
    if messages::refuses_row(error) {
        return WriteFailure::Refused;
    }
    match (error, messages::sqlstate(error)) {
        // The partition is missing: a tenant's partition is dropped only once none of its consumers runs, so for
        // a running one it is not created yet (its DDL waits for a lock, or the projector is behind).
        (_, Some("42P01")) => WriteFailure::Unavailable,
        // Connection exceptions, shutdowns and resource exhaustion are about the server, not the data; so are a
        // server that only reads (a standby after a failover, a disk-full read-only mode: 25006), credentials it
        // no longer takes (class 28) and a database that is gone (3D000).
        (_, Some(code))
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("28")
                || matches!(code, "25006" | "3D000") =>
        {
            WriteFailure::Unavailable
        }
        (
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
            _,
        ) => WriteFailure::Unavailable,
        _ => WriteFailure::Transient,
    }
}

/// Why a message could not be persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Retrying may help (a lock or statement timeout, a missing grant).
    Transient(String),
    /// Retrying cannot help (not JSON, refused by the database).
    Permanent(String),
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient(reason) | Self::Permanent(reason) => reason,
        }
    }
}

/// Where a failed message goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Retry { after: Duration },
    DeadLetter,
}

/// Retries with exponential delays up to `max_retries`, then dead-letters.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `record` already counts this failure.
    pub fn decide(&self, failure: &Failure, record: &FailureRecord) -> Disposition {
        match failure {
            Failure::Transient(_) if record.attempts <= self.max_retries => {
                let doublings = record.attempts.saturating_sub(1).min(31);
                let after = self.delay.saturating_mul(1 << doublings).min(self.max_delay);
                Disposition::Retry { after }
            }
            _ => Disposition::DeadLetter,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_retries: 3, delay: Duration::from_secs(1), max_delay: Duration::from_secs(3) }
    }

    #[test]
    fn transient_failures_retry_with_growing_capped_delays_then_dead_letter() {
        let now = Utc::now();
        let transient = Failure::Transient("lock timeout".into());
        let mut record = None;
        let mut dispositions = Vec::new();
        for _ in 0..5 {
            let next = FailureRecord::after(record.take(), transient.reason(), now);
            dispositions.push(policy().decide(&transient, &next));
            record = Some(next);
        }
        let retry = |secs| Disposition::Retry { after: Duration::from_secs(secs) };
        assert_eq!(dispositions, [retry(1), retry(2), retry(3), Disposition::DeadLetter, Disposition::DeadLetter]);
        let record = record.expect("recorded");
        assert_eq!((record.attempts, record.first_failed_at), (5, now));
    }

    #[test]
    fn permanent_failures_dead_letter_at_once() {
        let failure = Failure::Permanent("body is not JSON".into());
        let record = FailureRecord::after(None, failure.reason(), Utc::now());
        assert_eq!(policy().decide(&failure, &record), Disposition::DeadLetter);
        let no_retries = RetryPolicy { max_retries: 0, ..policy() };
        let transient = Failure::Transient("timeout".into());
        assert_eq!(no_retries.decide(&transient, &record), Disposition::DeadLetter);
    }
}
