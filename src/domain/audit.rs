//! The tamper-evident chain over the event log: the canonical encoding of an event, its SHA-256 hash, and the
//! check of a chain. Pure: the store and the command line feed events in; docs/audit.md specifies the encoding
//! for auditors who recompute it without this code.
//!
//! An event's hash covers nine length-prefixed fields (a 4-byte big-endian byte count, then the bytes): the tag
//! `tenantmq.event.v1`, the stream id (lowercase, hyphenated), the version and the position (decimal), the
//! event type, the data and the metadata as canonical JSON, `recorded_at` (RFC 3339, UTC, exactly six
//! fractional digits, `Z`), and the previous event's hash (32 bytes; zeros for version 1).

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Names the encoding inside every hash, so a future encoding cannot collide with this one.
const ENCODING_TAG: &str = "tenantmq.event.v1";
/// Deeper JSON is refused rather than recursed into (events nest two levels).
const MAX_JSON_DEPTH: usize = 128;

/// A SHA-256 hash of an event, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventHash([u8; 32]);

impl EventHash {
    /// The `prev_hash` of a stream's first event.
    pub const GENESIS: Self = Self([0; 32]);

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        // Lowercase only, so each hash has one spelling.
        (text.bytes().all(|b| !b.is_ascii_uppercase())).then_some(Self(bytes))
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventHash({self})")
    }
}

/// What an event's hash covers. `data` and `metadata` are canonical JSON ([`canonical_json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedFields {
    pub stream_id: Uuid,
    pub version: i32,
    pub position: i64,
    pub event_type: String,
    pub data: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
    pub prev_hash: EventHash,
}

impl HashedFields {
    /// The bytes that are hashed: each field as a 4-byte big-endian length and its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let stream_id = self.stream_id.hyphenated().to_string();
        let version = self.version.to_string();
        let position = self.position.to_string();
        let recorded_at = recorded_at_text(self.recorded_at);
        let fields: [&[u8]; 9] = [
            ENCODING_TAG.as_bytes(),
            stream_id.as_bytes(),
            version.as_bytes(),
            position.as_bytes(),
            self.event_type.as_bytes(),
            self.data.as_bytes(),
            self.metadata.as_bytes(),
            recorded_at.as_bytes(),
            self.prev_hash.as_bytes(),
        ];
        let mut encoded = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
        for field in fields {
            // No field comes near 4 GiB: jsonb values are at most 255 MiB.
            let length = u32::try_from(field.len()).unwrap_or(u32::MAX);
            encoded.extend_from_slice(&length.to_be_bytes());
            encoded.extend_from_slice(field);
        }
        encoded
    }

    pub fn hash(&self) -> EventHash {
        EventHash(Sha256::digest(self.encode()).into())
    }
}

/// `recorded_at` as hashed: RFC 3339 in UTC with exactly six fractional digits, the precision `timestamptz`
/// keeps, e.g. `2026-12-01T09:30:00.123456Z`.
pub fn recorded_at_text(recorded_at: DateTime<Utc>) -> String {
    recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// JSON text in the one form that is hashed: no whitespace; object members sorted by key, compared as UTF-8
/// bytes; strings escaped as serde_json (and Python's `json.dumps(…, ensure_ascii=False)`) escape them;
/// numbers, `true`, `false` and `null` exactly as written in `text`. Given PostgreSQL's text of a `jsonb`
/// value, the result depends only on what `jsonb` keeps (it prints each number as its `numeric`).
pub fn canonical_json(text: &str) -> Result<String, serde_json::Error> {
    let mut canonical = String::with_capacity(text.len());
    write_canonical(text, 0, &mut canonical)?;
    Ok(canonical)
}

fn write_canonical(text: &str, depth: usize, out: &mut String) -> Result<(), serde_json::Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(serde::de::Error::custom(format!("JSON nested deeper than {MAX_JSON_DEPTH} levels")));
    }
    let text = text.trim_matches([' ', '\t', '\n', '\r']);
    match text.as_bytes().first() {
        Some(b'{') => {
            // Borrowed raw values keep each member's number text; a key given twice keeps its last value, as
            // `jsonb` does.
            let members: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
            out.push('{');
            for (index, (key, value)) in members.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key)?);
                out.push(':');
                write_canonical(value.get(), depth + 1, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item.get(), depth + 1, out)?;
            }
            out.push(']');
        }
        Some(b'"') => out.push_str(&serde_json::to_string(&serde_json::from_str::<String>(text)?)?),
        _ => {
            // A number or a literal: checked to be one JSON value (of any size), then kept as written.
            serde_json::from_str::<IgnoredAny>(text)?;
            out.push_str(text);
        }
    }
    Ok(())
}

