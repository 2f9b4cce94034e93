//! Configuration layering and errors, through the real binary as an operator runs it.

use std::{path::PathBuf, process::Output};

use serde_json::Value;

const SEED: &str = "rabbitmq:\n  url: amqp://user:pass@localhost:5672/\ndatabase:\n  url: postgres://user:pass@localhost:5432/app\nworkers: 3  # default workers for a new tenant\n";

fn temp_file(contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tenantmq-config-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).expect("temp config written");
    path
}

pub(crate) fn tenantmq(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tenantmq"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTMQ_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied()).output().expect("tenantmq runs")
}

fn effective_config(args: &[&str], env: &[(&str, &str)]) -> Value {
    let output = tenantmq(args, env);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("config JSON")
}

#[test]
fn the_seed_yaml_loads_unchanged() {
    let seed = temp_file(SEED);
    let config = effective_config(&["--config", seed.to_str().expect("utf-8 path"), "config"], &[]);
    // Shown with the passwords redacted.
    assert_eq!(config["rabbitmq"]["url"], "amqp://user:<redacted>@localhost:5672/");
    assert_eq!(config["database"]["url"], "postgres://user:<redacted>@localhost:5432/app");
    assert_eq!(config["workers"], 3);
    assert_eq!(config["server"]["port"], 8080, "defaults fill what the file leaves out");
}

#[test]
fn environment_beats_the_file_which_beats_the_defaults() {
    let file = temp_file("workers: 5\nserver:\n  port: 7000\n  host: 127.0.0.1\nshutdown_timeout: 45s\n");
    let config = effective_config(
        &["--config", file.to_str().expect("utf-8 path"), "config"],
        &[("TENANTMQ_SERVER__PORT", "9000"), ("TENANTMQ_DATABASE__URL", "postgres://x@db:5432/y")],
    );
    assert_eq!(config["server"]["port"], 9000);
    assert_eq!(config["server"]["host"], "127.0.0.1");
    assert_eq!(config["workers"], 5);
    assert_eq!(config["shutdown_timeout"], "45s");
    assert_eq!(config["database"]["url"], "postgres://x@db:5432/y");
    assert_eq!(config["max_workers"], 64);
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_key() {
    let bad_file = temp_file("workers: [1, 2\n");
    let bad_file = bad_file.to_str().expect("utf-8 path").to_owned();
    let zero = temp_file("workers: 0\n");
    let zero = zero.to_str().expect("utf-8 path").to_owned();
    let typo = temp_file("server:\n  prot: 9000\n");
    let typo = typo.to_str().expect("utf-8 path").to_owned();
    let stray = temp_file("jwt_secret: a-secret-written-at-the-wrong-level-0123\n");
    let stray = stray.to_str().expect("utf-8 path").to_owned();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["serve"], vec![("TENANTMQ_SERVER__PORT", "abc")], "server.port"),
        (vec!["serve"], vec![("TENANTMQ_SERVER__PORT", "70000")], "server.port"),
        (vec!["serve"], vec![("TENANTMQ_WORKERS", "100")], "workers"),
        (vec!["serve"], vec![("TENANTMQ_MAX_WORKERS", "-1")], "max_workers"),
        (vec!["serve"], vec![("TENANTMQ_SHUTDOWN_TIMEOUT", "soon")], "shutdown_timeout"),
        (vec!["serve"], vec![("TENANTMQ_DATABASE__URL", "mysql://x")], "database.url"),
        (vec!["serve"], vec![("TENANTMQ_PARTITIONS__ON_TENANT_DELETE", "shred")], "partitions.on_tenant_delete"),
        (
            vec!["serve"],
            vec![("TENANTMQ_TELEMETRY__OTLP_ENDPOINT", "https://collector:4318")],
            "telemetry.otlp_endpoint",
        ),
        (vec!["serve"], vec![("TENANTMQ_TELEMETRY__SERVICE_NAME", " ")], "telemetry.service_name"),
        (vec!["serve"], vec![("TENANTMQ_CONSUMER__BATCH_MAX_WAIT", "1ms")], "consumer.batch_max_wait"),
        (vec!["serve"], vec![("TENANTMQ_CONSUMER__BATCH_WAIT", "1h")], "consumer.batch_wait"),
        (vec!["serve"], vec![("TENANTMQ_SERVER__HOST", "0.0.0.0")], "auth.jwt_secret"),
        (vec!["serve"], vec![("TENANTMQ_SERVER__MAX_CONNECTIONS", "0")], "server.max_connections"),
        (vec!["serve"], vec![("TENANTMQ_METRICS__BEARER_TOKEN", "short")], "metrics.bearer_token"),
        (vec!["--config", &zero, "serve"], vec![], "workers"),
        // Keys that do not exist are refused, not ignored: the defaults would be used without a word.
        (vec!["serve"], vec![("TENANTMQ_DATABASE_URL", "postgres://x@db:5432/y")], "TENANTMQ_DATABASE_URL"),
        (vec!["serve"], vec![("TENANTMQ_JWT_SECRET", "a-secret-of-at-least-32-bytes-0123456")], "TENANTMQ_JWT_SECRET"),
        (vec!["config"], vec![("TENANTMQ_SERVER__PROT", "9000")], "TENANTMQ_SERVER__PROT"),
        (vec!["--config", &typo, "serve"], vec![], "server.prot"),
        (vec!["--config", &stray, "config"], vec![], "jwt_secret"),
        (vec!["--config", "/no/such/file.yaml", "serve"], vec![], "--config"),
        (vec!["--config", &bad_file, "serve"], vec![], ""),
    ];
    for (args, env, key) in cases {
        let output = tenantmq(&args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(&format!("`{key}")), "names `{key}`: {stderr}");
    }
}

