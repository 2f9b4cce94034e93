//! Layered configuration: built-in defaults < `config/default.yaml` < `--config FILE` < `TENANTMQ_…`
//! environment variables (`__` separates nesting levels).

use std::{
    collections::BTreeSet,
    fmt,
    num::NonZeroU16,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Yaml},
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use crate::domain::{
    payload::PayloadLimits,
    tenant::{Limits, Policy, Workers},
};

/// The file read on every start when it exists, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.yaml";
const ENV_PREFIX: &str = "TENANTMQ_";

/// The secret `config/default.yaml` ships for development; the service warns when it runs with it.
pub const DEVELOPMENT_SECRET: &str = "tenantmq-development-secret-change-me";

/// Secrets shorter than this are refused: HS256 wants at least 256 bits.
const MIN_SECRET_BYTES: usize = 32;

/// Room in a single message's body for what surrounds the payload (`{"payload": …, "id": "…"}`):
/// `max_payload_bytes` bounds the payload itself, as in a batch, where the handler checks it.
const MESSAGE_ENVELOPE_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Turning authentication off makes every request an admin; only by explicit configuration.
    pub enabled: bool,
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret (at least 32 bytes).
    pub jwt_secret: Option<String>,
    /// A secret tokens signed earlier are still verified with, while they are replaced (HS256).
    pub previous_jwt_secret: Option<String>,
    /// PEM public key for RS256/ES256.
    pub public_key_file: Option<PathBuf>,
    /// A public key tokens signed earlier are still verified with, while they are replaced (RS256/ES256).
    pub previous_public_key_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_seconds: u64,
    /// The audience (`aud`) every token must name, as identity providers set it; none by default, and then a
    /// token that names an audience is refused.
    pub audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            previous_jwt_secret: None,
            public_key_file: None,
            previous_public_key_file: None,
            leeway_seconds: 30,
            audience: None,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("algorithm", &self.algorithm)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("previous_jwt_secret", &self.previous_jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("previous_public_key_file", &self.previous_public_key_file)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("audience", &self.audience)
            .finish()
    }
}

impl AuthConfig {
    /// The algorithm and the keys tokens are verified with (`None` while authentication is off): the secret,
    /// or the public key read from `public_key_file`, then the previous one while keys are rotated.
    pub fn verification_keys(&self) -> Result<Option<(Algorithm, Vec<DecodingKey>)>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        // A previous key of the other kind is a mistake: it would never verify anything.
        let refuse =
            |key: &str| Err(ConfigError::new(key, format!("does not go with auth.algorithm {:?}", self.algorithm)));
        let mut keys = Vec::with_capacity(2);
        let algorithm = match self.algorithm {
            JwtAlgorithm::HS256 => {
                if self.previous_public_key_file.is_some() {
                    return refuse("auth.previous_public_key_file");
                }
                keys.push(DecodingKey::from_secret(self.secret()?));
                if let Some(previous) = self.previous_jwt_secret.as_deref() {
                    keys.push(DecodingKey::from_secret(checked_secret("auth.previous_jwt_secret", Some(previous))?));
                }
                Algorithm::HS256
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.previous_jwt_secret.is_some() {
                    return refuse("auth.previous_jwt_secret");
                }
                let algorithm = if self.algorithm == JwtAlgorithm::RS256 { Algorithm::RS256 } else { Algorithm::ES256 };
                keys.push(public_decoding_key(algorithm, "auth.public_key_file", self.public_key_file.as_deref())?);
                if let Some(previous) = self.previous_public_key_file.as_deref() {
                    keys.push(public_decoding_key(algorithm, "auth.previous_public_key_file", Some(previous))?);
                }
                algorithm
            }
        };
        Ok(Some((algorithm, keys)))
    }

    /// The HS256 secret, refused when missing or too short.
    pub fn secret(&self) -> Result<&[u8], ConfigError> {
        checked_secret("auth.jwt_secret", self.jwt_secret.as_deref())
    }
}

fn checked_secret<'a>(key: &str, secret: Option<&'a str>) -> Result<&'a [u8], ConfigError> {
    let secret = secret
        .ok_or_else(|| ConfigError::new(key, "must be set while auth.enabled is true (or set auth.enabled: false)"))?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::new(key, format!("must be at least {MIN_SECRET_BYTES} bytes")));
    }
    Ok(secret.as_bytes())
}

/// The RS256 or ES256 public key in the PEM file at `path` (the setting `key`).
fn public_decoding_key(algorithm: Algorithm, key: &str, path: Option<&Path>) -> Result<DecodingKey, ConfigError> {
    let path = path.ok_or_else(|| ConfigError::new(key, "must be set for RS256 and ES256"))?;
    let pem = std::fs::read(path).map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
    let (decoded, kind) = match algorithm {
        Algorithm::RS256 => (DecodingKey::from_rsa_pem(&pem), "RSA"),
        _ => (DecodingKey::from_ec_pem(&pem), "EC"),
    };
    decoded.map_err(|e| ConfigError::new(key, format!("not an {kind} public key: {e}")))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub rabbitmq: RabbitMqConfig,
    pub auth: AuthConfig,
    /// Workers a tenant gets when CreateTenant does not say.
    pub workers: NonZeroU16,
    /// Upper bound for any tenant's workers.
    pub max_workers: NonZeroU16,
    /// Attempts after the first before a message is dead-lettered.
    pub max_retries: u32,
    /// Largest accepted request body, in bytes.
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects a payload may have (deeper ones are refused at the door).
    pub max_payload_depth: usize,
    /// How long a graceful shutdown may take before what is left is abandoned (and redelivered later).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Largest accepted body of a batch publish, in bytes.
    pub max_batch_bytes: usize,
    pub projectors: ProjectorConfig,
    pub consumer: ConsumerConfig,
    pub partitions: PartitionConfig,
    pub read: ReadConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (tests use it).
    pub port: u16,
    /// How long a client may take to send a request's headers (HTTP/1.1; also the longest wait for the next
    /// request on a kept-alive connection). A slower client is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection that moves no byte in either direction for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a client may take to send a request's body, from its first byte to its last (408 after).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most client connections open at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Most bytes of request bodies held at once, by all requests together: past it, a request whose body
    /// does not fit answers 503 (its body read and dropped), so that clients sending many large bodies at once
    /// cannot exhaust the memory.
    pub max_buffered_body_bytes: usize,
    /// What this instance does: everything, only the HTTP API, or only the consumers.
    pub role: ServerRole,
}

/// The part of the service an instance runs (`serve --role`, `server.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// The HTTP API and the consumers.
    All,
    /// The HTTP API; no consumers, no reconciler.
    Api,
    /// The reconciler and the consumers; HTTP only for the probes and `/metrics`.
    Worker,
}

