//! What `scim-bridge sync` prints, run as a process: a dry run's summary (the first users of
//! each kind with the columns that change, every failure), `--verbose`'s changed values, and a
//! real run's failures.

use scim_bridge::store::RequestLog;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use scim_bridge::clock::{Clock, SystemClock};
use scim_bridge::config::{Config, Durability};
use scim_bridge::db::open_staging;
use scim_bridge::scim::Limits;
use scim_bridge::scim::resource::normalize;

use crate::store_conformance::rt;

const TENANT: &str = "cli";

fn config_file(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = dir.join("scim-bridge.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nlevel = \"warn\"\n\
             [staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"normal\"\n\
             [applications.primedocs]\ndatabase = \"sqlite://app.db\"\nschema = \"{}\"\n\
             [tenants.{TENANT}]\ntoken = \"cli-test-token-0123456789\"\n\
             [tenants.{TENANT}.sync]\nmapping = \"{}\"\n",
            root.join("sql/app/example_app.sql").display(),
            root.join("mappings/primedocs.toml").display(),
        ),
    )
    .unwrap();
    path
}

fn sync(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let Output { status, stdout, .. } = Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .args(["sync", "--tenant", TENANT, "--config"])
        .arg(config)
        .args(args)
        .env_remove("SCIM_BRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (status.code(), String::from_utf8(stdout).unwrap())
}

fn user(i: usize, external_id: bool) -> Value {
    let mut u = json!({"userName": format!("user{i:02}@example.com"), "active": true,
        "displayName": format!("Old Name {i:02}"),
        "name": {"givenName": format!("Given{i:02}"), "familyName": "Family"}});
    if external_id {
        u["externalId"] = json!(format!("ext-{i:02}"));
    }
    u
}

#[tokio::test]
async fn sync_prints_a_dry_run_summary_verbose_changes_and_a_real_runs_failures() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let store = open_staging(
        &Config::load(&config, []).unwrap().staging_db,
        Durability::Normal,
    )
    .await
    .unwrap();
    let rt = rt();
    let now = SystemClock.now();
    for i in 0..27 {
        let doc = normalize(&rt, &user(i, i < 25), &Limits::default())
            .unwrap()
            .doc;
        store
            .create_user(
                TENANT,
                &rt,
                &format!("u{i:02}"),
                &doc,
                now,
                &RequestLog::default(),
            )
            .await
            .unwrap();
    }

    let (code, out) = sync(&config, &["--dry-run"]);
    assert_eq!(code, Some(5), "completed with errors: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(out.contains("created 25, updated 0"), "{out}");
    assert!(lines.contains(&"  created: 25"), "{out}");
    let listed = lines
        .iter()
        .filter(|l| l.starts_with("    u") && l.contains("(key ext-"))
        .count();
    assert_eq!(listed, 10, "{out}");
    assert!(
        lines.contains(
            &"    u00 user00@example.com (key ext-00): display_name, external_id, first_name, initials, is_active, language, last_name, user_name"
        ),
        "the columns that change, and not the empty ones (email, phone, …): {out}"
    );
    assert!(lines.contains(&"    … and 15 more"), "{out}");
    assert!(lines.contains(&"  failed: 2"), "{out}");
    for id in ["u25", "u26"] {
        assert!(
            out.contains(&format!(
                "    {id} user{}@example.com (key -): key: the key attribute `externalId` is empty for this user",
                &id[1..]
            )),
            "{out}"
        );
    }
    for value in ["Old Name", "Given", "->", "null"] {
        assert!(!out.contains(value), "{value:?} in the summary: {out}");
    }

    // A real run prints its failures, not its changes.
    let (code, out) = sync(&config, &[]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("created 25, updated 0"), "{out}");
    assert_eq!(
        out.matches("the key attribute `externalId` is empty")
            .count(),
        2
    );
    assert!(!out.contains("u00"), "{out}");

    for i in 0..3 {
        store
            .update_user(
                TENANT,
                &rt,
                &format!("u{i:02}"),
                None,
                now,
                &|mut d| {
                    d.insert("displayName".into(), json!(format!("New Name {i:02}")));
                    Ok(d)
                },
                &RequestLog::default(),
            )
            .await
            .unwrap();
    }
    let (code, out) = sync(&config, &["--dry-run"]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("\n  updated: 3\n"), "{out}");
    assert!(
        out.contains("    u00 user00@example.com (key ext-00): display_name\n"),
        "only the column that changes: {out}"
    );
    assert!(!out.contains("created:"), "{out}");

    let (code, out) = sync(&config, &["--dry-run", "--verbose"]);
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains(
            "u00 user00@example.com (key ext-00): updated\n    display_name: \"Old Name 00\" -> \"New Name 00\"\n"
        ),
        "{out}"
    );
    assert_eq!(out.matches(" -> ").count(), 3, "changed values only: {out}");
    assert!(!out.contains("user_name"), "{out}");
    assert_eq!(out.matches("is empty for this user").count(), 2, "{out}");

    let (code, _) = sync(&config, &["--verbose"]);
    assert_eq!(code, Some(2), "--verbose needs --dry-run");
}
