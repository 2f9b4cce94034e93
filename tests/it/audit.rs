//! The tamper-evident event log: the hash chain as the API shows it, `tenantmq verify` and `export` run as an
//! auditor runs them, a log tampered with by the database owner, and the backfill of events older than the
//! chain.

use std::{process::Output, time::Duration};

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tenantmq::{
    auth::Role,
    config::Config,
    store::{
        audit::{self, Verdict},
        database::{self, MigrationDirection},
        events::{EventMetadata, EventStore, NewEvent},
    },
};
use uuid::Uuid;

use crate::{
    config_cli::tenantmq,
    helpers::{TestApp, assert_problem, database_before_column, eventually, remove_database, test_config},
};

/// Runs the binary against `database_url` off the runtime's thread (the service under test shares it).
fn cli(args: &[&str], database_url: &str) -> impl Future<Output = Output> + use<> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let url = database_url.to_owned();
    async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tenantmq(&args, &[("TENANTMQ_DATABASE__URL", url.as_str())])
        })
        .await
        .expect("the binary ran")
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A tenant with three events: created, then its concurrency set twice.
async fn tenant_with_three_events(app: &TestApp) -> String {
    let id = app.create_tenant_id("audited").await;
    for workers in [4, 5] {
        let response = app.put_json(&format!("/tenants/{id}/config/concurrency"), &json!({ "workers": workers })).await;
        assert!(response.status().is_success(), "{}", response.status());
    }
    id
}

async fn position(app: &TestApp, tenant: &str, version: i32) -> i64 {
    app.scalar_i64(&format!("SELECT position FROM events WHERE stream_id = '{tenant}' AND version = {version}")).await
}

/// Changes the log as its owner can: with the append-only trigger switched off for the statement.
async fn tamper(app: &TestApp, sql: &str) {
    app.db
        .execute_unprepared(&format!(
            "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete; {sql}; \
             ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;"
        ))
        .await
        .expect("tampered");
}

/// Sets the workers of the tenant's ConcurrencySet at version 2 to 9, in place, without re-hashing.
async fn change_the_second_event(app: &TestApp, tenant: &str) {
    tamper(
        app,
        &format!(
            "UPDATE events SET data = jsonb_set(data, '{{workers}}', '9') WHERE stream_id = '{tenant}' AND version = 2"
        ),
    )
    .await;
}

#[tokio::test]
async fn an_untouched_log_verifies_and_the_api_shows_its_chain() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    app.create_tenant_id("bystander").await;

    let response = app.get(&format!("/tenants/{id}/events")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.expect("events JSON");
    let events = page["data"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["prev_hash"], "0".repeat(64));
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{pair:?}");
    }
    let head_hash = events[2]["hash"].as_str().expect("hash").to_owned();
    assert!(head_hash.len() == 64 && head_hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let url = &app.config.database.url;
    let all = cli(&["verify"], url).await;
    assert!(all.status.success(), "{}{}", stdout(&all), String::from_utf8_lossy(&all.stderr));
    assert!(stdout(&all).contains("event log: intact: events: 4, streams: 2"), "{}", stdout(&all));
    let one = cli(&["verify", "--tenant", &id], url).await;
    assert!(one.status.success(), "{}", stdout(&one));
    let head_position = position(&app, &id, 3).await;
    assert!(
        stdout(&one)
            .contains(&format!("intact: events: 3, streams: 1; head: 3:{head_hash} (position {head_position})")),
        "{}",
        stdout(&one)
    );
    assert!(stdout(&all).contains("; newest event: position "), "{}", stdout(&all));

    let heads = audit::heads(&app.db, None).await.expect("heads");
    assert_eq!(heads.len(), 2);
    let tenant: Uuid = id.parse().expect("uuid");
    let head = audit::heads(&app.db, Some(tenant)).await.expect("head");
    assert_eq!(head.iter().map(|h| (h.version, h.hash.to_hex())).collect::<Vec<_>>(), [(3, head_hash)]);
    assert!(heads.contains(&head[0]));
    app.stop().await;
}

#[tokio::test]
async fn a_changed_event_fails_verification_at_its_position() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    change_the_second_event(&app, &id).await;
    let changed = position(&app, &id, 2).await;
    let url = &app.config.database.url;
    for args in [vec!["verify", "--tenant", id.as_str()], vec!["verify"]] {
        let output = cli(&args, url).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", stdout(&output));
        let shown = stdout(&output);
        assert!(
            shown.contains(&format!("NOT intact: position {changed} (stream {id}, version 2): hash mismatch")),
            "{shown}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_middle_event_fails_verification_at_the_next_position() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let next = position(&app, &id, 3).await;
    tamper(&app, &format!("DELETE FROM events WHERE stream_id = '{id}' AND version = 2")).await;
    let output = cli(&["verify", "--tenant", &id], &app.config.database.url).await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains(&format!(
            "NOT intact: position {next} (stream {id}, version 3): version gap: expected version 2"
        )),
        "{}",
        stdout(&output)
    );
    app.stop().await;
}

