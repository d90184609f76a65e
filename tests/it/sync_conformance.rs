//! The sync engine on every staging backend: the same runs over a staging store filled through
//! the store API, into an SQLite application database with the shipped Scifeon example. Runs on
//! SQLite always, and on SQL Server staging when SCIM_BRIDGE_TEST_MSSQL is set (see
//! docs/sqlserver.md), each backend in its own tenant.

use std::path::Path;
use std::sync::Arc;

use chrono::Duration;
use serde_json::{Map, Value, json};

use scim_bridge::clock::FakeClock;
use scim_bridge::config::Config;
use scim_bridge::db::Connector;
use scim_bridge::scim::Limits;
use scim_bridge::scim::resource::normalize;
use scim_bridge::store::StoreError;
use scim_bridge::sync::ledger::RunQuery;
use scim_bridge::sync::{RunOptions, RunStatus, RunSummary, SyncEngine, Trigger};

use crate::store_conformance::{Backend, backends, group_change, id, rt, t};

fn person(user_name: &str, given: &str) -> Map<String, Value> {
    normalize(
        &rt(),
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "name": {"givenName": given, "familyName": "Test"},
            "emails": [{"type": "work", "value": user_name, "primary": true}],
            "active": true,
        }),
        &Limits::default(),
    )
    .unwrap()
    .doc
}

struct Engine {
    engine: SyncEngine,
    config: Config,
    clock: Arc<FakeClock>,
    app: crate::helpers::Sql,
    tenant: String,
    _dir: tempfile::TempDir,
}

async fn engine(b: &Backend) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app_db = dir.path().join("app.db");
    // JSON string escapes are valid TOML basic-string escapes.
    let quoted = |s: &str| serde_json::to_string(s).unwrap();
    let text = format!(
        "[staging]\ndatabase = {}\n\
         [applications.scifeon]\ndatabase = {}\nschema = {}\n\
         [tenants.\"{}\"]\ntoken = \"0123456789abcdef0123\"\n\
         [tenants.\"{}\".sync]\nmapping = {}\nretention_hours = 24\n",
        quoted(&b.database),
        quoted(&format!("sqlite://{}", app_db.display())),
        quoted(&root.join("sql/app/example_app.sql").display().to_string()),
        b.tenant,
        b.tenant,
        quoted(&root.join("mappings/scifeon.toml").display().to_string()),
    );
    let config = Config::parse(&text, &dir.path().join("c.toml"), dir.path(), []).unwrap();
    let clock = Arc::new(FakeClock::new(t(3)));
    let engine = SyncEngine::new(&config, b.store.clone(), &Connector, clock.clone())
        .await
        .unwrap();
    let app = crate::helpers::Sql(app_db);
    Engine {
        engine,
        config,
        clock,
        app,
        tenant: b.tenant.clone(),
        _dir: dir,
    }
}

impl Engine {
    async fn run(&self, dry_run: bool) -> RunSummary {
        let options = RunOptions {
            dry_run,
            ..RunOptions::default()
        };
        let s = self
            .engine
            .run(&self.tenant, Trigger::Api, options)
            .await
            .unwrap();
        assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
        s
    }

