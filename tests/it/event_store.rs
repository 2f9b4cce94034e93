//! The event log: optimistic concurrency and a gap-free global order under concurrent appends.

use std::{collections::HashSet, time::Duration};

use sea_orm::sqlx::{AssertSqlSafe, Connection, PgConnection, raw_sql};
use tenantmq::store::{
    StoreError,
    audit::{self, Verdict},
    events::{APPEND_LOCK, EventMetadata, EventStore, NewEvent, read_all_after},
};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually};

fn metadata() -> EventMetadata {
    EventMetadata { actor: "test".into(), request_id: "r".into(), correlation_id: "c".into(), trace_id: None }
}

fn event(n: usize) -> NewEvent {
    NewEvent { event_type: "TestEvent.v1".into(), data: serde_json::json!({ "n": n }) }
}

/// Checks the hash chain of the whole log: appends that raced (or lost a race) leave it intact.
async fn assert_chain_intact(app: &TestApp, streams: u64, events: u64) {
    match audit::verify(&app.db, None).await.expect("verified") {
        Verdict::Intact(intact) => assert_eq!((intact.streams, intact.events), (streams, events)),
        Verdict::Broken(broken) => panic!("the chain breaks after concurrent appends: {broken}"),
    }
}

#[tokio::test]
async fn append_with_a_stale_version_is_a_conflict() {
    let app = TestApp::spawn().await;
    let store = EventStore::new(app.db.clone());
    let stream = Uuid::new_v4();
    let first = store.append(stream, 0, &[event(1), event(2)], &metadata()).await.expect("append to a new stream");
    assert_eq!(first.last_version, 2);
    let stale = store.append(stream, 1, &[event(3)], &metadata()).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { expected: 1, actual: 2 })), "{stale:?}");
    let events = store.read_stream(stream, 0, 100).await.expect("read");
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(events[0].metadata["actor"], "test");
    assert_chain_intact(&app, 1, 2).await;
    app.stop().await;
}

/// 24 appenders write 40 events each while a reader tails the log from its last position: it must see every
/// event exactly once, in position order, never skipping one that committed late.
#[tokio::test]
async fn a_tailing_reader_sees_every_event_once_in_order_under_concurrent_appends() {
    const APPENDERS: usize = 24;
    const EVENTS_EACH: usize = 40;
    let app = TestApp::spawn().await;
    let store = EventStore::new(app.db.clone());
    let before = store.head_position().await.expect("head");

    let appenders: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = Uuid::new_v4();
                for version in 0..EVENTS_EACH {
                    store.append(stream, version as i32, &[event(version)], &metadata()).await.expect("append");
                }
            })
        })
        .collect();

    let reader_db = app.db.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut position = before;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < APPENDERS * EVENTS_EACH {
            assert!(tokio::time::Instant::now() < deadline, "reader saw only {} events", seen.len());
            let batch = read_all_after(&reader_db, position, 37).await.expect("read");
            for event in batch {
                assert!(event.position > position, "positions strictly increase");
                position = event.position;
                seen.push((event.stream_id, event.version));
            }
        }
        seen
    });
    for appender in appenders {
        appender.await.expect("appender");
    }
    let seen = reader.await.expect("reader");
    assert_eq!(seen.len(), APPENDERS * EVENTS_EACH);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len(), "no event twice");
    let tail = read_all_after(&app.db, before, 10_000).await.expect("read");
    assert_eq!(tail.len(), seen.len(), "the reader missed nothing");
    assert_chain_intact(&app, APPENDERS as u64, (APPENDERS * EVENTS_EACH) as u64).await;
    app.stop().await;
}

/// An event's time is read once its append holds the log, so an append that waited for the lock is stamped
/// after the lock was let go: times follow positions across streams (the state "at T" of several tenants is
/// one prefix of the log). Stamped at its transaction's start, it carried the time it began to wait.
#[tokio::test]
async fn an_append_that_waited_for_the_log_is_stamped_when_it_took_its_place() {
    let app = TestApp::spawn().await;
    let store = EventStore::new(app.db.clone());
    let mut holder = PgConnection::connect(&app.config.database.url).await.expect("connect");
    let lock = format!("SELECT pg_advisory_lock({APPEND_LOCK})");
    raw_sql(AssertSqlSafe(lock)).execute(&mut holder).await.expect("the append lock held");
    let stream = Uuid::new_v4();
    let append = tokio::spawn({
        let store = store.clone();
        async move { store.append(stream, 0, &[event(1)], &metadata()).await }
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event = 'advisory' AND state_change < now() - interval '1 second'";
    eventually(Duration::from_secs(8), "the append waiting for the lock for a second", || async {
        (app.scalar_i64(waiting).await == 1).then_some(())
    })
    .await;
    let released: String = sea_orm::sqlx::query_scalar("SELECT clock_timestamp()::text")
        .fetch_one(&mut holder)
        .await
        .expect("the time of release");
    raw_sql("SELECT pg_advisory_unlock_all()").execute(&mut holder).await.expect("released");
    append.await.expect("joined").expect("appended");
    let stamped_before =
        format!("SELECT count(*) FROM events WHERE stream_id = '{stream}' AND recorded_at < '{released}'::timestamptz");
    assert_eq!(app.scalar_i64(&stamped_before).await, 0, "stamped before the lock was let go at {released}");
}

#[tokio::test]
async fn the_log_rejects_updates_and_deletes() {
    let app = TestApp::spawn().await;
    app.create_tenant("immutable").await;
    for sql in ["UPDATE events SET event_type = 'x'", "DELETE FROM events", "TRUNCATE events"] {
        let result = sea_orm::ConnectionTrait::execute_unprepared(&app.db, sql).await;
        assert!(result.is_err(), "{sql} must be rejected");
    }
    app.stop().await;
}
