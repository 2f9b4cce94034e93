//! The caller of an operation, as a handler parameter: documented as the bearer scheme, verified by the
//! service's [`Authenticator`](crate::auth::Authenticator).

use poem::{
    Request, RequestBody,
    http::{Method, StatusCode},
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme, auth::Bearer, registry::Registry,
};

use crate::{
    auth::{AuthError, Principal, Role},
    domain::tenant::TenantId,
};

use super::AppState;

/// The name of the bearer scheme in the OpenAPI document: the `rename` below.
pub(super) const SECURITY_SCHEME: &str = "BearerAuth";

// The bearer scheme of the OpenAPI document, so Swagger UI can authorize; its doc comment is what the
// Authorize dialog shows.
/// A JWT. Mint one with `tenantmq token --admin` (every operation), `tenantmq token --auditor` (every
/// tenant's record, read only) or `tenantmq token --tenant <id>` (one tenant's reads, publishes and dead
/// letters); it is signed with the service's configured secret. Paste the
/// token alone, without `Bearer `.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", rename = "BearerAuth")]
#[expect(dead_code, reason = "declares the scheme in the document; the `Principal` extractor verifies tokens")]
struct BearerAuth(Bearer);

/// The authenticated caller, as a handler parameter. Documented as the bearer scheme; verified by the
/// service's [`Authenticator`](crate::auth::Authenticator), which also lets every request through as admin
/// when authentication is off.
impl<'a> ApiExtractor<'a> for Principal {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <BearerAuth as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <BearerAuth as ApiExtractor>::security_schemes()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let state =
            request.data::<AppState>().ok_or_else(|| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
        let mut headers = request.headers().get_all(poem::http::header::AUTHORIZATION).iter();
        let authorization =
            headers.next().map(|value| value.to_str().map_err(|_| AuthError::Invalid("not text".into())));
        if headers.next().is_some() {
            return Err(AuthError::Ambiguous.into());
        }
        let principal = state.authenticator.authenticate(authorization.transpose()?)?;
        // What every operation refuses is refused here, before the body is read: such a request holds no
        // memory and no time. Every `/tenants/{id}…` operation refuses another tenant's token, and every
        // operation but a read an auditor's.
        match &principal.role {
            Role::Tenant(own) if tenant_in_path(request.uri().path()).is_some_and(|tenant| tenant != *own) => {
                Err(AuthError::OTHER_TENANT.into())
            }
            Role::Auditor if !matches!(*request.method(), Method::GET | Method::HEAD) => {
                Err(AuthError::AUDITOR_READS_THE_RECORD_ONLY.into())
            }
            _ => Ok(principal),
        }
    }
}

/// The tenant a `/tenants/{id}…` path names, if its `id` is one (else the path parameter's own check answers).
fn tenant_in_path(path: &str) -> Option<TenantId> {
    path.strip_prefix("/tenants/")?.split('/').next()?.parse().ok()
}
