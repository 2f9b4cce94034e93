//! Opaque keyset cursors and page limits shared by every paged endpoint.
//!
//! A cursor is `base64url("v1|<scope>|<key>")`: the scope ties it to one listing (and one tenant), so a cursor
//! from another listing or tenant is rejected instead of silently paging the wrong data. The key is the
//! listing's sort key of the last row returned.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::domain::tenant::TenantId;

use super::problem::ApiError;

/// The listing a cursor belongs to: the one place where cursor scopes are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Tenants,
    Events(TenantId),
    Messages(TenantId),
    DeadLetters(TenantId),
    /// Streams checked by `/audit/verify`, by stream id.
    AuditVerify,
    /// Streams' heads, by stream id.
    AuditHeads,
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenants => f.write_str("tenants"),
            Self::Events(tenant) => write!(f, "events:{tenant}"),
            Self::Messages(tenant) => write!(f, "messages:{tenant}"),
            Self::DeadLetters(tenant) => write!(f, "dlq:{tenant}"),
            Self::AuditVerify => f.write_str("audit-verify"),
            Self::AuditHeads => f.write_str("audit-heads"),
        }
    }
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

/// Checks `limit` (default 50, 1..=1000).
pub fn limit(raw: Option<i64>) -> Result<u64, ApiError> {
    let limit = raw.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit.unsigned_abs())
    } else {
        Err(ApiError::bad_request(Some("limit"), format!("limit must be between 1 and {MAX_LIMIT}, got {limit}")))
    }
}

pub fn encode(scope: &str, key: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{scope}|{key}"))
}

fn invalid() -> ApiError {
    ApiError::bad_request(Some("cursor"), "the cursor is malformed or belongs to another listing")
}

/// The key a cursor points after (`None` without a cursor), parsed by `parse`.
pub fn decode_key<K>(
    raw: Option<&str>,
    scope: &str,
    parse: impl FnOnce(&str) -> Option<K>,
) -> Result<Option<K>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    let rest = text.strip_prefix("v1|").ok_or_else(invalid)?;
    let (cursor_scope, key) = rest.rsplit_once('|').ok_or_else(invalid)?;
    if cursor_scope != scope {
        return Err(invalid());
    }
    parse(key).map(Some).ok_or_else(invalid)
}

/// The position a cursor points after, or 0 without a cursor.
pub fn decode(raw: Option<&str>, scope: &str) -> Result<i64, ApiError> {
    Ok(decode_key(raw, scope, |key| key.parse::<i64>().ok().filter(|p| *p >= 0))?.unwrap_or(0))
}

/// Builds the page from `limit + 1` fetched rows: the extra row only says whether there is a next page.
pub fn page<T, V, K: std::fmt::Display>(
    mut rows: Vec<T>,
    limit: u64,
    scope: &str,
    key: impl Fn(&T) -> K,
    view: impl Fn(T) -> V,
) -> (Vec<V>, Option<String>) {
    let has_more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if has_more { rows.last().map(|last| encode(scope, key(last))) } else { None };
    (rows.into_iter().map(view).collect(), next_cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_scopes_keep_the_spelling_of_cursors_already_handed_out() {
        let tenant = TenantId::from_uuid(uuid::Uuid::nil());
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(Listing::Tenants.to_string(), "tenants");
        assert_eq!(Listing::Events(tenant).to_string(), format!("events:{nil}"));
        assert_eq!(Listing::Messages(tenant).to_string(), format!("messages:{nil}"));
        assert_eq!(Listing::DeadLetters(tenant).to_string(), format!("dlq:{nil}"));
    }

    #[test]
    fn cursors_round_trip_within_their_scope_only() {
        let cursor = encode("events:a", 42);
        assert_eq!(decode(Some(&cursor), "events:a").ok(), Some(42));
        assert!(decode(Some(&cursor), "events:b").is_err());
        assert!(decode(Some(&cursor), "tenants").is_err());
        assert_eq!(decode(None, "tenants").ok(), Some(0));
    }

    #[test]
    fn garbage_cursors_are_rejected() {
        let forged = [
            URL_SAFE_NO_PAD.encode("v1|tenants|-5"),
            URL_SAFE_NO_PAD.encode("v1|tenants|abc"),
            URL_SAFE_NO_PAD.encode("v2|tenants|5"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ];
        for bad in ["", "!!!", "djF8dGVuYW50c3w", "%%", "a"].iter().map(|s| s.to_string()).chain(forged) {
            assert!(decode(Some(&bad), "tenants").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(limit(None).ok(), Some(50));
        assert_eq!(limit(Some(1000)).ok(), Some(1000));
        for bad in [0, -1, 1001, i64::MIN] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_exist() {
        let (data, next) = page(vec![1_i64, 2, 3], 2, "s", |r| *r, |r| r);
        assert_eq!(data, vec![1, 2]);
        assert_eq!(next.and_then(|c| decode(Some(&c), "s").ok()), Some(2));
        let (data, next) = page(vec![1_i64, 2], 2, "s", |r| *r, |r| r);
        assert_eq!(data, vec![1, 2]);
        assert!(next.is_none());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_cursors_never_panics(raw in ".{0,200}", scope in "[a-z:0-9-]{0,40}") {
            let _ = decode(Some(&raw), &scope);
        }

        #[test]
        fn decoding_arbitrary_base64_payloads_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(Some(&URL_SAFE_NO_PAD.encode(bytes)), "tenants");
        }

        #[test]
        fn every_position_round_trips(position in 0_i64.., scope in "[a-z:0-9-]{1,40}") {
            prop_assert_eq!(decode(Some(&encode(&scope, position)), &scope).ok(), Some(position));
        }
    }
}
