//! Projector runners: exactly-once application across instances, and replay.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};
use serde_json::json;
use tenantmq::{
    projectors::{self, Progress, Projector, RunnerSettings},
    store::{
        StoreError,
        events::{EventStore, RecordedEvent},
        tenants::TenantReadModel,
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{TestApp, eventually, scalar_i64, test_config},
    metrics::Scrape,
    proxy::Proxy,
};

/// Records every event it applies in `applied`, with no uniqueness constraint, so a double apply shows.
struct RecordingProjector;

impl Projector for RecordingProjector {
    const NAME: &'static str = "test_recording";

    async fn apply(&self, txn: &DatabaseTransaction, event: &RecordedEvent) -> Result<(), StoreError> {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO applied (position) VALUES ($1)",
            [event.position.into()],
        ))
        .await?;
        Ok(())
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> Result<(), StoreError> {
        txn.execute_unprepared("DELETE FROM applied").await?;
        Ok(())
    }
}

#[tokio::test]
async fn two_runners_of_one_projector_apply_each_event_once() {
    let app = TestApp::spawn().await;
    app.db.execute_unprepared("CREATE TABLE applied (position BIGINT NOT NULL)").await.expect("table");
    let store = EventStore::new(app.db.clone());
    let cancel = CancellationToken::new();
    let settings = RunnerSettings { batch_size: 3, poll_interval: Duration::from_millis(20) };
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (db, store, cancel) = (app.db.clone(), store.clone(), cancel.clone());
            tokio::spawn(projectors::run(
                RecordingProjector,
                db,
                store,
                watch::Sender::new(Progress::default()),
                settings,
                // Not listening (this store hears of no NOTIFY): the runners poll at `settings`' interval.
                watch::channel(false).1,
                cancel,
            ))
        })
        .collect();

    for i in 0..30 {
        app.create_tenant(&format!("t{i}")).await;
    }
    let head = store.head_position().await.expect("head");
    let checkpoint = format!("SELECT position FROM projector_checkpoints WHERE name = '{}'", RecordingProjector::NAME);
    eventually(Duration::from_secs(20), "the recording projector to reach the head", || async {
        (scalar_i64(&app.db, &format!("SELECT COALESCE(({checkpoint}), 0)")).await == head).then_some(())
    })
    .await;
    cancel.cancel();
    for runner in runners {
        runner.await.expect("runner");
    }
    assert_eq!(app.scalar_i64("SELECT count(*) FROM applied").await, head, "every event applied");
    assert_eq!(app.scalar_i64("SELECT count(DISTINCT position) FROM applied").await, head, "none applied twice");
    app.stop().await;
}

#[tokio::test]
async fn replay_rebuilds_the_same_read_models() {
    let app = TestApp::spawn().await;
    let a = app.create_tenant_id("a").await;
    let b = app.create_tenant_id("b").await;
    app.create_tenant("c").await;
    app.put_json(&format!("/tenants/{a}/config/concurrency"), &json!({ "workers": 7 })).await;
    app.delete(&format!("/tenants/{b}")).await;
    let read_model = TenantReadModel::new(app.db.clone());
    let before = read_model.all().await.expect("rows");
    let partitions = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass";
    let partitions_before = app.scalar_i64(partitions).await;
    assert_eq!(before.len(), 3);
    assert_eq!(partitions_before, 2);

    app.db.execute_unprepared("UPDATE tenants SET name = 'corrupted', workers = 1").await.expect("corrupt");
    let positions = projectors::replay_all(&app.db, 2).await.expect("replay");
    let head = EventStore::new(app.db.clone()).head_position().await.expect("head");
    assert!(positions.iter().all(|(_, position)| *position == head), "{positions:?}");
    assert_eq!(read_model.all().await.expect("rows"), before, "rebuilt state equals the original");
    assert_eq!(app.scalar_i64(partitions).await, partitions_before);
    app.stop().await;
}

