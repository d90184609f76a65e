//! The sync engine on every staging backend: the same runs over a staging store filled through
//! the store API, into an SQLite application database with the shipped Scifeon example. Runs on
//! SQLite always, and on SQL Server staging when SCIM_BRIDGE_TEST_MSSQL is set (see
//! docs/sqlserver.md), each backend in its own tenant (and an application named for it).
//! Recovery (heartbeats, leases of dead holders, abandoned runs, operators' releases),
//! quarantine, a full run's repair of the application with `verify`'s drift report, and the
//! ownership of application rows are tested here too, through the store and the engine; only
//! the audit trail and how an owner came to own a row, which nothing reads back yet, are read
//! from each backend's own table.

use scim_bridge::store::RequestLog;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use scim_bridge::clock::{Clock, FakeClock};
use scim_bridge::config::{Config, DbLocation, resolve_database};
use scim_bridge::db::Connector;
use scim_bridge::db::mssql::pool::MssqlPool;
use scim_bridge::scim::Limits;
use scim_bridge::scim::resource::normalize;
use scim_bridge::store::StoreError;
use scim_bridge::sync::holder::Holder;
use scim_bridge::sync::ledger::RunQuery;
use scim_bridge::sync::lifecycle::{prune_runs, run_retention};
use scim_bridge::sync::store::{BeginRun, FinishRun, Heartbeat, Owned, PruneRuns, RowsOf};
use scim_bridge::sync::{
    Change, RunOptions, RunStatus, RunSummary, SyncEngine, SyncError, Trigger,
};

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
    /// The application table the tenant writes, as its rows' owners name it.
    rows_of: RowsOf,
    _dir: tempfile::TempDir,
}

async fn engine(b: &Backend) -> Engine {
    engine_with(b, "").await
}

/// An engine whose tenant has `sync` (TOML lines) added to its `[tenants.NAME.sync]`.
async fn engine_with(b: &Backend, sync: &str) -> Engine {
    engine_mapped(b, sync, "").await
}

/// An engine as [`engine_with`], whose mapping is the shipped Scifeon one with `target` (TOML
/// lines) added to its `[target]`. The application is named for the tenant: owners of
/// application rows are recorded by application, table and key, and on a SQL Server staging
/// database shared by every test (and run) the same keys would otherwise belong to the
/// tenant of whichever test wrote them first.
async fn engine_mapped(b: &Backend, sync: &str, target: &str) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app_db = dir.path().join("app.db");
    let application = format!("scifeon-{}", b.tenant);
    let shipped = std::fs::read_to_string(root.join("mappings/scifeon.toml")).unwrap();
    let mapping = shipped
        .replace(
            "database = \"scifeon\"\n",
            &format!("database = \"{application}\"\n"),
        )
        .replace(
            "key = \"userName\"\n",
            &format!("key = \"userName\"\n{target}"),
        );
    assert_ne!(mapping, shipped);
    let mapping_path = dir.path().join("scifeon.toml");
    std::fs::write(&mapping_path, mapping).unwrap();
    // JSON string escapes are valid TOML basic-string escapes.
    let quoted = |s: &str| serde_json::to_string(s).unwrap();
    let text = format!(
        "[staging]\ndatabase = {}\n\
         [applications.\"{application}\"]\ndatabase = {}\nschema = {}\n\
         [tenants.\"{}\"]\ntoken = \"0123456789abcdef0123\"\n\
         [tenants.\"{}\".sync]\nmapping = {}\nretention_hours = 24\n{sync}",
        quoted(&b.database),
        quoted(&format!("sqlite://{}", app_db.display())),
        quoted(&root.join("sql/app/example_app.sql").display().to_string()),
        b.tenant,
        b.tenant,
        quoted(&mapping_path.display().to_string()),
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
        rows_of: RowsOf {
            application,
            table: "scifeon_users".into(),
            scope: String::new(),
        },
        _dir: dir,
    }
}

impl Engine {
    async fn run(&self, dry_run: bool) -> RunSummary {
        let options = RunOptions {
            dry_run,
            ..RunOptions::default()
        };
        let s = self.run_with(options).await;
        assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
        s
    }