#[tokio::test]
async fn an_export_verifies_offline_and_one_edited_byte_is_named_by_its_line() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let file = std::env::temp_dir().join(format!("tenantmq-export-{}.jsonl", Uuid::new_v4()));
    let file_name = file.to_str().expect("utf-8 path").to_owned();
    let exported = cli(&["export", "--tenant", &id, "--output", &file_name], &app.config.database.url).await;
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let export = std::fs::read_to_string(&file).expect("export written");
    let lines: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 3);
    for key in
        ["stream_id", "version", "position", "event_type", "data", "metadata", "recorded_at", "prev_hash", "hash"]
    {
        assert!(lines.iter().all(|line| line.get(key).is_some()), "{key} in every line");
    }

    // Offline: neither the configuration nor the database is looked at.
    let offline = |file: &str| {
        let args = ["--config", "/no/such/file.yaml", "verify", "--file", file];
        cli(&args, "postgres://nobody@127.0.0.1:1/none")
    };
    let intact = offline(&file_name).await;
    assert!(intact.status.success(), "{}{}", stdout(&intact), String::from_utf8_lossy(&intact.stderr));
    assert!(stdout(&intact).contains("intact: events: 3, streams: 1"), "{}", stdout(&intact));

    // One byte on line 2: ConcurrencySet to 4 workers becomes 6.
    let second = export.lines().nth(1).expect("line 2");
    let edited_line = second.replacen("\"workers\":4", "\"workers\":6", 1);
    assert_ne!(second, edited_line);
    std::fs::write(&file, export.replacen(second, &edited_line, 1)).expect("edited");
    let edited = offline(&file_name).await;
    assert_eq!(edited.status.code(), Some(1), "{}", stdout(&edited));
    assert!(stdout(&edited).contains("NOT intact at line 2: position "), "{}", stdout(&edited));
    assert!(stdout(&edited).contains("hash mismatch"), "{}", stdout(&edited));

    // A line that is no longer JSON is named too.
    std::fs::write(&file, export.replacen("{", "[", 1)).expect("edited");
    let broken = offline(&file_name).await;
    assert_eq!(broken.status.code(), Some(1));
    assert!(stdout(&broken).contains("NOT intact at line 1: not an event"), "{}", stdout(&broken));

    // An export that fails (a mistyped tenant) leaves the file it would have replaced as it was.
    std::fs::write(&file, &export).expect("restored");
    let unknown = Uuid::new_v4().to_string();
    let failed = cli(&["export", "--tenant", &unknown, "--output", &file_name], &app.config.database.url).await;
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).expect("still there"), export, "the earlier export is untouched");
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{}.", file.file_name().expect("name").to_string_lossy()))
        })
        .count();
    assert_eq!(leftovers, 0, "no partial file is left behind");
    // A device or pipe is written as it is (there is nothing beside it to rename).
    let piped = cli(&["export", "--tenant", &id, "--output", "/dev/stdout"], &app.config.database.url).await;
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    assert_eq!(stdout(&piped), export, "the same export, on the pipe");
    std::fs::remove_file(&file).expect("export removed");
    app.stop().await;
}

#[tokio::test]
async fn the_backfill_chains_events_recorded_before_the_migration() {
    let config: Config = test_config();
    // Dropped with the test, also when it panics; rolled back until the hash chain's migration is undone.
    let (test_database, db) = database_before_column(&config, "events", "hash").await;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    // As the service appended before the chain existed; JSON that canonicalization has to get right.
    db.execute_unprepared(&format!(
        r#"INSERT INTO events (stream_id, version, event_type, data, metadata) VALUES
           ('{first}', 1, 'TenantCreated.v1', '{{"name": "old", "workers": 3}}', '{{"actor": "legacy"}}'),
           ('{second}', 1, 'TenantCreated.v1', '{{"name": "other", "workers": 1}}', '{{}}'),
           ('{first}', 2, 'Odd.v1',
            '{{"b": [1.50, -0.0000001, 123456789012345678901234567890, 1e3, true, null],
               "a": {{"z\u0001\t": "é😀/", "": {{}}}}, "é": [], "aa": "x\"y\\"}}',
            '{{"actor": "Zoë \"ops\"\n"}}')"#
    ))
    .await
    .expect("old events inserted");
    db.close().await.expect("closed");

    database::migrate(&config.database, MigrationDirection::Up)
        .await
        .expect("the hash chain migrated with its backfill");
    let db = database::connect(&config.database).await.expect("connected");
    match audit::verify(&db, None).await.expect("verified") {
        Verdict::Intact(intact) => assert_eq!((intact.streams, intact.events), (2, 3)),
        Verdict::Broken(broken) => panic!("the backfill does not verify: {broken}"),
    }

    // The chain goes on from the backfilled hashes.
    let metadata =
        EventMetadata { actor: "tests".into(), request_id: "r".into(), correlation_id: "r".into(), trace_id: None };
    let next = NewEvent { event_type: "TenantDeleted.v1".into(), data: json!({}) };
    EventStore::new(db.clone()).append(first, 2, &[next], &metadata).await.expect("appended");
    match audit::verify(&db, None).await.expect("verified") {
        Verdict::Intact(intact) => assert_eq!((intact.streams, intact.events), (2, 4)),
        Verdict::Broken(broken) => panic!("{broken}"),
    }
    db.close().await.expect("closed");
    remove_database(test_database).await;
}