    /// (UserName, FirstName, IsActive) of every application user.
    async fn users(&self) -> Vec<(String, String, bool)> {
        self.app.query(
            "SELECT UserName, FirstName, IsActive FROM scifeon_users ORDER BY UserName",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
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

fn row(name: &str, first: &str, active: bool) -> (String, String, bool) {
    (name.to_string(), first.to_string(), active)
}

#[tokio::test]
async fn runs_create_update_deactivate_and_offboard_on_every_staging_backend() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let backend = s.backend_name();
        let e = engine(&b).await;
        let (ann, bob, carl) = (id(), id(), id());
        for (uid, name, given) in [
            (&ann, "ann@example.com", "Ann"),
            (&bob, "bob@example.com", "Bob"),
            (&carl, "carl@example.com", "Carl"),
        ] {
            s.create_user(tn, &rt, uid, &person(name, given), t(1))
                .await
                .unwrap();
        }
        s.create_group(
            tn,
            &rt,
            &id(),
            group_change("Scifeon Admins", &[&ann]),
            t(1),
        )
        .await
        .unwrap();
        s.create_group(
            tn,
            &rt,
            &id(),
            group_change("Scifeon Lab Aarhus", &[&bob, &carl]),
            t(1),
        )
        .await
        .unwrap();

        // A dry run reports and writes nothing.
        let dry = e.run(true).await;
        assert_eq!(dry.counts.created, 3, "{backend}");
        assert!(e.users().await.is_empty(), "{backend}");

        let r = e.run(false).await;
        assert_eq!(
            (r.counts.created, r.counts.roles_added),
            (3, 6),
            "{backend}"
        );
        assert_eq!(
            e.users().await,
            [
                row("ann@example.com", "Ann", true),
                row("bob@example.com", "Bob", true),
                row("carl@example.com", "Carl", true)
            ],
            "{backend}"
        );
        assert_eq!(e.roles("ann@example.com").await, ["Administrator", "User"]);
        assert_eq!(e.roles("bob@example.com").await, ["LabTechnician", "User"]);

        // Nothing changed: the watermark covers everyone.
        let r = e.run(false).await;
        assert_eq!(
            (r.counts.created, r.counts.updated, r.counts.unchanged),
            (0, 0, 0),
            "{backend}"
        );

        // One rename: one update; a deactivation: inactive and without roles.
        let rename = |mut d: Map<String, Value>| {
            d.insert(
                "name".into(),
                json!({"givenName": "Robert", "familyName": "Test"}),
            );
            Ok(d)
        };
        s.update_user(tn, &rt, &bob, None, t(2), &rename)
            .await
            .unwrap();
        let deactivate = |mut d: Map<String, Value>| {
            d.insert("active".into(), Value::Bool(false));
            Ok(d)
        };
        s.update_user(tn, &rt, &carl, None, t(2), &deactivate)
            .await
            .unwrap();
        let r = e.run(false).await;
        assert_eq!(
            (
                r.counts.updated,
                r.counts.deactivated,
                r.counts.roles_removed
            ),
            (1, 1, 2),
            "{backend}"
        );
        assert_eq!(
            e.users().await,
            [
                row("ann@example.com", "Ann", true),
                row("bob@example.com", "Robert", true),
                row("carl@example.com", "Carl", false)
            ],
            "{backend}"
        );
        assert!(e.roles("carl@example.com").await.is_empty(), "{backend}");

        // What the admin API reads back: the run, its items with field-level changes, the
        // links, the pending offboarding and its due time, no lease held.
        let db = &b.store;
        let last = db.last_run(tn).await.unwrap().unwrap();
        assert_eq!(last.id, r.run_id, "{backend}");
        assert_eq!(
            (
                last.status.as_str(),
                last.updated,
                last.deactivated,
                last.roles_removed
            ),
            ("succeeded", 1, 1, 2),
            "{backend}"
        );
        let (n, items) = db.items(r.run_id, None, 10, 0).await.unwrap();
        assert_eq!(n, 2, "{backend}");
        let by_user = |u: &str| items.iter().find(|i| i.user_id == u).unwrap();
        assert_eq!(by_user(&bob).outcome, "updated", "{backend}");
        assert_eq!(
            by_user(&bob).changes["FirstName"],
            json!({"before": "Bob", "after": "Robert"}),
            "{backend}"
        );
        assert_eq!(by_user(&carl).outcome, "deactivated", "{backend}");
        assert_eq!(by_user(&carl).roles_removed, ["LabTechnician", "User"]);
        let link = db.link(tn, &carl).await.unwrap().unwrap();
        assert_eq!(
            (link.app_key.as_str(), link.state.as_str()),
            ("carl@example.com", "deactivated"),
            "{backend}"
        );
        assert!(link.applied_roles.is_empty(), "{backend}");
        let (n, pending) = db.pending_offboardings(tn, 24, 10, 0).await.unwrap();
        assert_eq!(n, 1, "{backend}");
        assert_eq!(
            (pending[0].user_id.as_str(), pending[0].state.as_str()),
            (carl.as_str(), "inactive"),
            "{backend}"
        );
        assert_eq!(pending[0].due_at, "2030-01-02T02:00:00.000Z", "{backend}");
        assert_eq!(db.lease(tn, t(3)).await.unwrap(), None, "{backend}");

        // Inside the retention nothing more happens; after it, purge and offboard.
        let r = e.run(false).await;
        assert_eq!(r.counts.offboarded, 0, "{backend}");
        e.clock.advance(Duration::hours(24));
        let r = e.run(false).await;
        assert_eq!(r.counts.offboarded, 1, "{backend}");
        assert_eq!(e.users().await.len(), 2, "{backend}");
        assert!(
            matches!(
                s.get_user(tn, &carl, false).await,
                Err(StoreError::NotFound)
            ),
            "{backend}"
        );
        let (_, items) = db.items(r.run_id, None, 10, 0).await.unwrap();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.user_id.as_str(), i.outcome.as_str()))
                .collect::<Vec<_>>(),
            [(carl.as_str(), "offboarded")],
            "{backend}"
        );
        assert_eq!(db.count_pending(tn, 24).await.unwrap(), 0, "{backend}");
        assert!(db.link(tn, &carl).await.unwrap().is_none(), "{backend}");
        let again = e.run(false).await;
        assert_eq!(
            again.counts.offboarded + again.counts.updated,
            0,
            "{backend}"
        );
        // Every run is in the ledger, newest first; the first was the dry run.
        let (total, runs) = db
            .runs(&RunQuery {
                tenant: Some(tn.to_string()),
                status: None,
                since: None,
                until: None,
                limit: 100,
                offset: 0,
            })
            .await
            .unwrap();
        assert_eq!(total, 7, "{backend}");
        assert_eq!(runs[0].id, again.run_id, "{backend}");
        assert!(runs[6].dry_run && !runs[5].dry_run, "{backend}");
    }
}

