//! The tenant aggregate: `decide(state, command) -> events` and `evolve(state, event) -> state`.

use std::{
    fmt,
    num::{NonZeroU16, NonZeroU32},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tenant's id: a UUID, also the event stream id and the partition key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    /// A fresh, time-ordered id for a tenant created without one.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The id of the tenant a caller (`subject`) creates with an `Idempotency-Key`: the same key of the same
    /// caller gives the same id, so a create sent again finds the tenant the first one made. A UUIDv8 from the
    /// first 16 bytes of SHA-256 over both (length-prefixed, so no two pairs run together).
    pub fn for_idempotency_key(subject: &str, key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(b"tenantmq idempotency key\0");
        for part in [subject, key] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let digest = hash.finalize();
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// `tenant_{id}_queue`, the queue its messages arrive on.
    pub fn queue_name(&self) -> String {
        format!("tenant_{}_queue", self.0)
    }

    /// `tenant_{id}_retry`, holding its messages until their next attempt.
    pub fn retry_queue_name(&self) -> String {
        format!("tenant_{}_retry", self.0)
    }

    /// `tenant_{id}_dlq`, its dead letters.
    pub fn dead_letter_queue_name(&self) -> String {
        format!("tenant_{}_dlq", self.0)
    }

    /// The name of its `messages` partition. Built from the parsed UUID only (hex digits), never from raw input,
    /// so it is always a safe SQL identifier.
    pub fn partition_name(&self) -> String {
        format!("messages_{}", self.0.simple())
    }
}

/// A tenant's queues, as `tenantmq_queue_messages_ready{queue}` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Main,
    Retry,
    DeadLetter,
}

impl QueueKind {
    pub const ALL: [Self; 3] = [Self::Main, Self::Retry, Self::DeadLetter];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Retry => "retry",
            Self::DeadLetter => "dlq",
        }
    }

    /// The broker's name for this queue of `tenant`.
    pub fn queue_name(self, tenant: TenantId) -> String {
        match self {
            Self::Main => tenant.queue_name(),
            Self::Retry => tenant.retry_queue_name(),
            Self::DeadLetter => tenant.dead_letter_queue_name(),
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Only the canonical hyphenated form is accepted: ids appear in queue names and URLs, and one spelling per
/// tenant keeps them comparable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a UUID in the hyphenated form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
pub struct InvalidTenantId;

impl FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 36 {
            return Err(InvalidTenantId);
        }
        Uuid::try_parse(s).map(Self).map_err(|_| InvalidTenantId)
    }
}