/// GET as an auditor.
async fn audited(app: &TestApp, path: &str) -> reqwest::Response {
    reqwest::Client::new().get(app.url(path)).bearer_auth(app.token(Role::Auditor)).send().await.expect("sent")
}

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("JSON")
}

#[tokio::test]
async fn the_audit_endpoints_show_an_intact_chain_and_its_heads() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let other = app.create_tenant_id("bystander").await;
    let head_position = position(&app, &id, 3).await;

    let one = json_of(audited(&app, &format!("/audit/verify?tenant_id={id}")).await).await;
    assert_eq!(one["ok"], true, "{one}");
    assert_eq!((one["events"].as_i64(), one["streams"].as_i64()), (Some(3), Some(1)), "{one}");
    assert_eq!(one["head"]["position"], head_position, "{one}");
    let events = json_of(app.get(&format!("/tenants/{id}/events")).await).await;
    assert_eq!(one["head"]["hash"], events["data"][2]["hash"], "{one}");

    // Every stream, one a page: the cursor leads through both, then ends.
    let first = json_of(audited(&app, "/audit/verify?limit=1").await).await;
    assert_eq!((first["ok"].as_bool(), first["streams"].as_i64()), (Some(true), Some(1)), "{first}");
    let cursor = first["next_cursor"].as_str().expect("a cursor to the second stream");
    let second = json_of(audited(&app, &format!("/audit/verify?limit=1&cursor={cursor}")).await).await;
    assert_eq!((second["ok"].as_bool(), second["streams"].as_i64()), (Some(true), Some(1)), "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    let all = json_of(audited(&app, "/audit/verify").await).await;
    assert_eq!((all["events"].as_i64(), all["streams"].as_i64()), (Some(4), Some(2)), "{all}");

    let heads = json_of(audited(&app, "/audit/head").await).await;
    let mut streams: Vec<&str> =
        heads["data"].as_array().expect("heads").iter().filter_map(|h| h["stream_id"].as_str()).collect();
    streams.sort_unstable();
    let mut expected = vec![id.as_str(), other.as_str()];
    expected.sort_unstable();
    assert_eq!(streams, expected);
    let paged = json_of(audited(&app, "/audit/head?limit=1").await).await;
    assert_eq!(paged["data"].as_array().map(Vec::len), Some(1));
    assert!(paged["next_cursor"].is_string(), "{paged}");
    let mine = json_of(audited(&app, &format!("/audit/head?tenant_id={id}")).await).await;
    assert_eq!(mine["data"][0]["version"], 3);
    assert_eq!(mine["data"][0]["hash"], one["head"]["hash"]);

    for (path, field) in [
        ("/audit/verify?tenant_id=nope", "tenant_id"),
        ("/audit/verify?limit=0", "limit"),
        ("/audit/verify?cursor=garbage", "cursor"),
        ("/audit/head?cursor=garbage", "cursor"),
        ("/audit/head?limit=1001", "limit"),
    ] {
        assert_problem(audited(&app, path).await, StatusCode::BAD_REQUEST, Some(field)).await;
    }
    let unknown = Uuid::new_v4();
    assert_problem(audited(&app, &format!("/audit/verify?tenant_id={unknown}")).await, StatusCode::NOT_FOUND, None)
        .await;
    assert_problem(audited(&app, &format!("/audit/head?tenant_id={unknown}")).await, StatusCode::NOT_FOUND, None).await;
    app.stop().await;
}

#[tokio::test]
async fn a_tampered_event_is_found_by_the_verify_endpoint_at_its_position() {
    let app = TestApp::spawn().await;
    app.create_tenant_id("bystander").await;
    let id = tenant_with_three_events(&app).await;
    change_the_second_event(&app, &id).await;
    let changed = position(&app, &id, 2).await;
    for path in [format!("/audit/verify?tenant_id={id}"), "/audit/verify?limit=1000".to_owned()] {
        let verdict = json_of(audited(&app, &path).await).await;
        assert_eq!(verdict["ok"], false, "{path}: {verdict}");
        let broken = &verdict["first_break"];
        assert_eq!((broken["position"].as_i64(), broken["version"].as_i64()), (Some(changed), Some(2)), "{verdict}");
        assert_eq!(
            (broken["stream_id"].as_str(), broken["reason"].as_str()),
            (Some(id.as_str()), Some("hash_mismatch"))
        );
        assert!(broken["detail"].as_str().is_some_and(|d| d.starts_with("hash mismatch")), "{verdict}");
    }

    // Removing the changed event instead: the next one is where the gap shows.
    tamper(&app, &format!("DELETE FROM events WHERE stream_id = '{id}' AND version = 2")).await;
    let verdict = json_of(audited(&app, &format!("/audit/verify?tenant_id={id}")).await).await;
    let broken = &verdict["first_break"];
    assert_eq!(broken["position"].as_i64(), Some(position(&app, &id, 3).await), "{verdict}");
    assert_eq!(broken["reason"], "version_gap", "{verdict}");
    app.stop().await;
}