impl ServerRole {
    pub fn serves_api(self) -> bool {
        self != Self::Worker
    }

    pub fn runs_consumers(self) -> bool {
        self != Self::Api
    }
}

impl std::str::FromStr for ServerRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::from(text))
            .map_err(|_| format!("`{text}`: expected all, api or worker"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    /// Create the database named in `url` when it does not exist.
    pub create_if_missing: bool,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Cancels any statement of the service that runs longer (PostgreSQL `statement_timeout`), e.g. an insert
    /// stuck behind a lock: the message is then retried. Off by default. Migrations run on a connection of
    /// their own, without it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// PostgreSQL ends a session of the service that sits this long inside a transaction without sending a
    /// statement (`idle_in_transaction_session_timeout`), and its locks go with it: an instance frozen or cut
    /// off mid-transaction would otherwise hold the event log's append lock, or the projectors' checkpoint,
    /// from every instance until TCP gives up on its connection, hours later. None of the service's
    /// transactions waits on anything but the database between two statements. `null` leaves the server's
    /// setting.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Most pool connections the workers of all tenants write with at once, shared fairly between the
    /// tenants waiting (in proportion to their workers), one tenant holding at most all but a quarter of them;
    /// the rest stay free for the API and the projectors. Unset: three quarters of `max_connections` (at
    /// least 1).
    pub write_connections: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    pub url: String,
    /// Type of the tenant queues (`classic` or `quorum`). Fixed when a queue is first declared.
    pub queue_type: QueueType,
    /// Confirm channels kept for publishing.
    pub publisher_channels: u16,
    /// Most tenant consumers (one channel each) on one connection; more tenants open more connections. At
    /// most three quarters of the broker's `channel_max` (2047 by default) are used, whatever is set here.
    pub channels_per_connection: u16,
    /// Largest AMQP frame the service asks the broker for (the broker's own limit still applies): RabbitMQ's
    /// default, 128 KiB. Keep it at least the broker's `frame_max`: RabbitMQ never splits a message's headers
    /// over frames and delivers headers as large as a producer's frame size, and a header frame larger than
    /// a connection agreed to closes that connection, with every tenant consumer on it. Each connection
    /// keeps two buffers of 32 frames (8 MiB at 128 KiB, taken as they fill). A `frame_max` in `url` takes
    /// precedence.
    pub frame_max: u32,
    /// How long a publish waits for the broker's confirm before answering 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Most bytes of clients' messages (bodies, and 4 KiB each besides) on their way to the broker from
    /// this instance, unconfirmed; further publishes wait for room, within `publish_timeout`. A message whose
    /// client hung up still goes to the broker, and still takes room until it is confirmed. One tenant's
    /// publishes take at most a quarter of it.
    pub max_publish_bytes_in_flight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Most messages a worker writes in one transaction.
    pub batch_size: u16,
    /// How long a worker waits for more messages before it writes a batch that is not full; it waits again
    /// while messages keep arriving, up to `batch_max_wait`. Zero: write what is there at once.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Longest a batch stays open, counted from when its first message came to the instance (it may have
    /// waited for a free worker already). Unset: 10 ms, or `batch_wait` if that is longer (so a configuration
    /// from before this key stays valid). Longer windows make larger, cheaper batches when messages stream in
    /// and add their length to the latency.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Option<Duration>,
    /// The reconciler compares desired and running consumers at least this often.
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Names this instance in consumer tags; defaults to `<hostname>-<pid>`.
    pub instance_id: Option<String>,
    /// Delay before the first retry of a message that failed for a passing reason; doubles per attempt.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Longest delay between two retries.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// How long this instance may be unable to reach the database before it stops its consumers of queues
    /// another instance also consumes, handing back what they hold for that one; they start again once it can.
    #[serde(with = "humantime_serde")]
    pub database_outage_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Projectors are woken by NOTIFY on append; this poll is the safety net while NOTIFY is received (a
    /// connection that died unnoticed, a read model edited by hand). While it is not, they poll every second.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Events applied per projector transaction.
    pub batch_size: u32,
    /// How long a command waits for the tenants projection to reach its event (read-your-writes).
    #[serde(with = "humantime_serde")]
    pub command_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTenantDelete {
    /// Drop the tenant's partition and its rows.
    Drop,
    /// Detach the partition and keep it as a standalone table (`messages_<id>`) for archiving.
    Detach,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartitionConfig {
    pub on_tenant_delete: OnTenantDelete,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadConfig {
    /// Most payload bytes in one page of `GET /messages`; a page that reaches it ends early, with a cursor.
    pub max_page_bytes: usize,
    /// Longest one DLQ replay call runs before it answers `complete: false`.
    #[serde(with = "humantime_serde")]
    pub replay_time_budget: Duration,
    /// Most of one tenant's message pages read from the database at once; more wait for one to finish (within
    /// `page_timeout`, then 503), holding no connection. Behind a lock on the tenant's partition, its readers hold at
    /// most this many of the pool's connections.
    pub max_concurrent_per_tenant: usize,
    /// The longest a page of `GET /messages` is waited for, its wait for a slot included; then it answers 503
    /// while its read finishes in the background, still in its slot.
    #[serde(with = "humantime_serde")]
    pub page_timeout: Duration,
}

/// The limits of every tenant that has none set of its own (`PUT /tenants/{id}/config/limits`); unset is
/// unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Messages per second a tenant may publish through the API.
    pub publish_rate: Option<i64>,
    /// Messages a quiet tenant may publish at once (the bucket size); unset: one second of `publish_rate`.
    pub publish_burst: Option<i64>,
    /// A tenant's publishes are refused while its queue holds this many ready messages or more.
    pub max_queue_depth: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// How often the depth of every tenant's queues is read from the broker (a passive declare per queue).
    #[serde(with = "humantime_serde")]
    pub queue_poll_interval: Duration,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <this token>` (it names every
    /// tenant and its counters). Unset: `/metrics` is open, like the probes.
    pub bearer_token: Option<String>,
    /// Accepted besides `bearer_token` while the token is rotated: set it to the token Prometheus still has,
    /// `bearer_token` to the new one, and remove it once Prometheus has the new one.
    pub previous_bearer_token: Option<String>,
    /// How often the read side's visibility horizon is sampled (`tenantmq_read_visibility_lag_seconds`, accurate
    /// to within this interval).
    #[serde(with = "humantime_serde")]
    pub visibility_poll_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (e.g. `http://otel-collector:4318`); spans go to `<url>/v1/traces`.
    /// None exports nothing. Plain `http://` only: the exporter has no TLS client.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of the exported spans.
    pub service_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            rabbitmq: RabbitMqConfig::default(),
            auth: AuthConfig::default(),
            workers: const { NonZeroU16::new(3).unwrap() },
            max_workers: const { NonZeroU16::new(64).unwrap() },
            max_retries: 5,
            max_payload_bytes: 1024 * 1024,
            max_payload_depth: 64,
            shutdown_timeout: Duration::from_secs(30),
            max_batch_bytes: 16 * 1024 * 1024,
            projectors: ProjectorConfig::default(),
            consumer: ConsumerConfig::default(),
            partitions: PartitionConfig::default(),
            read: ReadConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The `server` section alone, from the same layers: what `tenantmq healthcheck` needs, so that a probe
    /// works where the rest (say, a JWT secret in a file the probe is not given) is out of its sight.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Config::layers(file)?.focus("server").extract().map_err(|error| {
            let error = ConfigError::from(error);
            ConfigError { key: format!("server.{}", error.key), ..error }
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_buffered_body_bytes: 128 * 1024 * 1024,
            role: ServerRole::All,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/tenantmq".into(),
            create_if_missing: true,
            migrate_on_start: true,
            max_connections: 20,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: None,
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
            write_connections: None,
        }
    }
}

impl RabbitMqConfig {
    /// The smallest frame AMQP allows.
    const MIN_FRAME: u32 = 4096;
    const MAX_FRAME: u32 = 1024 * 1024;

    /// The stack every thread of the process needs: lapin decodes a message's headers recursively, a stack
    /// frame per level of nesting, on its connections' I/O threads, and the workers clone and drop them the
    /// same way. A frame of `frame_max` bytes nests them up to `frame_max / 5` levels deep (an array takes 5
    /// bytes). Measured on the release build: about 1.2 KiB of stack a level, so 512 bytes of stack per byte
    /// of frame leaves twice that (64 MiB at 128 KiB). Memory is only the pages a thread touches; the rest is
    /// address space.
    pub fn thread_stack_bytes(&self) -> usize {
        const STACK_PER_FRAME_BYTE: usize = 512;
        const AT_LEAST: usize = 8 * 1024 * 1024;
        let frame_max = usize::try_from(self.effective_frame_max()).unwrap_or(usize::MAX);
        frame_max.saturating_mul(STACK_PER_FRAME_BYTE).max(AT_LEAST)
    }

    /// The frame size asked for: `url`'s `frame_max` if it names one, else `frame_max`.
    pub fn effective_frame_max(&self) -> u32 {
        self.url_frame_max().unwrap_or(self.frame_max)
    }

    fn url_frame_max(&self) -> Option<u32> {
        self.url.parse::<lapin::uri::AMQPUri>().ok().and_then(|uri| uri.query.frame_max)
    }

    /// `url` with `frame_max` added to its query, unless it names one itself.
    pub fn connection_url(&self) -> String {
        if self.url_frame_max().is_some() {
            return self.url.clone();
        }
        let (address, fragment) = self.url.split_once('#').map_or((self.url.as_str(), None), |(a, f)| (a, Some(f)));
        let separator = if address.contains('?') { '&' } else { '?' };
        let fragment = fragment.map_or_else(String::new, |fragment| format!("#{fragment}"));
        format!("{address}{separator}frame_max={}{fragment}", self.frame_max)
    }
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_type: QueueType::Classic,
            publisher_channels: 4,
            channels_per_connection: 1000,
            frame_max: 128 * 1024,
            publish_timeout: Duration::from_secs(10),
            max_publish_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            batch_wait: Duration::from_millis(5),
            batch_max_wait: None,
            resync_interval: Duration::from_secs(5),
            instance_id: None,
            retry_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            database_outage_grace: Duration::from_secs(30),
        }
    }
}