/// A tenant's display name: 1 to 200 characters, not blank, no control characters. A name given to a new
/// tenant has none of the characters that garble text either ([`TenantName::parse_new`]); one recorded before
/// that rule is read as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: String) -> Result<Self, TenantError> {
        let chars = raw.chars().count();
        let reason = if chars == 0 || raw.trim().is_empty() {
            "must not be empty or blank"
        } else if chars > Self::MAX_CHARS {
            "must be at most 200 characters"
        } else if raw.chars().any(char::is_control) {
            "must not contain control characters"
        } else {
            return Ok(Self(raw));
        };
        Err(TenantError::InvalidName { reason })
    }

    /// A name for a new tenant: as [`TenantName::parse`], and without line separators, zero-width
    /// characters or direction marks ([`garbles_text`](super::garbles_text)).
    pub fn parse_new(raw: String) -> Result<Self, TenantError> {
        if raw.chars().any(|c| super::garbles_text(c) && !c.is_control()) {
            return Err(TenantError::InvalidName {
                reason: "must not contain line separators, zero-width characters or direction marks",
            });
        }
        Self::parse(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantName {
    type Error = TenantError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<TenantName> for String {
    fn from(name: TenantName) -> Self {
        name.0
    }
}

/// The size of a tenant's worker pool: never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Workers(NonZeroU16);

impl Workers {
    pub const fn new(n: NonZeroU16) -> Self {
        Self(n)
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// Checks raw input against 1..=max.
    pub fn parse(raw: i64, max: Workers) -> Result<Self, TenantError> {
        u16::try_from(raw)
            .ok()
            .and_then(NonZeroU16::new)
            .map(Self)
            .filter(|w| *w <= max)
            .ok_or(TenantError::WorkersOutOfRange { got: raw, max: max.get() })
    }
}

/// A tenant's quotas on what it may put into the service; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Messages per second the publish API accepts, on average.
    pub publish_rate: Option<NonZeroU32>,
    /// Messages the publish API accepts at once when the tenant has been quiet (the bucket size); with a rate
    /// and no burst, one second's worth.
    pub publish_burst: Option<NonZeroU32>,
    /// The publish API refuses messages while the tenant's queue holds this many ready messages or more.
    pub max_queue_depth: Option<NonZeroU32>,
}

impl Limits {
    pub const MAX_PUBLISH_RATE: u32 = 1_000_000;
    pub const MAX_PUBLISH_BURST: u32 = 10_000_000;
    pub const MAX_QUEUE_DEPTH: u32 = 1_000_000_000;

    /// Checks raw input: each limit between 1 and its maximum, and a burst only with a rate.
    pub fn parse(
        publish_rate: Option<i64>,
        publish_burst: Option<i64>,
        max_queue_depth: Option<i64>,
    ) -> Result<Self, TenantError> {
        let bounded = |field, raw: Option<i64>, max: u32| {
            raw.map(|raw| {
                u32::try_from(raw)
                    .ok()
                    .filter(|n| *n <= max)
                    .and_then(NonZeroU32::new)
                    .ok_or(TenantError::LimitOutOfRange { field, got: raw, max })
            })
            .transpose()
        };
        let limits = Self {
            publish_rate: bounded("publish_rate", publish_rate, Self::MAX_PUBLISH_RATE)?,
            publish_burst: bounded("publish_burst", publish_burst, Self::MAX_PUBLISH_BURST)?,
            max_queue_depth: bounded("max_queue_depth", max_queue_depth, Self::MAX_QUEUE_DEPTH)?,
        };
        if limits.publish_burst.is_some() && limits.publish_rate.is_none() {
            return Err(TenantError::BurstWithoutRate);
        }
        Ok(limits)
    }

    /// The rate and the bucket size, when the publish rate is limited.
    pub fn publish_bucket(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        self.publish_rate.map(|rate| (rate, self.publish_burst.unwrap_or(rate)))
    }
}

/// Limits that come from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub default_workers: Workers,
    pub max_workers: Workers,
}

/// What a caller asks for. Inputs are raw; `decide` validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCommand {
    Create { name: String, workers: Option<i64> },
    SetConcurrency { workers: i64 },
    SetLimits { publish_rate: Option<i64>, publish_burst: Option<i64>, max_queue_depth: Option<i64> },
    Delete,
}

impl TenantCommand {
    /// The command's name, for spans and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "CreateTenant",
            Self::SetConcurrency { .. } => "SetConcurrency",
            Self::SetLimits { .. } => "SetTenantLimits",
            Self::Delete => "DeleteTenant",
        }
    }
}

/// What happened: the facts stored in the log. The serde tags are the stable, versioned type names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum TenantEvent {
    #[serde(rename = "TenantCreated.v1")]
    Created { name: TenantName, workers: Workers },
    #[serde(rename = "ConcurrencySet.v1")]
    ConcurrencySet { workers: Workers, previous: Workers },
    /// The tenant's limits from now on, all three: one absent is unlimited.
    #[serde(rename = "TenantLimitsSet.v1")]
    LimitsSet(Limits),
    #[serde(rename = "TenantDeleted.v1")]
    Deleted {},
}

