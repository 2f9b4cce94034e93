//! Liveness and readiness probes.

use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, AppState};

#[derive(Debug, Object)]
pub struct Liveness {
    pub status: String,
}

/// Each dependency's state; the service is ready when all are true.
#[derive(Debug, Object)]
pub struct Readiness {
    /// PostgreSQL answers.
    pub database: bool,
    /// The RabbitMQ connection is up.
    pub broker: bool,
    /// Every projector has caught up with the event log since start.
    pub projectors: bool,
}

#[derive(Debug, ApiResponse)]
pub enum ReadinessResponse {
    /// Ready to serve.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: see which check failed.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is up
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<Liveness> {
        Json(Liveness { status: "ok".into() })
    }

    /// Readiness: PostgreSQL and RabbitMQ reachable, projectors caught up
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&AppState>) -> ReadinessResponse {
        let report = state.app.readiness.check().await;
        let readiness = Readiness { database: report.database, broker: report.broker, projectors: report.projectors };
        if report.ready() {
            ReadinessResponse::Ready(Json(readiness))
        } else {
            ReadinessResponse::NotReady(Json(readiness))
        }
    }
}
