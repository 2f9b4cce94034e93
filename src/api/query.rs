//! Query strings: a parameter given twice is refused, naming it. No parameter of this API is a list, and which
//! of two `limit`s a server would take is anyone's guess: a client that sends `?limit=5&limit=1000` learns of
//! its mistake instead of getting one of them.

use std::collections::HashSet;

use poem::{Endpoint, IntoResponse, Request, Response};

use super::problem::ApiError;

pub async fn refuse_repeated_parameters<E: Endpoint>(next: E, request: Request) -> poem::Result<Response> {
    if let Some(name) = request.uri().query().and_then(repeated) {
        let error = ApiError::bad_request(Some(&name), format!("`{name}` is given more than once"));
        return Err(poem::Error::from_response(error.into_response()));
    }
    next.call(request).await.map(IntoResponse::into_response)
}

/// The first parameter named twice, by its decoded name. A query that does not decode is left to the
/// parameter's own parser, which names what is wrong with it.
fn repeated(query: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    let mut seen = HashSet::new();
    pairs.into_iter().map(|(name, _)| name).find(|name| !seen.insert(name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_named_twice_is_found_however_it_is_spelled() {
        assert_eq!(repeated("limit=5&limit=1000").as_deref(), Some("limit"));
        assert_eq!(repeated("limit=5&cursor=a&li%6Dit=6").as_deref(), Some("limit"));
        assert_eq!(repeated("tenant_id=a&tenant_id").as_deref(), Some("tenant_id"));
        assert_eq!(repeated("limit=5&cursor=abc"), None);
        assert_eq!(repeated(""), None);
    }
}