/// The nil UUID sorts before every other stream id: a page that starts at no cursor still includes its stream.
#[tokio::test]
async fn the_paged_check_and_heads_include_a_tenant_with_the_nil_id() {
    let app = TestApp::spawn().await;
    let nil = Uuid::nil().to_string();
    let created = app.post_json("/tenants", &json!({ "id": nil, "name": "nil" })).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let other = app.create_tenant_id("after-nil").await;

    let first = json_of(audited(&app, "/audit/head?limit=1").await).await;
    assert_eq!(first["data"][0]["stream_id"], nil, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a cursor to the second stream");
    let second = json_of(audited(&app, &format!("/audit/head?limit=1&cursor={cursor}")).await).await;
    assert_eq!(second["data"][0]["stream_id"], other.as_str(), "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    let all = json_of(audited(&app, "/audit/verify").await).await;
    assert_eq!((all["ok"].as_bool(), all["streams"].as_i64()), (Some(true), Some(2)), "{all}");

    tamper(
        &app,
        &format!("UPDATE events SET data = jsonb_set(data, '{{name}}', '\"renamed\"') WHERE stream_id = '{nil}'"),
    )
    .await;
    for path in ["/audit/verify", "/audit/verify?limit=1"] {
        let verdict = json_of(audited(&app, path).await).await;
        assert_eq!(verdict["ok"], false, "{path}: {verdict}");
        let broken = &verdict["first_break"];
        assert_eq!((broken["stream_id"].as_str(), broken["version"].as_i64()), (Some(nil.as_str()), Some(1)));
        assert_eq!(broken["reason"], "hash_mismatch", "{verdict}");
        // One break hides no other: the check goes on after the broken stream.
        let cursor = verdict["next_cursor"].as_str().expect("a cursor past the broken stream");
        let rest = json_of(
            audited(&app, &format!("{path}{}cursor={cursor}", if path.contains('?') { '&' } else { '?' })).await,
        )
        .await;
        assert_eq!((rest["ok"].as_bool(), rest["streams"].as_i64()), (Some(true), Some(1)), "{rest}");
        assert!(rest["next_cursor"].is_null(), "{rest}");
    }
    app.stop().await;
}

/// Events changed so that they cannot even be encoded for hashing are breaks at their position, as a changed
/// field is: JSON nested deeper than canonical JSON allows, a stored hash that is not 32 bytes. A command on
/// an instance that reads the damaged event answers `log-damaged` (one that had folded the stream past it
/// would not read it again: the audit check is what finds damage).
#[tokio::test]
async fn an_event_that_cannot_be_hashed_is_a_break_at_its_position() {
    let app = TestApp::spawn().await;
    app.create_tenant_id("bystander").await;
    let id = tenant_with_three_events(&app).await;
    let mut fresh = tenantmq_testkit::RunningApp::start(app.config.clone()).await.expect("a second instance");
    let url = &app.config.database.url;
    let second = position(&app, &id, 2).await;
    tamper(
        &app,
        &format!(
            "UPDATE events SET data = (repeat('[', 130) || repeat(']', 130))::jsonb \
             WHERE stream_id = '{id}' AND version = 2"
        ),
    )
    .await;
    let first = position(&app, &id, 1).await;
    // The first event's hash and the head's, so that the paged check also lists the stream without it.
    let cut_hash = format!(
        "ALTER TABLE events DROP CONSTRAINT events_hashes_are_sha256; \
         UPDATE events SET hash = decode('00', 'hex') WHERE stream_id = '{id}' AND version IN (1, 3)"
    );
    for (tampering, (at, version)) in [(None, (second, 2)), (Some(cut_hash), (first, 1))] {
        let hashes_cut = tampering.is_some();
        if let Some(sql) = tampering {
            tamper(&app, &sql).await;
        }
        for path in [format!("/audit/verify?tenant_id={id}"), "/audit/verify?limit=1000".to_owned()] {
            let verdict = json_of(audited(&app, &path).await).await;
            assert_eq!(verdict["ok"], false, "{path}: {verdict}");
            let broken = &verdict["first_break"];
            assert_eq!((broken["position"].as_i64(), broken["version"].as_i64()), (Some(at), Some(version)));
            assert_eq!(
                (broken["stream_id"].as_str(), broken["reason"].as_str()),
                (Some(id.as_str()), Some("unreadable"))
            );
        }
        for args in [vec!["verify", "--tenant", id.as_str()], vec!["verify"]] {
            let output = cli(&args, url).await;
            assert_eq!(output.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
            let shown = stdout(&output);
            assert!(
                shown.contains(&format!("NOT intact: position {at} (stream {id}, version {version}): ")),
                "{shown}"
            );
        }
        // What cannot read the stream says why, and where to look, rather than an anonymous 500.
        let concurrency = format!("/tenants/{id}/config/concurrency");
        let commands = [
            fresh.client.delete(fresh.url(&format!("/tenants/{id}"))).send().await.expect("sent"),
            fresh.client.put(fresh.url(&concurrency)).json(&json!({ "workers": 2 })).send().await.expect("sent"),
            audited(&app, &format!("/tenants/{id}/state?at_position={}", position(&app, &id, 3).await)).await,
        ];
        let mut responses = Vec::from(commands);
        if hashes_cut {
            responses.push(audited(&app, &format!("/audit/head?tenant_id={id}")).await);
        }
        for response in responses {
            assert_log_damaged(response).await;
        }
    }
    fresh.stop().await.expect("stopped");
    app.stop().await;
}

/// An event edited so that it still parses but no longer decodes (its workers a string) is a hash mismatch
/// to the checks; whatever must decide on it says the log is damaged, where it answered an anonymous 500.
#[tokio::test]
async fn an_event_edited_past_what_the_domain_reads_answers_log_damaged_not_internal() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let mut fresh = tenantmq_testkit::RunningApp::start(app.config.clone()).await.expect("a second instance");
    tamper(
        &app,
        &format!(
            "UPDATE events SET data = jsonb_set(data, '{{workers}}', '\"many\"') \
             WHERE stream_id = '{id}' AND version = 2"
        ),
    )
    .await;

    let verdict = json_of(audited(&app, &format!("/audit/verify?tenant_id={id}")).await).await;
    assert_eq!(verdict["first_break"]["version"], 2, "{verdict}");
    assert_eq!(verdict["first_break"]["reason"], "hash_mismatch", "{verdict}");
    let concurrency = fresh.url(&format!("/tenants/{id}/config/concurrency"));
    let responses = [
        fresh.client.put(concurrency).json(&json!({ "workers": 2 })).send().await.expect("sent"),
        audited(&app, &format!("/tenants/{id}/state?at_position={}", position(&app, &id, 3).await)).await,
    ];
    for response in responses {
        assert_log_damaged(response).await;
    }
    fresh.stop().await.expect("stopped");
    app.stop().await;
}

/// What cannot read a stream says why, and where to look, rather than an anonymous 500.
async fn assert_log_damaged(response: reqwest::Response) {
    let url = response.url().to_string();
    assert_eq!(response.status(), 500, "{url}");
    let problem: Value = response.json().await.expect("a problem document");
    assert_eq!(problem["type"], "urn:tenantmq:problem:log-damaged", "{url}: {problem}");
}

/// An empty file holds no stream: nothing was checked, which is not an intact chain.
#[tokio::test]
async fn an_empty_file_does_not_verify() {
    let file = std::env::temp_dir().join(format!("tenantmq-empty-{}.jsonl", Uuid::new_v4()));
    std::fs::write(&file, "").expect("written");
    let file_name = file.to_str().expect("utf-8 path").to_owned();
    let args = ["--config", "/no/such/file.yaml", "verify", "--file", file_name.as_str()];
    let output = cli(&args, "postgres://nobody@127.0.0.1:1/none").await;
    std::fs::remove_file(&file).expect("file removed");
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{file_name}: no events")), "{stderr}");
    assert!(!stdout(&output).contains("intact"), "{}", stdout(&output));
}

/// Create, three concurrency changes, delete: the state after each event, asked by position and by time.
#[tokio::test]
async fn a_tenant_reads_as_it_was_at_every_version_of_its_stream() {
    let app = TestApp::spawn().await;
    app.create_tenant_id("earlier").await;
    let created = app.create_tenant("historic").await;
    let id = created["id"].as_str().expect("id").to_owned();
    let initial = created["workers"].as_i64().expect("workers");
    for workers in [4, 7, 2] {
        let response = app.put_json(&format!("/tenants/{id}/config/concurrency"), &json!({ "workers": workers })).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.delete(&format!("/tenants/{id}")).await.status(), StatusCode::NO_CONTENT);
    let events = json_of(app.get(&format!("/tenants/{id}/events")).await).await;
    let events = events["data"].as_array().expect("events").clone();
    let expected = [(initial, "active"), (4, "active"), (7, "active"), (2, "active"), (2, "deleted")];
    assert_eq!(events.len(), expected.len());

    let own = app.token(Role::Tenant(id.parse().expect("uuid")));
    for (event, (workers, status)) in events.iter().zip(expected) {
        let position = event["position"].as_i64().expect("position");
        let recorded_at = event["recorded_at"].as_str().expect("recorded_at");
        let by_time = format!("/tenants/{id}/state?at={}", recorded_at.replace('+', "%2B"));
        for path in [format!("/tenants/{id}/state?at_position={position}"), by_time] {
            for state in [
                json_of(app.get(&path).await).await,
                json_of(audited(&app, &path).await).await,
                json_of(reqwest::Client::new().get(app.url(&path)).bearer_auth(&own).send().await.expect("sent")).await,
            ] {
                assert_eq!(state["version"], event["version"], "{path}: {state}");
                assert_eq!(
                    (state["position"].as_i64(), state["hash"].clone()),
                    (Some(position), event["hash"].clone())
                );
                assert_eq!(
                    (state["workers"].as_i64(), state["status"].as_str()),
                    (Some(workers), Some(status)),
                    "{path}"
                );
                assert_eq!((state["name"].as_str(), state["id"].as_str()), (Some("historic"), Some(id.as_str())));
            }
        }
    }
    // Between two events, the earlier one holds.
    let before_fourth = events[3]["position"].as_i64().expect("position") - 1;
    let between = json_of(app.get(&format!("/tenants/{id}/state?at_position={before_fourth}")).await).await;
    assert_eq!(between["version"], 3, "{between}");

    let first = events[0]["position"].as_i64().expect("position");
    assert_problem(
        app.get(&format!("/tenants/{id}/state?at_position={}", first - 1)).await,
        StatusCode::NOT_FOUND,
        None,
    )
    .await;
    assert_problem(app.get(&format!("/tenants/{id}/state?at=2000-01-01T00:00:00Z")).await, StatusCode::NOT_FOUND, None)
        .await;
    for (query, field) in [
        ("", "at_position"),
        ("?at_position=1&at=2026-01-01T00:00:00Z", "at"),
        ("?at_position=0", "at_position"),
        ("?at_position=-3", "at_position"),
        ("?at_position=abc", "at_position"),
        ("?at_position=99999999999999999999", "at_position"),
        ("?at=yesterday", "at"),
        ("?at=2026-13-01T00:00:00Z", "at"),
        ("?at=2026-12-01T09:30:00", "at"),
    ] {
        assert_problem(app.get(&format!("/tenants/{id}/state{query}")).await, StatusCode::BAD_REQUEST, Some(field))
            .await;
    }
    let never_existed = app.get(&format!("/tenants/{}/state?at_position=1", Uuid::new_v4())).await;
    assert_problem(never_existed, StatusCode::NOT_FOUND, None).await;
    app.stop().await;
}

#[tokio::test]
async fn an_export_from_the_api_verifies_offline_and_an_edited_byte_is_named_by_its_line() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let response = audited(&app, &format!("/tenants/{id}/events/export")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/x-ndjson"));
    let export = response.text().await.expect("the export");
    assert_eq!(export.lines().count(), 3);

    // The same bytes `tenantmq export` writes.
    let file = std::env::temp_dir().join(format!("tenantmq-api-export-{}.jsonl", Uuid::new_v4()));
    let file_name = file.to_str().expect("utf-8 path").to_owned();
    let exported = cli(&["export", "--tenant", &id, "--output", &file_name], &app.config.database.url).await;
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    assert_eq!(std::fs::read_to_string(&file).expect("the CLI's export"), export);

    std::fs::write(&file, &export).expect("saved");
    let offline = |file: &str| {
        cli(&["--config", "/no/such/file.yaml", "verify", "--file", file], "postgres://nobody@127.0.0.1:1/none")
    };
    let intact = offline(&file_name).await;
    assert!(intact.status.success(), "{}", stdout(&intact));
    assert!(stdout(&intact).contains("intact: events: 3, streams: 1"), "{}", stdout(&intact));

    let third = export.lines().nth(2).expect("line 3");
    let edited_line = third.replacen("\"workers\":5", "\"workers\":8", 1);
    assert_ne!(third, edited_line);
    std::fs::write(&file, export.replacen(third, &edited_line, 1)).expect("edited");
    let edited = offline(&file_name).await;
    assert_eq!(edited.status.code(), Some(1), "{}", stdout(&edited));
    assert!(stdout(&edited).contains("NOT intact at line 3: position "), "{}", stdout(&edited));
    std::fs::remove_file(&file).expect("export removed");

    let never_existed = audited(&app, &format!("/tenants/{}/events/export", Uuid::new_v4())).await;
    assert_problem(never_existed, StatusCode::NOT_FOUND, None).await;
    app.stop().await;
}

/// `replay --check` rebuilds the read models aside and compares: clean, then with a row and a partition
/// changed behind the service's back, which it names and leaves as they are.
#[tokio::test]
async fn replay_check_finds_read_models_changed_behind_the_services_back() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let gone = app.create_tenant_id("gone").await;
    assert_eq!(app.delete(&format!("/tenants/{gone}")).await.status(), StatusCode::NO_CONTENT);
    let url = &app.config.database.url;
    let clean = cli(&["replay", "--check"], url).await;
    assert!(clean.status.success(), "{}{}", stdout(&clean), String::from_utf8_lossy(&clean.stderr));
    assert!(stdout(&clean).contains("read models: as the event log makes them"), "{}", stdout(&clean));

    let partition = format!("messages_{}", id.replace('-', ""));
    app.db.execute_unprepared(&format!("UPDATE tenants SET workers = 9 WHERE id = '{id}'")).await.expect("changed");
    app.db.execute_unprepared(&format!("ALTER TABLE messages DETACH PARTITION {partition}")).await.expect("detached");
    let events_before = app.scalar_i64("SELECT count(*) FROM events").await;
    let dirty = cli(&["replay", "--check"], url).await;
    assert_eq!(dirty.status.code(), Some(1), "{}{}", stdout(&dirty), String::from_utf8_lossy(&dirty.stderr));
    let shown = stdout(&dirty);
    assert!(shown.contains(&format!("tenants {id}: workers is 9, the log gives 5")), "{shown}");
    assert!(shown.contains(&format!("partition {partition}: missing for live tenant {id}")), "{shown}");
    assert!(shown.contains("read models: 2 differences from the event log"), "{shown}");

    // The check changed nothing.
    assert_eq!(app.scalar_i64(&format!("SELECT workers::bigint FROM tenants WHERE id = '{id}'")).await, 9);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM events").await, events_before);
    let attached = format!(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'messages'::regclass AND c.relname = '{partition}'"
    );
    assert_eq!(app.scalar_i64(&attached).await, 0, "the detached partition stays detached");
    app.stop().await;
}

/// A partition detached by hand goes on taking its tenant's rows (the workers write to it by name), but
/// `messages` no longer shows them; one dropped by hand holds its tenant's messages back in the queue.
/// `replay` attaches the first again, rows and all, and makes the second again, so the held-back message
/// arrives, and a check afterwards finds nothing.
#[tokio::test]
async fn replay_repairs_partitions_detached_or_dropped_behind_the_services_back() {
    let app = TestApp::spawn().await;
    let detached = app.create_tenant_id("detached").await;
    let dropped = app.create_tenant_id("dropped").await;
    let publish = |tenant: &str, i: i32| {
        let path = format!("/tenants/{tenant}/messages");
        let app = &app;
        async move { assert_eq!(app.post_json(&path, &json!({ "payload": i })).await.status(), StatusCode::ACCEPTED) }
    };
    for tenant in [&detached, &dropped] {
        publish(tenant, 1).await;
        app.await_messages(tenant, 1).await;
    }
    let detached_partition = format!("messages_{}", detached.replace('-', ""));
    app.db
        .execute_unprepared(&format!("ALTER TABLE messages DETACH PARTITION {detached_partition}"))
        .await
        .expect("detached");
    app.db.execute_unprepared(&format!("DROP TABLE messages_{}", dropped.replace('-', ""))).await.expect("dropped");
    for tenant in [&detached, &dropped] {
        publish(tenant, 2).await;
    }
    eventually(Duration::from_secs(30), "the second row in the detached table", || async {
        (app.scalar_i64(&format!("SELECT count(*) FROM {detached_partition}")).await == 2).then_some(())
    })
    .await;
    assert_eq!(app.message_count(&detached).await, 0, "messages shows no row of a detached partition");

    let url = &app.config.database.url;
    let repaired = cli(&["replay"], url).await;
    assert!(repaired.status.success(), "{}{}", stdout(&repaired), String::from_utf8_lossy(&repaired.stderr));
    app.await_messages(&detached, 2).await;
    // The dropped row is gone with its table; the message held back in the queue is written now.
    app.await_messages(&dropped, 1).await;
    let clean = cli(&["replay", "--check"], url).await;
    assert!(stdout(&clean).contains("read models: as the event log makes them"), "{}", stdout(&clean));
    app.stop().await;
}

/// An export streamed to a slow client reads its next thousand events only when the client has taken the
/// last, so it must hold no connection in between: 25 downloads of a long history at 2 KB/s held every
/// connection of the pool (each in a snapshot left open), and every request of every tenant answered 503.
/// Here the pool has one connection, which the rest of the service must still get between two chunks.
#[tokio::test]
async fn an_export_holds_no_connection_between_its_chunks() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let options = sea_orm::ConnectOptions::new(app.config.database.url.clone())
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .to_owned();
    let pool = sea_orm::Database::connect(options).await.expect("a pool of one");
    let mut reader = audit::ChainReader::open(&pool, Some(id.parse().expect("uuid"))).await.expect("opened");
    assert_eq!(reader.next_chunk().await.expect("a chunk").len(), 3);
    pool.execute_unprepared("SELECT 1").await.expect("the pool's connection is free between chunks");
    assert!(reader.next_chunk().await.expect("the end").is_empty());
    pool.close().await.expect("closed");
    app.stop().await;
}