impl TenantEvent {
    /// The type name of [`TenantEvent::Created`].
    pub const CREATED: &'static str = "TenantCreated.v1";
    /// What the type name of a creation starts with, in any version.
    pub const CREATED_PREFIX: &'static str = "TenantCreated.";

    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Created { .. } => Self::CREATED,
            Self::ConcurrencySet { .. } => "ConcurrencySet.v1",
            Self::LimitsSet(_) => "TenantLimitsSet.v1",
            Self::Deleted {} => "TenantDeleted.v1",
        }
    }
}

/// The facts a live or deleted tenant carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFacts {
    pub name: TenantName,
    pub workers: Workers,
    /// `None` until limits are set: the configured defaults apply.
    pub limits: Option<Limits>,
}

/// The aggregate's state, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tenant {
    #[default]
    Absent,
    Active(TenantFacts),
    Deleted(TenantFacts),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("name {reason}")]
    InvalidName { reason: &'static str },
    #[error("workers must be between 1 and {max}, got {got}")]
    WorkersOutOfRange { got: i64, max: u16 },
    #[error("{field} must be between 1 and {max} (or null for unlimited), got {got}")]
    LimitOutOfRange { field: &'static str, got: i64, max: u32 },
    #[error("publish_burst needs a publish_rate: a burst is the rate limiter's bucket size")]
    BurstWithoutRate,
    #[error("a tenant with this id already exists")]
    AlreadyExists,
    /// A deleted tenant's id is never given out again: its events stay in the log, and a new tenant under
    /// the same id would inherit that history.
    #[error(
        "this id belonged to a tenant that was deleted: ids stay reserved, so that a tenant's history stays its own; omit `id` for a new one"
    )]
    IdReserved,
    #[error("no such tenant")]
    NotFound,
    #[error("the tenant has been deleted")]
    Deleted,
}

impl TenantError {
    /// The request field the error is about, if any.
    pub const fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidName { .. } => Some("name"),
            Self::WorkersOutOfRange { .. } => Some("workers"),
            Self::LimitOutOfRange { field, .. } => Some(field),
            Self::BurstWithoutRate => Some("publish_burst"),
            Self::AlreadyExists | Self::IdReserved | Self::NotFound | Self::Deleted => None,
        }
    }
}

/// Validates `command` against `state` and returns the events it causes (none when nothing changes).
pub fn decide(state: &Tenant, command: TenantCommand, policy: &Policy) -> Result<Vec<TenantEvent>, TenantError> {
    match (state, command) {
        (Tenant::Absent, TenantCommand::Create { name, workers }) => {
            let name = TenantName::parse_new(name)?;
            let workers = match workers {
                Some(raw) => Workers::parse(raw, policy.max_workers)?,
                None => policy.default_workers,
            };
            Ok(vec![TenantEvent::Created { name, workers }])
        }
        (Tenant::Active(_), TenantCommand::Create { .. }) => Err(TenantError::AlreadyExists),
        (Tenant::Deleted(_), TenantCommand::Create { .. }) => Err(TenantError::IdReserved),
        (Tenant::Absent, _) => Err(TenantError::NotFound),
        (Tenant::Deleted(_), _) => Err(TenantError::Deleted),
        (Tenant::Active(facts), TenantCommand::SetConcurrency { workers }) => {
            let workers = Workers::parse(workers, policy.max_workers)?;
            if workers == facts.workers {
                return Ok(vec![]);
            }
            Ok(vec![TenantEvent::ConcurrencySet { workers, previous: facts.workers }])
        }
        (Tenant::Active(facts), TenantCommand::SetLimits { publish_rate, publish_burst, max_queue_depth }) => {
            let limits = Limits::parse(publish_rate, publish_burst, max_queue_depth)?;
            if facts.limits == Some(limits) {
                return Ok(vec![]);
            }
            Ok(vec![TenantEvent::LimitsSet(limits)])
        }
        (Tenant::Active(_), TenantCommand::Delete) => Ok(vec![TenantEvent::Deleted {}]),
    }
}

