//! The sync engine next to a running server: Entra-style provisioning over HTTP, then sync runs
//! (as the CLI makes them: a second store on the same staging file) into an application database
//! with the shipped Scifeon example mapping and schema.

use std::path::Path;

use chrono::Duration;
use serde_json::{Value, json};

use scim_bridge::config::Config;
use scim_bridge::config::Durability;
use scim_bridge::db::{Connector, open_staging};
use scim_bridge::sync::{RunOptions, RunStatus, RunSummary, SyncEngine, Trigger};

use crate::helpers::*;

struct Sync {
    engine: SyncEngine,
    app: Sql,
    _dir: tempfile::TempDir,
}

async fn engine(t: &TestApp) -> Sync {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app_db = dir.path().join("app.db");
    let text = format!(
        "[staging]\ndatabase = \"sqlite://{}\"\ndurability = \"normal\"\n\
         [applications.scifeon]\ndatabase = \"sqlite://{}\"\nschema = \"{}\"\n\
         [tenants.{ACME}]\ntoken = \"{ACME_TOKEN}\"\n\
         [tenants.{ACME}.sync]\nmapping = \"{}\"\nretention_hours = 24\n",
        t.db_path().display(),
        app_db.display(),
        root.join("sql/app/example_app.sql").display(),
        root.join("mappings/scifeon.toml").display(),
    );
    let config = Config::parse(&text, &dir.path().join("c.toml"), dir.path(), []).unwrap();
    let store = open_staging(&config.staging_db, Durability::Normal)
        .await
        .unwrap();
    let engine = SyncEngine::new(&config, store, &Connector, t.clock.clone())
        .await
        .unwrap();
    let app = Sql(app_db);
    Sync {
        engine,
        app,
        _dir: dir,
    }
}

impl Sync {
    async fn run(&self) -> RunSummary {
        let s = self
            .engine
            .run(ACME, Trigger::Api, RunOptions::default())
            .await
            .unwrap();
        assert!(matches!(s.status, RunStatus::Succeeded), "{s:?}");
        s
    }

    /// (UserName, IsActive) of every application user.
    async fn users(&self) -> Vec<(String, bool)> {
        self.app.query(
            "SELECT UserName, IsActive FROM scifeon_users ORDER BY UserName",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    async fn roles(&self, user: &str) -> Vec<String> {
        self.app.query(
            "SELECT role FROM user_roles WHERE user_key = ? ORDER BY role",
            &[&user],
            |r| r.get(0),
        )
    }
}

fn person(user_name: &str, given: &str, family: &str) -> Value {
    json!({"schemas": [USER_SCHEMA, ENTERPRISE], "userName": user_name, "active": true,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"value": user_name, "type": "work", "primary": true}],
        ENTERPRISE: {"department": "Quality Assurance"}})
}

#[tokio::test]
async fn provisioning_deactivation_and_deletion_reach_the_application() {
    let t = TestApp::start().await;
    let s = engine(&t).await;
    let mette = t
        .create_user(person("mette@example.com", "Mette", "Hansen"))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lars = t
        .create_user(person("lars@example.com", "Lars", "Berg"))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let admins = t.group("Scifeon Admins", &[&mette]).await;
    t.group("Scifeon Lab Aarhus", &[&lars]).await;

    let r = s.run().await;
    assert_eq!(r.counts.created, 2);
    assert_eq!(
        s.users().await,
        [
            ("lars@example.com".to_string(), true),
            ("mette@example.com".to_string(), true)
        ]
    );
    let dept: String = s.app.one(
        "SELECT Department FROM scifeon_users WHERE UserName = 'mette@example.com'",
        &[],
        |r| r.get(0),
    );
    assert_eq!(dept, "QA");
    assert_eq!(
        s.roles("mette@example.com").await,
        ["Administrator", "User"]
    );
    assert_eq!(s.roles("lars@example.com").await, ["LabTechnician", "User"]);

    // Entra removes Mette from the admins group: her roles follow.
    t.patch(
        &format!("/Groups/{admins}"),
        &patch_ops(json!([{"op": "Remove", "path": format!("members[value eq \"{mette}\"]")}])),
    )
    .await
    .assert_status(204);
    let r = s.run().await;
    assert_eq!((r.counts.updated, r.counts.roles_removed), (1, 2));
    assert!(s.roles("mette@example.com").await.is_empty());

    // Entra unassigns Lars (active "False", its dialect), and deletes Mette.
    t.patch(
        &format!("/Users/{lars}"),
        &patch_ops(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await
    .assert_status(200);
    t.delete(&format!("/Users/{mette}"))
        .await
        .assert_status(204);
    t.get(&format!("/Users/{mette}")).await.assert_status(404);
    let r = s.run().await;
    assert_eq!(r.counts.deactivated, 2);
    assert_eq!(
        s.users().await,
        [
            ("lars@example.com".to_string(), false),
            ("mette@example.com".to_string(), false)
        ]
    );
    assert!(s.roles("lars@example.com").await.is_empty(), "remove_roles");

    // After the retention window both are offboarded (the example deletes the row).
    t.clock.advance(Duration::hours(25));
    let r = s.run().await;
    assert_eq!(r.counts.offboarded, 2);
    assert!(s.users().await.is_empty());
    t.get(&format!("/Users/{lars}")).await.assert_status(404);
    let again = s.run().await;
    assert_eq!(again.counts.offboarded + again.counts.updated, 0);
}

/// A tenant without a sync section purges its inactive and deleted users after its own
/// retention; a syncing tenant's users are left to its runs (which offboard after purging).
#[tokio::test]
async fn tenants_without_sync_purge_on_their_own_retention() {
    let app = TestApp::start_syncing("").await;
    let create = |name: &str| json!({"schemas": [USER_SCHEMA], "userName": name, "active": true});
    let mut other = Vec::new();
    for name in ["gone@other", "deleted@other", "active@other"] {
        let r = app
            .call(reqwest::Method::POST, OTHER, "/Users", Some(&create(name)))
            .await;
        r.assert_status(201);
        other.push(r.id());
    }
    let off = patch_ops(json!([{"op": "replace", "value": {"active": false}}]));
    app.call(
        reqwest::Method::PATCH,
        OTHER,
        &format!("/Users/{}", other[0]),
        Some(&off),
    )
    .await
    .assert_status(200);
    app.call(
        reqwest::Method::DELETE,
        OTHER,
        &format!("/Users/{}", other[1]),
        None,
    )
    .await
    .assert_status(204);
    let synced = app.create_user(create("synced@acme")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.patch(&format!("/Users/{synced}"), &off)
        .await
        .assert_status(200);

    assert_eq!(app.state.purge_unsynced().await, 0, "within the retention");
    app.clock.advance(Duration::hours(47));
    assert_eq!(app.state.purge_unsynced().await, 0, "still within 48 hours");
    app.clock.advance(Duration::hours(2));
    assert_eq!(app.state.purge_unsynced().await, 2);
    let staged = |tenant: &str| {
        app.db().query(
            "SELECT id FROM users WHERE tenant = ? ORDER BY id",
            &[&tenant],
            |r| r.get::<_, String>(0),
        )
    };
    assert_eq!(staged(OTHER), vec![other[2].clone()]);
    assert_eq!(
        staged(ACME),
        vec![synced],
        "a syncing tenant's runs purge its users"
    );
    app.call(
        reqwest::Method::GET,
        OTHER,
        &format!("/Users/{}", other[0]),
        None,
    )
    .await
    .assert_error(404, None);
    assert_eq!(app.state.purge_unsynced().await, 0, "nothing left to purge");
}