/// The longest interval or timeout: what PostgreSQL takes for its timeouts (i32::MAX milliseconds, 24 days),
/// and far below where the deadlines computed from an interval could overflow.
const MAX_INTERVAL: Duration = Duration::from_millis(i32::MAX as u64);
/// The longest `consumer.instance_id`: it goes into every consumer tag, which AMQP bounds to 255 bytes along
/// with the tenant's id and two counters that grow.
const MAX_INSTANCE_ID_CHARS: usize = 100;
/// Bounds both batch waits: a batch held longer only delays its messages.
const MAX_BATCH_WAIT: Duration = Duration::from_secs(10);
/// The longest per-message expiration RabbitMQ takes.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(u32::MAX as u64);
/// Pool connections never given to the writers: the projectors' listener holds one for good, and the API and
/// the projectors need one more.
const RESERVED_CONNECTIONS: u32 = 2;
const MIN_DATABASE_CONNECTIONS: u32 = RESERVED_CONNECTIONS + 1;
/// Far above what one process can serve, and far below where counting them could overflow.
const MAX_CLIENT_CONNECTIONS: usize = 1_000_000;
/// A day: a clock further off than that is not skew, and the token library adds it to the time unchecked.
const MAX_LEEWAY_SECONDS: u64 = 86_400;

impl ConsumerConfig {
    /// `batch_max_wait`, or its default: 10 ms, or `batch_wait` if that is longer.
    pub fn batch_max_wait(&self) -> Duration {
        self.batch_max_wait.unwrap_or(self.batch_wait.max(Duration::from_millis(10)))
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| {
                    // As a configured id must be: printable ASCII, and short enough for a consumer tag.
                    h.chars().filter(char::is_ascii_graphic).take(MAX_INSTANCE_ID_CHARS / 2).collect::<String>()
                })
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "tenantmq".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(30), batch_size: 500, command_wait: Duration::from_secs(10) }
    }
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self { on_tenant_delete: OnTenantDelete::Drop }
    }
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            max_page_bytes: 4 * 1024 * 1024,
            replay_time_budget: Duration::from_secs(10),
            max_concurrent_per_tenant: 2,
            page_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            queue_poll_interval: Duration::from_secs(15),
            bearer_token: None,
            previous_bearer_token: None,
            visibility_poll_interval: Duration::from_secs(5),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "tenantmq".into() }
    }
}

/// A configuration problem, reported as one line that names the key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: `{}`: {}", self.key, self.message)
    }
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        // The path of an unknown key ends with that key.
        let key = if error.path.is_empty() { "<root>".to_owned() } else { error.path.join(".") };
        let mut message = match &error.kind {
            figment::error::Kind::UnknownField(..) => "is not a configuration key".to_owned(),
            kind => kind.to_string(),
        };
        if let Some(source) = error.metadata.as_ref() {
            message.push_str(&format!(" (from {}", source.name));
            if let Some(src) = &source.source {
                message.push_str(&format!(" {src}"));
            }
            message.push(')');
        }
        Self { key, message }
    }
}