/// Each instance keeps its fold of a tenant's stream, and a command folds onto it what the log has since:
/// what another instance appended, and, when the log no longer has the fold's last event as it was (restored
/// to an earlier point, or cut by hand), the whole stream again, so that it decides as a full fold would.
#[tokio::test]
async fn a_command_decides_on_the_log_as_it_is_after_another_instance_or_a_cut_changed_it() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let concurrency = format!("/tenants/{id}/config/concurrency");
    let set = |app: &tenantmq_testkit::RunningApp, workers: i64| {
        app.client.put(app.url(&concurrency)).json(&json!({ "workers": workers })).send()
    };
    let events = format!("SELECT count(*) FROM events WHERE stream_id = '{id}'");
    assert_eq!(set(&app, 5).await.expect("sent").status(), StatusCode::OK, "already 5: nothing to record");
    assert_eq!(app.scalar_i64(&events).await, 3);

    let mut other = tenantmq_testkit::RunningApp::start(app.config.clone()).await.expect("a second instance");
    assert_eq!(set(&other, 6).await.expect("sent").status(), StatusCode::OK);
    assert_eq!(set(&app, 6).await.expect("sent").status(), StatusCode::OK, "the other's 6 is folded");
    assert_eq!(app.scalar_i64(&events).await, 4, "nothing more to record");

    tamper(&app, &format!("DELETE FROM events WHERE stream_id = '{id}' AND version = 4")).await;
    assert_eq!(set(&app, 6).await.expect("sent").status(), StatusCode::OK);
    assert_eq!(app.scalar_i64(&events).await, 4, "6 recorded again: the log says 5");
    let previous = format!("SELECT (data->>'previous')::bigint FROM events WHERE stream_id = '{id}' AND version = 4");
    assert_eq!(app.scalar_i64(&previous).await, 5);
    other.stop().await.expect("stopped");
    app.stop().await;
}