/// An event of a type this release does not know (written by a newer one, in a rolling deploy or before a
/// rollback) must not stop the partitions projector: it makes partitions from creations only, and a tenant
/// created after such an event still gets its partition, so its consumer can write.
#[tokio::test]
async fn an_event_of_an_unknown_type_does_not_stop_the_partitions_of_later_tenants() {
    let mut config = crate::helpers::test_config();
    config.projectors.command_wait = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let metadata = tenantmq::store::events::EventMetadata {
        actor: "a newer release".into(),
        request_id: "r".into(),
        correlation_id: "r".into(),
        trace_id: None,
    };
    let renamed = tenantmq::store::events::NewEvent { event_type: "TenantRenamed.v1".into(), data: json!({}) };
    let store = EventStore::new(app.db.clone());
    store.append(uuid::Uuid::now_v7(), 0, &[renamed], &metadata).await.expect("appended");
    // Answered 503 `recorded` at most: the tenants read model does stop at the unknown event.
    let later = uuid::Uuid::now_v7();
    let _recorded = app.post_json("/tenants", &json!({ "id": later, "name": "later" })).await;
    let partition = format!(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'messages'::regclass AND c.relname = '{}'",
        crate::helpers::partition(&later.to_string())
    );
    eventually(Duration::from_secs(20), "the later tenant's partition", || async {
        (app.scalar_i64(&partition).await == 1).then_some(())
    })
    .await;

    // A creation of a version this release cannot read is not passed over: its tenant would get no
    // partition (and look retired once deleted). The projector stops at it.
    let created_v2 = tenantmq::store::events::NewEvent { event_type: "TenantCreated.v2".into(), data: json!({}) };
    let appended = store.append(uuid::Uuid::now_v7(), 0, &[created_v2], &metadata).await.expect("appended");
    let checkpoint = "SELECT position FROM projector_checkpoints WHERE name = 'message_partitions'";
    // Absence can only be waited for: five polls of the projector (and the NOTIFY of the append at once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(app.scalar_i64(checkpoint).await < appended.last_position, "the projector passed the creation over");
    app.stop().await;
}

/// A checkpoint lost (deleted by hand, or a projector renamed) makes the projector apply the log again from the
/// start onto the rows it made: a creation applied again must not stop it (a duplicate key, retried forever);
/// the read model converges to what it was, and commands go on.
#[tokio::test]
async fn a_projector_whose_checkpoint_is_lost_applies_the_log_again_and_converges() {
    let app = TestApp::spawn().await;
    let a = app.create_tenant_id("a").await;
    app.put_json(&format!("/tenants/{a}/config/concurrency"), &json!({ "workers": 7 })).await;
    let read_model = TenantReadModel::new(app.db.clone());
    let before = read_model.all().await.expect("rows");

    app.db.execute_unprepared("DELETE FROM projector_checkpoints WHERE name = 'tenants'").await.expect("lost");
    let head = EventStore::new(app.db.clone()).head_position().await.expect("head");
    eventually(Duration::from_secs(20), "the tenants projector back at the head", || async {
        let at =
            app.scalar_i64("SELECT COALESCE((SELECT position FROM projector_checkpoints WHERE name = 'tenants'), 0)");
        (at.await == head).then_some(())
    })
    .await;
    assert_eq!(read_model.all().await.expect("rows"), before);
    let resized = app.put_json(&format!("/tenants/{a}/config/concurrency"), &json!({ "workers": 2 })).await;
    assert_eq!(resized.status(), reqwest::StatusCode::OK);
    app.stop().await;
}