/// Variables with the prefix (written here without it) that are not configuration: the project's tests,
/// benchmarks, scripts and client examples read them, and they may share an environment with the service.
const TOOL_VARIABLES: [&str; 5] = ["URL", "TOKEN", "BIN", "PYTHON_TOOLS", "SERVICE_PORT"];
const TOOL_PREFIXES: [&str; 2] = ["TEST_", "BENCH_"];

/// Whether a variable, its prefix removed, is one of the tools' rather than a configuration key.
fn is_tool_variable(unprefixed: &str) -> bool {
    let name = unprefixed.trim().to_ascii_uppercase();
    TOOL_VARIABLES.contains(&name.as_str()) || TOOL_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Whether a variable is one Kubernetes gives every pod for each Service of its namespace (service links, on
/// unless a pod sets `enableServiceLinks: false`): a Service named `tenantmq-api` brings
/// `TENANTMQ_API_SERVICE_HOST`, `TENANTMQ_API_PORT=tcp://…` and more, which share the configuration's prefix.
/// A configuration key's variable has `__` between its parts, which a Service's name cannot make; a bare
/// `…_PORT` counts only with a link's value, so that a mistyped `TENANTMQ_SERVER_PORT=8080` is still refused.
fn is_service_link(name: &str, value: &str) -> bool {
    let name = name.trim().to_ascii_uppercase();
    if name.contains("__") {
        return false;
    }
    let port_variable = name.rsplit_once("_PORT_").is_some_and(|(_, rest)| {
        let mut parts = rest.splitn(3, '_');
        let number = parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let protocol = parts.next().is_some_and(|p| ["TCP", "UDP", "SCTP"].contains(&p));
        number && protocol && parts.next().is_none_or(|field| ["PROTO", "PORT", "ADDR"].contains(&field))
    });
    let link_value = ["tcp://", "udp://", "sctp://"].iter().any(|scheme| value.starts_with(scheme));
    name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
        || port_variable
        || (name.ends_with("_PORT") && link_value)
}

/// The process's variables with the prefix that set no configuration: the tools' and Kubernetes' service
/// links, by name without the prefix, in lower case.
fn foreign_variables(variables: &[(String, String)], known: &BTreeSet<String>) -> BTreeSet<String> {
    variables
        .iter()
        .filter_map(|(name, value)| {
            let unprefixed = unprefixed(name)?;
            let key = unprefixed.to_ascii_lowercase().replace("__", ".");
            let foreign = !known.contains(&key) && (is_tool_variable(unprefixed) || is_service_link(name, value));
            foreign.then(|| unprefixed.trim().to_ascii_lowercase())
        })
        .collect()
}

/// `name` without the prefix, matched without regard to case as figment does; `None` without the prefix.
fn unprefixed(name: &str) -> Option<&str> {
    let name = name.trim();
    name.get(ENV_PREFIX.len()..)
        .filter(|_| name.get(..ENV_PREFIX.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(ENV_PREFIX)))
}

/// The process's environment, names and values as text.
fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(name, value)| (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned()))
        .collect()
}

/// Every key the configuration has, sections and leaves, dotted (`server`, `server.port`).
fn known_keys() -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, prefix: &str, keys: &mut BTreeSet<String>) {
        for (name, child) in value.as_object().into_iter().flatten() {
            let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            walk(child, &key, keys);
            keys.insert(key);
        }
    }
    let mut keys = BTreeSet::new();
    walk(&serde_json::to_value(Config::default()).unwrap_or_default(), "", &mut keys);
    keys
}

/// The environment variable that sets `key`.
fn variable_of(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Refuses a `TENANTMQ_…` variable that names no key: figment would ignore it and the default would be used
/// silently (`TENANTMQ_DATABASE_URL`, with one underscore, left the service on 127.0.0.1).
fn check_environment(variables: &[(String, String)], known: &BTreeSet<String>) -> Result<(), ConfigError> {
    let foreign = foreign_variables(variables, known);
    for (name, _) in variables {
        let Some(unprefixed) = unprefixed(name) else { continue };
        if foreign.contains(&unprefixed.trim().to_ascii_lowercase()) {
            continue;
        }
        let key = unprefixed.to_ascii_lowercase().replace("__", ".");
        if !known.contains(&key) {
            let hint = likely_key(&key, known)
                .map(|meant| format!("; did you mean `{}` ({meant})?", variable_of(meant)))
                .unwrap_or_default();
            return Err(ConfigError::new(name.trim(), format!("sets no configuration key{hint}")));
        }
    }
    Ok(())
}

/// The one key a mistyped one probably meant: the same words with other separators (`database_url` for
/// `database.url`), or the last part of a key without its section (`jwt_secret` for `auth.jwt_secret`).
fn likely_key<'a>(key: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    let squashed = |k: &str| k.replace(['.', '_'], "");
    let only = |mut candidates: Vec<&'a String>| (candidates.len() == 1).then(|| candidates.remove(0).as_str());
    only(known.iter().filter(|k| squashed(k) == squashed(key)).collect())
        .or_else(|| only(known.iter().filter(|k| k.rsplit_once('.').is_some_and(|(_, last)| last == key)).collect()))
}

