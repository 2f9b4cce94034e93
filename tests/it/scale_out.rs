//! Scaling out: tenant consumers spread over as many broker connections as their channels need (each
//! connection supervised on its own), and queue depths read from the broker by one instance for all.
//!
//! The broker's view comes from `rabbitmqctl` on this machine, so these tests need the local RabbitMQ.

use std::{collections::BTreeMap, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{TestApp, amqp, eventually, queue, queue_state, test_config},
    metrics::Scrape,
};

/// One of the service's consumer connections as the broker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokerConnection {
    pid: String,
    channels: u32,
}

async fn rabbitmqctl(args: &[&str]) -> String {
    let output =
        tokio::process::Command::new("rabbitmqctl").arg("-q").args(args).output().await.expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The consumer connections of `instance` by their number, found by the name the service gives them.
async fn consumer_connections(instance: &str) -> BTreeMap<u32, BrokerConnection> {
    let listing =
        rabbitmqctl(&["list_connections", "--no-table-headers", "pid", "channels", "client_properties"]).await;
    let mut connections = BTreeMap::new();
    for line in listing.lines() {
        let mut columns = line.splitn(3, '\t');
        let (Some(pid), Some(channels), Some(properties)) = (columns.next(), columns.next(), columns.next()) else {
            continue;
        };
        let number = (1..=100).find(|n| properties.contains(&format!("tenantmq consumers #{n} ({instance})")));
        if let (Some(number), Ok(channels)) = (number, channels.trim().parse()) {
            connections.insert(number, BrokerConnection { pid: pid.to_owned(), channels });
        }
    }
    connections
}

async fn consumer_tag(app: &TestApp, tenant: &str) -> Option<String> {
    let details: Value = app.get(&format!("/tenants/{tenant}")).await.json().await.expect("tenant JSON");
    details["runtime"]["consumer_tag"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn consumers_spread_over_connections_and_a_closed_one_restarts_only_its_own() {
    const TENANTS: usize = 5;
    let instance = format!("it-{}", Uuid::new_v4().simple());
    let mut config = test_config();
    config.rabbitmq.channels_per_connection = 2;
    config.consumer.instance_id = Some(instance.clone());
    let app = TestApp::spawn_with(config).await;
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        tenants.push(app.create_tenant_id(&format!("spread-{i}")).await);
    }
    let broker = amqp().await;
    let before = eventually(Duration::from_secs(60), "five consumers over three connections", || async {
        for tenant in &tenants {
            queue_state(&broker, queue(tenant)).await.filter(|(_, consumers)| *consumers == 1)?;
        }
        let connections = consumer_connections(&instance).await;
        let channels: Vec<(u32, u32)> = connections.iter().map(|(n, c)| (*n, c.channels)).collect();
        (channels == [(1, 2), (2, 2), (3, 1)]).then_some(connections)
    })
    .await;
    let scrape = Scrape::of(&app).await;
    for connection in ["1", "2", "3"] {
        let up = scrape.value("tenantmq_broker_consumer_connection_up", &[("connection", connection)]);
        assert_eq!(up, Some(1.0), "connection #{connection}");
    }
    let mut tags = BTreeMap::new();
    for tenant in &tenants {
        tags.insert(tenant.clone(), consumer_tag(&app, tenant).await.expect("a running consumer's tag"));
    }

    // Closed by the broker, as an operator would: only the two consumers on it start again.
    rabbitmqctl(&["close_connection", &before[&1].pid, "closed by a test"]).await;
    eventually(Duration::from_secs(60), "connection #1 back with its two consumers, the others untouched", || async {
        let now = consumer_connections(&instance).await;
        let reopened = now.get(&1).is_some_and(|c| c.pid != before[&1].pid && c.channels == 2);
        (reopened && now.get(&2) == before.get(&2) && now.get(&3) == before.get(&3)).then_some(())
    })
    .await;
    let mut restarted = 0;
    for tenant in &tenants {
        let tag = eventually(Duration::from_secs(30), "a running consumer", || consumer_tag(&app, tenant)).await;
        restarted += usize::from(tag != tags[tenant]);
    }
    assert_eq!(restarted, 2, "only the consumers on the closed connection started again");

    // And every consumer consumes.
    for tenant in &tenants {
        let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": 1 })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    for tenant in &tenants {
        app.await_messages(tenant, 1).await;
    }
    app.stop().await;
}
