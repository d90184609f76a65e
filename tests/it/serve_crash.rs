//! `scim-bridge serve` killed (SIGKILL) under write load: every write it answered is in the
//! staging database afterwards, and so is its provisioning log entry.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use crate::helpers::{Sql, USER_SCHEMA, child_config, free_port};

const TOKEN: &str = "serve-crash-token-0123456789";

#[tokio::test]
async fn an_answered_write_and_its_log_entry_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let answered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for round in 0..3 {
        let (mut server, port) = serve(dir.path()).await;
        let base = format!("http://127.0.0.1:{port}/scim-api/v1/crash/scim");
        let client = reqwest::Client::new();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (client, base, answered) = (client.clone(), base.clone(), answered.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let request_id = format!("r{round}-{w}-{i}");
                        let body = json!({"schemas": [USER_SCHEMA],
                            "userName": format!("{request_id}@example.com")});
                        let r = client
                            .post(format!("{base}/Users"))
                            .bearer_auth(TOKEN)
                            .header("content-type", "application/scim+json")
                            .header("x-request-id", &request_id)
                            .json(&body)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 201 => {
                                let id = r
                                    .json::<serde_json::Value>()
                                    .await
                                    .ok()
                                    .and_then(|b| b["id"].as_str().map(str::to_string));
                                if let Some(id) = id {
                                    answered.lock().unwrap().push((request_id, id));
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..700))).await;
        server.kill().unwrap();
        server.wait().unwrap();
        for w in writers {
            let _ = w.await;
        }
    }
    let db = Sql(dir.path().join("staging.db"));
    let answered = answered.lock().unwrap().clone();
    let entry = |table: &str, request_id: &str| {
        db.scalar(
            &format!("SELECT count(*) FROM {table} WHERE request_id = ? AND status = 201"),
            &[&request_id],
        )
    };
    assert!(answered.len() > 10, "the load ran: {}", answered.len());
    let mut lost_users = 0;
    let mut lost_entries = 0;
    for (request_id, id) in &answered {
        lost_users += i64::from(db.scalar("SELECT count(*) FROM users WHERE id = ?", &[id]) == 0);
        // In the log, or still in its inbox when the kill came before the move.
        lost_entries += i64::from(
            entry("provisioning_log", request_id) + entry("provisioning_log_inbox", request_id)
                == 0,
        );
    }
    assert_eq!(
        (lost_users, lost_entries),
        (0, 0),
        "of {} answered creates",
        answered.len()
    );

    // Started again, the server moves what the kill left in the inbox into the log.
    let (mut server, _) = serve(dir.path()).await;
    let inbox = || db.scalar("SELECT count(*) FROM provisioning_log_inbox", &[]);
    for _ in 0..200 {
        if inbox() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(inbox(), 0, "the inbox is emptied at start");
    let missing = answered
        .iter()
        .filter(|(request_id, _)| entry("provisioning_log", request_id) != 1)
        .count();
    assert_eq!(
        missing, 0,
        "every answered create's entry is in the log once"
    );
}

/// `scim-bridge serve` on a free port of its own, answering /healthz.
async fn serve(dir: &std::path::Path) -> (std::process::Child, u16) {
    let port = free_port();
    let path = child_config(dir, port, "warn", "crash", TOKEN);
    let server = Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("SCIM_BRIDGE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (server, port)
}
