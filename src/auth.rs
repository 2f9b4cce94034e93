//! JWT bearer authentication: HS256 with `auth.jwt_secret` by default, RS256/ES256 with a public key by
//! configuration. Claims: `sub`, `exp`, `role` (`admin` | `auditor` | `tenant`) and, for tenant tokens,
//! `tenant_id`. An admin may do everything; an auditor may read every tenant's record (tenants, events,
//! states, exports, the audit endpoints) and change nothing; a tenant token only its own tenant's reads,
//! publishes, events and DLQ.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    config::{AuthConfig, ConfigError, JwtAlgorithm},
    domain::tenant::TenantId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleClaim {
    Admin,
    Auditor,
    Tenant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    pub role: RoleClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// Reads every tenant's record, changes nothing, and sees no message content.
    Auditor,
    Tenant(TenantId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required (Authorization: Bearer <JWT>)")]
    Missing,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(&'static str),
    /// Several `Authorization` headers: which one counts would be a guess (proxies and servers disagree).
    #[error("send one Authorization header, not several")]
    Ambiguous,
}

impl AuthError {
    /// An auditor asking to act on a tenant or read its messages.
    pub const AUDITOR_READS_THE_RECORD_ONLY: Self =
        Self::Forbidden("an auditor token reads the record only (tenants, events, states, exports, audit)");
    /// A tenant's token on another tenant's resources.
    pub const OTHER_TENANT: Self = Self::Forbidden("this token belongs to another tenant");
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Auditor | Role::Tenant(_) => Err(AuthError::Forbidden("this operation needs an admin token")),
        }
    }

    /// Admins may act on any tenant; a tenant token only on its own. Auditors may not: acting includes
    /// publishing and reading messages.
    pub fn require_tenant(&self, tenant: TenantId) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Tenant(own) if own == tenant => Ok(()),
            Role::Tenant(_) => Err(AuthError::OTHER_TENANT),
            Role::Auditor => Err(AuthError::AUDITOR_READS_THE_RECORD_ONLY),
        }
    }

    /// Reading every tenant's record: admins and auditors.
    pub fn require_record_reader(&self) -> Result<(), AuthError> {
        match self.role {
            Role::Admin | Role::Auditor => Ok(()),
            Role::Tenant(_) => Err(AuthError::Forbidden("this operation needs an admin or auditor token")),
        }
    }

    /// Reading one tenant's record (the tenant, its events, states and export): admins, auditors, and the
    /// tenant's own token.
    pub fn require_record_of(&self, tenant: TenantId) -> Result<(), AuthError> {
        match self.role {
            Role::Auditor => Ok(()),
            _ => self.require_tenant(tenant),
        }
    }
}

/// Verifies tokens with the configured key, or the previous one while keys are rotated.
pub struct Authenticator {
    /// The current key first; `None` when authentication is off.
    keys: Option<(Vec<DecodingKey>, Validation)>,
    /// `auth.audience`: the `aud` a token must name; `None`: a token that names one is refused.
    audience: Option<String>,
}

