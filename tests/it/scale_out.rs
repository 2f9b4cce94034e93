//! Scaling out: tenant consumers spread over as many broker connections as their channels need (each
//! connection supervised on its own), and queue depths read from the broker by one instance for all.
//!
//! The broker's view of the connections comes from `rabbitmqctl` on this machine: that test runs against the
//! local RabbitMQ only.

use std::{collections::BTreeMap, time::Duration};

use lapin::BasicProperties;
use serde_json::{Value, json};
use tenantmq_testkit::RunningApp;
use uuid::Uuid;

use crate::{
    helpers::{TestApp, amqp, eventually, publish_raw, queue, queue_state, test_config},
    metrics::{Scrape, fast_polling},
};

/// One of the service's consumer connections as the broker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokerConnection {
    pid: String,
    channels: u32,
    /// As negotiated: it sizes lapin's buffers for the connection (`rabbitmq.frame_max`).
    frame_max: u32,
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
        rabbitmqctl(&["list_connections", "--no-table-headers", "pid", "channels", "frame_max", "client_properties"])
            .await;
    let mut connections = BTreeMap::new();
    for line in listing.lines() {
        let columns: Vec<&str> = line.splitn(4, '\t').collect();
        let [pid, channels, frame_max, properties] = columns[..] else { continue };
        let number = (1..=100).find(|n| properties.contains(&format!("tenantmq consumers #{n} ({instance})")));
        if let (Some(number), Ok(channels), Ok(frame_max)) = (number, channels.trim().parse(), frame_max.trim().parse())
        {
            connections.insert(number, BrokerConnection { pid: pid.to_owned(), channels, frame_max });
        }
    }
    connections
}

/// The tag of the tenant's consumer on this instance, if one runs.
pub(crate) async fn consumer_tag(app: &TestApp, tenant: &str) -> Option<String> {
    let details: Value = app.get(&format!("/tenants/{tenant}")).await.json().await.expect("tenant JSON");
    details["runtime"]["consumer_tag"].as_str().map(str::to_owned)
}

/// A configuration whose consumer connections carry a name of their own, to find them with `rabbitmqctl`;
/// `None` (the test is skipped) against a broker elsewhere (testcontainers, an URL given), which this machine's
/// `rabbitmqctl` does not ask.
fn named_instance_on_the_local_broker() -> Option<(String, tenantmq::config::Config)> {
    if crate::services::get().amqp_url != tenantmq_testkit::LOCAL_AMQP {
        eprintln!("skipped: the broker under test is not this machine's, which rabbitmqctl would ask");
        return None;
    }
    let instance = format!("it-{}", Uuid::new_v4().simple());
    let mut config = test_config();
    config.consumer.instance_id = Some(instance.clone());
    Some((instance, config))
}

#[tokio::test]
async fn consumers_spread_over_connections_and_a_closed_one_restarts_only_its_own() {
    const TENANTS: usize = 5;
    let Some((instance, mut config)) = named_instance_on_the_local_broker() else { return };
    config.rabbitmq.channels_per_connection = 2;
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
    for connection in before.values() {
        assert_eq!(connection.frame_max, test_config().rabbitmq.frame_max, "the frame size asked for: {connection:?}");
    }
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
    app.assert_consuming(&tenants).await;
    app.stop().await;
}

/// A lost consumer connection ends every consumer it carried at once. They restart together, in a few
/// reconciler passes (each reads every tenant's desired workers), not in one pass per consumer: that made a
/// broker restart under 1,000 tenants read a million rows, and recover three times slower.
#[tokio::test]
async fn consumers_that_fail_together_restart_in_a_few_passes_not_one_each() {
    const TENANTS: usize = 40;
    let Some((instance, config)) = named_instance_on_the_local_broker() else { return };
    let app = TestApp::spawn_with(config).await;
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let created =
            app.create_tenant_from(&serde_json::json!({ "name": format!("together-{i}"), "workers": 1 })).await;
        tenants.push(created["id"].as_str().expect("id").to_owned());
    }
    let mut tags = BTreeMap::new();
    for tenant in &tenants {
        tags.insert(
            tenant.clone(),
            eventually(Duration::from_secs(60), "a running consumer", || consumer_tag(&app, tenant)).await,
        );
    }
    let carrying_all = eventually(Duration::from_secs(30), "one connection with every consumer", || async {
        let connections = consumer_connections(&instance).await;
        connections.get(&1).filter(|c| c.channels as usize == TENANTS).cloned()
    })
    .await;
    let passes =
        || async { Scrape::of(&app).await.value("tenantmq_reconciler_passes_total", &[]).expect("passes counted") };
    let before = passes().await;

    rabbitmqctl(&["close_connection", &carrying_all.pid, "closed by a test"]).await;
    for tenant in &tenants {
        eventually(Duration::from_secs(60), "the consumer started again", || async {
            consumer_tag(&app, tenant).await.filter(|tag| *tag != tags[tenant])
        })
        .await;
    }
    let restarted_in = passes().await - before;
    // One pass each would be 40 or more.
    assert!(restarted_in < (TENANTS / 2) as f64, "{restarted_in} passes to restart {TENANTS} consumers");
    app.assert_consuming(&tenants).await;
    app.stop().await;
}

