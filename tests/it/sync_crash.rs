//! Crash recovery with real processes: `scim-bridge sync` is killed (SIGKILL) at a random
//! point of its run, then run again at once. The second run must not wait for the dead one's
//! lease, must close the dead run in the ledger, and together the runs must converge on the
//! staged users — every row once, nothing lost.

use scim_bridge::store::RequestLog;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use scim_bridge::clock::{Clock, SystemClock};
use scim_bridge::config::{Config, Durability};
use scim_bridge::db::open_staging;
use scim_bridge::scim::Limits;
use scim_bridge::scim::resource::normalize;

use crate::helpers::Sql;
use crate::store_conformance::rt;

const USERS: usize = 1200;
const TENANT: &str = "crash";

fn config_file(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = dir.join("scim-bridge.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nlevel = \"warn\"\n\
             [staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"full\"\n\
             [applications.scifeon]\ndatabase = \"sqlite://app.db\"\nschema = \"{}\"\n\
             [tenants.{TENANT}]\ntoken = \"crash-test-token-0123456789\"\n\
             [tenants.{TENANT}.sync]\nmapping = \"{}\"\nbatch_size = 10\n",
            root.join("sql/app/example_app.sql").display(),
            root.join("mappings/scifeon.toml").display(),
        ),
    )
    .unwrap();
    path
}

fn sync(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scim-bridge"));
    c.args(["sync", "--tenant", TENANT, "--config"])
        .arg(config)
        .env_remove("SCIM_BRIDGE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test]
async fn a_sync_killed_mid_run_is_taken_over_at_once_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = config_file(dir.path());
    let config = Config::load(&config_path, []).unwrap();
    let store = open_staging(&config.staging_db, Durability::Normal)
        .await
        .unwrap();
    let rt = rt();
    let now = SystemClock.now();
    for i in 0..USERS {
        let doc = normalize(
            &rt,
            &json!({"userName": format!("user{i:05}@example.com"), "active": true,
                "name": {"givenName": "Crash", "familyName": format!("Test{i}")}}),
            &Limits::default(),
        )
        .unwrap()
        .doc;
        store
            .create_user(
                TENANT,
                &rt,
                &format!("u{i:05}"),
                &doc,
                now,
                &RequestLog::default(),
            )
            .await
            .unwrap();
    }
    let staging = Sql(dir.path().join("staging.db"));
    let app = Sql(dir.path().join("app.db"));
    let mut rng = rand::thread_rng();
    let mut killed_running = 0;
    for round in 0..3 {
        // New work for every round: rename a few hundred users.
        for i in (round..USERS).step_by(4) {
            let name = format!("Round{round}");
            store
                .update_user(
                    TENANT,
                    &rt,
                    &format!("u{i:05}"),
                    None,
                    now,
                    &|mut d| {
                        d.insert("name".into(), json!({"givenName": name, "familyName": "X"}));
                        Ok(d)
                    },
                    &RequestLog::default(),
                )
                .await
                .unwrap();
        }
        let mut child = sync(&config_path).spawn().unwrap();
        // Kill it once its run is in the ledger, at a random point after that.
        let started = Instant::now();
        while staging.scalar(
            "SELECT count(*) FROM sync_runs WHERE status = 'running'",
            &[],
        ) == 0
            && started.elapsed() < Duration::from_secs(60)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        child.kill().unwrap();
        child.wait().unwrap();
        let left_running = staging.scalar(
            "SELECT count(*) FROM sync_runs WHERE status = 'running'",
            &[],
        );
        killed_running += left_running;
        // The next run goes at once: the dead holder's lease is taken over, not waited for.
        let out = sync(&config_path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "round {round}: {stderr}");
        assert_eq!(
            staging.scalar(
                "SELECT count(*) FROM sync_runs WHERE status = 'running'",
                &[]
            ),
            0,
            "round {round}: the killed run is closed"
        );
        assert_eq!(
            staging.scalar(
                "SELECT count(*) FROM sync_runs WHERE status = 'failed' AND error LIKE 'abandoned%'",
                &[]
            ),
            killed_running,
            "round {round}"
        );
        assert_eq!(
            staging.scalar(
                "SELECT count(*) FROM sync_runs WHERE status = 'skipped'",
                &[]
            ),
            0
        );
        // Converged: every staged user once, with this round's name.
        assert_eq!(
            app.scalar("SELECT count(*) FROM scifeon_users", &[]),
            USERS as i64
        );
        assert_eq!(
            app.scalar(
                "SELECT count(*) FROM scifeon_users WHERE FirstName = ?",
                &[&format!("Round{round}")]
            ),
            (round..USERS).step_by(4).count() as i64,
            "round {round}"
        );
        assert_eq!(
            staging.scalar("SELECT count(*) FROM sync_links", &[]),
            USERS as i64
        );
    }
    assert!(
        killed_running > 0,
        "at least one kill landed mid-run (runs of {USERS} users in batches of 10)"
    );
}