/// The credentials of an `Authorization: Bearer …` header. The scheme's name is case-insensitive (RFC 9110), so
/// `bearer` and `BEARER` name it too.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let audience = config.audience.clone();
        let Some((algorithm, keys)) = config.verification_keys()? else {
            return Ok(Self { keys: None, audience });
        };
        let mut validation = Validation::new(algorithm);
        // Without an audience configured, jsonwebtoken refuses a token that names one: an identity provider
        // that shares its signing key between services issues such tokens for the others too.
        if let Some(audience) = &audience {
            validation.set_audience(&[audience]);
            validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        } else {
            validation.set_required_spec_claims(&["exp", "sub"]);
        }
        // A token that says it is not valid yet is not (jsonwebtoken checks `nbf` only when asked).
        validation.validate_nbf = true;
        validation.leeway = config.leeway_seconds;
        Ok(Self { keys: Some((keys, validation)), audience })
    }

    /// The caller named by the `Authorization` header (an admin when authentication is off).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some((keys, validation)) = &self.keys else {
            return Ok(Principal { subject: "anonymous".into(), role: Role::Admin });
        };
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or_else(|| AuthError::Invalid("expected `Bearer <JWT>`".into()))?;
        let mut decoded = Err(ErrorKind::InvalidSignature.into());
        for key in keys {
            decoded = jsonwebtoken::decode::<Decoded>(token, key, validation);
            // Signed with another key: perhaps the previous one, while keys are rotated.
            if !matches!(&decoded, Err(error) if *error.kind() == ErrorKind::InvalidSignature) {
                break;
            }
        }
        let Decoded { sub, role, tenant_id, aud } = decoded
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (`nbf` is in the future)".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid(match &self.audience {
                    Some(audience) => format!("`aud` does not name this service ({audience})"),
                    None => NO_AUDIENCE_EXPECTED.into(),
                }),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Invalid(format!("the `{claim}` claim is missing or malformed"))
                }
                ErrorKind::Json(_) => AuthError::Invalid("missing or malformed claims".into()),
                _ => AuthError::Invalid("malformed token".into()),
            })?
            .claims;
        // jsonwebtoken checks only an `aud` it can read (a string or a list of them): any other is refused too.
        if self.audience.is_none() && !aud.is_null() {
            return Err(AuthError::Invalid(NO_AUDIENCE_EXPECTED.into()));
        }
        // The subject is recorded as the actor of every command the token issues, in `jsonb`, which cannot
        // hold U+0000; other control characters, line separators and direction overrides garble logs and
        // what an auditor reads. No identity provider names a caller so, and escaping would record an actor
        // the token does not name, so the token is refused as malformed.
        if sub.chars().any(crate::domain::garbles_text) {
            return Err(AuthError::Invalid(
                "`sub` contains control characters, line separators, zero-width characters or direction marks".into(),
            ));
        }
        let role = match (role, tenant_id) {
            (RoleClaim::Admin, _) => Role::Admin,
            (RoleClaim::Auditor, None) => Role::Auditor,
            (RoleClaim::Auditor, Some(_)) => {
                return Err(AuthError::Invalid("an auditor token has no `tenant_id`".into()));
            }
            (RoleClaim::Tenant, Some(tenant)) => Role::Tenant(TenantId::from_uuid(tenant)),
            (RoleClaim::Tenant, None) => return Err(AuthError::Invalid("a tenant token needs `tenant_id`".into())),
        };
        Ok(Principal { subject: sub, role })
    }
}

/// Mints an HS256 token with the configured secret (`tenantmq token`, tests, development).
pub fn mint(config: &AuthConfig, subject: &str, role: Role, ttl: Duration) -> Result<String, ConfigError> {
    if config.algorithm != JwtAlgorithm::HS256 {
        return Err(ConfigError::new(
            "auth.algorithm",
            "tokens can only be minted for HS256; sign RS256/ES256 tokens with your private key",
        ));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let (role, tenant_id) = match role {
        Role::Admin => (RoleClaim::Admin, None),
        Role::Auditor => (RoleClaim::Auditor, None),
        Role::Tenant(tenant) => (RoleClaim::Tenant, Some(tenant.as_uuid())),
    };
    let claims = Claims { sub: subject.to_owned(), iat: now, exp: now.saturating_add(ttl.as_secs()), role, tenant_id };
    let minted = Minted { claims: &claims, aud: config.audience.as_deref() };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &minted, &EncodingKey::from_secret(config.secret()?))
        .map_err(|e| ConfigError::new("auth.jwt_secret", e.to_string()))
}

const NO_AUDIENCE_EXPECTED: &str = "the token names an audience (`aud`), and this service is set up to accept none";