/// An event with its stored hash, as the chain check and the export see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEvent {
    pub fields: HashedFields,
    pub hash: EventHash,
}

/// One line of an export (JSON Lines): every hashed field, `prev_hash` and `hash`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportLine {
    /// Text, not parsed, so that a line must spell it as hashed (as `recorded_at`).
    stream_id: String,
    version: i32,
    position: i64,
    event_type: String,
    data: Box<RawValue>,
    metadata: Box<RawValue>,
    recorded_at: String,
    prev_hash: String,
    hash: String,
}

/// Why a line of an export is not an event.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not an event: {0}")]
    Json(#[from] serde_json::Error),
    /// A field not written in the one form that is hashed (and that an auditor's own script reads).
    #[error("{field} {found:?} is not {form}")]
    Spelling { field: &'static str, found: String, form: &'static str },
    #[error("{0} is not 64 lowercase hex digits")]
    Hash(&'static str),
}

impl LineError {
    fn spelling(field: &'static str, found: &str, form: &'static str) -> Self {
        // Enough of a long value to recognize it.
        Self::Spelling { field, found: found.chars().take(64).collect(), form }
    }
}

impl ChainedEvent {
    /// The event as one line of an export (without the newline).
    pub fn to_json_line(&self) -> Result<String, serde_json::Error> {
        let fields = &self.fields;
        serde_json::to_string(&ExportLine {
            stream_id: fields.stream_id.hyphenated().to_string(),
            version: fields.version,
            position: fields.position,
            event_type: fields.event_type.clone(),
            data: RawValue::from_string(fields.data.clone())?,
            metadata: RawValue::from_string(fields.metadata.clone())?,
            recorded_at: recorded_at_text(fields.recorded_at),
            prev_hash: fields.prev_hash.to_hex(),
            hash: self.hash.to_hex(),
        })
    }

    /// Reads one line of an export; its data and metadata are canonicalized here, so the check below does not
    /// trust the file's spelling of them. `stream_id` and `recorded_at` must be written exactly as they are
    /// hashed: the file is what an auditor hashes without this code, so another spelling of the same value
    /// (an uppercase UUID, a `+01:00` offset, nanoseconds) would verify here and fail there.
    pub fn from_json_line(line: &str) -> Result<Self, LineError> {
        let line: ExportLine = serde_json::from_str(line)?;
        let hash_field = |text: &str, name| EventHash::from_hex(text).ok_or(LineError::Hash(name));
        let stream_id = Uuid::try_parse(&line.stream_id)
            .ok()
            .filter(|id| id.hyphenated().to_string() == line.stream_id)
            .ok_or_else(|| LineError::spelling("stream_id", &line.stream_id, "a lowercase hyphenated UUID"))?;
        let recorded_at = DateTime::parse_from_rfc3339(&line.recorded_at)
            .ok()
            .map(|time| time.with_timezone(&Utc))
            .filter(|time| recorded_at_text(*time) == line.recorded_at)
            .ok_or_else(|| {
                LineError::spelling(
                    "recorded_at",
                    &line.recorded_at,
                    "an RFC 3339 time in UTC with six fractional digits and `Z`, e.g. 2026-12-01T09:30:00.123456Z",
                )
            })?;
        Ok(Self {
            fields: HashedFields {
                stream_id,
                version: line.version,
                position: line.position,
                event_type: line.event_type,
                data: canonical_json(line.data.get())?,
                metadata: canonical_json(line.metadata.get())?,
                recorded_at,
                prev_hash: hash_field(&line.prev_hash, "prev_hash")?,
            },
            hash: hash_field(&line.hash, "hash")?,
        })
    }
}

/// The newest event of a stream: pinning it elsewhere pins everything before it in that stream. Streams are
/// not chained to each other, so the newest event of several streams pins only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub stream_id: Uuid,
    pub version: i32,
    pub position: i64,
    pub hash: EventHash,
}

