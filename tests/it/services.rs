//! Where the tests find PostgreSQL and RabbitMQ: the URLs in `TENANTMQ_TEST_DATABASE_URL` /
//! `TENANTMQ_TEST_AMQP_URL` when set; otherwise containers started by testcontainers when a Docker engine is
//! reachable; otherwise the local services on their standard ports.

use std::sync::OnceLock;

use tenantmq_testkit::{LOCAL_AMQP, LOCAL_POSTGRES, Services};

pub fn get() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let database = std::env::var("TENANTMQ_TEST_DATABASE_URL").ok();
        let amqp = std::env::var("TENANTMQ_TEST_AMQP_URL").ok();
        if database.is_none() && amqp.is_none() && docker_engine_reachable() {
            match containers::start() {
                Ok(services) => return services,
                Err(error) => eprintln!("testcontainers could not start ({error}); using the local services"),
            }
        }
        Services {
            postgres_server: database.map_or_else(|| LOCAL_POSTGRES.to_owned(), |url| server_part(&url)),
            amqp_url: amqp.unwrap_or_else(|| LOCAL_AMQP.to_owned()),
        }
    })
}

/// `postgres://u@h:p/db?x` → `postgres://u@h:p` (tests add their own database name).
fn server_part(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => url[..after_scheme + slash].to_owned(),
        None => url.to_owned(),
    }
}

fn docker_engine_reachable() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists()
}

mod containers {
    use testcontainers_modules::{
        postgres::Postgres,
        rabbitmq::RabbitMq,
        testcontainers::{ImageExt, runners::AsyncRunner},
    };

    use tenantmq_testkit::Services;

    /// Starts both containers on a runtime of their own, in a thread that keeps them alive until the test
    /// process exits (each test has its own runtime; the containers must outlive them all).
    pub fn start() -> Result<Services, String> {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => return drop(sender.send(Err(e.to_string()))),
            };
            runtime.block_on(async move {
                let started = async {
                    let postgres =
                        Postgres::default().with_tag("16-alpine").start().await.map_err(|e| e.to_string())?;
                    let rabbit = RabbitMq::default().start().await.map_err(|e| e.to_string())?;
                    let pg_port = postgres.get_host_port_ipv4(5432).await.map_err(|e| e.to_string())?;
                    let amqp_port = rabbit.get_host_port_ipv4(5672).await.map_err(|e| e.to_string())?;
                    let services = Services {
                        postgres_server: format!("postgres://postgres:postgres@127.0.0.1:{pg_port}"),
                        amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
                    };
                    Ok::<_, String>((services, postgres, rabbit))
                };
                match started.await {
                    Ok((services, _postgres, _rabbit)) => {
                        let _ = sender.send(Ok(services));
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = sender.send(Err(e));
                    }
                }
            });
        });
        receiver.recv().map_err(|e| e.to_string())?
    }
}