/// A projector with nothing to apply finds that out with a read: it does not lock its checkpoint (which takes a
/// transaction id and writes the row) at every poll of an idle service, and a checkpoint locked meanwhile (a
/// `replay --check`, a transaction left open) holds no idle projector's connection waiting. Before, each poll
/// of each projector queued behind such a lock.
#[tokio::test]
async fn an_idle_projector_polls_without_locking_its_checkpoint() {
    let mut config = crate::helpers::test_config();
    config.projectors.poll_interval = Duration::from_millis(50);
    let app = TestApp::spawn_with(config).await;
    app.create_tenant("idle").await;
    let lock = crate::dead_letters::hold_in_transaction(
        &app.config.database.url,
        "SELECT * FROM projector_checkpoints FOR UPDATE",
    )
    .await;
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    // Absence can only be watched for: twenty polls of each projector.
    for _ in 0..20 {
        assert_eq!(app.scalar_i64(waiting).await, 0, "a connection waits for the lock on a checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::dead_letters::release(lock).await;
    app.stop().await;
}

/// What another instance appends while this one does not listen for NOTIFY (its connection to PostgreSQL
/// down) is never notified. Before, the projectors learnt of it at their next safety-net poll only: with the
/// listener back, nothing woke them. Now the listener reads the log's head after each LISTEN, and the
/// projectors poll every second while it does not listen; the safety-net poll here is an hour.
#[tokio::test]
async fn an_instance_catches_up_with_appends_made_while_it_did_not_listen() {
    let mut config = test_config();
    let direct = config.clone();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.database.url).await;
    config.database.url = through_proxy;
    config.projectors.poll_interval = Duration::from_secs(3600);
    let listener = TestApp::spawn_with(config.clone()).await;
    // The same database and secret, reached directly, polling as the tests do.
    let mut other = tenantmq_testkit::RunningApp::start(direct).await.expect("a second instance on its database");
    let head = "SELECT max(position) FROM events";
    let projected_by_listener = |position: i64| tenants_projected_to(&listener.base_url, position);

    // Notified: the other instance's create reaches this one's projectors at once.
    tenantmq_testkit::create_tenant(&other.client, &other.base_url, &json!({ "name": "notified" }))
        .await
        .expect("created on the other instance");
    let position = listener.scalar_i64(head).await;
    eventually(Duration::from_secs(20), "the notified create", || projected_by_listener(position)).await;

    proxy.take_down();
    tenantmq_testkit::create_tenant(&other.client, &other.base_url, &json!({ "name": "unheard" }))
        .await
        .expect("created on the other instance");
    let position = scalar_i64(&other.db, head).await;
    proxy.restore();
    eventually(Duration::from_secs(20), "the create made while not listening", || projected_by_listener(position))
        .await;

    other.stop().await.expect("the other instance stopped");
    listener.stop().await;
}

/// An instance (on a database proxy, polling the log once an hour) whose NOTIFY connection has gone silent
/// after it created a tenant, another instance on the same database, and that tenant's concurrency path, on
/// which the other instance has just set 7 workers the silent one did not hear of.
struct SilentListener {
    silent: TestApp,
    other: tenantmq_testkit::RunningApp,
    proxy: Proxy,
    path: String,
}

impl SilentListener {
    async fn start(command_wait: Duration) -> Self {
        let mut config = test_config();
        let direct = config.clone();
        let (proxy, through_proxy) = Proxy::in_front_of_database(&config.database.url).await;
        config.database.url = through_proxy;
        config.projectors.poll_interval = Duration::from_secs(3600);
        config.projectors.command_wait = command_wait;
        let silent = TestApp::spawn_with(config).await;
        let other = tenantmq_testkit::RunningApp::start(direct).await.expect("a second instance on its database");
        let id = silent.create_tenant_id("quiet").await;
        eventually(Duration::from_secs(20), "the instance to listen", || async {
            (proxy.listeners() > 0).then_some(())
        })
        .await;
        proxy.silence_listeners(true);
        let path = format!("/tenants/{id}/config/concurrency");
        let set = other.client.put(other.url(&path)).json(&json!({ "workers": 7 })).send().await.expect("sent");
        assert_eq!(set.status(), reqwest::StatusCode::OK, "set on the other instance");
        Self { silent, other, proxy, path }
    }

    async fn stop(mut self) {
        // Heard again, the listener's UNLISTEN at the stop is answered.
        self.proxy.silence_listeners(false);
        self.other.stop().await.expect("the other instance stopped");
        self.silent.stop().await;
    }
}

/// A listener whose connection went silent (a network partition gives no error until TCP gives up, hours
/// later) hears no NOTIFY, and the projectors poll only at `projectors.poll_interval`. A command that changes
/// nothing waits for this instance's projections to reach the stream's last event, which another instance
/// appended: before, until that poll (503 after `command_wait`); now it raises the head it knows to that event,
/// and the projectors step at once.
#[tokio::test]
async fn a_command_that_changes_nothing_does_not_wait_for_a_notification_that_never_comes() {
    let setup = SilentListener::start(Duration::from_secs(5)).await;
    let again = setup.silent.put_json(&setup.path, &json!({ "workers": 7 })).await;
    assert_eq!(again.status(), reqwest::StatusCode::OK, "{}", again.text().await.unwrap_or_default());
    setup.stop().await;
}

/// `Some` once the tenants projector of the instance at `base_url` has applied the log up to `position`.
async fn tenants_projected_to(base_url: &str, position: i64) -> Option<()> {
    let scrape = Scrape::at(base_url).await;
    let at = scrape.value("tenantmq_projector_position", &[("projector", "tenants")]).unwrap_or(0.0);
    (at >= position as f64).then_some(())
}

/// A listener whose connection went silent hears nothing, not even an error, until TCP gives up on it hours
/// later. It notifies itself every 10 s; when that does not come back, it listens again, and the read of the
/// log's head that follows brings the projectors up to what another instance appended meanwhile. Before, this
/// instance's projections stayed behind until the safety-net poll (an hour here).
#[tokio::test]
async fn a_listener_whose_connection_went_silent_notices_and_catches_up() {
    let setup = SilentListener::start(Duration::from_secs(10)).await;
    let position = scalar_i64(&setup.other.db, "SELECT max(position) FROM events").await;
    eventually(Duration::from_secs(45), "the silent instance's projections to catch up", || {
        tenants_projected_to(&setup.silent.base_url, position)
    })
    .await;
    setup.stop().await;
}

/// Any session of the database may NOTIFY on the log's channel, with any number in it. One naming a position
/// past the end of the log raised the head for good: no real append raised it again, so the projectors woke
/// only at their poll, and every command waited for them and answered 503 `recorded`.
#[tokio::test]
async fn a_notification_naming_a_position_past_the_log_does_not_hold_up_the_projectors() {
    let mut config = test_config();
    config.projectors.poll_interval = Duration::from_secs(60);
    config.projectors.command_wait = Duration::from_secs(20);
    let app = TestApp::spawn_with(config).await;
    // Listening: its LISTEN done, the session waits.
    let listening = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND query LIKE 'LISTEN %' AND state = 'idle'";
    eventually(Duration::from_secs(10), "the projectors' listener", || async {
        (scalar_i64(&app.db, listening).await == 1).then_some(())
    })
    .await;
    app.db.execute_unprepared("NOTIFY tenantmq_events, '9223372036854775807'").await.expect("notified");
    // The first command may come before the notification is heard; the later ones come after it.
    for n in 0..3 {
        let created = app.post_json("/tenants", &json!({ "name": format!("after a false notification {n}") })).await;
        let status = created.status();
        assert_eq!(status, reqwest::StatusCode::CREATED, "{n}: {}", created.text().await.unwrap_or_default());
    }
    app.stop().await;
}

/// A row of the log the service cannot read, inserted by hand: a time of `infinity`, which PostgreSQL takes and a
/// Rust time cannot hold, so reading it panics. The projector fails its step and tries again with backoff, as
/// for an event it cannot decode, and the service goes on serving. The panic ended the projector's loop, and
/// with it the service, at every start.
#[tokio::test]
async fn a_log_row_that_cannot_be_read_fails_the_projectors_step_not_the_service() {
    let mut config = test_config();
    config.projectors.command_wait = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    eventually(Duration::from_secs(10), "the service ready", || async {
        (app.get("/readyz").await.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    let position = scalar_i64(
        &app.db,
        "INSERT INTO events (stream_id, version, event_type, data, metadata, recorded_at, prev_hash, hash) \
         VALUES (gen_random_uuid(), 1, 'TenantRenamed.v1', '{}', '{}', 'infinity', \
                 decode(repeat('00', 32), 'hex'), decode(repeat('11', 32), 'hex')) RETURNING position",
    )
    .await;
    app.db.execute_unprepared(&format!("NOTIFY tenantmq_events, '{position}'")).await.expect("notified");
    eventually(Duration::from_secs(10), "the projectors to see the row", || async {
        let scrape = Scrape::of(&app).await;
        (scrape.value("tenantmq_projector_lag_events", &[("projector", "tenants")]) >= Some(1.0)).then_some(())
    })
    .await;

    // Recorded, and answered 503 `recorded`: the tenants read model stops at the row.
    let created = app.post_json("/tenants", &json!({ "name": "after the row" })).await;
    assert_eq!(created.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status(),
        reqwest::StatusCode::OK,
        "the service goes on: {}",
        ready.text().await.unwrap_or_default()
    );
    app.stop().await;
}
