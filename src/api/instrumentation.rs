//! Measures every HTTP request: `tenantmq_http_requests_total{method,route,status}` and
//! `tenantmq_http_request_duration_seconds{method,route}`, and runs it in an `http.request` span (method,
//! route, status, request id), so every log line of the request carries them. `route` is the matched route
//! template (e.g. `/tenants/{id}/messages`), never the raw path, so the label stays bounded; a path that
//! matches no route is `unmatched`. Methods outside the standard set are `other` for the same reason.

use std::{collections::HashMap, sync::OnceLock, time::Instant};

use opentelemetry::{propagation::Extractor, trace::TraceContextExt};
use poem::{
    Endpoint, IntoResponse, PathPattern, Request, Response,
    error::NotFoundError,
    http::{HeaderValue, Method, StatusCode, header},
};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{AppState, document, problem, request_context::RequestContext};

/// The `route` of requests whose path matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Longest caller's `tracestate` carried on: the trace state goes into the AMQP headers of every message a
/// request publishes (W3C allows 32 entries of 512 bytes), and a batch of a thousand small messages would take
/// a thousand copies of it. A longer one is left out; the trace itself (`traceparent`) goes on.
const MAX_CALLER_TRACESTATE_BYTES: usize = 512;

/// A request's headers as trace context, without a `tracestate` over [`MAX_CALLER_TRACESTATE_BYTES`].
struct CallerTrace<'a>(&'a poem::http::HeaderMap);

impl Extractor for CallerTrace<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?.to_str().ok()?;
        (!key.eq_ignore_ascii_case("tracestate") || value.len() <= MAX_CALLER_TRACESTATE_BYTES).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Runs inside the router's error catcher, so it turns errors into their problem documents itself: the
/// status it counts is the one the client gets, and the route template (which poem attaches to the
/// response or error of the innermost matched route) is still at hand.
pub async fn middleware<E: Endpoint>(next: E, request: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = method_label(request.method());
    let metrics = request.data::<AppState>().map(|state| state.metrics.clone());
    // For a route poem's router did not match; a clone shares the URI's bytes, where the path alone is a copy.
    let uri = request.uri().clone();
    let request_id = request.extensions().get::<RequestContext>().map(|c| c.request_id.clone()).unwrap_or_default();
    let span = tracing::info_span!("http.request", method, route = Empty, status = Empty, %request_id);
    // A caller's `traceparent` makes this request a child of its span, so the caller's trace continues here
    // (and, through the AMQP headers, into the handling of what it published). Set before the span is first
    // entered: after that its parent is fixed.
    let caller = opentelemetry::global::get_text_map_propagator(|p| p.extract(&CallerTrace(request.headers())));
    if caller.span().span_context().is_valid() {
        let _ = span.set_parent(caller);
    }
    let (mut response, route) = match next.call(request).instrument(span.clone()).await {
        Ok(output) => {
            let response = output.into_response();
            let route = response.data::<PathPattern>().map(route_template);
            (response, route)
        }
        Err(error) => {
            let route =
                if error.is::<NotFoundError>() { None } else { error.data::<PathPattern>().map(route_template) };
            (problem::into_problem(error).await, route)
        }
    };
    // An answer given before routing (a repeated query parameter) has no pattern; a path that matches no
    // documented route is a 404 of poem's.
    let route = route.as_deref().or_else(|| documented_route_of(uri.path())).unwrap_or(UNMATCHED_ROUTE);
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        // Only here is the matched route at hand. Routes outside the document (`/metrics`, `/docs`) are GET.
        let allow = document::allowed_methods(route).unwrap_or("GET");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    span.record("route", route).record("status", response.status().as_u16());
    if let Some(metrics) = metrics {
        metrics.http_request(method, route, response.status().as_u16(), started.elapsed());
    }
    Ok(response)
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route as the OpenAPI document writes it (`/tenants/{id}/messages`); an empty pattern is the root.
fn route_template(pattern: &PathPattern) -> String {
    let template = with_braces(&pattern.0);
    if template.is_empty() {
        return "/".to_owned();
    }
    documented_names().get(&template).cloned().unwrap_or(template)
}

/// poem's `:name` and `*name` segments as `{name}`.
fn with_braces(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment.strip_prefix(':').or_else(|| segment.strip_prefix('*')) {
            Some(name) if !name.is_empty() => format!("{{{name}}}"),
            _ => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// poem-openapi routes its operations with positional parameters (`/tenants/:param0/messages`); this maps
/// each positional form to the path the OpenAPI document (and so every client and dashboard) uses.
fn documented_names() -> &'static HashMap<String, String> {
    static NAMES: OnceLock<HashMap<String, String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let document: serde_json::Value = serde_json::from_str(document::document()).unwrap_or_default();
        let paths = document["paths"].as_object().map(|paths| paths.keys().cloned().collect()).unwrap_or_default();
        positional_forms(paths)
    })
}

/// The documented route `path` falls on, each `{name}` segment matching any one segment; where two match,
/// the one with more literal segments.
fn documented_route_of(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    documented_names()
        .values()
        .filter_map(|route| {
            let parts: Vec<&str> = route.split('/').collect();
            let placeholder = |part: &str| part.starts_with('{') && part.ends_with('}');
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| if placeholder(part) { !segment.is_empty() } else { part == segment });
            fits.then(|| (parts.iter().filter(|part| !placeholder(part)).count(), route.as_str()))
        })
        .max_by_key(|&(literals, _)| literals)
        .map(|(_, route)| route)
}

fn positional_forms(paths: Vec<String>) -> HashMap<String, String> {
    paths
        .into_iter()
        .map(|path| {
            let mut index = 0;
            let positional = path
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') && segment.ends_with('}') {
                        index += 1;
                        format!("{{param{}}}", index - 1)
                    } else {
                        segment.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            (positional, path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_answered_before_routing_is_counted_under_its_documented_route() {
        let id = "0190b2a4-7f2e-7c3a-9d1e-2f4b6c8d0e1f";
        assert_eq!(documented_route_of(&format!("/tenants/{id}/events")), Some("/tenants/{id}/events"));
        assert_eq!(documented_route_of(&format!("/tenants/{id}")), Some("/tenants/{id}"));
        assert_eq!(documented_route_of("/tenants"), Some("/tenants"));
        assert_eq!(documented_route_of("/audit/verify"), Some("/audit/verify"));
        assert_eq!(documented_route_of("/tenants//messages"), None);
        assert_eq!(documented_route_of("/nowhere"), None);
    }

    #[test]
    fn route_templates_use_openapi_parameter_syntax() {
        let template = |pattern: &str| route_template(&PathPattern(pattern.into()));
        assert_eq!(template("/tenants/:param0/messages"), "/tenants/{id}/messages");
        assert_eq!(template("/tenants/:param0/config/concurrency"), "/tenants/{id}/config/concurrency");
        assert_eq!(template("/tenants/:param0"), "/tenants/{id}");
        assert_eq!(template("/metrics"), "/metrics");
        assert_eq!(template(""), "/");
        assert_eq!(template("/docs/*path"), "/docs/{path}");
    }
}