/// Applies one event. Events are facts already checked by `decide`, so one that does not fit the state
/// (which only a hand-edited log could hold) leaves the state as it is.
pub fn evolve(state: Tenant, event: &TenantEvent) -> Tenant {
    match (state, event) {
        (Tenant::Absent, TenantEvent::Created { name, workers }) => {
            Tenant::Active(TenantFacts { name: name.clone(), workers: *workers, limits: None })
        }
        (Tenant::Active(facts), TenantEvent::ConcurrencySet { workers, .. }) => {
            Tenant::Active(TenantFacts { workers: *workers, ..facts })
        }
        (Tenant::Active(facts), TenantEvent::LimitsSet(limits)) => {
            Tenant::Active(TenantFacts { limits: Some(*limits), ..facts })
        }
        (Tenant::Active(facts), TenantEvent::Deleted {}) => Tenant::Deleted(facts),
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(n: u16) -> Workers {
        Workers::new(NonZeroU16::new(n).expect("test value is nonzero"))
    }

    fn policy() -> Policy {
        Policy { default_workers: workers(3), max_workers: workers(10) }
    }

    fn create(name: &str, workers: Option<i64>) -> TenantCommand {
        TenantCommand::Create { name: name.into(), workers }
    }

    fn active(n: u16) -> Tenant {
        Tenant::Active(TenantFacts {
            name: TenantName::parse("acme".into()).expect("valid"),
            workers: workers(n),
            limits: None,
        })
    }

    fn fold(events: &[TenantEvent]) -> Tenant {
        events.iter().fold(Tenant::Absent, evolve)
    }

    #[test]
    fn create_uses_default_workers() {
        let events = decide(&Tenant::Absent, create("acme", None), &policy()).expect("valid command");
        assert_eq!(events, vec![TenantEvent::Created { name: TenantName("acme".into()), workers: workers(3) }]);
        assert_eq!(fold(&events), active(3));
    }

    #[test]
    fn create_with_explicit_workers() {
        let events = decide(&Tenant::Absent, create("acme", Some(10)), &policy()).expect("valid command");
        assert_eq!(fold(&events), active(10));
    }

    #[test]
    fn name_must_be_1_to_200_chars_not_blank_without_control_chars() {
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "line\nbreak",
            "line\u{2028}break",
            "ac\u{200B}me",
            "\u{FEFF}acme",
            "evil\u{202E}gpj",
        ] {
            let err = decide(&Tenant::Absent, create(bad, None), &policy()).expect_err(bad);
            assert!(matches!(err, TenantError::InvalidName { .. }), "{bad:?}: {err:?}");
            assert_eq!(err.field(), Some("name"));
        }
        // A name recorded before the rule against garbling characters is read as it was.
        assert!(serde_json::from_value::<TenantName>(serde_json::json!("ac\u{200B}me")).is_ok());
        let max = "é".repeat(200);
        assert!(decide(&Tenant::Absent, create(&max, None), &policy()).is_ok(), "200 chars (not bytes) is fine");
        let too_long = "x".repeat(TenantName::MAX_CHARS + 1);
        let err = decide(&Tenant::Absent, create(&too_long, None), &policy()).expect_err("too long");
        assert!(
            matches!(err, TenantError::InvalidName { reason } if reason.contains(&TenantName::MAX_CHARS.to_string())),
            "the reason states the bound: {err}"
        );
    }

    #[test]
    fn workers_must_be_within_1_and_max() {
        for bad in [0, -1, 11, i64::from(u16::MAX) + 1, i64::MIN, i64::MAX] {
            let err = decide(&Tenant::Absent, create("acme", Some(bad)), &policy()).expect_err("out of range");
            assert_eq!(err, TenantError::WorkersOutOfRange { got: bad, max: 10 });
            assert_eq!(err.field(), Some("workers"));
            let err = decide(&active(3), TenantCommand::SetConcurrency { workers: bad }, &policy())
                .expect_err("out of range");
            assert_eq!(err, TenantError::WorkersOutOfRange { got: bad, max: 10 });
        }
    }

    #[test]
    fn create_on_existing_or_deleted_id_is_a_conflict() {
        assert_eq!(decide(&active(3), create("x", None), &policy()), Err(TenantError::AlreadyExists));
        let deleted = evolve(active(3), &TenantEvent::Deleted {});
        assert_eq!(decide(&deleted, create("x", None), &policy()), Err(TenantError::IdReserved));
    }

    #[test]
    fn commands_on_absent_tenant_are_not_found() {
        for command in [TenantCommand::SetConcurrency { workers: 2 }, unlimited(), TenantCommand::Delete] {
            assert_eq!(decide(&Tenant::Absent, command, &policy()), Err(TenantError::NotFound));
        }
    }

    #[test]
    fn no_command_on_a_deleted_tenant() {
        let deleted = evolve(active(3), &TenantEvent::Deleted {});
        for command in [TenantCommand::SetConcurrency { workers: 2 }, unlimited(), TenantCommand::Delete] {
            assert_eq!(decide(&deleted, command, &policy()), Err(TenantError::Deleted));
        }
    }

    #[test]
    fn set_concurrency_records_previous_and_is_a_no_op_when_unchanged() {
        let events = decide(&active(3), TenantCommand::SetConcurrency { workers: 5 }, &policy()).expect("valid");
        assert_eq!(events, vec![TenantEvent::ConcurrencySet { workers: workers(5), previous: workers(3) }]);
        assert_eq!(evolve(active(3), &events[0]), active(5));
        let none = decide(&active(3), TenantCommand::SetConcurrency { workers: 3 }, &policy()).expect("valid");
        assert!(none.is_empty());
    }

    fn unlimited() -> TenantCommand {
        TenantCommand::SetLimits { publish_rate: None, publish_burst: None, max_queue_depth: None }
    }

    fn limits(rate: Option<i64>, burst: Option<i64>, depth: Option<i64>) -> TenantCommand {
        TenantCommand::SetLimits { publish_rate: rate, publish_burst: burst, max_queue_depth: depth }
    }

    #[test]
    fn set_limits_records_them_and_is_a_no_op_when_unchanged() {
        let events = decide(&active(3), limits(Some(100), Some(500), Some(10_000)), &policy()).expect("valid");
        let set = Limits {
            publish_rate: NonZeroU32::new(100),
            publish_burst: NonZeroU32::new(500),
            max_queue_depth: NonZeroU32::new(10_000),
        };
        assert_eq!(events, vec![TenantEvent::LimitsSet(set)]);
        let limited = fold_from(active(3), &events);
        assert!(matches!(&limited, Tenant::Active(facts) if facts.limits == Some(set)));
        assert_eq!(decide(&limited, limits(Some(100), Some(500), Some(10_000)), &policy()), Ok(vec![]));
        // Unlimited is a setting of its own: it overrides the configured defaults.
        let events = decide(&limited, unlimited(), &policy()).expect("valid");
        assert_eq!(events, vec![TenantEvent::LimitsSet(Limits::default())]);
        assert_eq!(decide(&active(3), unlimited(), &policy()).map(|e| e.len()), Ok(1));
    }

    #[test]
    fn limits_are_bounded_and_a_burst_needs_a_rate() {
        let cases = [
            (limits(Some(0), None, None), "publish_rate"),
            (limits(Some(-1), None, None), "publish_rate"),
            (limits(Some(i64::from(Limits::MAX_PUBLISH_RATE) + 1), None, None), "publish_rate"),
            (limits(Some(1), Some(0), None), "publish_burst"),
            (limits(Some(1), Some(i64::MAX), None), "publish_burst"),
            (limits(None, None, Some(i64::MIN)), "max_queue_depth"),
            (limits(None, Some(10), None), "publish_burst"),
        ];
        for (command, field) in cases {
            let err = decide(&active(3), command.clone(), &policy()).expect_err("refused");
            assert_eq!(err.field(), Some(field), "{command:?}: {err}");
        }
        let max = limits(
            Some(Limits::MAX_PUBLISH_RATE.into()),
            Some(Limits::MAX_PUBLISH_BURST.into()),
            Some(Limits::MAX_QUEUE_DEPTH.into()),
        );
        assert!(decide(&active(3), max, &policy()).is_ok());
    }

    #[test]
    fn the_bucket_is_one_second_of_the_rate_unless_a_burst_is_set() {
        let rate = Limits::parse(Some(50), None, None).expect("valid");
        assert_eq!(rate.publish_bucket().map(|(r, b)| (r.get(), b.get())), Some((50, 50)));
        let burst = Limits::parse(Some(50), Some(1000), None).expect("valid");
        assert_eq!(burst.publish_bucket().map(|(r, b)| (r.get(), b.get())), Some((50, 1000)));
        assert_eq!(Limits::parse(None, None, Some(5)).expect("valid").publish_bucket(), None);
    }

    #[test]
    fn delete_then_state_is_deleted() {
        let events = decide(&active(3), TenantCommand::Delete, &policy()).expect("valid");
        assert!(matches!(fold_from(active(3), &events), Tenant::Deleted(_)));
    }

    fn fold_from(state: Tenant, events: &[TenantEvent]) -> Tenant {
        events.iter().fold(state, evolve)
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let events = [
            TenantEvent::Created { name: TenantName("acme".into()), workers: workers(2) },
            TenantEvent::ConcurrencySet { workers: workers(4), previous: workers(2) },
            TenantEvent::LimitsSet(Limits { publish_rate: NonZeroU32::new(5), ..Limits::default() }),
            TenantEvent::Deleted {},
        ];
        for event in events {
            let stored = serde_json::to_value(&event).expect("serializable");
            assert_eq!(stored["event_type"], event.event_type());
            let back: TenantEvent = serde_json::from_value(stored).expect("decodable");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn stored_events_with_invalid_facts_are_rejected() {
        let zero = serde_json::json!({"event_type": "TenantCreated.v1", "data": {"name": "a", "workers": 0}});
        assert!(serde_json::from_value::<TenantEvent>(zero).is_err());
        let blank = serde_json::json!({"event_type": "TenantCreated.v1", "data": {"name": " ", "workers": 1}});
        assert!(serde_json::from_value::<TenantEvent>(blank).is_err());
    }

    #[test]
    fn an_idempotency_key_gives_one_id_per_caller_and_key() {
        let id = TenantId::for_idempotency_key("ops", "order-17");
        assert_eq!(id, TenantId::for_idempotency_key("ops", "order-17"));
        assert_eq!(id.as_uuid().get_version_num(), 8);
        for (subject, key) in [("ops", "order-18"), ("other", "order-17"), ("opso", "rder-17"), ("", "opsorder-17")] {
            assert_ne!(id, TenantId::for_idempotency_key(subject, key), "{subject:?} {key:?}");
        }
    }

    #[test]
    fn tenant_ids_parse_strictly_and_name_resources_safely() {
        let id: TenantId = "0192f7c4-8f2a-7cc3-9d6e-5b0c2d9a1e47".parse().expect("canonical form");
        assert_eq!(id.queue_name(), "tenant_0192f7c4-8f2a-7cc3-9d6e-5b0c2d9a1e47_queue");
        assert_eq!(id.partition_name(), "messages_0192f7c48f2a7cc39d6e5b0c2d9a1e47");
        for bad in [
            "",
            "not-a-uuid",
            "0192f7c48f2a7cc39d6e5b0c2d9a1e47",
            "{0192f7c4-8f2a-7cc3-9d6e-5b0c2d9a1e47}",
            "0192f7c4-8f2a-7cc3-9d6e-5b0c2d9a1e4g",
            "0192f7c4-8f2a-7cc3-9d6e-5b0c2d9a1e47'; drop table x; --",
        ] {
            assert_eq!(bad.parse::<TenantId>(), Err(InvalidTenantId), "{bad:?}");
        }
    }
}
