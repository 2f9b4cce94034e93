//! The `tenantmq` binary: parses the command line and hands over to the library.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tenantmq::{
    Application,
    auth::{self, Role},
    config::{Config, ServerConfig, ServerRole},
    domain::{
        audit::{ChainCheck, ChainedEvent, Expected, Intact, RecordedHead},
        tenant::TenantId,
    },
    projectors,
    store::{
        audit::{self, ChainReader, Verdict},
        database::{self, MigrationDirection},
    },
    telemetry::{self, Telemetry},
};

#[derive(Debug, Parser)]
#[command(name = "tenantmq", version, about = "Event-sourced multi-tenant messaging on RabbitMQ and PostgreSQL")]
struct Cli {
    /// A YAML file layered over config/default.yaml (environment variables TENANTMQ_… still win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// What this instance runs: `all` (the default), `api` (the HTTP API, no consumers) or `worker` (the
        /// consumers; HTTP only for /healthz, /readyz and /metrics). Wins over `server.role`.
        #[arg(long, value_name = "all|api|worker")]
        role: Option<ServerRole>,
    },
    /// Apply, roll back or list schema migrations.
    Migrate {
        #[arg(value_enum, default_value = "up")]
        action: MigrateAction,
        /// `down` only: roll back although it drops what the migration added (tables, columns, data), for
        /// development databases, with every instance stopped.
        #[arg(long)]
        confirm_data_loss: bool,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print the effective configuration (all layers merged) as JSON, secrets redacted.
    Config,
    /// Mint a JWT with the configured HS256 secret (for development and operations).
    Token {
        /// An admin token (every endpoint).
        #[arg(long, conflicts_with_all = ["tenant", "auditor"], required_unless_present_any = ["tenant", "auditor"])]
        admin: bool,
        /// An auditor token: every tenant's record (tenants, events, states, exports, audit), read only.
        #[arg(long, conflicts_with = "tenant")]
        auditor: bool,
        /// A token for this tenant only.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<uuid::Uuid>,
        /// The token's subject (recorded as the actor of the commands it issues).
        #[arg(long, default_value = "tenantmq-cli")]
        sub: String,
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Rebuild the read models from the event log.
    Replay {
        /// Only compare: rebuild in a transaction that is rolled back, print where the live read models differ
        /// from the log, exit 1 if they do. The live data is left as it is.
        #[arg(long)]
        check: bool,
    },
    /// Publish a body as it is straight to a tenant's queue over AMQP, as any producer may (no JSON check:
    /// a body that is not JSON shows the dead-letter queue at work). Prints the message id.
    Publish {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: uuid::Uuid,
        /// The message body, sent byte for byte.
        body: String,
    },
    /// Check the event log's hash chain (docs/audit.md): every stream, one tenant's, or an export file. Exits 1
    /// when it is not intact.
    Verify {
        /// The tenant whose stream to check; with `--file`, the tenant the export must be of.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<uuid::Uuid>,
        /// An export (`tenantmq export`) to check offline: no database, no configuration.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// With `--file`: the stream's head as recorded at an earlier check. The export must still hold that
        /// version with that hash, or the stream was rewritten or cut back since.
        #[arg(long, value_name = "VERSION:HASH", requires = "file")]
        expect_head: Option<RecordedHead>,
    },
    /// Write a tenant's events with their hashes as JSON Lines, one event a line (check it with `verify --file`).
    Export {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: uuid::Uuid,
        /// Where to write (default: standard output).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Exit 0 if the service on this host answers 200 on a probe (the container healthcheck: no curl needed).
    /// Reads only the `server` settings, so it needs neither the secrets nor the rest of the configuration.
    Healthcheck {
        /// The path to ask, on `server.port`.
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MigrateAction {
    Up,
    /// Roll back the newest migration.
    Down,
    Status,
}

/// Exit code for configuration errors, as for usage errors.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        println!("{}", tenantmq::api::document::document());
        return ExitCode::SUCCESS;
    }
    if let Command::Verify { file: Some(file), tenant, expect_head } = &cli.command {
        return verify_file(file, Expected { stream_id: *tenant, head: *expect_head });
    }
    if let Command::Healthcheck { path } = &cli.command {
        return healthcheck(cli.config.as_deref(), path);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tenantmq: {error}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    match without_runtime(&cli.command, &config) {
        Some(exit) => exit,
        None => {
            size_thread_stacks(&config);
            with_runtime(cli.command, config)
        }
    }
}

/// Gives every thread the process starts a stack for the deepest headers a message can bring
/// ([`tenantmq::config::RabbitMqConfig::thread_stack_bytes`]): with the default 2 MiB, one message whose
/// headers nested 2,000 levels deep overflowed lapin's I/O thread and aborted the process, again at each
/// redelivery. lapin starts its threads itself, so the size goes through `RUST_MIN_STACK`, which the standard
/// library reads when the first thread starts; tokio's threads take it too. A `RUST_MIN_STACK` set by the
/// operator is kept.
fn size_thread_stacks(config: &Config) {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        let bytes = config.rabbitmq.thread_stack_bytes().to_string();
        // SAFETY: no other thread runs yet (the async runtime starts after this), so none reads the
        // environment meanwhile.
        unsafe { std::env::set_var("RUST_MIN_STACK", bytes) };
    }
}

/// The subcommands that need neither the database nor the broker: `None` for the others.
fn without_runtime(command: &Command, config: &Config) -> Option<ExitCode> {
    let (printed, failure) = match command {
        Command::Config => {
            (serde_json::to_string_pretty(&config.to_redacted_json()).map_err(|e| e.to_string()), ExitCode::FAILURE)
        }
        Command::Token { admin: _, auditor, tenant, sub, ttl } => {
            let role = match tenant {
                Some(tenant) => Role::Tenant(TenantId::from_uuid(*tenant)),
                None if *auditor => Role::Auditor,
                None => Role::Admin,
            };
            (auth::mint(&config.auth, sub, role, *ttl).map_err(|e| e.to_string()), ExitCode::from(CONFIG_ERROR))
        }
        _ => return None,
    };
    Some(match printed {
        Ok(text) if text.is_empty() => ExitCode::SUCCESS,
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tenantmq: {error}");
            failure
        }
    })
}

/// The subcommands that run on the async runtime, with logging and tracing set up.
fn with_runtime(command: Command, config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tenantmq: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let traces = match Telemetry::new(&config.telemetry, runtime.handle()) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("tenantmq: {error}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    telemetry::init(&config.log, &traces);
    let exit = match runtime.block_on(run(command, config)) {
        Ok(exit) => exit,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("tenantmq: {error:#}");
            ExitCode::FAILURE
        }
    };
    // Here, out of `block_on` with the runtime still up: the last exports run on its workers.
    traces.shutdown();
    exit
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { role } => {
            let mut config = config;
            config.server.role = role.unwrap_or(config.server.role);
            serve(config).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Migrate { action, confirm_data_loss } => {
            migrate(config, action, confirm_data_loss).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Replay { check: true } => {
            let db = database::connect(&config.database).await.context("connecting to the database")?;
            let differences = projectors::check::check_all(&db, config.projectors.batch_size).await?;
            for difference in &differences {
                println!("{difference}");
            }
            if differences.is_empty() {
                println!("read models: as the event log makes them");
                return Ok(ExitCode::SUCCESS);
            }
            println!("read models: {} differences from the event log", differences.len());
            Ok(ExitCode::FAILURE)
        }
        Command::Replay { check: false } => {
            let db = database::connect(&config.database).await.context("connecting to the database")?;
            for (projector, position) in projectors::replay_all(&db, config.projectors.batch_size).await? {
                println!("{projector}: rebuilt up to position {position}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { tenant, body } => {
            let tenant = TenantId::from_uuid(tenant);
            let id = tenantmq::broker::publish::publish_raw(&config.rabbitmq.connection_url(), tenant, body.as_bytes())
                .await
                .with_context(|| format!("publishing to {}", tenant.queue_name()))?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { tenant, .. } => verify_database(&config, tenant).await,
        Command::Export { tenant, output } => {
            export(&config, tenant, output.as_deref()).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Openapi | Command::Config | Command::Token { .. } | Command::Healthcheck { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints one line: intact (with the newest event, to pin elsewhere) or where and why the chain breaks.
async fn verify_database(config: &Config, tenant: Option<uuid::Uuid>) -> anyhow::Result<ExitCode> {
    let db = database::connect(&config.database).await.context("connecting to the database")?;
    let scope = tenant.map_or_else(|| "event log".to_owned(), |id| format!("tenant {id}"));
    match audit::verify(&db, tenant).await? {
        Verdict::Intact(intact) if intact.events == 0 && tenant.is_some() => anyhow::bail!("{scope}: no events"),
        Verdict::Intact(intact) => {
            println!("{scope}: intact: {}", describe(&intact, tenant.is_some()));
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Broken(broken) => {
            println!("{scope}: NOT intact: {broken}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `one_stream`: the newest event is the stream's head, written as `verify --expect-head` takes it; of several
/// streams it pins only its own stream, so it is not called a head.
fn describe(intact: &Intact, one_stream: bool) -> String {
    let head = intact.head.map_or_else(String::new, |head| {
        if one_stream {
            format!("; head: {}:{} (position {})", head.version, head.hash, head.position)
        } else {
            format!(
                "; newest event: position {} (stream {}, version {}) hash {}",
                head.position, head.stream_id, head.version, head.hash
            )
        }
    });
    format!("events: {}, streams: {}{head}", intact.events, intact.streams)
}

/// Checks an export line by line, naming the first line that is not an event, breaks the chain (an event
/// of a second stream breaks it: an export is one stream) or is not what the auditor `expected`. A file without
/// events fails, as `verify --tenant` does for a stream without events.
fn verify_file(path: &Path, expected: Expected) -> ExitCode {
    let shown = path.display();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("tenantmq: {shown}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut check = ChainCheck::one_stream();
    // An intact chain that is not what the auditor recorded is told apart from a broken one.
    let (broken, unexpected) = ("NOT intact", "NOT as recorded");
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let pushed = match line {
            Ok(line) => ChainedEvent::from_json_line(&line).map_err(|e| (broken, e.to_string())).and_then(|event| {
                check.push(&event).map_err(|e| (broken, e.to_string()))?;
                expected.event(&event).map_err(|e| (unexpected, e.to_string()))
            }),
            Err(error) => Err((broken, error.to_string())),
        };
        if let Err((verdict, why)) = pushed {
            println!("{shown}: {verdict} at line {number}: {why}");
            return ExitCode::FAILURE;
        }
    }
    let intact = check.finish();
    // Nothing checked is no chain: an empty file (a failed download, say) must not pass for an intact one.
    if intact.events == 0 {
        eprintln!("tenantmq: {shown}: no events");
        return ExitCode::FAILURE;
    }
    if let Err(why) = expected.end(&intact) {
        println!("{shown}: {unexpected}: {why}");
        return ExitCode::FAILURE;
    }
    println!("{shown}: intact: {}", describe(&intact, true));
    ExitCode::SUCCESS
}

async fn export(config: &Config, tenant: uuid::Uuid, output: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = output else {
        return write_export(config, tenant, &mut BufWriter::new(std::io::stdout().lock())).await;
    };
    // A device or a pipe (`/dev/stdout`) is written as it is: there is no earlier file to keep.
    if std::fs::metadata(path).is_ok_and(|metadata| !metadata.is_file()) {
        let device = File::create(path).with_context(|| format!("opening {}", path.display()))?;
        return write_export(config, tenant, &mut BufWriter::new(device)).await;
    }
    // Written beside the file (the file a link points to) and renamed over it once complete: an export that
    // fails (a mistyped tenant, a lost connection) leaves an earlier file as it was, never emptied or cut short.
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = async {
        let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut out = BufWriter::new(file);
        write_export(config, tenant, &mut out).await?;
        out.into_inner().map_err(|e| e.into_error()).and_then(|file| file.sync_all()).context("writing the export")?;
        std::fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

async fn write_export(config: &Config, tenant: uuid::Uuid, out: &mut impl Write) -> anyhow::Result<()> {
    let db = database::connect(&config.database).await.context("connecting to the database")?;
    let mut reader = ChainReader::open(&db, Some(tenant)).await?;
    let mut exported = 0_u64;
    loop {
        let chunk = reader.next_chunk().await?;
        if chunk.is_empty() {
            break;
        }
        for event in &chunk {
            writeln!(out, "{}", event.to_json_line()?).context("writing the export")?;
        }
        exported += chunk.len() as u64;
    }
    out.flush().context("writing the export")?;
    anyhow::ensure!(exported > 0, "tenant {tenant}: no events");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
    app.run_until_stopped().await.context("serving HTTP")
}

async fn migrate(config: Config, action: MigrateAction, confirm_data_loss: bool) -> anyhow::Result<()> {
    if confirm_data_loss && !matches!(action, MigrateAction::Down) {
        anyhow::bail!("--confirm-data-loss goes with `migrate down` only");
    }
    // A status only looks, and a roll back of a database that is not there has nothing to do: only `up` creates.
    if config.database.create_if_missing && matches!(action, MigrateAction::Up) {
        database::create_database_if_missing(&config.database.url, config.database.connect_timeout).await?;
    }
    let db = database::connect(&config.database).await.context("connecting to the database")?;
    if matches!(action, MigrateAction::Down) && !confirm_data_loss {
        let status = database::migration_status(&db).await?;
        let newest = status.iter().rev().find(|(_, applied)| *applied).map_or("nothing", |(name, _)| name.as_str());
        anyhow::bail!(
            "`migrate down` would roll back {newest}, dropping what it added, data included; the event log goes \
             with the first migration. It is for development databases, with every instance stopped: pass \
             --confirm-data-loss. An older release serves this schema as it is: running one needs no roll back."
        );
    }
    match action {
        MigrateAction::Up => database::migrate(&config.database, MigrationDirection::Up).await?,
        MigrateAction::Down => database::migrate(&config.database, MigrationDirection::Down).await?,
        MigrateAction::Status => {}
    }
    for (name, applied) in database::migration_status(&db).await? {
        println!("{} {name}", if applied { "applied" } else { "pending" });
    }
    Ok(())
}

/// `tenantmq healthcheck`: 0 when the probe answers 200, 1 when not, 2 when the `server` settings are bad.
fn healthcheck(file: Option<&Path>, path: &str) -> ExitCode {
    let server = match ServerConfig::load(file) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("tenantmq: {error}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    match probe(&server, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenantmq: {path}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `GET path` to the address the service binds and expects status 200 within a few seconds. The
/// service binds the first address `host:port` resolves to that it can bind, so the probe tries them in the
/// same order until one connects (on loopback where the address is every address).
fn probe(server: &ServerConfig, path: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let bound = format!("{}:{}", server.host, server.port);
    let addresses = bound.to_socket_addrs().map_err(|e| format!("{bound}: {e}"))?;
    probe_first_answering(addresses, path).map_err(|e| format!("{bound}: {e}"))
}

/// [`probe`] on the first of `addresses` that accepts a connection. Plain HTTP/1.0 over a socket: the probe
/// needs no HTTP client.
fn probe_first_answering(addresses: impl Iterator<Item = std::net::SocketAddr>, path: &str) -> Result<(), String> {
    use std::{
        io::{Read, Write},
        net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
        time::Duration,
    };
    const TIMEOUT: Duration = Duration::from_secs(3);
    let mut refused = "no address".to_owned();
    let mut connected = None;
    for address in addresses {
        let address = match address.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port()),
            _ => address,
        };
        match TcpStream::connect_timeout(&address, TIMEOUT) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(error) => refused = format!("{address}: {error}"),
        }
    }
    let mut stream = connected.ok_or(refused)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    // One write: a request sent in pieces can meet a server that answered and closed after the first.
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.take(1024).read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("answered {status_line:?}")),
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use super::probe_first_answering;
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener},
        thread,
    };

    /// An address on which nothing listens (a port handed out and given back could be taken meanwhile by a
    /// test running beside this one).
    fn refusing_address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// A listener that answers one request with `status_line` once it has read the request's head: closing
    /// with part of the request unread would reset the connection, and the probe would see that instead.
    fn answering_once(status_line: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().expect("a bound listener has an address");
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = Vec::new();
                let mut chunk = [0; 256];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&chunk[..read]),
                    }
                }
                let _ = write!(stream, "{status_line}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        address
    }

    /// The service binds the first address it can, which need not be the first the name resolves to (`localhost`
    /// as `::1` where IPv6 is off): the probe must find it behind one that refuses.
    #[test]
    fn the_probe_tries_every_address_until_one_connects() {
        let addresses = [refusing_address(), answering_once("HTTP/1.1 200 OK")];
        assert_eq!(probe_first_answering(addresses.into_iter(), "/healthz"), Ok(()));
    }

    #[test]
    fn the_probe_fails_on_an_answer_other_than_200_and_when_nothing_listens() {
        let unready = [answering_once("HTTP/1.1 503 Service Unavailable")];
        let answer = probe_first_answering(unready.into_iter(), "/readyz");
        assert!(answer.as_ref().is_err_and(|e| e.contains("503")), "{answer:?}");
        let nothing = refusing_address();
        let answer = probe_first_answering([nothing].into_iter(), "/readyz");
        assert!(answer.as_ref().is_err_and(|e| e.contains(&nothing.to_string())), "{answer:?}");
    }
}
