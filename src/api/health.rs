//! Liveness and readiness probes.

use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, AppState};

/// How long readiness waits for the database to answer.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
        let readiness = Readiness {
            // A database that is down can make a ping wait for the pool's acquire timeout: answer sooner.
            database: tokio::time::timeout(PING_TIMEOUT, state.db.ping()).await.is_ok_and(|pinged| pinged.is_ok()),
            broker: state.runtime.broker.is_connected(),
            projectors: state.projections.all_caught_up(),
        };
        if readiness.database && readiness.broker && readiness.projectors {
            ReadinessResponse::Ready(Json(readiness))
        } else {
            ReadinessResponse::NotReady(Json(readiness))
        }
    }
}