/// Why the chain breaks at an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    /// An event is missing before this one (deleted), or this one is out of order.
    #[error("version gap: expected version {expected}")]
    VersionGap { expected: i32 },
    /// `prev_hash` is not the previous event's hash.
    #[error("broken link: prev_hash {found} is not the previous event's hash {expected}")]
    BrokenLink { expected: EventHash, found: EventHash },
    /// The event's fields were changed after it was hashed.
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch { stored: EventHash, computed: EventHash },
    /// The stored event cannot even be encoded to be hashed: it was changed into something the service never
    /// writes.
    #[error("unreadable: {0}")]
    Unreadable(Unreadable),
    /// In an export, which holds one stream: the event is of another stream than the events before it.
    #[error("another stream: the events before it are of stream {expected}, and an export holds one stream")]
    OtherStream { expected: Uuid },
}

/// What makes a stored event impossible to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("its hash is not 32 bytes")]
    Hash,
    #[error("its prev_hash is not 32 bytes")]
    PrevHash,
    #[error("its data cannot be written as canonical JSON (at most {MAX_JSON_DEPTH} levels deep)")]
    Data,
    #[error("its metadata cannot be written as canonical JSON (at most {MAX_JSON_DEPTH} levels deep)")]
    Metadata,
}

/// The first event at which the chain is not intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("position {position} (stream {stream_id}, version {version}): {reason}")]
pub struct Break {
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i32,
    pub reason: BreakReason,
}

/// An intact log: how much was checked and its newest event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Intact {
    pub streams: u64,
    pub events: u64,
    /// The event with the highest position (of one stream, its head); `None` for an empty log.
    pub head: Option<Head>,
}

/// Checks events fed one at a time, each stream's events consecutive and in version order, so a log of any
/// size is checked in bounded memory.
#[derive(Debug, Default)]
pub struct ChainCheck {
    last: Option<Head>,
    checked: Intact,
    /// Whether every event must be of the first event's stream, as in an export.
    one_stream: bool,
}

impl ChainCheck {
    /// A check of the log: a stream id other than the last event's starts a new chain at version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// A check of an export, which is one stream: an event of any other stream is a break.
    pub fn one_stream() -> Self {
        Self { one_stream: true, ..Self::default() }
    }

    /// Checks the next event.
    pub fn push(&mut self, event: &ChainedEvent) -> Result<(), Break> {
        let fields = &event.fields;
        let broken =
            |reason| Break { position: fields.position, stream_id: fields.stream_id, version: fields.version, reason };
        let (expected_version, expected_prev) = match self.last {
            Some(last) if last.stream_id == fields.stream_id => (last.version.saturating_add(1), last.hash),
            Some(last) if self.one_stream => {
                return Err(broken(BreakReason::OtherStream { expected: last.stream_id }));
            }
            _ => (1, EventHash::GENESIS),
        };
        if fields.version != expected_version {
            return Err(broken(BreakReason::VersionGap { expected: expected_version }));
        }
        if fields.prev_hash != expected_prev {
            return Err(broken(BreakReason::BrokenLink { expected: expected_prev, found: fields.prev_hash }));
        }
        let computed = fields.hash();
        if computed != event.hash {
            return Err(broken(BreakReason::HashMismatch { stored: event.hash, computed }));
        }
        let head =
            Head { stream_id: fields.stream_id, version: fields.version, position: fields.position, hash: event.hash };
        if fields.version == 1 {
            self.checked.streams += 1;
        }
        self.checked.events += 1;
        if self.checked.head.is_none_or(|newest| newest.position < head.position) {
            self.checked.head = Some(head);
        }
        self.last = Some(head);
        Ok(())
    }

    pub fn finish(self) -> Intact {
        self.checked
    }
}

/// A stream's head as an auditor recorded it at an earlier check, written `VERSION:HASH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedHead {
    pub version: i32,
    pub hash: EventHash,
}

impl std::str::FromStr for RecordedHead {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let form = || format!("{text:?} is not VERSION:HASH (a version from 1 and 64 lowercase hex digits)");
        let (version, hash) = text.split_once(':').ok_or_else(form)?;
        // Written as the checks print it, as scripts/verify_export.py takes it: no sign, no leading zero.
        let digits = version.bytes().all(|b| b.is_ascii_digit()) && !version.starts_with('0');
        let version = version.parse().ok().filter(|_| digits).ok_or_else(form)?;
        let hash = EventHash::from_hex(hash).ok_or_else(form)?;
        Ok(Self { version, hash })
    }
}

