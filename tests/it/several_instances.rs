//! Three instances of the real binary against one PostgreSQL and one RabbitMQ: each runs a consumer for
//! every tenant (competing consumers on the tenant's queue), projections are applied once, and killing one
//! instance mid-stream loses nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    dead_letters::{lock_partition, release},
    helpers::{
        amqp, await_exactly, create_database, eventually, queue, queue_state, remove_database, scalar_i64,
        slow_down_inserts, test_config,
    },
    processes::{admin_token, publish_batches, signal, start},
};

#[tokio::test]
async fn three_instances_share_each_tenant_and_one_killed_mid_stream_loses_nothing() {
    const MESSAGES: i64 = 10_000;
    let config = test_config();
    let database = create_database(&config).await;
    let admin = admin_token(&config);
    let client = reqwest::Client::new();
    let mut instances = vec![start(&config).await, start(&config).await, start(&config).await];

    let tenant = instances[0].create_tenant(&admin, &json!({ "name": "shared", "workers": 2 })).await;
    let broker = amqp().await;
    eventually(Duration::from_secs(60), "a consumer from each of the three instances", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(_, consumers)| *consumers == 3)
    })
    .await;
    for instance in &instances {
        let details: Value = client
            .get(format!("{}/tenants/{tenant}", instance.base_url))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        assert_eq!(details["runtime"]["running_workers"], 2, "concurrency is per instance: {details}");
    }

    let db = sea_orm::Database::connect(&config.database.url).await.expect("db");
    slow_down_inserts(&db, &tenant, 0.05).await;
    // Writes wait until everything is published, so the stream is surely still flowing when stopped.
    let lock = lock_partition(&config.database.url, &tenant).await;
    publish_batches(&instances.iter().collect::<Vec<_>>(), &admin, &tenant, 10).await;
    release(lock).await;
    let count = format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'");
    eventually(Duration::from_secs(60), "the first rows", || async {
        (scalar_i64(&db, &count).await > 1000).then_some(())
    })
    .await;
    signal(instances.remove(1), "-KILL").await;
    assert!(scalar_i64(&db, &count).await < MESSAGES, "killed while messages were still flowing");

    await_exactly(&db, &tenant, MESSAGES, Duration::from_secs(120)).await;
    eventually(Duration::from_secs(30), "the two surviving consumers", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(ready, consumers)| (*ready, *consumers) == (0, 2))
    })
    .await;
    // Projections were applied once, though three instances ran the projectors.
    assert_eq!(scalar_i64(&db, "SELECT count(*) FROM tenants").await, 1);
    assert_eq!(scalar_i64(&db, "SELECT count(*) FROM events").await, 1);
    assert_eq!(scalar_i64(&db, "SELECT count(*) FROM projector_checkpoints WHERE position <> 1").await, 0);

    for instance in instances {
        assert_eq!(signal(instance, "-TERM").await.code(), Some(0));
    }
    db.close().await.expect("closed");
    remove_database(database).await;
}