/// A broker that grants fewer channels per connection than `rabbitmq.channels_per_connection` (its
/// `channel_max`; here the client asks for 8, which is negotiated the same way): consumer connections take
/// the 6 tenants each that leaves in use (a quarter of the numbers is kept for channels the broker closes),
/// instead of refusing every tenant's channel past the 8th, whose consumers never ran.
#[tokio::test]
async fn a_broker_granting_fewer_channels_gets_fewer_consumers_per_connection() {
    const TENANTS: usize = 10;
    let mut config = test_config();
    config.rabbitmq.url = format!("{}?channel_max=8", config.rabbitmq.url);
    let app = TestApp::spawn_with(config).await;
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        tenants.push(app.create_tenant_id(&format!("granted-{i}")).await);
    }
    eventually(Duration::from_secs(60), "a running consumer for each of the ten", || async {
        for tenant in &tenants {
            consumer_tag(&app, tenant).await?;
        }
        Some(())
    })
    .await;
    app.assert_consuming(&tenants).await;
    let scrape = Scrape::of(&app).await;
    for connection in ["1", "2"] {
        let up = scrape.value("tenantmq_broker_consumer_connection_up", &[("connection", connection)]);
        assert_eq!(up, Some(1.0), "connection #{connection}");
    }
    app.stop().await;
}

/// Two instances on one database: one asks the broker, both export the depths; when it stops, the other
/// takes over.
#[tokio::test]
async fn one_instance_polls_queue_depths_for_all_and_another_takes_over_when_it_stops() {
    const DEAD_LETTERS: usize = 7;
    let mut first = TestApp::spawn_with(fast_polling()).await;
    let mut second = RunningApp::start(first.config.clone()).await.expect("a second instance on the same database");
    let tenant = first.create_tenant_id("depths").await;
    let broker = amqp().await;
    eventually(Duration::from_secs(30), "a consumer on each instance", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(_, consumers)| *consumers == 2)
    })
    .await;
    // Messages that can never be rows go to the dead-letter queue, and stay there: a depth that holds still.
    let channel = broker.create_channel().await.expect("channel");
    for _ in 0..DEAD_LETTERS {
        publish_raw(&channel, &tenant, b"not json", BasicProperties::default()).await;
    }

    let dead_letters =
        |scrape: &Scrape| scrape.value("tenantmq_queue_messages_ready", &[("tenant_id", &tenant), ("queue", "dlq")]);
    let expected = Some(DEAD_LETTERS as f64);
    let (first_polls, scrapes) = eventually(Duration::from_secs(30), "both instances export the depth", || async {
        let scrapes = [Scrape::of(&first).await, Scrape::of(&second).await];
        let pollers: Vec<f64> =
            scrapes.iter().map(|s| s.value("tenantmq_queue_depth_poller", &[]).unwrap_or(-1.0)).collect();
        let exported = scrapes.iter().all(|s| dead_letters(s) == expected);
        (exported && (pollers == [1.0, 0.0] || pollers == [0.0, 1.0])).then(|| (pollers[0] == 1.0, scrapes))
    })
    .await;
    let calls = |scrape: &Scrape| scrape.value("tenantmq_queue_depth_broker_calls_total", &[]);
    let (poller, other) = if first_polls { (&scrapes[0], &scrapes[1]) } else { (&scrapes[1], &scrapes[0]) };
    assert!(calls(poller).is_some_and(|calls| calls >= 3.0), "the poller asks the broker: {:?}", calls(poller));
    assert_eq!(calls(other), Some(0.0), "the other instance never asks the broker");
    for scrape in &scrapes {
        let main = scrape.value("tenantmq_queue_messages_ready", &[("tenant_id", &tenant), ("queue", "main")]);
        assert_eq!(main, Some(0.0));
    }

    // The poller stops; the survivor takes over, and its depths follow the broker again.
    let survivor: &RunningApp = if first_polls {
        first.stop_service().await;
        &second
    } else {
        second.stop().await.expect("second instance stopped");
        &first
    };
    publish_raw(&channel, &tenant, b"not json either", BasicProperties::default()).await;
    let expected = Some((DEAD_LETTERS + 1) as f64);
    eventually(Duration::from_secs(30), "the survivor polls and exports the new depth", || async {
        let scrape = Scrape::of(survivor).await;
        let polls = scrape.value("tenantmq_queue_depth_poller", &[]) == Some(1.0)
            && calls(&scrape).is_some_and(|calls| calls > 0.0);
        (polls && dead_letters(&scrape) == expected).then_some(())
    })
    .await;
    if first_polls {
        second.stop().await.expect("second instance stopped");
    }
    first.stop().await;
}