/// What an auditor knows of a stream before checking an export of it: whose it is, and its head at an earlier
/// check. A chain that is intact on its own says neither: the export may be of another tenant, and whoever can
/// write to the database can rewrite a stream or cut it back and hash it all again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    pub stream_id: Option<Uuid>,
    pub head: Option<RecordedHead>,
}

/// How an intact export differs from what the auditor expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unexpected {
    #[error("the export is of stream {found}, not of tenant {expected}")]
    OtherTenant { expected: Uuid, found: Uuid },
    #[error("version {version} has hash {found}, not the recorded head's {recorded}: the stream was rewritten since")]
    HeadRewritten { version: i32, recorded: EventHash, found: EventHash },
    #[error("the stream ends at version {last}, before the recorded head at version {recorded}: it was cut back since")]
    CutBack { last: i32, recorded: i32 },
}

impl Expected {
    /// Checks an event the chain check has passed.
    pub fn event(&self, event: &ChainedEvent) -> Result<(), Unexpected> {
        let fields = &event.fields;
        if let Some(expected) = self.stream_id.filter(|expected| *expected != fields.stream_id) {
            return Err(Unexpected::OtherTenant { expected, found: fields.stream_id });
        }
        match self.head {
            Some(recorded) if recorded.version == fields.version && recorded.hash != event.hash => {
                Err(Unexpected::HeadRewritten { version: fields.version, recorded: recorded.hash, found: event.hash })
            }
            _ => Ok(()),
        }
    }

