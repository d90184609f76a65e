//! A staging file at its size cap (`[staging] max_size_mb`) is a full disk as SQLite reports
//! it (SQLITE_FULL): writes answer 503 with a SCIM error, readiness fails, nothing answered
//! before is lost, and once space is freed readiness and writes come back by themselves.

use serde_json::{Value, json};

use scim_bridge::config::{DbLocation, Durability};

use crate::helpers::{ERROR_SCHEMA, TestApp, USER_SCHEMA};

const MIB: u64 = 1024 * 1024;

/// The size of a freshly migrated staging file, in bytes.
async fn fresh_size() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    scim_bridge::db::migrate(&DbLocation::Sqlite(path.clone()), Durability::Normal)
        .await
        .unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let size: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    pages * size
}

/// A user whose emails take some room: deleting it frees their rows and index entries.
fn user(i: usize) -> Value {
    let emails: Vec<Value> = (0..8)
        .map(|k| {
            json!({
                "type": if k == 0 { "work" } else { "other" },
                "primary": k == 0,
                "value": format!("fill-{i}-{k}-{}@example.com", "x".repeat(120)),
            })
        })
        .collect();
    json!({"schemas": [USER_SCHEMA], "userName": format!("fill-{i}"), "emails": emails})
}

fn writable_check(r: &crate::helpers::Resp) -> Value {
    r.body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "staging_writable"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_full_staging_file_answers_503_and_recovers_when_space_is_freed() {
    // The smallest whole cap that holds the migrated schema and a little more. No
    // provisioning log: its entries of the reads below would take the room the deletions
    // free, at times of their own.
    let cap_mb = (fresh_size().await + MIB / 4).div_ceil(MIB);
    let app = TestApp::start_with_staging(
        &format!("max_size_mb = {cap_mb}"),
        "provisioning_log_days = 0",
    )
    .await;
    app.get_root("/readyz").await.assert_status(200);

    let mut created = Vec::new();
    let full = loop {
        let i = created.len();
        assert!(
            i < 20_000,
            "no 503 within {i} users under a {cap_mb} MiB cap"
        );
        let r = app.post("/Users", &user(i)).await;
        match r.status {
            201 => created.push(r.id()),
            503 => break r,
            other => panic!("POST answered {other}: {}", r.text),
        }
    };
    assert!(created.len() > 10, "{} users fit", created.len());

    // A SCIM error that says what happened, and nothing of where or how.
    assert_eq!(full.body["schemas"], json!([ERROR_SCHEMA]), "{}", full.text);
    assert_eq!(full.body["status"], "503");
    let detail = full.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("storage is full"), "{detail}");
    let dir = app.dir().display().to_string();
    for leak in [
        dir.as_str(),
        "staging.db",
        "SQLITE",
        "INSERT",
        "database or disk",
    ] {
        assert!(!full.text.contains(leak), "{leak} in {}", full.text);
    }
    assert_eq!(full.header("retry-after"), Some("5"));

    // Not ready, and it says why.
    let r = app.get_root("/readyz").await;
    r.assert_status(503);
    let check = writable_check(&r);
    assert_eq!(check["ok"], false, "{}", r.text);
    assert_eq!(check["detail"], "the staging database's storage is full");
    assert!(!r.text.contains(&dir), "{}", r.text);

    // Nothing answered 201 is lost.
    for id in &created {
        app.get(&format!("/Users/{id}")).await.assert_status(200);
    }

    // Deleting users frees their emails' pages: readiness comes back by itself, with no
    // write having succeeded to tell it so.
    let mut deleted = 0;
    while app.get_root("/readyz").await.status != 200 {
        assert!(deleted < 60, "not ready after {deleted} deletions");
        app.delete(&format!("/Users/{}", created[deleted]))
            .await
            .assert_status(204);
        deleted += 1;
    }
    let r = app.get_root("/readyz").await;
    r.assert_status(200);
    assert_eq!(writable_check(&r)["ok"], true);
    // And writes resume.
    app.post("/Users", &user(created.len() + 1))
        .await
        .assert_status(201);
}