impl Config {
    /// Loads the layers in order; `file` is the `--config` argument, which must exist when given. Keys that
    /// do not exist, in a file or as `TENANTMQ_…` variables, are refused.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        check_environment(&environment(), &known_keys())?;
        Self::from_figment(Self::layers(file)?)
    }

    /// Defaults < `config/default.yaml` < `file` < environment.
    fn layers(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default())).merge(Yaml::file(DEFAULT_CONFIG_FILE));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::new("--config", format!("no such file: {}", file.display())));
            }
            figment = figment.merge(Yaml::file_exact(file));
        }
        let foreign = foreign_variables(&environment(), &known_keys());
        let environment = Env::prefixed(ENV_PREFIX)
            .filter(move |unprefixed| !foreign.contains(&unprefixed.as_str().to_ascii_lowercase()));
        Ok(figment.merge(environment.split("__")))
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract()?;
        config.validate()?;
        Ok(config)
    }

    /// The largest body of a single message the service reads.
    pub fn largest_single_body(&self) -> usize {
        self.max_payload_bytes.saturating_add(MESSAGE_ENVELOPE_BYTES)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers > self.max_workers {
            return Err(ConfigError::new(
                "workers",
                format!("must be between 1 and max_workers ({}), got {}", self.max_workers, self.workers),
            ));
        }
        let counts = [
            ("server.max_connections", self.server.max_connections as u64),
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_payload_depth", self.max_payload_depth as u64),
            ("read.max_page_bytes", self.read.max_page_bytes as u64),
            ("read.max_concurrent_per_tenant", self.read.max_concurrent_per_tenant as u64),
            ("rabbitmq.publisher_channels", self.rabbitmq.publisher_channels.into()),
            ("rabbitmq.channels_per_connection", self.rabbitmq.channels_per_connection.into()),
            ("rabbitmq.max_publish_bytes_in_flight", self.rabbitmq.max_publish_bytes_in_flight.into()),
            ("consumer.batch_size", self.consumer.batch_size.into()),
            ("database.max_connections", self.database.max_connections.into()),
            ("projectors.batch_size", self.projectors.batch_size.into()),
        ];
        if let Some((key, _)) = counts.into_iter().find(|&(_, count)| count == 0) {
            return Err(ConfigError::new(key, "must be at least 1"));
        }
        // Each of these bounds a wait: at zero, every publish, command, connection or stop would give up at once.
        let intervals = [
            ("shutdown_timeout", self.shutdown_timeout),
            ("database.connect_timeout", self.database.connect_timeout),
            ("rabbitmq.publish_timeout", self.rabbitmq.publish_timeout),
            ("projectors.command_wait", self.projectors.command_wait),
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("consumer.resync_interval", self.consumer.resync_interval),
            ("consumer.database_outage_grace", self.consumer.database_outage_grace),
            ("read.replay_time_budget", self.read.replay_time_budget),
            ("read.page_timeout", self.read.page_timeout),
            ("projectors.poll_interval", self.projectors.poll_interval),
            ("metrics.visibility_poll_interval", self.metrics.visibility_poll_interval),
            ("metrics.queue_poll_interval", self.metrics.queue_poll_interval),
        ];
        if let Some((key, _)) = intervals.into_iter().find(|(_, interval)| interval.is_zero()) {
            return Err(ConfigError::new(key, "must be greater than zero"));
        }
        // Deadlines are computed from them, some as multiples (the retired-queue sweep comes every 120 resync
        // intervals): far beyond any use, they overflowed, and the task that computed one ended in a panic.
        if let Some((key, _)) = intervals.into_iter().find(|&(_, interval)| interval > MAX_INTERVAL) {
            return Err(ConfigError::new(key, "must be at most 24 days"));
        }
        // Zero would turn the server's timeout off: that is what `null` says.
        let optional = [
            ("database.statement_timeout", self.database.statement_timeout),
            ("database.idle_in_transaction_timeout", self.database.idle_in_transaction_timeout),
        ];
        let out_of_range = |t: Duration| t.is_zero() || t > MAX_INTERVAL;
        if let Some((key, _)) = optional.into_iter().find(|(_, timeout)| timeout.is_some_and(out_of_range)) {
            return Err(ConfigError::new(key, "must be greater than zero and at most 24 days, or null for none"));
        }
        if let Some(id) = &self.consumer.instance_id
            && (id.is_empty()
                || id.chars().count() > MAX_INSTANCE_ID_CHARS
                || !id.chars().all(|c| c.is_ascii_graphic() || c == ' '))
        {
            return Err(ConfigError::new(
                "consumer.instance_id",
                format!("must be 1 to {MAX_INSTANCE_ID_CHARS} printable ASCII characters"),
            ));
        }
        if self.max_batch_bytes < self.max_payload_bytes {
            return Err(ConfigError::new("max_batch_bytes", "must be at least max_payload_bytes"));
        }
        if self.server.max_buffered_body_bytes < self.max_batch_bytes.max(self.largest_single_body()) {
            return Err(ConfigError::new(
                "server.max_buffered_body_bytes",
                format!("must be at least max_batch_bytes, and max_payload_bytes + {MESSAGE_ENVELOPE_BYTES}"),
            ));
        }
        // Fewer leaves the instance waiting on its own pool, never ready (see RESERVED_CONNECTIONS).
        if self.database.max_connections < MIN_DATABASE_CONNECTIONS {
            return Err(ConfigError::new(
                "database.max_connections",
                format!("must be at least {MIN_DATABASE_CONNECTIONS}"),
            ));
        }
        if let Some(write) = self.database.write_connections
            && !(1..=self.database.max_connections - RESERVED_CONNECTIONS).contains(&write)
        {
            return Err(ConfigError::new(
                "database.write_connections",
                "must be between 1 and max_connections - 2 (the rest serve the API and the projectors)",
            ));
        }
        // More would not bound anything: a tenant's readers could hold the whole pool.
        if self.read.max_concurrent_per_tenant > self.database.max_connections as usize {
            return Err(ConfigError::new("read.max_concurrent_per_tenant", "must be at most database.max_connections"));
        }
        if self.server.max_connections > MAX_CLIENT_CONNECTIONS {
            return Err(ConfigError::new(
                "server.max_connections",
                format!("must be at most {MAX_CLIENT_CONNECTIONS}"),
            ));
        }
        if self.auth.audience.as_deref().is_some_and(|audience| audience.trim().is_empty()) {
            return Err(ConfigError::new("auth.audience", "must not be blank (leave it unset for none)"));
        }
        if self.auth.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(ConfigError::new("auth.leeway_seconds", format!("must be at most {MAX_LEEWAY_SECONDS}")));
        }
        let limits = &self.limits;
        Limits::parse(limits.publish_rate, limits.publish_burst, limits.max_queue_depth).map_err(|error| {
            ConfigError::new(&format!("limits.{}", error.field().unwrap_or("publish_rate")), error.to_string())
        })?;
        self.validate_addresses()?;
        self.validate_consumer_timing()?;
        self.validate_secrets()
    }

    fn validate_addresses(&self) -> Result<(), ConfigError> {
        if !(self.database.url.starts_with("postgres://") || self.database.url.starts_with("postgresql://")) {
            return Err(ConfigError::new("database.url", "must be a postgres:// URL"));
        }
        if !(self.rabbitmq.url.starts_with("amqp://") || self.rabbitmq.url.starts_with("amqps://")) {
            return Err(ConfigError::new("rabbitmq.url", "must be an amqp:// or amqps:// URL"));
        }
        // A `frame_max` in the URL wins, so it is held to the same bounds (0, "no limit", included: the
        // thread stacks are sized by it).
        let key = if self.rabbitmq.url_frame_max().is_some() { "rabbitmq.url" } else { "rabbitmq.frame_max" };
        if !(RabbitMqConfig::MIN_FRAME..=RabbitMqConfig::MAX_FRAME).contains(&self.rabbitmq.effective_frame_max()) {
            return Err(ConfigError::new(
                key,
                format!(
                    "frame_max must be between {} and {} bytes",
                    RabbitMqConfig::MIN_FRAME,
                    RabbitMqConfig::MAX_FRAME
                ),
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") && endpoint.parse::<poem::http::Uri>().is_ok())
        {
            return Err(ConfigError::new("telemetry.otlp_endpoint", "must be an http:// URL (TLS is not supported)"));
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(ConfigError::new("telemetry.service_name", "must not be empty"));
        }
        Ok(())
    }

    fn validate_consumer_timing(&self) -> Result<(), ConfigError> {
        let consumer = &self.consumer;
        if consumer.batch_wait > MAX_BATCH_WAIT {
            return Err(ConfigError::new("consumer.batch_wait", "must be at most 10s"));
        }
        if let Some(max_wait) = consumer.batch_max_wait
            && (max_wait < consumer.batch_wait || max_wait > MAX_BATCH_WAIT)
        {
            return Err(ConfigError::new(
                "consumer.batch_max_wait",
                "must be at least consumer.batch_wait and at most 10s",
            ));
        }
        if consumer.retry_delay.is_zero() || consumer.retry_max_delay < consumer.retry_delay {
            return Err(ConfigError::new(
                "consumer.retry_delay",
                "must be greater than zero and at most retry_max_delay",
            ));
        }
        // A retry waits out a per-message expiration, which RabbitMQ takes in milliseconds up to 2^32 - 1;
        // above it the broker closes the channel that published the retry, at every attempt.
        if consumer.retry_max_delay > MAX_RETRY_DELAY {
            return Err(ConfigError::new("consumer.retry_max_delay", "must be at most 49d 17h 2m 47s 295ms"));
        }
        Ok(())
    }

    fn validate_secrets(&self) -> Result<(), ConfigError> {
        self.auth.verification_keys()?;
        // The previous secret too: rotating away from the development secret keeps it valid until the end.
        let development =
            [("auth.jwt_secret", &self.auth.jwt_secret), ("auth.previous_jwt_secret", &self.auth.previous_jwt_secret)]
                .into_iter()
                .find(|(_, secret)| secret.as_deref() == Some(DEVELOPMENT_SECRET));
        if self.auth.enabled
            && let Some((key, _)) = development
            && !is_loopback(&self.server.host)
        {
            return Err(ConfigError::new(
                key,
                format!(
                    "is the development secret published in config/default.yaml, which anyone can use to mint \
                     tokens: it is allowed only while server.host is a loopback address (got {}); set your own \
                     secret to listen on other addresses",
                    self.server.host
                ),
            ));
        }
        let tokens = [
            ("metrics.bearer_token", &self.metrics.bearer_token),
            ("metrics.previous_bearer_token", &self.metrics.previous_bearer_token),
        ];
        for (key, token) in tokens {
            if token.as_ref().is_some_and(|token| token.len() < 16 || token.contains(char::is_whitespace)) {
                return Err(ConfigError::new(key, "must be at least 16 characters, without spaces"));
            }
        }
        if self.metrics.previous_bearer_token.is_some() && self.metrics.bearer_token.is_none() {
            return Err(ConfigError::new(
                "metrics.previous_bearer_token",
                "needs metrics.bearer_token: it is accepted besides it while the token is rotated",
            ));
        }
        Ok(())
    }

    /// The configuration as JSON with secrets redacted (`tenantmq config`): the JWT secret, and passwords in
    /// the connection URLs.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).unwrap_or_default();
        let secrets = [
            "/auth/jwt_secret",
            "/auth/previous_jwt_secret",
            "/metrics/bearer_token",
            "/metrics/previous_bearer_token",
        ];
        for pointer in secrets {
            if let Some(secret) = json.pointer_mut(pointer).filter(|s| !s.is_null()) {
                *secret = REDACTED.into();
            }
        }
        for pointer in ["/database/url", "/rabbitmq/url", "/telemetry/otlp_endpoint"] {
            if let Some(url) = json.pointer_mut(pointer)
                && let Some(text) = url.as_str()
            {
                *url = redact_url(text).into();
            }
        }
        json
    }

    /// The validated default and maximum pool sizes, as the domain sees them.
    pub fn tenant_policy(&self) -> Policy {
        Policy { default_workers: Workers::new(self.workers), max_workers: Workers::new(self.max_workers) }
    }

    /// What a message's body must keep to (`max_payload_bytes`, `max_payload_depth`).
    pub fn payload_limits(&self) -> PayloadLimits {
        PayloadLimits { max_bytes: self.max_payload_bytes, max_depth: self.max_payload_depth }
    }

    /// The limits of tenants without their own (validated by [`Config::load`]; unlimited if invalid).
    pub fn default_limits(&self) -> Limits {
        let limits = &self.limits;
        Limits::parse(limits.publish_rate, limits.publish_burst, limits.max_queue_depth).unwrap_or_default()
    }

    /// `database.write_connections`, or its default.
    pub fn write_connections(&self) -> u32 {
        let max = self.database.max_connections;
        // Three quarters, and never the reserved ones: a small pool keeps them free too.
        let three_quarters = u32::try_from(u64::from(max) * 3 / 4).unwrap_or(max);
        self.database.write_connections.unwrap_or(three_quarters.min(max.saturating_sub(RESERVED_CONNECTIONS)).max(1))
    }
}

const REDACTED: &str = "<redacted>";

/// `url` with the password of its user info (`scheme://user:password@host`) and any `password` query
/// parameter (libpq's `?password=`) replaced by `<redacted>`; everything else is kept, to show where it points.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={REDACTED}"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
    format!("{scheme}{authority}{tail}")
}

