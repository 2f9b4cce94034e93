//! The real `tenantmq` binary as child processes, for tests of signals, crashes and several instances.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use tenantmq::config::Config;

use crate::helpers::eventually;

/// A `tenantmq serve` child process.
pub struct Instance {
    pub child: Child,
    pub base_url: String,
}

/// A test that fails before it stops its instances leaves none running.
impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Instance {
    /// Creates a tenant through this instance (`body` is the `POST /tenants` body); returns its id.
    pub async fn create_tenant(&self, token: &str, body: &serde_json::Value) -> String {
        let client = tenantmq_testkit::bearer_client(token).expect("client");
        let created = tenantmq_testkit::create_tenant(&client, &self.base_url, body).await.expect("tenant created");
        created["id"].as_str().expect("id").to_owned()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// How to launch an instance beyond the test configuration.
#[derive(Default)]
pub struct Launch {
    /// More `TENANTMQ_…` variables (they win over the configuration's).
    pub env: Vec<(&'static str, String)>,
    /// Starts the binary with this soft limit of open files, as a default shell would.
    pub soft_open_files: Option<u64>,
    /// Where its log (stderr) goes; discarded when `None`.
    pub log: Option<std::fs::File>,
    /// `serve --role` (`all` when `None`).
    pub role: Option<&'static str>,
}

/// An instance's log file, removed when dropped.
pub struct Log(std::path::PathBuf);

impl Log {
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.0).expect("log readable")
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts an instance whose log (stderr) goes to a file of the test's own.
pub async fn start_logged(config: &Config) -> (Instance, Log) {
    start_logged_with(config, Launch::default()).await
}

/// [`start_with`], the log going to a file of the test's own.
pub async fn start_logged_with(config: &Config, launch: Launch) -> (Instance, Log) {
    let path = std::env::temp_dir().join(format!("tenantmq-log-{}.txt", uuid::Uuid::new_v4()));
    let file = std::fs::File::create(&path).expect("log file");
    (start_with(config, Launch { log: Some(file), ..launch }).await, Log(path))
}

/// An admin token for an instance of `config`.
pub fn admin_token(config: &Config) -> String {
    tenantmq_testkit::token(config, tenantmq::auth::Role::Admin).expect("token minted")
}

pub async fn start(config: &Config) -> Instance {
    start_with(config, Launch::default()).await
}

pub async fn start_with(config: &Config, launch: Launch) -> Instance {
    let port = free_port();
    let binary = env!("CARGO_BIN_EXE_tenantmq");
    let mut serve = vec!["serve"];
    serve.extend(launch.role.map(|role| ["--role", role]).iter().flatten());
    let mut command = match launch.soft_open_files {
        Some(limit) => {
            let mut shell = Command::new("bash");
            shell.args(["-c", r#"ulimit -Sn "$1" && shift && exec "$0" "$@""#, binary, &limit.to_string()]);
            shell.args(serve);
            shell
        }
        None => {
            let mut direct = Command::new(binary);
            direct.args(serve);
            direct
        }
    };
    let log = launch.log.map_or_else(Stdio::null, Stdio::from);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).stdout(Stdio::null()).stderr(log);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTMQ_") || k == "RUST_MIN_STACK") {
        command.env_remove(key);
    }
    command
        .env("TENANTMQ_SERVER__HOST", "127.0.0.1")
        .env("TENANTMQ_SERVER__PORT", port.to_string())
        .env("TENANTMQ_DATABASE__URL", &config.database.url)
        .env("TENANTMQ_RABBITMQ__URL", &config.rabbitmq.url)
        .env(
            "TENANTMQ_RABBITMQ__QUEUE_TYPE",
            serde_json::to_value(config.rabbitmq.queue_type).expect("queue type").as_str().expect("a name"),
        )
        .env("TENANTMQ_AUTH__JWT_SECRET", config.auth.jwt_secret.as_deref().expect("secret"))
        .env("TENANTMQ_CONSUMER__BATCH_SIZE", "10")
        .env("TENANTMQ_SHUTDOWN_TIMEOUT", "20s");
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        command.env("TENANTMQ_TELEMETRY__OTLP_ENDPOINT", endpoint);
    }
    command.envs(launch.env);
    let child = command.spawn().expect("tenantmq serve starts");
    let base_url = format!("http://127.0.0.1:{port}");
    let probe = reqwest::Client::new();
    eventually(Duration::from_secs(30), "the binary to be ready", || {
        let request = probe.get(format!("{base_url}/readyz"));
        async move { request.send().await.ok().filter(|r| r.status() == StatusCode::OK).map(|_| ()) }
    })
    .await;
    Instance { child, base_url }
}

impl Instance {
    /// CPU time (user + system) the process has used so far, from `/proc`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("process stat");
        // Fields after the command name (which may hold spaces) start after its closing parenthesis.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
    }

    /// Open file descriptors of the process.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).expect("fd listing").count()
    }
}

fn clock_ticks_per_second() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().expect("getconf runs");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("CLK_TCK")
}

/// Sends `signal` (`-TERM`, `-KILL`) and waits for the exit status.
pub async fn signal(instance: Instance, signal: &str) -> std::process::ExitStatus {
    signal_logged(instance, signal, None).await
}

/// [`signal`], with the instance's log in the failure when it does not exit.
pub async fn signal_logged(mut instance: Instance, signal: &str, log: Option<&Log>) -> std::process::ExitStatus {
    let pid = instance.child.id().to_string();
    let killed = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
    assert!(killed.success());
    let exited = tenantmq_testkit::eventually(Duration::from_secs(30), "the binary to exit", || {
        let status = instance.child.try_wait().expect("wait");
        async move { status }
    })
    .await;
    exited.unwrap_or_else(|error| panic!("{error}; its log:\n{}", log.map_or_else(String::new, Log::read)))
}

/// Publishes `batches` batches of 1000 messages to `tenant` through the instances' batch API, round-robin.
pub async fn publish_batches(instances: &[&Instance], token: &str, tenant: &str, batches: usize) {
    let client = reqwest::Client::new();
    for batch in 0..batches {
        let messages: Vec<serde_json::Value> =
            (0..1000).map(|i| serde_json::json!({ "payload": { "batch": batch, "i": i } })).collect();
        let response = client
            .post(format!("{}/tenants/{tenant}/messages/batch", instances[batch % instances.len()].base_url))
            .bearer_auth(token)
            .json(&serde_json::json!({ "messages": messages }))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn an_instance_a_test_drops_without_stopping_it_is_killed() {
    let config = crate::helpers::test_config();
    let database = crate::helpers::create_database(&config).await;
    let instance = start(&config).await;
    let pid = instance.child.id();
    drop(instance);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still runs");
    crate::helpers::remove_database(database).await;
}