#[test]
fn the_development_secret_keeps_the_service_on_loopback_and_secrets_stay_out_of_the_config_output() {
    let config = effective_config(&["config"], &[]);
    assert_eq!(config["server"]["host"], "127.0.0.1", "config/default.yaml carries the development secret");
    assert_eq!(config["auth"]["jwt_secret"], "<redacted>");
    let secret = "a-production-secret-of-enough-bytes-1234";
    let open = effective_config(
        &["config"],
        &[
            ("TENANTMQ_AUTH__JWT_SECRET", secret),
            ("TENANTMQ_SERVER__HOST", "0.0.0.0"),
            ("TENANTMQ_DATABASE__URL", "postgres://app:db-password@db:5432/app?password=again"),
            ("TENANTMQ_RABBITMQ__URL", "amqps://app:broker-password@mq:5671/%2f"),
            ("TENANTMQ_METRICS__BEARER_TOKEN", "scrape-token-0123456789"),
            ("TENANTMQ_AUTH__PREVIOUS_JWT_SECRET", "the-previous-secret-being-rotated-out"),
        ],
    );
    assert_eq!(open["server"]["host"], "0.0.0.0", "a secret of one's own may listen anywhere");
    let shown = open.to_string();
    let previous = "the-previous-secret-being-rotated-out";
    for secret in [secret, "db-password", "again", "broker-password", "scrape-token-0123456789", previous] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert_eq!(open["database"]["url"], "postgres://app:<redacted>@db:5432/app?password=<redacted>");
}