/// What the service reads of a token's claims, and its audience, which jsonwebtoken has checked if it could
/// read it. Not `exp` or `iat`: jsonwebtoken has checked `exp` (and `nbf`), as a whole or fractional number of
/// seconds as RFC 7519 allows, and `iat` says nothing the service uses; read as integers here, a provider
/// that writes `iat` as `time.time()` would have every token refused.
#[derive(Deserialize)]
struct Decoded {
    sub: String,
    role: RoleClaim,
    #[serde(default)]
    tenant_id: Option<Uuid>,
    #[serde(default)]
    aud: serde_json::Value,
}

/// A minted token's claims: with the configured audience, if any.
#[derive(Serialize)]
struct Minted<'a> {
    #[serde(flatten)]
    claims: &'a Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const SECRET: &str = "0123456789abcdef0123456789abcdef";

    pub(super) fn config() -> AuthConfig {
        AuthConfig { jwt_secret: Some(SECRET.into()), ..AuthConfig::default() }
    }

    pub(super) fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn minted_tokens_authenticate_with_their_role() {
        let auth = Authenticator::from_config(&config()).expect("valid config");
        let tenant = TenantId::generate();
        let admin = mint(&config(), "ops", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert_eq!(
            auth.authenticate(Some(&bearer(&admin))),
            Ok(Principal { subject: "ops".into(), role: Role::Admin })
        );
        let own = mint(&config(), "app", Role::Tenant(tenant), Duration::from_secs(60)).expect("minted");
        let principal = auth.authenticate(Some(&bearer(&own))).expect("valid");
        assert_eq!(principal.role, Role::Tenant(tenant));
        assert!(principal.require_tenant(tenant).is_ok());
        assert!(principal.require_tenant(TenantId::generate()).is_err());
        assert!(principal.require_admin().is_err());
        assert!(principal.require_record_reader().is_err());
        assert!(principal.require_record_of(tenant).is_ok());
        let auditor = mint(&config(), "audit", Role::Auditor, Duration::from_secs(60)).expect("minted");
        let principal = auth.authenticate(Some(&bearer(&auditor))).expect("valid");
        assert_eq!(principal.role, Role::Auditor);
        assert!(principal.require_record_reader().is_ok());
        assert!(principal.require_record_of(tenant).is_ok());
        assert!(principal.require_admin().is_err());
        assert!(principal.require_tenant(tenant).is_err(), "an auditor neither publishes nor reads messages");
    }

    #[test]
    fn a_token_names_the_configured_audience_or_none_when_none_is_configured() {
        let audience = |aud: Option<&str>| AuthConfig { audience: aud.map(str::to_owned), ..config() };
        let expecting = Authenticator::from_config(&audience(Some("tenantmq"))).expect("valid config");
        let minted = mint(&audience(Some("tenantmq")), "ops", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert!(expecting.authenticate(Some(&bearer(&minted))).is_ok(), "a minted token names the audience");
        let elsewhere = mint(&audience(Some("billing")), "ops", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert_eq!(
            expecting.authenticate(Some(&bearer(&elsewhere))),
            Err(AuthError::Invalid("`aud` does not name this service (tenantmq)".into()))
        );
        let without = mint(&config(), "ops", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert_eq!(
            expecting.authenticate(Some(&bearer(&without))),
            Err(AuthError::Invalid("the `aud` claim is missing or malformed".into()))
        );
        let expecting_none = Authenticator::from_config(&config()).expect("valid config");
        assert!(expecting_none.authenticate(Some(&bearer(&without))).is_ok());
        assert_eq!(
            expecting_none.authenticate(Some(&bearer(&minted))),
            Err(AuthError::Invalid(NO_AUDIENCE_EXPECTED.into()))
        );
        // An `aud` jsonwebtoken cannot read is no less an audience.
        let now = jsonwebtoken::get_current_timestamp();
        for aud in [serde_json::json!(7), serde_json::json!([1]), serde_json::json!({})] {
            let claims = serde_json::json!({ "sub": "x", "exp": now + 60, "role": "admin", "aud": aud });
            let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .expect("encoded");
            assert_eq!(
                expecting_none.authenticate(Some(&bearer(&token))),
                Err(AuthError::Invalid(NO_AUDIENCE_EXPECTED.into())),
                "{aud}"
            );
        }
    }

    #[test]
    fn a_subject_with_a_line_separator_or_a_direction_override_is_refused() {
        let auth = Authenticator::from_config(&config()).expect("valid config");
        for sub in ["ops\u{2028}admin", "ops\u{2029}", "ops\u{202E}nimda", "ops\u{2066}x", "o\u{200B}ps", "ops\u{0}"] {
            let minted = mint(&config(), sub, Role::Admin, Duration::from_secs(60)).expect("minted");
            assert!(
                matches!(auth.authenticate(Some(&bearer(&minted))), Err(AuthError::Invalid(_))),
                "{sub:?} was accepted"
            );
        }
        let plain = mint(&config(), "ops@example.com (Ünïcode)", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert!(auth.authenticate(Some(&bearer(&plain))).is_ok());
    }

    #[test]
    fn a_token_minted_for_longer_than_time_goes_never_expires_rather_than_at_once() {
        let minted = mint(&config(), "x", Role::Admin, Duration::MAX).expect("minted");
        let auth = Authenticator::from_config(&config()).expect("valid config");
        assert!(auth.authenticate(Some(&bearer(&minted))).is_ok());
    }

    #[test]
    fn bad_tokens_are_rejected_with_a_reason() {
        let auth = Authenticator::from_config(&config()).expect("valid config");
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        let other = AuthConfig { jwt_secret: Some("another-secret-another-secret-xx".into()), ..AuthConfig::default() };
        let forged = mint(&other, "x", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert!(matches!(auth.authenticate(Some(&bearer(&forged))), Err(AuthError::Invalid(_))));
        let now = jsonwebtoken::get_current_timestamp();
        let expired =
            Claims { sub: "x".into(), iat: now - 600, exp: now - 300, role: RoleClaim::Admin, tenant_id: None };
        let expired = jsonwebtoken::encode(&Header::default(), &expired, &EncodingKey::from_secret(SECRET.as_bytes()))
            .expect("encoded");
        assert_eq!(auth.authenticate(Some(&bearer(&expired))), Err(AuthError::Expired));
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let minted = mint(&config(), "x", Role::Admin, Duration::from_secs(60)).expect("minted");
            assert!(auth.authenticate(Some(&format!("{scheme} {minted}"))).is_ok(), "{scheme}");
        }
        for garbage in ["Bearer", "Basic abc", "Bearer not.a.jwt", "token", "Bearer ", "Bearerx.y.z"] {
            assert!(matches!(auth.authenticate(Some(garbage)), Err(AuthError::Invalid(_))), "{garbage}");
        }
        let no_tenant = Claims { sub: "x".into(), iat: now, exp: now + 60, role: RoleClaim::Tenant, tenant_id: None };
        let no_tenant =
            jsonwebtoken::encode(&Header::default(), &no_tenant, &EncodingKey::from_secret(SECRET.as_bytes()))
                .expect("encoded");
        assert!(matches!(auth.authenticate(Some(&bearer(&no_tenant))), Err(AuthError::Invalid(_))));
        let early =
            serde_json::json!({ "sub": "x", "iat": now, "nbf": now + 3600, "exp": now + 7200, "role": "admin" });
        let early = jsonwebtoken::encode(&Header::default(), &early, &EncodingKey::from_secret(SECRET.as_bytes()))
            .expect("encoded");
        assert_eq!(
            auth.authenticate(Some(&bearer(&early))),
            Err(AuthError::Invalid("not valid yet (`nbf` is in the future)".into()))
        );
        for subject in ["ops\u{0}", "ops\n", "\u{7f}", "\u{9b}31m"] {
            let claims =
                Claims { sub: subject.into(), iat: now, exp: now + 60, role: RoleClaim::Admin, tenant_id: None };
            let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .expect("encoded");
            assert!(matches!(auth.authenticate(Some(&bearer(&token))), Err(AuthError::Invalid(_))), "{subject:?}");
        }
    }

    /// RFC 7519 lets a NumericDate have a fraction; providers that write `time.time()` do.
    #[test]
    fn fractional_times_in_a_token_are_read_as_such() {
        let auth = Authenticator::from_config(&config()).expect("valid config");
        let now = jsonwebtoken::get_current_timestamp() as f64 + 0.25;
        let signed = |claims: serde_json::Value| {
            let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .expect("encoded");
            auth.authenticate(Some(&bearer(&token)))
        };
        let valid = signed(serde_json::json!({ "sub": "x", "iat": now, "exp": now + 60.5, "role": "admin" }));
        assert_eq!(valid.map(|principal| principal.role), Ok(Role::Admin));
        let expired =
            signed(serde_json::json!({ "sub": "x", "iat": now - 600.5, "exp": now - 300.5, "role": "admin" }));
        assert_eq!(expired, Err(AuthError::Expired));
    }

    #[test]
    fn an_alg_none_or_other_algorithm_token_is_rejected() {
        let auth = Authenticator::from_config(&config()).expect("valid config");
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: "x".into(), iat: now, exp: now + 60, role: RoleClaim::Admin, tenant_id: None };
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .expect("encoded");
        assert!(auth.authenticate(Some(&bearer(&hs512))).is_err());
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"))
        });
        assert!(auth.authenticate(Some(&bearer(&unsigned))).is_err());
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let missing = AuthConfig::default();
        assert_eq!(Authenticator::from_config(&missing).err().map(|e| e.key), Some("auth.jwt_secret".into()));
        let short = AuthConfig { jwt_secret: Some("short".into()), ..AuthConfig::default() };
        assert_eq!(Authenticator::from_config(&short).err().map(|e| e.key), Some("auth.jwt_secret".into()));
        let rsa = AuthConfig { algorithm: JwtAlgorithm::RS256, ..AuthConfig::default() };
        assert_eq!(Authenticator::from_config(&rsa).err().map(|e| e.key), Some("auth.public_key_file".into()));
        let off = AuthConfig { enabled: false, ..AuthConfig::default() };
        let principal = Authenticator::from_config(&off).expect("valid").authenticate(None).expect("admin");
        assert_eq!(principal.role, Role::Admin);
    }
}

#[cfg(test)]
mod public_key_tests {
    use super::{
        tests::{SECRET, bearer, config},
        *,
    };

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

    fn token(algorithm: Algorithm, private_pem: &str, claims: &Claims) -> String {
        let pem = std::fs::read(format!("{KEYS}/{private_pem}")).expect("test key");
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("private key");
        jsonwebtoken::encode(&Header::new(algorithm), claims, &key).expect("signed")
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_configured_public_key() {
        let now = jsonwebtoken::get_current_timestamp();
        let tenant = TenantId::generate();
        let claims = Claims {
            sub: "svc".into(),
            iat: now,
            exp: now + 60,
            role: RoleClaim::Tenant,
            tenant_id: Some(tenant.as_uuid()),
        };
        for (algorithm, ours, private, public) in [
            (Algorithm::RS256, JwtAlgorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
            (Algorithm::ES256, JwtAlgorithm::ES256, "es256-private.pem", "es256-public.pem"),
        ] {
            let config = AuthConfig {
                algorithm: ours,
                public_key_file: Some(format!("{KEYS}/{public}").into()),
                ..AuthConfig::default()
            };
            let auth = Authenticator::from_config(&config).expect("public key loads");
            let principal =
                auth.authenticate(Some(&format!("Bearer {}", token(algorithm, private, &claims)))).expect("valid");
            assert_eq!(principal.role, Role::Tenant(tenant));
            // An HS256 token made with the public key as secret (the classic confusion attack) is refused.
            let public_pem = std::fs::read(format!("{KEYS}/{public}")).expect("public key");
            let confused =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&public_pem))
                    .expect("signed");
            assert!(auth.authenticate(Some(&format!("Bearer {confused}"))).is_err());
        }
    }

    #[test]
    fn while_keys_are_rotated_tokens_of_the_previous_key_still_verify() {
        let old = AuthConfig { jwt_secret: Some("the-old-secret-the-old-secret-xxx".into()), ..AuthConfig::default() };
        let rotating = AuthConfig { previous_jwt_secret: old.jwt_secret.clone(), ..config() };
        let auth = Authenticator::from_config(&rotating).expect("valid config");
        for minted_with in [&old, &config(), &rotating] {
            let token = mint(minted_with, "ops", Role::Admin, Duration::from_secs(60)).expect("minted");
            assert!(auth.authenticate(Some(&bearer(&token))).is_ok());
        }
        let stranger =
            AuthConfig { jwt_secret: Some("neither-secret-neither-secret-xxx".into()), ..AuthConfig::default() };
        let forged = mint(&stranger, "x", Role::Admin, Duration::from_secs(60)).expect("minted");
        assert_eq!(auth.authenticate(Some(&bearer(&forged))), Err(AuthError::Invalid("bad signature".into())));
        // A token of the previous key is still checked as any other: expired is expired.
        let now = jsonwebtoken::get_current_timestamp();
        let expired =
            Claims { sub: "x".into(), iat: now - 600, exp: now - 300, role: RoleClaim::Admin, tenant_id: None };
        let expired = jsonwebtoken::encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(old.secret().expect("secret")),
        )
        .expect("encoded");
        assert_eq!(auth.authenticate(Some(&bearer(&expired))), Err(AuthError::Expired));
        // Once the rotation is over, the previous key's tokens are refused.
        let old_token = mint(&old, "ops", Role::Admin, Duration::from_secs(60)).expect("minted");
        let rotated = Authenticator::from_config(&config()).expect("valid config");
        assert!(rotated.authenticate(Some(&bearer(&old_token))).is_err());

        // With public keys: the previous key's file beside the new one.
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: "svc".into(), iat: now, exp: now + 60, role: RoleClaim::Admin, tenant_id: None };
        let keys = AuthConfig {
            algorithm: JwtAlgorithm::ES256,
            public_key_file: Some(format!("{KEYS}/es256-next-public.pem").into()),
            previous_public_key_file: Some(format!("{KEYS}/es256-public.pem").into()),
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&keys).expect("public keys load");
        for private in ["es256-private.pem", "es256-next-private.pem"] {
            let token = token(Algorithm::ES256, private, &claims);
            assert!(auth.authenticate(Some(&bearer(&token))).is_ok(), "{private}");
        }
        let only_new = Authenticator::from_config(&AuthConfig { previous_public_key_file: None, ..keys.clone() })
            .expect("public key loads");
        assert!(only_new.authenticate(Some(&bearer(&token(Algorithm::ES256, "es256-private.pem", &claims)))).is_err());
    }

    #[test]
    fn a_previous_key_must_suit_the_algorithm_and_be_as_strong_as_a_current_one() {
        let cases = [
            (AuthConfig { previous_jwt_secret: Some("short".into()), ..config() }, "auth.previous_jwt_secret"),
            (
                AuthConfig { previous_public_key_file: Some(format!("{KEYS}/es256-public.pem").into()), ..config() },
                "auth.previous_public_key_file",
            ),
            (
                AuthConfig {
                    algorithm: JwtAlgorithm::RS256,
                    public_key_file: Some(format!("{KEYS}/rs256-public.pem").into()),
                    previous_jwt_secret: Some(SECRET.into()),
                    ..AuthConfig::default()
                },
                "auth.previous_jwt_secret",
            ),
            (
                AuthConfig {
                    algorithm: JwtAlgorithm::RS256,
                    public_key_file: Some(format!("{KEYS}/rs256-public.pem").into()),
                    previous_public_key_file: Some(format!("{KEYS}/es256-public.pem").into()),
                    ..AuthConfig::default()
                },
                "auth.previous_public_key_file",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(Authenticator::from_config(&config).err().map(|e| e.key), Some(key.to_owned()), "{config:?}");
        }
    }
}