    /// Checks the end of an intact export: it reaches the recorded head.
    pub fn end(&self, intact: &Intact) -> Result<(), Unexpected> {
        let last = intact.head.map_or(0, |head| head.version);
        match self.head {
            Some(recorded) if recorded.version > last => Err(Unexpected::CutBack { last, recorded: recorded.version }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "0192f4c0-5c1a-7b3e-8d4f-1a2b3c4d5e6f";

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a test time").with_timezone(&Utc)
    }

    fn first_fields() -> HashedFields {
        HashedFields {
            stream_id: STREAM.parse().expect("a test uuid"),
            version: 1,
            position: 1,
            event_type: "TenantCreated.v1".into(),
            data: canonical_json(r#"{"workers": 3, "name": "acme"}"#).expect("json"),
            metadata: canonical_json(r#"{"request_id": "req-1", "actor": "admin", "correlation_id": "req-1"}"#)
                .expect("json"),
            recorded_at: at("2026-12-01T09:30:00.123456Z"),
            prev_hash: EventHash::GENESIS,
        }
    }

    // The expected digests and bytes below were computed independently with Python's hashlib and json
    // modules (the snippet in docs/audit.md), not with this code.
    const FIRST_HASH: &str = "43b7097ef3afc5f2117a920a7c05f50cdc204d60d778d38fb6d0a7bd55e465f0";
    const SECOND_HASH: &str = "1605369873d7b921ecf089ec26e5ca14c01e34921c523eda92e7336e716896c7";
    const FIRST_ENCODING: &str = "0000001174656e616e746d712e6576656e742e76310000002430313932663463302d3563\
        31612d376233652d386434662d316132623363346435653666000000013100000001310000001054656e616e7443726561\
        7465642e76310000001b7b226e616d65223a2261636d65222c22776f726b657273223a337d0000003f7b226163746f7222\
        3a2261646d696e222c22636f7272656c6174696f6e5f6964223a227265712d31222c22726571756573745f6964223a2272\
        65712d31227d0000001b323032362d31322d30315430393a33303a30302e3132333435365a0000002000000000000000000\
        00000000000000000000000000000000000000000000000";

    fn chain() -> Vec<ChainedEvent> {
        let first = first_fields();
        let first_hash = first.hash();
        let second = HashedFields {
            version: 2,
            position: 4,
            event_type: "ConcurrencySet.v1".into(),
            data: canonical_json(r#"{"workers": 5, "previous": 3}"#).expect("json"),
            metadata: canonical_json(
                r#"{"actor": "Zoë \"ops\"\n", "request_id": "req-2", "correlation_id": "req-1",
                    "trace_id": "0af7651916cd43dd8448eb211c80319c"}"#,
            )
            .expect("json"),
            recorded_at: at("2026-12-01T09:31:05.000007Z"),
            prev_hash: first_hash,
            ..first.clone()
        };
        let second_hash = second.hash();
        let third = HashedFields {
            version: 3,
            position: 9,
            event_type: "TenantDeleted.v1".into(),
            data: "{}".into(),
            prev_hash: second_hash,
            ..second.clone()
        };
        let third_hash = third.hash();
        vec![
            ChainedEvent { fields: first, hash: first_hash },
            ChainedEvent { fields: second, hash: second_hash },
            ChainedEvent { fields: third, hash: third_hash },
        ]
    }

    fn check(events: &[ChainedEvent]) -> Result<Intact, Break> {
        let mut check = ChainCheck::new();
        for event in events {
            check.push(event)?;
        }
        Ok(check.finish())
    }

    #[test]
    fn the_fixed_vectors_hash_as_computed_independently() {
        let first = first_fields();
        assert_eq!(hex::encode(first.encode()), FIRST_ENCODING);
        assert_eq!(first.hash().to_hex(), FIRST_HASH);
        let events = chain();
        assert_eq!(events[1].hash.to_hex(), SECOND_HASH);
    }

    #[test]
    fn canonical_json_sorts_keys_by_bytes_drops_whitespace_and_keeps_number_text() {
        let text = r#"{"b": [1.50, -0.0000001, 123456789012345678901234567890, true, null, false],
            "a": {"z\u0001\t": "\u00e9\ud83d\ude00\/", "": {}}, "é": [], "aa": "x"}"#;
        // The same output as the Python snippet of docs/audit.md gives.
        let expected = "{\"a\":{\"\":{},\"z\\u0001\\t\":\"é😀/\"},\"aa\":\"x\",\
            \"b\":[1.50,-0.0000001,123456789012345678901234567890,true,null,false],\"é\":[]}";
        assert_eq!(canonical_json(text).expect("json"), expected);
        assert_eq!(canonical_json(expected).expect("json"), expected, "canonical JSON is a fixed point");
        assert!(canonical_json("{\"a\": }").is_err());
        assert!(canonical_json(&format!("{}{}", "[".repeat(200), "]".repeat(200))).is_err());
    }

    #[test]
    fn recorded_at_is_hashed_with_six_fractional_digits() {
        assert_eq!(recorded_at_text(at("2026-12-01T09:30:00Z")), "2026-12-01T09:30:00.000000Z");
        assert_eq!(recorded_at_text(at("2026-12-01T10:30:00.5+01:00")), "2026-12-01T09:30:00.500000Z");
    }

    #[test]
    fn hashes_have_one_lowercase_hex_spelling() {
        assert_eq!(EventHash::from_hex(FIRST_HASH).map(|h| h.to_hex()).as_deref(), Some(FIRST_HASH));
        assert_eq!(EventHash::from_hex(&FIRST_HASH.to_uppercase()), None);
        assert_eq!(EventHash::from_hex(&FIRST_HASH[2..]), None);
        assert_eq!(EventHash::from_slice(&[0; 31]), None);
    }

    #[test]
    fn an_untouched_chain_verifies_with_its_head() {
        let events = chain();
        let intact = check(&events).expect("intact");
        assert_eq!((intact.streams, intact.events), (1, 3));
        let head = intact.head.expect("a head");
        assert_eq!((head.version, head.position, head.hash), (3, 9, events[2].hash));
    }

    #[test]
    fn a_changed_field_is_a_hash_mismatch_at_its_event() {
        let mut events = chain();
        events[1].fields.data = canonical_json(r#"{"workers": 6, "previous": 3}"#).expect("json");
        let broken = check(&events).expect_err("tampered");
        assert_eq!((broken.position, broken.version), (4, 2));
        assert!(
            matches!(broken.reason, BreakReason::HashMismatch { stored, .. } if stored.to_hex() == SECOND_HASH),
            "{broken}"
        );
        let mut events = chain();
        events[0].fields.recorded_at = at("2026-12-01T09:30:00.123457Z");
        let broken = check(&events).expect_err("tampered");
        assert!(matches!(broken.reason, BreakReason::HashMismatch { .. }) && broken.position == 1, "{broken}");
    }

    #[test]
    fn a_rehashed_change_breaks_the_link_of_the_next_event() {
        let mut events = chain();
        events[1].fields.data = canonical_json(r#"{"workers": 6, "previous": 3}"#).expect("json");
        events[1].hash = events[1].fields.hash();
        let broken = check(&events).expect_err("tampered");
        assert_eq!((broken.position, broken.version), (9, 3));
        assert_eq!(
            broken.reason,
            BreakReason::BrokenLink { expected: events[1].hash, found: events[2].fields.prev_hash }
        );
    }

    #[test]
    fn a_deleted_middle_event_is_a_version_gap_at_the_next_one() {
        let mut events = chain();
        events.remove(1);
        let broken = check(&events).expect_err("a gap");
        assert_eq!((broken.position, broken.version), (9, 3));
        assert_eq!(broken.reason, BreakReason::VersionGap { expected: 2 });
        assert!(broken.to_string().starts_with("position 9 (stream "), "{broken}");
    }

    #[test]
    fn a_stream_without_its_first_event_is_a_version_gap() {
        let events = chain();
        let broken = check(&events[1..]).expect_err("no version 1");
        assert_eq!((broken.position, broken.reason), (4, BreakReason::VersionGap { expected: 1 }));
    }

    /// The test chain moved to the nil stream, 100 positions later, and hashed again.
    fn other_stream() -> Vec<ChainedEvent> {
        let mut other = chain();
        for event in &mut other {
            event.fields.stream_id = Uuid::nil();
            event.fields.position += 100;
        }
        let mut previous = EventHash::GENESIS;
        for event in &mut other {
            event.fields.prev_hash = previous;
            event.hash = event.fields.hash();
            previous = event.hash;
        }
        other
    }

    #[test]
    fn consecutive_streams_are_separate_chains() {
        let all: Vec<ChainedEvent> = chain().into_iter().chain(other_stream()).collect();
        let intact = check(&all).expect("intact");
        assert_eq!((intact.streams, intact.events), (2, 6));
        assert_eq!(intact.head.map(|h| h.position), Some(109));
    }

    #[test]
    fn an_export_holds_one_stream_and_breaks_at_the_first_event_of_another() {
        let stream: Uuid = STREAM.parse().expect("a test uuid");
        let mut check = ChainCheck::one_stream();
        for event in &chain() {
            check.push(event).expect("intact");
        }
        let broken = check.push(&other_stream()[0]).expect_err("another stream");
        assert_eq!((broken.position, broken.stream_id, broken.version), (101, Uuid::nil(), 1));
        assert_eq!(broken.reason, BreakReason::OtherStream { expected: stream });
        assert!(broken.to_string().contains("another stream: "), "{broken}");
        // Whichever stream comes first is the one.
        let mut check = ChainCheck::one_stream();
        check.push(&other_stream()[0]).expect("intact");
        let broken = check.push(&chain()[0]).expect_err("another stream");
        assert_eq!((broken.position, broken.reason), (1, BreakReason::OtherStream { expected: Uuid::nil() }));
        let mut check = ChainCheck::one_stream();
        for event in &chain() {
            check.push(event).expect("intact");
        }
        assert_eq!(check.finish().streams, 1);
    }

    #[test]
    fn an_export_line_round_trips_and_names_what_is_wrong() {
        let events = chain();
        for event in &events {
            let line = event.to_json_line().expect("a line");
            assert_eq!(ChainedEvent::from_json_line(&line).expect("an event"), *event);
        }
        let line = events[0].to_json_line().expect("a line");
        let upper = line.replace(FIRST_HASH, &FIRST_HASH.to_uppercase());
        assert!(matches!(ChainedEvent::from_json_line(&upper), Err(LineError::Hash("hash"))));
        assert!(matches!(ChainedEvent::from_json_line(&line[1..]), Err(LineError::Json(_))));
        let late = line.replace("2026-12-01T09:30:00.123456Z", "yesterday");
        assert!(matches!(ChainedEvent::from_json_line(&late), Err(LineError::Spelling { field: "recorded_at", .. })));
    }

    #[test]
    fn an_export_line_spells_its_stream_id_and_time_as_the_export_writes_them() {
        let line = chain()[0].to_json_line().expect("a line");
        let time = "2026-12-01T09:30:00.123456Z";
        for (field, from, to) in [
            ("stream_id", STREAM, STREAM.to_uppercase()),
            ("stream_id", STREAM, STREAM.replace('-', "")),
            ("stream_id", STREAM, format!("{{{STREAM}}}")),
            ("stream_id", STREAM, format!("urn:uuid:{STREAM}")),
            ("recorded_at", time, "2026-12-01T10:30:00.123456+01:00".to_owned()),
            ("recorded_at", time, "2026-12-01T09:30:00.123456+00:00".to_owned()),
            ("recorded_at", time, "2026-12-01T09:30:00.123456000Z".to_owned()),
            ("recorded_at", time, "2026-12-01T09:30:00.1234560Z".to_owned()),
            ("recorded_at", time, "2026-12-01t09:30:00.123456z".to_owned()),
            ("recorded_at", time, "2026-12-01 09:30:00.123456Z".to_owned()),
            ("recorded_at", time, "yesterday".to_owned()),
        ] {
            let edited = line.replacen(from, &to, 1);
            assert_ne!(edited, line);
            let error = ChainedEvent::from_json_line(&edited).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.starts_with(field), "{to}: {error:?}");
            assert!(error.contains(&to), "{to}: {error:?}");
        }
    }

    /// Checks `events` as `verify --file` does, with what the auditor expects.
    fn check_expecting(events: &[ChainedEvent], expected: Expected) -> Result<Intact, Unexpected> {
        let mut check = ChainCheck::one_stream();
        for event in events {
            check.push(event).expect("intact");
            expected.event(event)?;
        }
        let intact = check.finish();
        expected.end(&intact).map(|()| intact)
    }

    #[test]
    fn an_intact_export_must_be_of_the_tenant_asked_for_and_keep_its_recorded_head() {
        let events = chain();
        let stream: Uuid = STREAM.parse().expect("a test uuid");
        let head = |version: usize| RecordedHead { version: version as i32, hash: events[version - 1].hash };
        for expected in [
            Expected::default(),
            Expected { stream_id: Some(stream), head: None },
            Expected { stream_id: Some(stream), head: Some(head(2)) },
            Expected { stream_id: None, head: Some(head(3)) },
        ] {
            assert_eq!(check_expecting(&events, expected).map(|intact| intact.events), Ok(3), "{expected:?}");
        }
        let other = Uuid::nil();
        assert_eq!(
            check_expecting(&events, Expected { stream_id: Some(other), head: None }),
            Err(Unexpected::OtherTenant { expected: other, found: stream })
        );
        // Another event hashed in place of the recorded head: the stream was rewritten and hashed again.
        let rewritten = RecordedHead { version: 2, hash: events[0].hash };
        assert_eq!(
            check_expecting(&events, Expected { stream_id: None, head: Some(rewritten) }),
            Err(Unexpected::HeadRewritten { version: 2, recorded: events[0].hash, found: events[1].hash })
        );
        // The stream ends before the recorded head: its newest events were taken away.
        assert_eq!(
            check_expecting(&events[..2], Expected { stream_id: None, head: Some(head(3)) }),
            Err(Unexpected::CutBack { last: 2, recorded: 3 })
        );
    }

    #[test]
    fn a_recorded_head_is_written_version_colon_hash() {
        let parsed: RecordedHead = format!("2:{SECOND_HASH}").parse().expect("a recorded head");
        assert_eq!((parsed.version, parsed.hash.to_hex()), (2, SECOND_HASH.to_owned()));
        for wrong in [
            SECOND_HASH.to_owned(),
            format!("0:{SECOND_HASH}"),
            format!("-1:{SECOND_HASH}"),
            format!("+2:{SECOND_HASH}"),
            format!("02:{SECOND_HASH}"),
            format!("2147483648:{SECOND_HASH}"),
            format!("x:{SECOND_HASH}"),
            format!("2:{}", SECOND_HASH.to_uppercase()),
            format!("2:{}", &SECOND_HASH[1..]),
            format!("2 :{SECOND_HASH}"),
        ] {
            let error = wrong.parse::<RecordedHead>().expect_err("not a recorded head");
            assert!(error.contains("VERSION:HASH"), "{wrong}: {error}");
        }
    }
}