/// Holds a run at the start of its change pass (lease taken) until told to go on.
struct Pause {
    started: std::sync::mpsc::Sender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl scim_bridge::sync::Progress for Pause {
    fn start(&self, _users: u64) {
        self.started.send(()).unwrap();
        self.go.lock().unwrap().recv().unwrap();
    }
}

/// Two replicas on one staging database: while one runs (holding the tenant's lease), the
/// other's run is recorded as skipped; once the first has finished, the second runs.
#[tokio::test]
async fn a_second_replica_is_skipped_while_a_run_holds_the_lease() {
    for b in backends().await {
        let backend = b.store.backend_name();
        let e = engine(&b).await;
        b.store
            .create_user(
                &b.tenant,
                &rt(),
                &id(),
                &person("ann@example.com", "Ann"),
                t(1),
            )
            .await
            .unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        // The other replica: its own process, as far as the database can tell (own runtime,
        // own connections, own engine).
        let replica = {
            let (config, tenant, database, clock) = (
                e.config.clone(),
                b.tenant.clone(),
                b.database.clone(),
                e.clock.clone(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let db = scim_bridge::config::resolve_database(&database, None, Path::new("."))
                        .unwrap();
                    let store =
                        scim_bridge::db::open_staging(&db, scim_bridge::config::Durability::Normal)
                            .await
                            .unwrap();
                    let other = SyncEngine::new(&config, store, &Connector, clock)
                        .await
                        .unwrap();
                    started.recv().unwrap();
                    let skipped = other
                        .run(&tenant, Trigger::Schedule, RunOptions::default())
                        .await
                        .unwrap();
                    go.send(()).unwrap();
                    skipped
                })
            })
        };
        let pause = Arc::new(Pause {
            started: started_tx,
            go: std::sync::Mutex::new(go_rx),
        });
        let options = RunOptions {
            progress: Some(pause),
            ..RunOptions::default()
        };
        // The progress hook blocks this runtime while the replica runs on its own.
        let first = e
            .engine
            .run(&e.tenant, Trigger::Api, options)
            .await
            .unwrap();
        let skipped = replica.join().unwrap();
        assert_eq!(skipped.status, RunStatus::Skipped, "{backend}");
        assert_eq!(first.status, RunStatus::Succeeded, "{backend}");
        assert_eq!(first.counts.created, 1, "{backend}");
        let db = &b.store;
        let recorded = db.run(skipped.run_id).await.unwrap().unwrap();
        assert_eq!(recorded.status, "skipped", "{backend}");
        assert_eq!(db.lease(&b.tenant, t(3)).await.unwrap(), None, "{backend}");
        // Free again: the next run takes the lease.
        assert_eq!(e.run(false).await.status, RunStatus::Succeeded, "{backend}");
    }
}