/// Whether `host` names only this machine (an IP loopback address or `localhost`).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted_and_the_rest_kept() {
        for (url, shown) in [
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "amqp://guest:<redacted>@127.0.0.1:5672/%2f"),
            ("postgres://app:s3cr%40t@db:5432/app", "postgres://app:<redacted>@db:5432/app"),
            ("postgres://app:p@ss@db/app", "postgres://app:<redacted>@db/app"),
            ("postgres://postgres@127.0.0.1:5432/tenantmq", "postgres://postgres@127.0.0.1:5432/tenantmq"),
            (
                "postgres://db/app?user=a&password=x&sslmode=require",
                "postgres://db/app?user=a&password=<redacted>&sslmode=require",
            ),
            ("http://collector:4318", "http://collector:4318"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn the_development_secret_is_refused_off_loopback() {
        let mut config = Config::default();
        config.auth.jwt_secret = Some(DEVELOPMENT_SECRET.into());
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            config.server.host = host.into();
            assert!(config.validate().is_ok(), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.1.2.3", "example.com"] {
            config.server.host = host.into();
            assert_eq!(config.validate().map_err(|e| e.key), Err("auth.jwt_secret".to_owned()), "{host}");
        }
        config.auth.jwt_secret = Some("a real secret of at least thirty-two bytes".into());
        assert!(config.validate().is_ok());
        // Rotating away from it keeps it valid until the rotation ends: still loopback only.
        config.auth.previous_jwt_secret = Some(DEVELOPMENT_SECRET.into());
        assert_eq!(config.validate().map_err(|e| e.key), Err("auth.previous_jwt_secret".to_owned()));
        config.server.host = "127.0.0.1".into();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn every_section_refuses_a_key_it_does_not_have() {
        let known = known_keys();
        let sections = known.iter().filter(|key| known.iter().any(|k| k.starts_with(&format!("{key}."))));
        for path in std::iter::once("").chain(sections.map(String::as_str)) {
            let key = if path.is_empty() { "no_such_key".to_owned() } else { format!("{path}.no_such_key") };
            let figment = Figment::from(Serialized::defaults(Config::default())).merge(Serialized::default(&key, 1));
            let error = Config::from_figment(figment).expect_err(&key);
            assert_eq!(error.key, key);
            assert!(error.message.starts_with("is not a configuration key"), "{error}");
        }
    }

    /// What Kubernetes sets in every pod of a namespace with a Service named `tenantmq-api` (and one named
    /// `tenantmq-metrics` with a UDP port): no key of the configuration, and no reason to stop.
    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        let variables: Vec<(String, String)> = [
            ("TENANTMQ_API_SERVICE_HOST", "10.96.0.12"),
            ("TENANTMQ_API_SERVICE_PORT", "80"),
            ("TENANTMQ_API_SERVICE_PORT_HTTP", "80"),
            ("TENANTMQ_API_PORT", "tcp://10.96.0.12:80"),
            ("TENANTMQ_API_PORT_80_TCP", "tcp://10.96.0.12:80"),
            ("TENANTMQ_API_PORT_80_TCP_PROTO", "tcp"),
            ("TENANTMQ_API_PORT_80_TCP_PORT", "80"),
            ("TENANTMQ_API_PORT_80_TCP_ADDR", "10.96.0.12"),
            ("TENANTMQ_METRICS_PORT", "udp://10.96.0.13:9125"),
            ("TENANTMQ_METRICS_PORT_9125_UDP_ADDR", "10.96.0.13"),
            ("TENANTMQ_SERVER__PORT", "8081"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .into();
        assert_eq!(check_environment(&variables, &known_keys()).map_err(|e| e.to_string()), Ok(()));
        let foreign = foreign_variables(&variables, &known_keys());
        assert!(!foreign.contains("server__port"), "a key beside the links still counts");
        assert_eq!(foreign.len(), variables.len() - 1, "{foreign:?}");
        // A key mistyped with one underscore is no link, whatever its shape.
        for (name, value) in [("TENANTMQ_SERVER_PORT", "8080"), ("TENANTMQ_DATABASE_URL", "postgres://db/tenantmq")] {
            let typo = [(name.to_owned(), value.to_owned())];
            assert!(check_environment(&typo, &known_keys()).is_err(), "{name}={value}");
        }
    }

    #[test]
    fn environment_variables_must_set_a_key_unless_they_are_the_tools() {
        let check = |name: &str| {
            check_environment(&[(name.to_owned(), "1".to_owned())], &known_keys()).map_err(|e| e.to_string())
        };
        for fine in [
            "TENANTMQ_SERVER__PORT",
            "tenantmq_server__host",
            "TENANTMQ_SERVER",
            "TENANTMQ_TEST_DATABASE_URL",
            "TENANTMQ_BENCH_AMQP",
            "TENANTMQ_URL",
            "TENANTMQ_TOKEN",
            "PATH",
        ] {
            assert_eq!(check(fine), Ok(()), "{fine}");
        }
        for (wrong, hint) in [
            ("TENANTMQ_DATABASE_URL", "did you mean `TENANTMQ_DATABASE__URL` (database.url)?"),
            ("TENANTMQ_JWT_SECRET", "did you mean `TENANTMQ_AUTH__JWT_SECRET` (auth.jwt_secret)?"),
            ("TENANTMQ_SERVER__PROT", "sets no configuration key"),
            ("TENANTMQ_SERVER____PORT", "did you mean `TENANTMQ_SERVER__PORT` (server.port)?"),
        ] {
            let error = check(wrong).expect_err(wrong);
            assert!(error.contains(&format!("`{wrong}`")) && error.ends_with(hint), "{error}");
        }
    }

    fn with_waits(wait_ms: u64, max_wait_ms: Option<u64>) -> Config {
        let mut config = Config::default();
        config.auth.jwt_secret = Some("a test secret of at least 32 bytes".into());
        config.consumer.batch_wait = Duration::from_millis(wait_ms);
        config.consumer.batch_max_wait = max_wait_ms.map(Duration::from_millis);
        config
    }

    #[test]
    fn batch_max_wait_defaults_to_10ms_or_batch_wait_if_longer() {
        assert_eq!(with_waits(5, None).consumer.batch_max_wait(), Duration::from_millis(10));
        assert_eq!(with_waits(50, None).consumer.batch_max_wait(), Duration::from_millis(50));
        assert_eq!(with_waits(5, Some(100)).consumer.batch_max_wait(), Duration::from_millis(100));
        assert_eq!(with_waits(50, None).validate().map_err(|e| e.to_string()), Ok(()), "a batch_wait above 10ms alone");
        assert_eq!(with_waits(0, Some(0)).validate().map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn batch_waits_are_bounded() {
        for (wait, max_wait, key) in [
            (50, Some(10), "consumer.batch_max_wait"),
            (5, Some(10_001), "consumer.batch_max_wait"),
            (10_001, None, "consumer.batch_wait"),
        ] {
            let error = with_waits(wait, max_wait).validate().expect_err("invalid");
            assert_eq!(error.key, key, "{wait} {max_wait:?}");
        }
    }

    #[test]
    fn writers_get_three_quarters_of_the_pool_and_never_the_last_two_connections() {
        let mut config = Config::default();
        // The largest overflowed three times over (a panic at start in a debug build, a quarter in release).
        for (max, writers) in [(3, 1), (4, 2), (5, 3), (8, 6), (20, 15), (u32::MAX, 3_221_225_471)] {
            config.database.max_connections = max;
            assert_eq!(config.write_connections(), writers, "{max}");
        }
    }

    #[test]
    fn sizes_and_durations_are_bounded_where_a_dependency_would_fail_on_them() {
        type Change = fn(&mut Config);
        let cases: [(Change, Option<&str>); 31] = [
            (|c| c.shutdown_timeout = Duration::ZERO, Some("shutdown_timeout")),
            // Past 255 bytes a consumer tag's length wrapped in its frame, and the broker closed the connection.
            (|c| c.consumer.instance_id = Some("i".repeat(250)), Some("consumer.instance_id")),
            (|c| c.consumer.instance_id = Some("pod\n1".into()), Some("consumer.instance_id")),
            (|c| c.consumer.instance_id = Some("worker-7 (eu-west-1)".into()), None),
            // 50 billion years: 120 of them overflowed, and the reconciler ended in a panic at its first pass.
            (
                |c| c.consumer.resync_interval = Duration::from_secs(50_000_000_000 * 31_557_600),
                Some("consumer.resync_interval"),
            ),
            (|c| c.consumer.resync_interval = Duration::from_secs(25 * 86_400), Some("consumer.resync_interval")),
            (|c| c.consumer.resync_interval = Duration::from_secs(24 * 86_400), None),
            (|c| c.database.connect_timeout = Duration::ZERO, Some("database.connect_timeout")),
            (|c| c.rabbitmq.publish_timeout = Duration::ZERO, Some("rabbitmq.publish_timeout")),
            (|c| c.projectors.command_wait = Duration::ZERO, Some("projectors.command_wait")),
            (|c| c.database.max_connections = 2, Some("database.max_connections")),
            (|c| c.database.max_connections = 3, None),
            (|c| c.read.max_concurrent_per_tenant = 0, Some("read.max_concurrent_per_tenant")),
            (|c| c.read.max_concurrent_per_tenant = 11, Some("read.max_concurrent_per_tenant")),
            (|c| c.read.max_concurrent_per_tenant = 10, None),
            (|c| c.read.page_timeout = Duration::ZERO, Some("read.page_timeout")),
            (|c| c.database.write_connections = Some(9), Some("database.write_connections")),
            (|c| c.database.write_connections = Some(8), None),
            (|c| c.server.max_connections = usize::MAX, Some("server.max_connections")),
            (|c| c.auth.leeway_seconds = 9_999_999_999, Some("auth.leeway_seconds")),
            (|c| c.auth.leeway_seconds = 86_400, None),
            (|c| c.auth.audience = Some(" ".into()), Some("auth.audience")),
            (|c| c.auth.audience = Some("tenantmq".into()), None),
            (|c| c.consumer.retry_max_delay = Duration::from_secs(60 * 86_400), Some("consumer.retry_max_delay")),
            (|c| c.consumer.retry_max_delay = Duration::from_millis(u32::MAX.into()), None),
            (|c| c.server.max_connections = 1_000_000, None),
            (
                |c| c.database.idle_in_transaction_timeout = Some(Duration::ZERO),
                Some("database.idle_in_transaction_timeout"),
            ),
            (
                |c| c.database.idle_in_transaction_timeout = Some(Duration::from_secs(25 * 86_400)),
                Some("database.idle_in_transaction_timeout"),
            ),
            (|c| c.database.idle_in_transaction_timeout = None, None),
            (|c| c.database.statement_timeout = Some(Duration::ZERO), Some("database.statement_timeout")),
            (
                |c| c.metrics.previous_bearer_token = Some("the-old-scrape-token".into()),
                Some("metrics.previous_bearer_token"),
            ),
        ];
        for (index, (change, refused)) in cases.into_iter().enumerate() {
            let mut config = with_waits(5, None);
            config.database.max_connections = 10;
            change(&mut config);
            assert_eq!(config.validate().map_err(|e| e.key).err().as_deref(), refused, "case {index}");
        }
    }

    #[test]
    fn the_frame_size_goes_into_the_broker_url_unless_the_url_names_one() {
        let mut rabbitmq = RabbitMqConfig { url: "amqp://guest:guest@rabbit:5672/%2f".into(), ..Default::default() };
        assert_eq!(rabbitmq.connection_url(), "amqp://guest:guest@rabbit:5672/%2f?frame_max=131072");
        rabbitmq.url.push_str("?heartbeat=30");
        assert_eq!(rabbitmq.connection_url(), "amqp://guest:guest@rabbit:5672/%2f?heartbeat=30&frame_max=131072");
        rabbitmq.url = "amqps://rabbit/vhost?frame_max=131072&heartbeat=30".into();
        assert_eq!(rabbitmq.connection_url(), rabbitmq.url);
        rabbitmq.url = "amqp://rabbit/vhost?heartbeat=30#main".into();
        assert_eq!(rabbitmq.connection_url(), "amqp://rabbit/vhost?heartbeat=30&frame_max=131072#main");
        rabbitmq.url = "amqp://rabbit/vhost?max_frame_max=1".into();
        assert_eq!(rabbitmq.connection_url(), "amqp://rabbit/vhost?max_frame_max=1&frame_max=131072");

        rabbitmq.url = "amqp://rabbit/%2f".into();
        assert_eq!(rabbitmq.thread_stack_bytes(), 64 * 1024 * 1024);
        rabbitmq.url = "amqp://rabbit/%2f?frame_max=1048576".into();
        assert_eq!(rabbitmq.thread_stack_bytes(), 512 * 1024 * 1024, "the URL's frame size wins");
        rabbitmq.url = "amqp://rabbit/%2f?frame_max=4096".into();
        assert_eq!(rabbitmq.thread_stack_bytes(), 8 * 1024 * 1024, "never below 8 MiB");

        let mut config = with_waits(5, None);
        for url_frame_max in [0, 4095, 1024 * 1024 + 1] {
            config.rabbitmq.url = format!("amqp://rabbit/%2f?frame_max={url_frame_max}");
            let refused = config.validate().map_err(|e| e.key).err();
            assert_eq!(refused.as_deref(), Some("rabbitmq.url"), "{url_frame_max}");
        }
        config.rabbitmq.url = "amqp://rabbit/%2f?frame_max=65536".into();
        assert!(config.validate().is_ok());

        let mut config = with_waits(5, None);
        for (frame_max, valid) in [(4095, false), (4096, true), (1024 * 1024, true), (1024 * 1024 + 1, false)] {
            config.rabbitmq.frame_max = frame_max;
            let validated = config.validate();
            assert_eq!(validated.is_ok(), valid, "{frame_max}");
            if let Err(error) = validated {
                assert_eq!(error.key, "rabbitmq.frame_max");
            }
        }
    }
}