/// The poller loses the broker but keeps its database: it must give the polling up, or it goes on recording
/// every depth as unknown, and the series vanish on every instance (an autoscaler reading them sees no backlog).
#[tokio::test]
async fn a_poller_that_loses_the_broker_leaves_the_polling_to_an_instance_that_has_it() {
    const DEAD_LETTERS: usize = 3;
    let mut config = fast_polling();
    let (proxy, through_proxy) = crate::proxy::Proxy::in_front_of(&config.rabbitmq.url).await;
    let direct = std::mem::replace(&mut config.rabbitmq.url, through_proxy);
    let first = TestApp::spawn_with(config).await;
    eventually(Duration::from_secs(30), "the first instance to poll", || async {
        (Scrape::of(&first).await.value("tenantmq_queue_depth_poller", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let mut second_config = first.config.clone();
    second_config.rabbitmq.url = direct;
    let mut second = RunningApp::start(second_config).await.expect("a second instance on the same database");
    let tenant = first.create_tenant_id("poller-cut-off").await;
    let broker = amqp().await;
    eventually(Duration::from_secs(30), "a consumer on each instance", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(_, consumers)| *consumers == 2)
    })
    .await;

    proxy.take_down();
    let channel = broker.create_channel().await.expect("channel");
    for _ in 0..DEAD_LETTERS {
        publish_raw(&channel, &tenant, b"not json", BasicProperties::default()).await;
    }
    let expected = Some(DEAD_LETTERS as f64);
    eventually(Duration::from_secs(30), "the second instance polls and both export the depth", || async {
        let scrapes = [Scrape::of(&first).await, Scrape::of(&second).await];
        let depth = |s: &Scrape| s.value("tenantmq_queue_messages_ready", &[("tenant_id", &tenant), ("queue", "dlq")]);
        let pollers: Vec<_> = scrapes.iter().map(|s| s.value("tenantmq_queue_depth_poller", &[])).collect();
        (pollers == [Some(0.0), Some(1.0)] && scrapes.iter().all(|s| depth(s) == expected)).then_some(())
    })
    .await;
    second.stop().await.expect("second instance stopped");
    first.stop().await;
    drop(proxy);
}

/// The poller's connection to the database goes silent (a network partition, a frozen host): its session, and
/// the lock that makes it the poller, would last until TCP gives up on it, hours later, and the depths vanish
/// from every instance meanwhile. Another instance ends the silent session (after 30 s here) and polls.
#[tokio::test]
async fn a_poller_whose_database_connection_goes_silent_is_replaced() {
    const DEAD_LETTERS: usize = 3;
    let mut config = fast_polling();
    let direct = config.clone();
    let (proxy, through_proxy) = crate::proxy::Proxy::in_front_of(&config.database.url).await;
    config.database.url = through_proxy;
    let first = TestApp::spawn_with(config).await;
    eventually(Duration::from_secs(30), "the first instance to poll", || async {
        (Scrape::of(&first).await.value("tenantmq_queue_depth_poller", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let mut second = RunningApp::start(direct).await.expect("a second instance on the same database");
    let created =
        tenantmq_testkit::create_tenant(&second.client, &second.base_url, &json!({ "name": "silent-poller" }))
            .await
            .expect("created");
    let tenant = created["id"].as_str().expect("id").to_owned();
    let broker = amqp().await;
    eventually(Duration::from_secs(30), "a consumer on each instance", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(_, consumers)| *consumers == 2)
    })
    .await;

    proxy.stall();
    let channel = broker.create_channel().await.expect("channel");
    for _ in 0..DEAD_LETTERS {
        publish_raw(&channel, &tenant, b"not json", BasicProperties::default()).await;
    }
    let expected = Some(DEAD_LETTERS as f64);
    eventually(Duration::from_secs(90), "the second instance polls and exports the depth", || async {
        let scrape = Scrape::of(&second).await;
        let depth = scrape.value("tenantmq_queue_messages_ready", &[("tenant_id", &tenant), ("queue", "dlq")]);
        (scrape.value("tenantmq_queue_depth_poller", &[]) == Some(1.0) && depth == expected).then_some(())
    })
    .await;
    proxy.restore();
    second.stop().await.expect("second instance stopped");
    first.stop().await;
}