/// Runs scripts/verify_export.py, the checker docs/audit.md shows, as an auditor runs it (optimised, so that a
/// check written as `assert` would be skipped).
fn python_check(args: &[&str]) -> Output {
    std::process::Command::new("python3")
        .arg("-O")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_export.py"))
        .args(args)
        .output()
        .expect("python3 runs")
}

/// A chain intact on its own proves neither whose stream an export is nor that the stream was not cut back or
/// rewritten and hashed again by whoever can write to the database: the head an auditor recorded at an earlier
/// check does. Both checkers an auditor has, `verify --file` and the documented Python, are held to that.
#[tokio::test]
async fn an_export_checked_against_a_recorded_head_shows_a_stream_cut_back_or_rewritten() {
    let app = TestApp::spawn().await;
    let id = tenant_with_three_events(&app).await;
    let head = json_of(audited(&app, &format!("/audit/head?tenant_id={id}")).await).await;
    let recorded = format!("3:{}", head["data"][0]["hash"].as_str().expect("the head's hash"));
    let file = std::env::temp_dir().join(format!("tenantmq-recorded-{}.jsonl", Uuid::new_v4()));
    let file_name = file.to_str().expect("utf-8 path").to_owned();
    let other = Uuid::new_v4().to_string();
    let export = async || {
        let exported = cli(&["export", "--tenant", &id, "--output", &file_name], &app.config.database.url).await;
        assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    };
    // Each checker's verdict (exit code and output) on the export as it now is, against what is expected.
    let checked = async |tenant: &str, recorded: Option<&str>| {
        let mut args = vec!["--config", "/no/such/file.yaml", "verify", "--file", &file_name, "--tenant", tenant];
        args.extend(recorded.iter().flat_map(|head| ["--expect-head", head]));
        let binary = cli(&args, "postgres://nobody@127.0.0.1:1/none").await;
        let python = python_check(&[&file_name, tenant].into_iter().chain(recorded).collect::<Vec<_>>());
        let said = |output: &Output| format!("{}{}", stdout(output), String::from_utf8_lossy(&output.stderr));
        [(binary.status.code(), said(&binary)), (python.status.code(), said(&python))]
    };
    let assert_fails = |verdicts: [(Option<i32>, String); 2], why: &str| {
        for (code, said) in verdicts {
            assert_eq!(code, Some(1), "{said}");
            assert!(said.contains(why), "{why}: {said}");
        }
    };

    export().await;
    for (code, said) in checked(&id, Some(&recorded)).await {
        assert_eq!(code, Some(0), "{said}");
        assert!(said.contains(&recorded), "the head to record next time: {said}");
    }
    assert_fails(checked(&other, None).await, &other);
    // A head not written as VERSION:HASH is a usage error to both (exit 2), never a verdict.
    for (code, said) in checked(&id, Some(&format!("0{recorded}"))).await {
        assert_eq!(code, Some(2), "{said}");
    }

    // The owner takes the newest event away: the chain left is intact, and only the recorded head shows it.
    tamper(&app, &format!("DELETE FROM events WHERE stream_id = '{id}' AND version = 3")).await;
    export().await;
    for (code, said) in checked(&id, None).await {
        assert_eq!(code, Some(0), "{said}");
    }
    assert_fails(checked(&id, Some(&recorded)).await, "cut back");

    // A new version 3 in its place, hashed as any event is: intact again, but not the event recorded.
    let response = app.put_json(&format!("/tenants/{id}/config/concurrency"), &json!({ "workers": 7 })).await;
    assert!(response.status().is_success(), "{}", response.status());
    export().await;
    for (code, said) in checked(&id, None).await {
        assert_eq!(code, Some(0), "{said}");
    }
    assert_fails(checked(&id, Some(&recorded)).await, "rewritten");
    std::fs::remove_file(&file).expect("export removed");
    app.stop().await;
}

/// The Python that docs/audit.md shows is the script that this suite runs.
#[test]
fn the_documented_python_checker_is_the_tested_script() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/audit.md")).expect("audit.md");
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_export.py")).expect("the script");
    let shown = guide.split("```python\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a Python block");
    assert_eq!(shown, script, "docs/audit.md shows scripts/verify_export.py as it is");
}
