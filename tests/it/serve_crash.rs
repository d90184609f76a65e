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
        let port = free_port();
        let path = child_config(dir.path(), port, "warn", "crash", TOKEN);
        let mut server = Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("SCIM_BRIDGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}/scim-api/v1/crash/scim");
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
    assert!(answered.len() > 10, "the load ran: {}", answered.len());
    let mut lost_users = 0;
    let mut lost_entries = 0;
    for (request_id, id) in &answered {
        lost_users += i64::from(db.scalar("SELECT count(*) FROM users WHERE id = ?", &[id]) == 0);
        lost_entries += i64::from(
            db.scalar(
                "SELECT count(*) FROM provisioning_log WHERE request_id = ? AND status = 201",
                &[request_id],
            ) == 0,
        );
    }
    assert_eq!(
        (lost_users, lost_entries),
        (0, 0),
        "of {} answered creates",
        answered.len()
    );
}
