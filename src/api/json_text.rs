//! `JsonText<T>`: a JSON response written by serde, documented with `T`'s OpenAPI schema. poem-openapi's
//! `Json<T>` builds a `serde_json::Value` first, which turns large numbers into `f64` and drops values nested
//! deeper than its parser's limit; through serde, a `RawValue` inside `T` goes out as its text, byte for byte.

use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
};
use serde::Serialize;

use super::problem::ApiError;

pub struct JsonText<T>(pub T);

impl<T: Type> Payload for JsonText<T> {
    const CONTENT_TYPE: &'static str = Json::<T>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        Json::<T>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + Serialize> IntoResponse for JsonText<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder().content_type(Self::CONTENT_TYPE).body(body),
            Err(error) => {
                tracing::error!(%error, "a response cannot be serialized");
                ApiError::internal().into_response()
            }
        }
    }
}

/// The same document entry as `Json<T>`: switching between the two leaves the OpenAPI document unchanged.
impl<T: Type + Serialize> ApiResponse for JsonText<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType { content_type: Self::CONTENT_TYPE, schema: Self::schema_ref() }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