#[tokio::test]
async fn migrate_creates_the_database_and_goes_down_only_when_told_it_drops_data() {
    // `migrate` creates the database itself.
    let database = crate::helpers::adopt_database(&crate::helpers::test_config());
    let url = database.url();
    let run = |action: &str| {
        let args: Vec<&str> = ["migrate"].into_iter().chain(action.split(' ')).collect();
        let output = tenantmq(&args, &[("TENANTMQ_DATABASE__URL", url.as_str())]);
        assert!(output.status.success(), "migrate {action}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let up = run("up");
    assert!(up.lines().all(|l| l.starts_with("applied ")) && up.lines().count() >= 2, "{up}");
    // Not without saying so: it drops what the migration added.
    let refused = tenantmq(&["migrate", "down"], &[("TENANTMQ_DATABASE__URL", url.as_str())]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--confirm-data-loss"));
    assert_eq!(run("status"), up, "nothing rolled back");
    let down = run("down --confirm-data-loss");
    assert_eq!(down.lines().filter(|l| l.starts_with("pending ")).count(), 1, "one step rolled back: {down}");
    assert_eq!(run("status"), down);
    assert_eq!(run("up"), up);
    crate::helpers::remove_database(database).await;
}

#[tokio::test]
async fn healthcheck_exits_0_while_the_service_is_ready_and_1_when_nothing_answers() {
    let app = crate::helpers::TestApp::spawn().await;
    let port = app.base_url.rsplit_once(':').expect("host:port").1.to_owned();
    // The probe reads only `server.*`: a service configured by a file the probe is not given (here the rest
    // is not even valid) is still probed.
    let elsewhere = [
        ("TENANTMQ_AUTH__JWT_SECRET", "short"),
        ("TENANTMQ_DATABASE__URL", "mysql://not-what-the-service-uses"),
        ("TENANTMQ_SERVER__HOST", "0.0.0.0"),
    ];
    let probe = move |port: String| {
        tokio::task::spawn_blocking(move || {
            let mut env = vec![("TENANTMQ_SERVER__PORT", port.as_str())];
            env.extend(elsewhere);
            tenantmq(&["healthcheck", "--path", "/healthz"], &env)
        })
    };
    let output = probe(port).await.expect("probe ran");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    app.stop().await;

    // Port 1: a port handed out and given back could be taken meanwhile by a test running beside this one.
    let closed = 1;
    let output = probe(closed.to_string()).await.expect("probe ran");
    assert_eq!(output.status.code(), Some(1), "nothing listens on {closed}");
    let output = tenantmq(&["healthcheck"], &[("TENANTMQ_SERVER__PORT", "http")]);
    assert_eq!(output.status.code(), Some(2), "a bad server setting is still a configuration error");
}

/// The probe asks the address the service binds, IPv6 loopback written either way included (in brackets, it
/// must be quoted in the environment, or it reads as a list).
#[tokio::test]
async fn healthcheck_finds_a_service_on_ipv6_loopback() {
    for (host, in_environment) in [("[::1]", "\"[::1]\""), ("::1", "::1")] {
        let mut config = crate::helpers::test_config();
        config.server.host = host.into();
        let app = crate::helpers::TestApp::spawn_with(config).await;
        let port = app.base_url.rsplit_once(':').expect("host:port").1.to_owned();
        let output = tokio::task::spawn_blocking(move || {
            let env = [("TENANTMQ_SERVER__PORT", port.as_str()), ("TENANTMQ_SERVER__HOST", in_environment)];
            tenantmq(&["healthcheck", "--path", "/healthz"], &env)
        })
        .await
        .expect("probe ran");
        assert!(output.status.success(), "{host}: {}", String::from_utf8_lossy(&output.stderr));
        app.stop().await;
    }
}

/// Every leaf key of `tenantmq config` (dotted), in order.
fn config_keys(value: &Value, prefix: &str, keys: &mut Vec<String>) {
    match value.as_object() {
        Some(object) => {
            for (key, child) in object {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                config_keys(child, &path, keys);
            }
        }
        None => keys.push(prefix.to_owned()),
    }
}

#[test]
fn every_configuration_key_is_documented_in_operations_md() {
    let config = effective_config(&["config"], &[]);
    let mut keys = Vec::new();
    config_keys(&config, "", &mut keys);
    assert!(keys.len() > 30 && keys.iter().any(|k| k == "metrics.queue_poll_interval"), "{keys:?}");
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).expect("guide");
    let undocumented: Vec<&String> = keys.iter().filter(|k| !guide.contains(&format!("| `{k}` |"))).collect();
    assert!(undocumented.is_empty(), "add these keys to the table in docs/operations.md: {undocumented:?}");
}

/// config/default.yaml shows each setting commented out under its section: uncommented, every one of them,
/// it must still be one valid configuration, with each section once (a second `database:` further down would
/// replace the first as a whole, and with it `database.url`).
#[test]
fn default_yaml_with_every_commented_setting_uncommented_loads() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.yaml")).expect("file");
    let uncommented: String = shipped
        .lines()
        .map(|line| {
            let (indent, rest) = line.split_at(line.len() - line.trim_start().len());
            let setting = rest.strip_prefix('#').map(|r| r.strip_prefix(' ').unwrap_or(r)).filter(|r| {
                let key = r.trim_start().split(':').next().unwrap_or_default();
                r.contains(':') && !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            format!("{indent}{}\n", setting.unwrap_or(rest))
        })
        .collect();
    let keys: Vec<&str> = uncommented
        .lines()
        .filter(|line| !line.starts_with([' ', '#']))
        .filter_map(|line| line.split_once(':').map(|(key, _)| key))
        .collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "a top-level key twice in {keys:?}");
    let file = temp_file(&uncommented);
    let config = effective_config(&["--config", file.to_str().expect("utf-8 path"), "config"], &[]);
    assert_eq!(config["database"]["statement_timeout"], "30s", "the commented settings were read");
    std::fs::remove_file(file).expect("removed");
}
