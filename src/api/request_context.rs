//! Per-request context: the request id (taken from `X-Request-Id` when sane, otherwise generated), the
//! correlation id, recorded in event metadata (with the actor) and echoed in the response.

use poem::{Endpoint, IntoResponse, Request, Response, http::HeaderValue};

use crate::{app::history::EventMetadata, auth::Principal};

const REQUEST_ID: &str = "x-request-id";
const CORRELATION_ID: &str = "x-correlation-id";

#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
}

impl RequestContext {
    /// Metadata for the events a command by `principal` appends.
    pub fn event_metadata(&self, principal: &Principal) -> EventMetadata {
        EventMetadata {
            actor: principal.subject.clone(),
            request_id: self.request_id.clone(),
            correlation_id: self.correlation_id.clone(),
            // The handler runs in the `http.request` span, whose trace is the caller's when it sent one.
            trace_id: crate::telemetry::current_trace_id(),
        }
    }
}

/// Client-chosen ids are kept only if short and printable, so they are safe in logs and headers.
fn sane_header(request: &Request, name: &str) -> Option<String> {
    request
        .header(name)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

pub async fn middleware<E: Endpoint>(next: E, mut request: Request) -> poem::Result<Response> {
    let request_id = sane_header(&request, REQUEST_ID).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let correlation_id = sane_header(&request, CORRELATION_ID).unwrap_or_else(|| request_id.clone());
    let header = HeaderValue::from_str(&request_id).ok();
    request.extensions_mut().insert(RequestContext { request_id, correlation_id });
    let mut response = next.call(request).await?.into_response();
    if let Some(value) = header {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}