    /// A run, whatever it came to.
    async fn run_with(&self, options: RunOptions) -> RunSummary {
        self.engine
            .run(&self.tenant, Trigger::Api, options)
            .await
            .unwrap()
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
            s.create_user(
                tn,
                &rt,
                uid,
                &person(name, given),
                t(1),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        }
        s.create_group(
            tn,
            &rt,
            &id(),
            group_change("Scifeon Admins", &[&ann]),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        s.create_group(
            tn,
            &rt,
            &id(),
            group_change("Scifeon Lab Aarhus", &[&bob, &carl]),
            t(1),
            &RequestLog::default(),
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
        s.update_user(tn, &rt, &bob, None, t(2), &rename, &RequestLog::default())
            .await
            .unwrap();
        let deactivate = |mut d: Map<String, Value>| {
            d.insert("active".into(), Value::Bool(false));
            Ok(d)
        };
        s.update_user(
            tn,
            &rt,
            &carl,
            None,
            t(2),
            &deactivate,
            &RequestLog::default(),
        )
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
        // The user's sync side: its link, when its retention started, its items newest first.
        let mine = db.user_sync(tn, &carl, 1).await.unwrap();
        assert_eq!(
            mine.link.as_ref().map(|l| l.state.as_str()),
            Some("deactivated"),
            "{backend}"
        );
        assert!(mine.failing.is_none() && mine.queued.is_none(), "{backend}");
        assert_eq!(
            (mine.deactivated_at.as_deref(), mine.deleted_at.as_deref()),
            (Some("2030-01-01T02:00:00.000Z"), None),
            "{backend}"
        );
        assert_eq!(mine.items.len(), 1, "the limit: {backend}");
        assert!(
            mine.items_total >= 2,
            "created, then deactivated: {backend}"
        );
        assert_eq!(
            (mine.items[0].run_id, mine.items[0].item.outcome.as_str()),
            (r.run_id, "deactivated"),
            "newest first: {backend}"
        );
        assert_eq!(db.user_sync(tn, "nobody", 10).await.unwrap().items_total, 0);

        // Every row the engine created is this tenant's.
        let keys: Vec<String> = ["ann", "bob", "carl"]
            .iter()
            .map(|n| format!("{n}@example.com"))
            .collect();
        let owners = s.owners(&e.rows_of, &keys).await.unwrap();
        assert_eq!(owners.len(), 3, "{owners:?}: {backend}");
        assert!(owners.values().all(|t| t == tn), "{owners:?}: {backend}");

        // Inside the retention nothing more happens; after it, purge and offboard.
        let r = e.run(false).await;
        assert_eq!(r.counts.offboarded, 0, "{backend}");
        e.clock.advance(Duration::hours(24));
        let r = e.run(false).await;
        assert_eq!(r.counts.offboarded, 1, "{backend}");
        assert_eq!(e.users().await.len(), 2, "{backend}");
        // The deleted row's owner record goes with it.
        let owners = s.owners(&e.rows_of, &keys).await.unwrap();
        assert!(
            !owners.contains_key("carl@example.com") && owners.len() == 2,
            "{owners:?}: {backend}"
        );
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
        // The offboarding's item says what it did (the mapping deletes the row) and what the
        // row held before, as the engine last wrote it (deactivated).
        assert_eq!(items[0].action.as_deref(), Some("delete"), "{backend}");
        assert_eq!(
            (
                &items[0].changes["FirstName"],
                &items[0].changes["IsActive"]
            ),
            (
                &json!({"before": "Carl", "after": null}),
                &json!({"before": false, "after": null})
            ),
            "{backend}"
        );
        assert!(
            items[0].changes.values().all(|c| c["after"].is_null()),
            "{backend}"
        );
        // Other items record no action.
        let (_, earlier) = db.items(dry.run_id, None, 10, 0).await.unwrap();
        assert!(earlier.iter().all(|i| i.action.is_none()), "{backend}");
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
                trigger: None,
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
        // The trigger filter: every run here was started the same way, none by the others.
        let started_as = runs[0].trigger.clone();
        assert!(runs.iter().all(|r| r.trigger == started_as), "{backend}");
        for trigger in ["cli", "api", "schedule"] {
            let q = RunQuery {
                tenant: Some(tn.to_string()),
                trigger: Some(trigger.to_string()),
                limit: 100,
                ..RunQuery::default()
            };
            let expected = if trigger == started_as { 7 } else { 0 };
            let (total, page) = db.runs(&q).await.unwrap();
            assert_eq!(
                (total, page.len()),
                (expected, expected as usize),
                "{backend} {trigger}"
            );
        }
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
                &RequestLog::default(),
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

/// A run begun through the store: `holder` leases it (unless it is a dry run) for five
/// minutes from `at`.
fn begin(
    tenant: &str,
    holder: &str,
    take_from: Option<&str>,
    dry_run: bool,
    at: DateTime<Utc>,
) -> BeginRun {
    BeginRun {
        tenant: tenant.to_string(),
        holder: holder.to_string(),
        take_from: take_from.map(str::to_string),
        trigger: "cli",
        dry_run,
        full: false,
        started_at: at,
        lease_expires: at + Duration::minutes(5),
        watermark_from: Some(0),
    }
}

/// A holder of this host whose process is gone.
fn dead_holder() -> String {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    Holder {
        pid,
        start: 1,
        ..Holder::this_process()
    }
    .to_string()
}

/// How many times `actor` did `action` to the tenant, from the backend's audit table.
async fn audited(b: &Backend, action: &str, actor: &str) -> i64 {
    if b.store.backend_name() == "sqlite" {
        let path = b.database.strip_prefix("sqlite://").unwrap();
        return crate::helpers::Sql(path.into()).scalar(
            "SELECT count(*) FROM sync_audit WHERE tenant = ? AND action = ? AND actor = ?",
            &[&b.tenant, &action, &actor],
        );
    }
    let DbLocation::SqlServer(server) =
        resolve_database(&b.database, None, Path::new(".")).unwrap()
    else {
        panic!("{} is not SQL Server", b.database);
    };
    let pool = MssqlPool::connect(&server).await.unwrap();
    let mut c = pool.get().await.unwrap();
    // The tenant, action and actor are this test's own names, without quotes.
    let row = c
        .simple_query(format!(
            "SELECT COUNT_BIG(*) FROM sync.audit WHERE tenant = N'{}' AND action = N'{action}' \
             AND actor = N'{actor}'",
            b.tenant
        ))
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    row.get::<i64, _>(0).unwrap()
}

/// A heartbeat records the run's last sign of life and renews its lease; an operator can
/// release the lease whoever holds it (audited), after which the run's heartbeat says it is
/// lost.
#[tokio::test]
async fn heartbeats_renew_the_lease_until_an_operator_releases_it() {
    for b in backends().await {
        let (s, tn) = (&b.store, b.tenant.as_str());
        let backend = s.backend_name();
        let holder = Holder::this_process().to_string();
        let begun = s
            .begin_run(begin(tn, &holder, None, false, t(3)))
            .await
            .unwrap();
        assert!(begun.leased, "{backend}");
        let later = t(3) + Duration::seconds(20);
        let beat = Heartbeat {
            tenant: tn.to_string(),
            run_id: begun.run_id,
            holder: holder.clone(),
            leased: true,
            now: later,
            lease_expires: later + Duration::seconds(30),
        };
        assert!(s.heartbeat(beat.clone()).await.unwrap(), "{backend}");
        let lease = s.lease_row(tn).await.unwrap().unwrap();
        assert_eq!(
            (
                lease.holder.as_str(),
                lease.run_id,
                lease.acquired_at,
                lease.expires_at
            ),
            (
                holder.as_str(),
                Some(begun.run_id),
                t(3),
                later + Duration::seconds(30)
            ),
            "{backend}"
        );
        let running = s.running_runs(Some(tn)).await.unwrap();
        assert_eq!(running.len(), 1, "{backend}");
        let r = &running[0];
        assert_eq!(
            (
                r.id,
                r.tenant.as_str(),
                r.holder.as_deref(),
                r.heartbeat_at,
                r.started_at,
                r.dry_run
            ),
            (
                begun.run_id,
                tn,
                Some(holder.as_str()),
                Some(later),
                t(3),
                false
            ),
            "{backend}"
        );
        assert!(
            s.running_runs(None)
                .await
                .unwrap()
                .iter()
                .any(|r| r.id == begun.run_id),
            "{backend}"
        );

        let released = s.release_lease(tn, "ops-admin", later).await.unwrap();
        assert_eq!(released, Some(lease), "{backend}");
        assert_eq!(
            s.release_lease(tn, "ops-admin", later).await.unwrap(),
            None,
            "{backend}"
        );
        assert_eq!(
            audited(&b, "release_lease", "ops-admin").await,
            1,
            "{backend}"
        );
        assert!(
            !s.heartbeat(beat).await.unwrap(),
            "the lease is lost: {backend}"
        );
        // A dry run holds no lease: its heartbeat only records that it lives.
        let dry = s
            .begin_run(begin(tn, &holder, None, true, t(3)))
            .await
            .unwrap();
        let dry_beat = Heartbeat {
            tenant: tn.to_string(),
            run_id: dry.run_id,
            holder,
            leased: false,
            now: later,
            lease_expires: later,
        };
        assert!(s.heartbeat(dry_beat).await.unwrap(), "{backend}");
        assert_eq!(s.lease_row(tn).await.unwrap(), None, "{backend}");
    }
}

/// Runs left running are closed as failed with the reason, once: a closed run is not
/// closed again.
#[tokio::test]
async fn close_runs_closes_only_runs_still_running() {
    for b in backends().await {
        let (s, tn) = (&b.store, b.tenant.as_str());
        let backend = s.backend_name();
        let holder = Holder::this_process().to_string();
        let a = s
            .begin_run(begin(tn, &holder, None, true, t(3)))
            .await
            .unwrap();
        let c = s
            .begin_run(begin(tn, &holder, None, true, t(3)))
            .await
            .unwrap();
        assert_eq!(
            s.close_runs(&[], "closed by the test", t(4)).await.unwrap(),
            0
        );
        assert_eq!(
            s.close_runs(&[a.run_id], "closed by the test", t(4))
                .await
                .unwrap(),
            1,
            "{backend}"
        );
        assert_eq!(
            s.close_runs(&[a.run_id, c.run_id], "closed again", t(4))
                .await
                .unwrap(),
            1,
            "only the one still running: {backend}"
        );
        assert!(
            s.running_runs(Some(tn)).await.unwrap().is_empty(),
            "{backend}"
        );
        let row = s.run(a.run_id).await.unwrap().unwrap();
        assert_eq!(
            (
                row.status.as_str(),
                row.error.as_deref(),
                row.ended_at.as_deref()
            ),
            (
                "failed",
                Some("closed by the test"),
                Some("2030-01-01T04:00:00.000Z")
            ),
            "{backend}"
        );
    }
}

/// A lease held, unexpired, by a process of this host that died is taken over at once by a
/// run that names it (take_from), and only then; the engine does that on its own, and closes
/// the dead process's runs (its dry run too) as abandoned.
#[tokio::test]
async fn a_dead_holders_lease_is_taken_over_and_its_runs_closed() {
    for b in backends().await {
        let (s, tn) = (&b.store, b.tenant.as_str());
        let backend = s.backend_name();
        let e = engine(&b).await;
        s.create_user(
            tn,
            &rt(),
            &id(),
            &person("ann@example.com", "Ann"),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let now = e.clock.now();
        let dead = dead_holder();
        let held = s
            .begin_run(begin(tn, &dead, None, false, now))
            .await
            .unwrap();
        assert!(held.leased, "{backend}");
        let dry = s
            .begin_run(begin(tn, &dead, None, true, now))
            .await
            .unwrap();
        // Another holder gets it neither without naming the holder nor by naming another.
        for take_from in [None, Some("host-b/4242:77/abc")] {
            let other = s
                .begin_run(begin(tn, "host-c/1:2/x", take_from, false, now))
                .await
                .unwrap();
            assert!(!other.leased, "{take_from:?}: {backend}");
        }
        assert_eq!(
            s.lease_row(tn).await.unwrap().unwrap().holder,
            dead,
            "{backend}"
        );

        let r = e.run(false).await;
        assert_eq!(r.counts.created, 1, "{backend}");
        for id in [held.run_id, dry.run_id] {
            let run = s.run(id).await.unwrap().unwrap();
            assert_eq!(run.status, "failed", "{backend}");
            assert!(
                run.error.as_deref().unwrap_or("").starts_with("abandoned"),
                "{run:?}: {backend}"
            );
        }
        assert!(
            s.running_runs(Some(tn)).await.unwrap().is_empty(),
            "{backend}"
        );
        assert_eq!(
            s.lease_row(tn).await.unwrap(),
            None,
            "released at the end: {backend}"
        );

        // The store alone: naming the dead holder takes its unexpired lease.
        let again = s
            .begin_run(begin(tn, &dead, None, false, now))
            .await
            .unwrap();
        assert!(again.leased, "{backend}");
        let mine = Holder::this_process().to_string();
        let taken = s
            .begin_run(begin(tn, &mine, Some(&dead), false, now))
            .await
            .unwrap();
        assert!(taken.leased, "{backend}");
        let lease = s.lease_row(tn).await.unwrap().unwrap();
        assert_eq!(
            (lease.holder, lease.run_id),
            (mine, Some(taken.run_id)),
            "{backend}"
        );
    }
}

/// An approval's run holds the lease, and the lease names it; the approved run records who
/// approved it and when, its status is `approved`, the approval is audited, and a run is
/// approved once.
#[tokio::test]
async fn an_approvals_run_is_recorded_in_the_lease() {
    for b in backends().await {
        let (s, tn) = (&b.store, b.tenant.as_str());
        let backend = s.backend_name();
        let holder = Holder::this_process().to_string();
        let held = s
            .begin_run(begin(tn, &holder, None, false, t(3)))
            .await
            .unwrap();
        s.finish_run(FinishRun {
            tenant: tn.to_string(),
            run_id: held.run_id,
            holder: Some(holder.clone()),
            status: RunStatus::AwaitingApproval,
            counts: Default::default(),
            watermark_to: None,
            ended_at: t(3),
            error: None,
        })
        .await
        .unwrap();
        let approving = s
            .begin_approval(
                begin(tn, &holder, None, false, t(3)),
                held.run_id,
                "ops-admin",
            )
            .await
            .unwrap();
        assert_eq!(
            s.lease(tn, t(3)).await.unwrap(),
            Some(Some(approving)),
            "{backend}"
        );
        assert_eq!(
            s.run(approving).await.unwrap().unwrap().approves_run,
            Some(held.run_id)
        );
        // The held run says it was approved, when and by whom, and the approval is audited.
        let approved = s.run(held.run_id).await.unwrap().unwrap();
        assert_eq!(
            (
                approved.status.as_str(),
                approved.approver.as_deref(),
                approved.approved_by,
                approved.approved_at.as_deref()
            ),
            (
                "approved",
                Some("ops-admin"),
                Some(approving),
                Some("2030-01-01T03:00:00.000Z")
            ),
            "{backend}"
        );
        assert_eq!(audited(&b, "approve", "ops-admin").await, 1, "{backend}");
        let (n, runs) = s
            .runs(&RunQuery {
                tenant: Some(tn.to_string()),
                status: Some("approved".into()),
                limit: 10,
                ..RunQuery::default()
            })
            .await
            .unwrap();
        assert_eq!((n, runs[0].id), (1, held.run_id), "{backend}");
        // A run can be approved once; the second attempt writes nothing (no run, no audit).
        s.finish_run(FinishRun {
            tenant: tn.to_string(),
            run_id: approving,
            holder: Some(holder.clone()),
            status: RunStatus::Succeeded,
            counts: Default::default(),
            watermark_to: None,
            ended_at: t(3),
            error: None,
        })
        .await
        .unwrap();
        let again = s
            .begin_approval(begin(tn, &holder, None, false, t(4)), held.run_id, "other")
            .await;
        assert!(
            matches!(again, Err(SyncError::NotAwaitingApproval(id)) if id == held.run_id),
            "{again:?}: {backend}"
        );
        assert_eq!(audited(&b, "approve", "other").await, 0, "{backend}");
        assert_eq!(s.lease(tn, t(4)).await.unwrap(), None, "{backend}");
        let (n, _) = s
            .runs(&RunQuery {
                tenant: Some(tn.to_string()),
                limit: 10,
                ..RunQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(n, 2, "{backend}");
    }
}

/// Run retention: no-op runs go after `noop_run_days`, runs with items after `run_days`, with
/// their items; a running or awaiting_approval run and each tenant's newest run stay; another
/// tenant's runs are left alone when the prune names a tenant.
#[tokio::test]
async fn run_retention_prunes_no_op_runs_sooner_and_keeps_what_must_stay() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let backend = s.backend_name();
        let e = engine(&b).await;
        let holder = Holder::this_process().to_string();
        let day = |d: i64| t(3) + Duration::days(d);
        // Day 0: a dry run left running (the engine's next run closes it as failed) and a run
        // awaiting approval.
        let failed = s
            .begin_run(begin(tn, &holder, None, true, day(0)))
            .await
            .unwrap()
            .run_id;
        let held = s
            .begin_run(begin(tn, &holder, None, false, day(0)))
            .await
            .unwrap()
            .run_id;
        s.finish_run(FinishRun {
            tenant: tn.to_string(),
            run_id: held,
            holder: Some(holder.clone()),
            status: RunStatus::AwaitingApproval,
            counts: Default::default(),
            watermark_to: None,
            ended_at: day(0),
            error: None,
        })
        .await
        .unwrap();
        // A run that creates a user (an item), then no-op runs, a dry one among them.
        s.create_user(
            tn,
            &rt,
            &id(),
            &person("ann@example.com", "Ann"),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let changed = e.run(false).await.run_id;
        let noop = e.run(false).await.run_id;
        let noop_dry = e.run(true).await.run_id;
        // Ten days later, one more no-op run: the newest.
        e.clock.advance(Duration::days(10));
        let newest = e.run(false).await.run_id;
        let ids = || async {
            let (_, runs) = s
                .runs(&RunQuery {
                    tenant: Some(tn.to_string()),
                    limit: 100,
                    ..RunQuery::default()
                })
                .await
                .unwrap();
            let mut ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids().await,
            [failed, held, changed, noop, noop_dry, newest],
            "{backend}"
        );
        let prune = |now: DateTime<Utc>| PruneRuns {
            tenant: Some(tn.to_string()),
            ..run_retention(7, 90, now)
        };
        // Inside both retentions nothing goes.
        assert_eq!(s.prune_runs(prune(day(5))).await.unwrap(), 0, "{backend}");
        // Past the no-op retention the no-op runs go; the run with an item stays.
        let n = prune_runs(s.as_ref(), prune(e.clock.now())).await.unwrap();
        assert_eq!(n, 2, "{backend}");
        assert_eq!(ids().await, [failed, held, changed, newest], "{backend}");
        assert!(s.run(noop).await.unwrap().is_none(), "{backend}");
        // A failed run is no no-op: it is kept as long as runs with changes.
        let status = s.run(failed).await.unwrap().unwrap().status;
        assert_eq!(status, "failed", "{backend}");
        // Past the other retention it goes too, with its items; what must stay stays.
        let (n, items) = s.items(changed, None, 10, 0).await.unwrap();
        assert_eq!(n, 1, "{items:?} {backend}");
        let later = e.clock.now() + Duration::days(200);
        // Another tenant's prune leaves this tenant's runs alone.
        let other = PruneRuns {
            tenant: Some(format!("{tn}-other")),
            ..run_retention(7, 90, later)
        };
        assert_eq!(s.prune_runs(other).await.unwrap(), 0, "{backend}");
        // A run still running (started long ago) and a newest run, both old by then.
        let running = s
            .begin_run(begin(tn, &holder, None, true, day(0)))
            .await
            .unwrap()
            .run_id;
        let last = s
            .begin_run(begin(tn, &holder, None, false, day(0)))
            .await
            .unwrap()
            .run_id;
        s.finish_run(FinishRun {
            tenant: tn.to_string(),
            run_id: last,
            holder: Some(holder.clone()),
            status: RunStatus::Succeeded,
            counts: Default::default(),
            watermark_to: None,
            ended_at: day(0),
            error: None,
        })
        .await
        .unwrap();
        let n = s.prune_runs(prune(later)).await.unwrap();
        assert_eq!(ids().await, [held, running, last], "{backend}");
        assert_eq!(n, 3, "the failed, the changed, the then newest: {backend}");
        let (n, items) = s.items(changed, None, 10, 0).await.unwrap();
        assert!(n == 0 && items.is_empty(), "{backend}");
        // 0 days: runs with items are kept for ever.
        let forever = PruneRuns {
            tenant: Some(tn.to_string()),
            ..run_retention(0, 0, later)
        };
        assert_eq!(s.prune_runs(forever).await.unwrap(), 0, "{backend}");
    }
}

/// A user the application refuses run after run is quarantined after `quarantine_after`
/// failures on one staged version: skipped (the run succeeds, counting it apart) by
/// incremental and full runs alike, listed with its userName, until its staged data changes
/// or an operator releases it (audited).
#[tokio::test]
async fn a_user_failing_runs_in_a_row_is_quarantined_until_it_changes_or_is_released() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let backend = s.backend_name();
        let e = engine_with(&b, "quarantine_after = 2\n").await;
        e.app.exec(
            "CREATE TRIGGER refuse BEFORE INSERT ON scifeon_users \
             WHEN NEW.UserName = 'bad@example.com' \
             BEGIN SELECT RAISE(ABORT, 'refused by the application'); END",
            &[],
        );
        let bad = id();
        s.create_user(
            tn,
            &rt,
            &id(),
            &person("ok@example.com", "Ok"),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        s.create_user(
            tn,
            &rt,
            &bad,
            &person("bad@example.com", "Bad"),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let counts = |r: &RunSummary| (r.status, r.counts.failed, r.counts.quarantined);
        let incremental = || RunOptions::default();

        let r = e.run_with(incremental()).await;
        assert_eq!(
            counts(&r),
            (RunStatus::CompletedWithErrors, 1, 0),
            "{backend}"
        );
        assert_eq!(r.counts.created, 1, "{backend}");
        assert_eq!(s.count_quarantined(tn).await.unwrap(), 0, "{backend}");
        // Failing now, not quarantined yet: listed with why and since when.
        let (total, rows) = s.failing(Some(tn), false, 10, 0).await.unwrap();
        assert_eq!((total, rows.len()), (1, 1), "{backend}");
        assert_eq!(
            (
                rows[0].user_id.as_str(),
                rows[0].attempts,
                rows[0].quarantined_at.as_deref()
            ),
            (bad.as_str(), 1, None),
            "{backend}"
        );
        assert!(
            rows[0].last_error.contains("refused"),
            "{backend}: {rows:?}"
        );
        assert_eq!(
            s.failing(Some(tn), true, 10, 0).await.unwrap().0,
            0,
            "{backend}"
        );
        // The user's sync side in one read: failing, no link, its failed item with its run.
        let mine = s.user_sync(tn, &bad, 10).await.unwrap();
        assert!(mine.link.is_none() && mine.queued.is_none(), "{backend}");
        assert_eq!(mine.failing.as_ref(), Some(&rows[0]), "{backend}");
        assert_eq!((mine.items_total, mine.items.len()), (1, 1), "{backend}");
        let item = &mine.items[0];
        assert_eq!(
            (
                item.run_id,
                item.item.outcome.as_str(),
                item.dry_run,
                item.trigger.as_str()
            ),
            (r.run_id, "failed", false, "api"),
            "{backend}"
        );
        assert_eq!(
            (mine.deactivated_at.as_deref(), mine.deleted_at.as_deref()),
            (None, None),
            "{backend}"
        );
        let r = e.run_with(incremental()).await;
        assert_eq!(
            counts(&r),
            (RunStatus::CompletedWithErrors, 1, 1),
            "the second failure in a row quarantines it: {backend}"
        );
        assert_eq!(
            s.run(r.run_id).await.unwrap().unwrap().quarantined,
            1,
            "{backend}"
        );
        let r = e.run_with(incremental()).await;
        assert_eq!(
            counts(&r),
            (RunStatus::Succeeded, 0, 1),
            "skipped: {backend}"
        );
        let full = RunOptions {
            full: true,
            ..RunOptions::default()
        };
        let r = e.run_with(full).await;
        assert_eq!(
            counts(&r),
            (RunStatus::Succeeded, 0, 1),
            "a full run too: {backend}"
        );

        let (total, rows) = s.failing(Some(tn), true, 10, 0).await.unwrap();
        assert_eq!((total, rows.len()), (1, 1), "{backend}");
        let q = &rows[0];
        assert_eq!(
            (q.user_id.as_str(), q.user_name.as_deref(), q.attempts),
            (bad.as_str(), Some("bad@example.com"), 2),
            "{backend}"
        );
        assert!(!q.last_error.is_empty(), "{backend}");
        assert_eq!(
            (q.first_failed_at.as_str(), q.quarantined_at.as_deref()),
            ("2030-01-01T03:00:00.000Z", Some("2030-01-01T03:00:00.000Z")),
            "{backend}"
        );
        let past_the_end = s.failing(Some(tn), true, 10, 1).await.unwrap();
        assert_eq!((past_the_end.0, past_the_end.1.len()), (1, 0), "{backend}");

        // Its staged data changes: tried again, failing anew, and quarantined after two more.
        e.clock.advance(Duration::minutes(1));
        let rename = |mut d: Map<String, Value>| {
            d.insert(
                "name".into(),
                json!({"givenName": "Still bad", "familyName": "Test"}),
            );
            Ok(d)
        };
        s.update_user(tn, &rt, &bad, None, t(2), &rename, &RequestLog::default())
            .await
            .unwrap();
        let r = e.run_with(incremental()).await;
        assert_eq!(
            counts(&r),
            (RunStatus::CompletedWithErrors, 1, 0),
            "{backend}"
        );
        assert_eq!(
            s.failing(Some(tn), true, 10, 0).await.unwrap().0,
            0,
            "{backend}"
        );
        let r = e.run_with(incremental()).await;
        assert_eq!(
            counts(&r),
            (RunStatus::CompletedWithErrors, 1, 1),
            "{backend}"
        );
        let (_, rows) = s.failing(Some(tn), true, 10, 0).await.unwrap();
        assert_eq!(
            (
                rows[0].attempts,
                rows[0].first_failed_at.as_str(),
                rows[0].quarantined_at.as_deref()
            ),
            (
                2,
                "2030-01-01T03:01:00.000Z",
                Some("2030-01-01T03:01:00.000Z")
            ),
            "counted anew on the new version: {backend}"
        );

        // The application is fixed; an operator releases the user; the next run writes it.
        e.app.exec("DROP TRIGGER refuse", &[]);
        assert!(
            s.release_quarantine(tn, &bad, "ops-admin", t(3))
                .await
                .unwrap(),
            "{backend}"
        );
        assert!(
            !s.release_quarantine(tn, &bad, "ops-admin", t(3))
                .await
                .unwrap(),
            "not quarantined any more: {backend}"
        );
        assert_eq!(
            audited(&b, "release_quarantine", "ops-admin").await,
            1,
            "{backend}"
        );
        let r = e.run_with(incremental()).await;
        assert_eq!(counts(&r), (RunStatus::Succeeded, 0, 0), "{backend}");
        assert_eq!(r.counts.created, 1, "{backend}");
        assert_eq!(e.users().await.len(), 2, "{backend}");
        let (total, rows) = s.failing(Some(tn), true, 10, 0).await.unwrap();
        assert_eq!((total, rows.len()), (0, 0), "{backend}");
    }
}

/// After the application lost or changed rows behind the engine's back (a restore, a hand
/// edit), an incremental run trusts its links and writes nothing, `verify` reports the drift
/// (walking the links a page at a time), and a full run writes back what is gone or differs.
#[tokio::test]
async fn a_full_run_repairs_the_application_and_verify_reports_drift() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let backend = s.backend_name();
        // Two links a page: verify reads three links in two pages.
        let e = engine_with(&b, "batch_size = 2\n").await;
        let (ann, bob, carl) = (id(), id(), id());
        for (uid, name, given) in [
            (&ann, "ann@example.com", "Ann"),
            (&bob, "bob@example.com", "Bob"),
            (&carl, "carl@example.com", "Carl"),
        ] {
            s.create_user(
                tn,
                &rt,
                uid,
                &person(name, given),
                t(1),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        }
        s.create_group(
            tn,
            &rt,
            &id(),
            group_change("Scifeon Admins", &[&carl]),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        assert_eq!(e.run(false).await.counts.created, 3, "{backend}");
        let v = e.engine.verify(tn).await.unwrap();
        assert!(v.is_clean() && v.linked == 3, "{v:?}: {backend}");

        e.app.exec(
            "DELETE FROM scifeon_users WHERE UserName = 'ann@example.com'",
            &[],
        );
        e.app.exec(
            "UPDATE scifeon_users SET FirstName = 'edited by hand' \
             WHERE UserName = 'bob@example.com'",
            &[],
        );
        e.app.exec(
            "DELETE FROM user_roles WHERE user_key = 'carl@example.com' AND role = 'Administrator'",
            &[],
        );
        let v = e.engine.verify(tn).await.unwrap();
        assert_eq!(
            (v.linked, v.missing, v.differing, v.roles_missing),
            (3, 1, 1, 1),
            "{v:?}: {backend}"
        );
        let drift = |u: &str| v.drifts.iter().find(|d| d.user_id == u).unwrap();
        assert!(drift(&ann).missing, "{backend}");
        assert_eq!(
            drift(&bob).changes["FirstName"],
            Change {
                before: json!("edited by hand"),
                after: json!("Bob")
            },
            "{backend}"
        );
        assert_eq!(drift(&carl).roles_missing, ["Administrator"], "{backend}");

        let r = e.run(false).await;
        assert_eq!(
            (r.counts.created, r.counts.updated, r.counts.roles_added),
            (0, 0, 0),
            "incremental: nothing changed in staging: {backend}"
        );
        let full = || RunOptions {
            full: true,
            ..RunOptions::default()
        };
        let r = e.run_with(full()).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        assert_eq!(
            (r.counts.created, r.counts.updated, r.counts.unchanged),
            (1, 2, 0),
            "{r:?}: {backend}"
        );
        let (_, items) = b.store.items(r.run_id, None, 10, 0).await.unwrap();
        let item = |u: &str| items.iter().find(|i| i.user_id == u).unwrap();
        assert_eq!(
            (
                item(&ann).outcome.as_str(),
                item(&bob).outcome.as_str(),
                item(&carl).outcome.as_str()
            ),
            ("created", "updated", "updated"),
            "{backend}"
        );
        assert_eq!(
            item(&bob).changes["FirstName"],
            json!({"before": "edited by hand", "after": "Bob"}),
            "{backend}"
        );
        assert_eq!(item(&carl).roles_added, ["Administrator"], "{backend}");
        assert!(e.engine.verify(tn).await.unwrap().is_clean(), "{backend}");
        assert_eq!(
            e.users().await,
            [
                row("ann@example.com", "Ann", true),
                row("bob@example.com", "Bob", true),
                row("carl@example.com", "Carl", true)
            ],
            "{backend}"
        );
        assert_eq!(
            e.roles("carl@example.com").await,
            ["Administrator", "User"],
            "{backend}"
        );
        // A full run over rows that are as the links say writes nothing.
        let r = e.run_with(full()).await;
        assert_eq!(
            (r.counts.unchanged, r.counts.updated, r.counts.created),
            (3, 0, 0),
            "{backend}"
        );
    }
}

/// Who owns `key` in the engine's application table, and how it came to (created, adopted,
/// linked), from the backend's own table: the store's reads answer only the owner.
async fn owner(b: &Backend, e: &Engine, key: &str) -> Option<(String, String)> {
    let RowsOf {
        application,
        table,
        scope,
    } = &e.rows_of;
    if b.store.backend_name() == "sqlite" {
        let path = b.database.strip_prefix("sqlite://").unwrap();
        return crate::helpers::Sql(path.into())
            .query(
                "SELECT tenant, how FROM sync_owners WHERE application = ? AND app_table = ? \
                 AND scope = ? AND app_key = ?",
                &[application, table, scope, &key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .pop();
    }
    let DbLocation::SqlServer(server) =
        resolve_database(&b.database, None, Path::new(".")).unwrap()
    else {
        panic!("{} is not SQL Server", b.database);
    };
    let pool = MssqlPool::connect(&server).await.unwrap();
    let mut c = pool.get().await.unwrap();
    let mut q = tiberius::Query::new(
        "SELECT tenant, how FROM sync.owners WHERE application = @P1 AND app_table = @P2 \
         AND scope = @P3 AND app_key = @P4",
    );
    for p in [application.as_str(), table, scope, key] {
        q.bind(p.to_string());
    }
    let row = q.query(&mut c).await.unwrap().into_row().await.unwrap()?;
    Some((
        row.get::<&str, _>(0).unwrap().to_string(),
        row.get::<&str, _>(1).unwrap().to_string(),
    ))
}

/// Ownership of application rows, with the application database on SQLite and the owners in
/// each staging backend: a row another tenant owns is never written, adoption or not; a row
/// the application made itself is left alone (the user fails, saying how to adopt) unless
/// the mapping adopts, when it is taken over as an `adopted` item and owned from then on; the
/// rows the engine creates are claimed by the tenant, and a key change moves the claim.
#[tokio::test]
async fn rows_another_tenant_owns_or_the_application_made_are_left_alone_unless_adopted() {
    for adopt in [false, true] {
        for b in backends().await {
            let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
            let backend = format!("{} adopt={adopt}", s.backend_name());
            let target = if adopt {
                "adopt = \"match-by-key\"\n"
            } else {
                ""
            };
            let e = engine_mapped(&b, "", target).await;
            for (name, first) in [
                ("ann@example.com", "Other tenant's"),
                ("bob@example.com", "Made by the application"),
            ] {
                e.app.exec(
                    "INSERT INTO scifeon_users (UserName, FirstName) VALUES (?, ?)",
                    &[&name, &first],
                );
            }
            // Another tenant claims ann's row; this tenant's claim of it is then refused and
            // changes nothing.
            let other = format!("{tn}-other");
            let claim = |key: &str, user_id: &str| {
                vec![Owned {
                    key: key.into(),
                    user_id: user_id.into(),
                    how: "created",
                }]
            };
            let taken = s
                .claim(&e.rows_of, &other, claim("ann@example.com", "x1"), t(3))
                .await
                .unwrap();
            assert!(taken.is_empty(), "{taken:?}: {backend}");
            let taken = s
                .claim(&e.rows_of, tn, claim("ann@example.com", "u1"), t(3))
                .await
                .unwrap();
            assert_eq!(taken, ["ann@example.com"], "{backend}");
            let keys = ["ann@example.com".to_string(), "bob@example.com".to_string()];
            assert_eq!(
                s.owners(&e.rows_of, &keys).await.unwrap(),
                [("ann@example.com".to_string(), other.clone())].into(),
                "{backend}"
            );
            assert_eq!(
                owner(&b, &e, "ann@example.com").await,
                Some((other.clone(), "created".into())),
                "{backend}"
            );

            let (ann, bob, carl) = (id(), id(), id());
            for (uid, name, given) in [
                (&ann, "ann@example.com", "Ann"),
                (&bob, "bob@example.com", "Bob"),
                (&carl, "carl@example.com", "Carl"),
            ] {
                s.create_user(
                    tn,
                    &rt,
                    uid,
                    &person(name, given),
                    t(1),
                    &RequestLog::default(),
                )
                .await
                .unwrap();
            }
            let r = e.run_with(RunOptions::default()).await;
            assert_eq!(r.status, RunStatus::CompletedWithErrors, "{r:?}: {backend}");
            let (_, items) = s.items(r.run_id, None, 10, 0).await.unwrap();
            let item = |u: &str| items.iter().find(|i| i.user_id == u).unwrap().clone();
            assert_eq!(item(&ann).outcome, "failed", "{backend}");
            let why = item(&ann).error.unwrap_or_default();
            assert!(
                why.contains(&format!("belongs to tenant \"{other}\"")),
                "{why}: {backend}"
            );
            assert_eq!(item(&carl).outcome, "created", "{backend}");
            assert_eq!(
                owner(&b, &e, "carl@example.com").await,
                Some((tn.to_string(), "created".into())),
                "{backend}"
            );
            let first = |name: &str| {
                e.app.query(
                    "SELECT FirstName FROM scifeon_users WHERE UserName = ?",
                    &[&name],
                    |r| r.get::<_, String>(0),
                )
            };
            assert_eq!(first("ann@example.com"), ["Other tenant's"], "{backend}");
            if adopt {
                assert_eq!(
                    (r.counts.created, r.counts.updated, r.counts.failed),
                    (1, 1, 1),
                    "{r:?}: {backend}"
                );
                assert_eq!(item(&bob).outcome, "adopted", "{backend}");
                assert_eq!(first("bob@example.com"), ["Bob"], "updated: {backend}");
                assert_eq!(
                    owner(&b, &e, "bob@example.com").await,
                    Some((tn.to_string(), "adopted".into())),
                    "{backend}"
                );
                continue;
            }
            assert_eq!(
                (r.counts.created, r.counts.failed),
                (1, 2),
                "{r:?}: {backend}"
            );
            assert_eq!(item(&bob).outcome, "failed", "{backend}");
            let why = item(&bob).error.unwrap_or_default();
            assert!(why.contains("adopt = \"match-by-key\""), "{why}: {backend}");
            assert_eq!(
                first("bob@example.com"),
                ["Made by the application"],
                "left alone: {backend}"
            );
            assert_eq!(owner(&b, &e, "bob@example.com").await, None, "{backend}");

            // Once the application's row is gone, the user is created and owned.
            e.app.exec(
                "DELETE FROM scifeon_users WHERE UserName = 'bob@example.com'",
                &[],
            );
            let r = e.run_with(RunOptions::default()).await;
            assert_eq!(
                (r.counts.created, r.counts.failed),
                (1, 1),
                "ann still fails: {r:?}: {backend}"
            );
            assert_eq!(first("bob@example.com"), ["Bob"], "{backend}");
            assert_eq!(
                owner(&b, &e, "bob@example.com").await,
                Some((tn.to_string(), "created".into())),
                "{backend}"
            );

            // A key change moves the row and its claim.
            let rename = |mut d: Map<String, Value>| {
                d.insert("userName".into(), json!("carl.new@example.com"));
                Ok(d)
            };
            s.update_user(tn, &rt, &carl, None, t(2), &rename, &RequestLog::default())
                .await
                .unwrap();
            e.run_with(RunOptions::default()).await;
            assert_eq!(first("carl.new@example.com"), ["Carl"], "{backend}");
            assert_eq!(owner(&b, &e, "carl@example.com").await, None, "{backend}");
            assert_eq!(
                owner(&b, &e, "carl.new@example.com").await,
                Some((tn.to_string(), "linked".into())),
                "{backend}"
            );
        }
    }
}
