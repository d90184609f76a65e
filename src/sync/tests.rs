//! The sync engine against real SQLite staging and application files. Faults and pauses are
//! injected by [`Seams`], a wrapper around the staging database's sync role: the engine's own
//! code has no test hooks.

use crate::store::RequestLog;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::plan::Planned;
use super::store::{
    BatchPlanner, BeginRun, Begun, DueQuery, FinishRun, Heartbeat, LeaseRow, LifecycleDone,
    LifecyclePlanner, LifecycleRecord, Link, Mark, PruneRuns, Queued, Read, Record, RowsOf,
    RunState, RunningRun, SyncStore,
};
use super::{
    ItemReport, Outcome, Progress, RunOptions, RunStatus, RunSummary, SyncEngine, SyncError,
    Trigger,
};
use crate::clock::FakeClock;
use crate::config::{Config, Durability};
use crate::db::{Connector, Staging, open_staging};
use crate::scim::Limits;
use crate::scim::patch::MemberOp;
use crate::scim::resource::{MemberRef, normalize};
use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA, ResourceType};
use crate::store::{GroupChange, StoreError};

/// A pause: the seam tells the test it is there, then waits for it (once: the pair is taken).
type Pause = Mutex<Option<(Arc<Notify>, Arc<Notify>)>>;

async fn pause(slot: &Pause) {
    let pair = slot.lock().ok().and_then(|mut g| g.take());
    if let Some((here, go)) = pair {
        here.notify_one();
        go.notified().await;
    }
}

/// The staging database's sync role, with faults and pauses a test sets.
struct Seams {
    inner: Arc<dyn Staging>,
    /// Fail the record of this batch number (1-based, counted per run); 0: never.
    fail_record_at: AtomicU64,
    records: AtomicU64,
    /// Before a lifecycle batch reads its due users.
    pause_before_due_read: Pause,
    /// After a batch was written to the application, before it is recorded in staging.
    pause_before_record: Pause,
}

#[async_trait]
impl SyncStore for Seams {
    async fn watermark(&self, tenant: &str) -> Result<Mark, SyncError> {
        self.inner.watermark(tenant).await
    }
    async fn high_seq(&self) -> Result<i64, SyncError> {
        self.inner.high_seq().await
    }
    async fn count_changed(&self, t: &str, after: Mark, high: i64) -> Result<i64, SyncError> {
        self.inner.count_changed(t, after, high).await
    }
    async fn read_batch(
        &self,
        t: &str,
        read: Read,
        limit: u32,
        plan: BatchPlanner,
    ) -> Result<Planned, SyncError> {
        self.inner.read_batch(t, read, limit, plan).await
    }
    async fn record(&self, record: Record) -> Result<(), SyncError> {
        pause(&self.pause_before_record).await;
        let n = self.records.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_record_at.load(Ordering::SeqCst) == n {
            return Err(SyncError::Task("injected failure".into()));
        }
        self.inner.record(record).await
    }
    async fn begin_run(&self, run: BeginRun) -> Result<Begun, SyncError> {
        self.records.store(0, Ordering::SeqCst);
        self.inner.begin_run(run).await
    }
    async fn begin_approval(
        &self,
        run: BeginRun,
        approves: i64,
        approver: &str,
    ) -> Result<i64, SyncError> {
        self.inner.begin_approval(run, approves, approver).await
    }
    async fn prune_runs(&self, prune: PruneRuns) -> Result<u64, SyncError> {
        self.inner.prune_runs(prune).await
    }
    async fn finish_run(&self, end: FinishRun) -> Result<(), SyncError> {
        self.inner.finish_run(end).await
    }
    async fn heartbeat(&self, beat: Heartbeat) -> Result<bool, SyncError> {
        self.inner.heartbeat(beat).await
    }
    async fn running_runs(&self, t: Option<&str>) -> Result<Vec<RunningRun>, SyncError> {
        self.inner.running_runs(t).await
    }
    async fn close_runs(
        &self,
        ids: &[i64],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, SyncError> {
        self.inner.close_runs(ids, reason, now).await
    }
    async fn lease_row(&self, t: &str) -> Result<Option<LeaseRow>, SyncError> {
        self.inner.lease_row(t).await
    }
    async fn release_lease(
        &self,
        t: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LeaseRow>, SyncError> {
        self.inner.release_lease(t, actor, now).await
    }
    async fn owners(
        &self,
        rows: &RowsOf,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, String>, SyncError> {
        self.inner.owners(rows, keys).await
    }
    async fn claim(
        &self,
        rows: &RowsOf,
        tenant: &str,
        claims: Vec<super::store::Owned>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, SyncError> {
        self.inner.claim(rows, tenant, claims, now).await
    }
    async fn links_page(
        &self,
        t: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, Link)>, SyncError> {
        self.inner.links_page(t, after, limit).await
    }
    async fn count_quarantined(&self, t: &str) -> Result<i64, SyncError> {
        self.inner.count_quarantined(t).await
    }
    async fn release_quarantine(
        &self,
        t: &str,
        user: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, SyncError> {
        self.inner.release_quarantine(t, user, actor, now).await
    }
    async fn run_state(&self, run_id: i64) -> Result<Option<RunState>, SyncError> {
        self.inner.run_state(run_id).await
    }
    async fn count_due(
        &self,
        t: &str,
        cutoff: DateTime<Utc>,
        held_in: Option<i64>,
    ) -> Result<i64, SyncError> {
        self.inner.count_due(t, cutoff, held_in).await
    }
    async fn count_links(&self, t: &str) -> Result<i64, SyncError> {
        self.inner.count_links(t).await
    }
    async fn lifecycle_batch(
        &self,
        due: DueQuery,
        plan: LifecyclePlanner,
    ) -> Result<Option<LifecycleDone>, SyncError> {
        pause(&self.pause_before_due_read).await;
        self.inner.lifecycle_batch(due, plan).await
    }
    async fn queued(&self, t: &str, after: i64, limit: u32) -> Result<Vec<Queued>, SyncError> {
        self.inner.queued(t, after, limit).await
    }
    async fn record_lifecycle(&self, record: LifecycleRecord) -> Result<(), SyncError> {
        self.inner.record_lifecycle(record).await
    }
}

/// Raw SQL on a database file, for set-up and assertions: a connection per call.
struct Sql(PathBuf);

impl Sql {
    fn conn(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.0).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    }

    fn exec(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) {
        self.conn().execute(sql, params).unwrap();
    }

    fn batch(&self, sql: &str) {
        self.conn().execute_batch(sql).unwrap();
    }

    fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        let c = self.conn();
        let mut stmt = c.prepare(sql).unwrap();
        stmt.query_map(params, f)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn scalar(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) -> i64 {
        self.conn().query_row(sql, params, |r| r.get(0)).unwrap()
    }
}

const MAPPING: &str = r#"
[target]
database = "app"
user_table = "app_users"
key_column = "external_id"
key = "externalId"

[target.roles]
table = "app_roles"
user_column = "external_id"
role_column = "role"

[fields]
user_name = "{{userName}}"
display_name = "{{displayName}}"
dept = { template = "{{enterprise.department}}", ignore_if_empty = true }
active = { template = "true", type = "boolean" }

[[roles]]
group = "Admins"
role = "admin"

[[roles]]
group = "Staff"
role = "user"

[deactivation]
remove_roles = true
[deactivation.fields]
active = { template = "false", type = "boolean" }
"#;

const DELETE: &str = "[offboarding]\naction = \"delete\"\n";
const UPDATE: &str =
    "[offboarding]\naction = \"update\"\n[offboarding.fields]\nnote = \"gone {{userName}}\"\n";

/// No unique index on (user, role) (a plain index only): the writer must not duplicate role
/// rows. The key is unique, as the engine requires.
const APP_SQL: &str = "
CREATE TABLE app_users (id INTEGER PRIMARY KEY, external_id TEXT NOT NULL, user_name TEXT NOT NULL,
    display_name TEXT, dept TEXT, active INTEGER NOT NULL, note TEXT);
CREATE TABLE app_roles (external_id TEXT NOT NULL, role TEXT NOT NULL);
CREATE UNIQUE INDEX app_users_key ON app_users (external_id);
CREATE INDEX app_roles_key ON app_roles (external_id, role);
";

struct Env {
    dir: tempfile::TempDir,
    store: Arc<dyn Staging>,
    seams: Arc<Seams>,
    clock: Arc<FakeClock>,
    engine: SyncEngine,
    staging: Sql,
    app: Sql,
}

/// The engine of `config` on `seams`.
async fn engine(config: &Config, seams: &Arc<Seams>, clock: &Arc<FakeClock>) -> SyncEngine {
    SyncEngine::new(config, seams.clone(), &Connector, clock.clone())
        .await
        .unwrap()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
}

async fn env(offboarding: &str, settings: &str) -> Env {
    env_with(format!("{MAPPING}{offboarding}"), settings).await
}

/// An environment whose tenant `t` syncs with the mapping `mapping`.
async fn env_with(mapping: String, settings: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), mapping).unwrap();
    std::fs::write(dir.path().join("app.sql"), APP_SQL).unwrap();
    let text = format!(
        "[staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"normal\"\n\
         [applications.app]\ndatabase = \"sqlite://app.db\"\nschema = \"app.sql\"\n\
         [tenants.t]\ntoken = \"0123456789abcdef\"\n\
         [tenants.t.sync]\nmapping = \"m.toml\"\n{settings}\n"
    );
    let config = Config::parse(&text, Path::new("c.toml"), dir.path(), []).unwrap();
    let store = open_staging(&config.staging_db, Durability::Normal)
        .await
        .unwrap();
    let seams = Arc::new(Seams {
        inner: store.clone(),
        fail_record_at: AtomicU64::new(0),
        records: AtomicU64::new(0),
        pause_before_due_read: Mutex::new(None),
        pause_before_record: Mutex::new(None),
    });
    let clock = Arc::new(FakeClock::new(t0()));
    let engine = engine(&config, &seams, &clock).await;
    Env {
        staging: Sql(dir.path().join("staging.db")),
        app: Sql(dir.path().join("app.db")),
        dir,
        store,
        seams,
        clock,
        engine,
    }
}

fn rt() -> ResourceType {
    ResourceType::user(DEFAULT_CUSTOM_SCHEMA)
}

impl Env {
    fn now(&self) -> DateTime<Utc> {
        crate::clock::Clock::now(&*self.clock)
    }

    async fn user(&self, id: &str, name: &str, ext: Option<&str>) {
        let mut body = json!({"userName": name, "displayName": format!("{name} display"), "active": true,
            ENTERPRISE_SCHEMA: {"department": "RD"}});
        if let Some(e) = ext {
            body["externalId"] = json!(e);
        }
        let doc = normalize(&rt(), &body, &Limits::default()).unwrap().doc;
        self.store
            .create_user("t", &rt(), id, &doc, self.now(), &RequestLog::default())
            .await
            .unwrap();
    }

    async fn set(&self, id: &str, attr: &str, value: Value) {
        self.store
            .update_user(
                "t",
                &rt(),
                id,
                None,
                self.now(),
                &|mut d| {
                    d.insert(attr.into(), value.clone());
                    Ok(d)
                },
                &RequestLog::default(),
            )
            .await
            .unwrap();
    }

    async fn group(&self, id: &str, name: &str, members: &[&str]) {
        let g = normalize(
            &ResourceType::group(),
            &json!({"displayName": name}),
            &Limits::default(),
        )
        .unwrap();
        let members = members
            .iter()
            .map(|m| MemberRef {
                value: m.to_string(),
            })
            .collect();
        self.store
            .create_group(
                "t",
                &ResourceType::group(),
                id,
                GroupChange::replace_members(g.doc, Some(members)),
                self.now(),
                &RequestLog::default(),
            )
            .await
            .unwrap();
    }

    async fn members(&self, group: &str, op: MemberOp) {
        self.store
            .update_group(
                "t",
                &ResourceType::group(),
                group,
                None,
                self.now(),
                &|doc| {
                    Ok(GroupChange {
                        doc,
                        members: vec![op.clone()],
                    })
                },
                &RequestLog::default(),
            )
            .await
            .unwrap();
    }

    async fn run(&self) -> RunSummary {
        self.engine
            .run("t", Trigger::Cli, RunOptions::default())
            .await
            .unwrap()
    }

    async fn run_with(&self, options: RunOptions) -> RunSummary {
        self.engine.run("t", Trigger::Cli, options).await.unwrap()
    }

    /// (external_id, user_name, display_name, dept, active, note) ordered by key.
    async fn rows(
        &self,
    ) -> Vec<(
        String,
        String,
        Option<String>,
        Option<String>,
        bool,
        Option<String>,
    )> {
        self.app.query(
            "SELECT external_id, user_name, display_name, dept, active, note FROM app_users ORDER BY external_id",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
    }

    async fn roles(&self) -> Vec<(String, String)> {
        self.app.query(
            "SELECT external_id, role FROM app_roles ORDER BY 1, 2",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    async fn items(&self, run_id: i64) -> Vec<(String, String, Option<String>, Option<String>)> {
        self.staging.query(
            "SELECT user_id, outcome, changes, error FROM sync_run_items WHERE run_id = ? ORDER BY id",
            &[&run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    async fn count(&self, sql: &str) -> i64 {
        self.staging.scalar(sql, &[])
    }

    async fn staged(&self, id: &str) -> bool {
        self.staging
            .scalar("SELECT count(*) FROM users WHERE id = ?", &[&id])
            > 0
    }
}

fn roles(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn staged_users_become_rows_and_roles_and_a_second_run_changes_nothing() {
    let e = env(DELETE, "batch_size = 2").await;
    e.user("u1", "ann", Some("e1")).await;
    e.user("u2", "bob", Some("e2")).await;
    e.user("u3", "cid", Some("e3")).await;
    e.group("g1", "Admins", &["u1"]).await;
    e.group("g2", "Staff", &["u1", "u2"]).await;
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!((s.counts.created, s.counts.roles_added), (3, 3));
    let rows = e.rows().await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        (
            "e1".into(),
            "ann".into(),
            Some("ann display".into()),
            Some("RD".into()),
            true,
            None
        )
    );
    assert_eq!(
        e.roles().await,
        roles(&[("e1", "admin"), ("e1", "user"), ("e2", "user")])
    );
    assert_eq!(e.items(s.run_id).await.len(), 3);

    let again = e.run().await;
    assert_eq!(again.status, RunStatus::Succeeded);
    assert_eq!(again.counts, super::Counts::default());
    assert!(e.items(again.run_id).await.is_empty());
    // A full run reads everyone, and still writes nothing.
    let full = e
        .run_with(RunOptions {
            full: true,
            ..Default::default()
        })
        .await;
    assert_eq!((full.counts.unchanged, full.counts.updated), (3, 0));
    assert!(e.items(full.run_id).await.is_empty());

    // One change: only that user, with its field-level change in the ledger.
    e.set("u2", "displayName", json!("Bob B")).await;
    let s = e.run().await;
    assert_eq!((s.counts.updated, s.counts.unchanged), (1, 0));
    let items = e.items(s.run_id).await;
    assert_eq!(items.len(), 1);
    let changes: Value = serde_json::from_str(items[0].2.as_deref().unwrap()).unwrap();
    assert_eq!(
        changes,
        json!({"display_name": {"before": "bob display", "after": "Bob B"}})
    );
    assert_eq!(e.rows().await[1].2.as_deref(), Some("Bob B"));
    let runs = e
        .count("SELECT count(*) FROM sync_runs WHERE tenant = 't' AND status = 'succeeded'")
        .await;
    assert_eq!(runs, 4);
}

#[tokio::test]
async fn a_run_that_stops_mid_way_converges_on_the_next_run() {
    let e = env(DELETE, "batch_size = 2").await;
    for i in 1..=5 {
        e.user(
            &format!("u{i}"),
            &format!("user{i}"),
            Some(&format!("e{i}")),
        )
        .await;
    }
    e.group("g", "Staff", &["u1", "u2", "u3", "u4", "u5"]).await;
    // The second batch writes to the application, then its staging commit fails.
    e.seams.fail_record_at.store(2, Ordering::SeqCst);
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Failed);
    assert!(s.error.as_deref().unwrap().contains("injected"), "{s:?}");
    assert_eq!(
        e.rows().await.len(),
        4,
        "batches 1 and 2 reached the application"
    );
    assert_eq!(
        e.count("SELECT count(*) FROM sync_links").await,
        2,
        "only batch 1 was recorded"
    );
    e.seams.fail_record_at.store(0, Ordering::SeqCst);
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let rows = e.rows().await;
    let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["e1", "e2", "e3", "e4", "e5"], "no duplicate rows");
    assert_eq!(e.roles().await.len(), 5, "no duplicate roles");
    assert_eq!(e.count("SELECT count(*) FROM sync_links").await, 5);
    let s = e.run().await;
    assert_eq!(s.counts, super::Counts::default());
    // The stopped run's ledger row says so.
    let failed = e
        .count("SELECT count(*) FROM sync_runs WHERE status = 'failed'")
        .await;
    assert_eq!(failed, 1);
}

#[tokio::test]
async fn a_failing_user_does_not_block_the_others_and_is_retried() {
    let e = env(DELETE, "").await;
    e.app.batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON app_users WHEN NEW.user_name = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'bad user refused'); END;",
    );
    e.user("u1", "ok1", Some("e1")).await;
    e.user("u2", "bad", Some("e2")).await;
    e.user("u3", "nokey", None).await;
    e.user("u4", "ok2", Some("e4")).await;
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::CompletedWithErrors);
    assert_eq!((s.counts.created, s.counts.failed), (2, 2));
    let items = e.items(s.run_id).await;
    let err = |id: &str| {
        items
            .iter()
            .find(|i| i.0 == id)
            .and_then(|i| i.3.clone())
            .unwrap_or_default()
    };
    assert!(err("u2").contains("bad user refused"), "{items:?}");
    assert!(!err("u3").is_empty(), "{items:?}");
    assert_eq!(e.count("SELECT count(*) FROM sync_retry").await, 2);
    // Still failing: tried again, counted again.
    let s = e.run().await;
    assert_eq!((s.counts.failed, s.counts.created), (2, 0));
    assert_eq!(
        e.count("SELECT attempts FROM sync_retry WHERE user_id = 'u2'")
            .await,
        2
    );
    // Fixed in the application and in the directory: both come through.
    e.app.batch("DROP TRIGGER refuse");
    e.set("u3", "externalId", json!("e3")).await;
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, 2);
    assert_eq!(e.rows().await.len(), 4);
    assert_eq!(e.count("SELECT count(*) FROM sync_retry").await, 0);
}

#[tokio::test]
async fn only_roles_the_engine_applied_are_removed() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    e.group("g1", "Admins", &["u1"]).await;
    e.group("g2", "Staff", &["u1"]).await;
    e.run().await;
    e.app
        .batch("INSERT INTO app_roles (external_id, role) VALUES ('e1', 'auditor')");
    e.members("g1", MemberOp::Remove(vec!["u1".into()])).await;
    let s = e.run().await;
    assert_eq!((s.counts.roles_removed, s.counts.roles_added), (1, 0));
    assert_eq!(e.roles().await, roles(&[("e1", "auditor"), ("e1", "user")]));
    // Deactivation removes the applied roles (remove_roles = true), not the others.
    e.set("u1", "active", json!(false)).await;
    let s = e.run().await;
    assert_eq!(s.counts.deactivated, 1);
    assert_eq!(e.roles().await, roles(&[("e1", "auditor")]));
}

#[tokio::test]
async fn retention_deactivates_restores_then_purges_and_deletes() {
    let e = env(DELETE, "retention_hours = 48").await;
    e.user("u1", "ann", Some("e1")).await;
    e.user("u2", "bob", Some("e2")).await;
    e.group("g1", "Admins", &["u1"]).await;
    e.run().await;
    e.app
        .batch("INSERT INTO app_roles (external_id, role) VALUES ('e1', 'auditor')");

    e.clock.advance(Duration::hours(1));
    e.set("u1", "active", json!(false)).await;
    let s = e.run().await;
    assert_eq!(s.counts.deactivated, 1);
    assert!(!e.rows().await[0].4, "deactivation field applied");
    assert_eq!(e.roles().await, roles(&[("e1", "auditor")]));

    e.clock.advance(Duration::hours(1));
    e.set("u1", "active", json!(true)).await;
    let s = e.run().await;
    assert_eq!(s.counts.updated, 1);
    assert_eq!(e.items(s.run_id).await[0].1, "reactivated");
    assert!(e.rows().await[0].4, "active again");
    assert_eq!(
        e.roles().await,
        roles(&[("e1", "admin"), ("e1", "auditor")])
    );

    e.clock.advance(Duration::hours(1));
    e.set("u1", "active", json!(false)).await;
    e.run().await;
    // Inside the window nothing more happens.
    e.clock.advance(Duration::hours(47));
    let s = e.run().await;
    assert_eq!(s.counts.offboarded, 0);
    assert!(e.staged("u1").await);
    e.clock.advance(Duration::hours(2));
    // A dry run shows the offboarding as the real run records it: its action, the values
    // before it.
    let dry = e
        .run_with(RunOptions {
            dry_run: true,
            ..RunOptions::default()
        })
        .await;
    let real = e.run().await;
    let offboarded = |run: i64| {
        let store = e.store.clone();
        async move {
            let (_, items) = store.items(run, Some("offboarded"), 10, 0).await.unwrap();
            assert_eq!(items.len(), 1, "{items:?}");
            let i = items.into_iter().next().unwrap();
            (i.action, i.changes)
        }
    };
    let (dry_action, dry_changes) = offboarded(dry.run_id).await;
    let (action, changes) = offboarded(real.run_id).await;
    assert_eq!(action.as_deref(), Some("delete"));
    assert_eq!((dry_action, dry_changes), (action, changes.clone()));
    assert!(!changes.is_empty() && changes.values().all(|c| c["after"].is_null()));
    let s = real;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.counts.offboarded, 1);
    assert!(!e.staged("u1").await, "purged from staging");
    assert!(matches!(
        e.store.get_user("t", "u1", false).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        e.count("SELECT count(*) FROM group_members WHERE member_id = 'u1'")
            .await,
        0
    );
    let rows = e.rows().await;
    assert_eq!(rows.len(), 1, "row deleted");
    assert_eq!(rows[0].0, "e2");
    assert_eq!(
        e.roles().await,
        roles(&[("e1", "auditor")]),
        "unmanaged role stays"
    );
    assert_eq!(e.count("SELECT count(*) FROM sync_links").await, 1);
    assert_eq!(e.count("SELECT count(*) FROM sync_offboarding").await, 0);
    let again = e.run().await;
    assert_eq!(again.counts, super::Counts::default());
}

#[tokio::test]
async fn a_deleted_user_is_offboarded_after_retention_from_its_deletion() {
    let e = env(UPDATE, "retention_hours = 48").await;
    e.user("u1", "ann", Some("e1")).await;
    e.user("u2", "bob", Some("e2")).await;
    e.group("g", "Staff", &["u1", "u2"]).await;
    e.run().await;
    e.clock.advance(Duration::hours(5));
    e.store
        .delete_user("t", "u2", None, e.now(), &RequestLog::default())
        .await
        .unwrap();
    let s = e.run().await;
    assert_eq!(s.counts.deactivated, 1);
    assert!(!e.rows().await[1].4);
    e.clock.advance(Duration::hours(47));
    assert_eq!(e.run().await.counts.offboarded, 0);
    e.clock.advance(Duration::hours(2));
    let s = e.run().await;
    assert_eq!(s.counts.offboarded, 1);
    let rows = e.rows().await;
    assert_eq!(rows.len(), 2, "update keeps the row");
    assert_eq!(rows[1].5.as_deref(), Some("gone bob"));
    assert_eq!(e.roles().await, roles(&[("e1", "user")]));
    assert!(!e.staged("u2").await);
}

#[tokio::test]
async fn an_offboarding_the_application_refuses_stays_queued_until_it_succeeds() {
    let e = env(DELETE, "retention_hours = 1").await;
    e.user("u1", "ann", Some("e1")).await;
    e.run().await;
    e.set("u1", "active", json!(false)).await;
    e.run().await;
    e.app.batch(
        "CREATE TRIGGER keep BEFORE DELETE ON app_users BEGIN SELECT RAISE(ABORT, 'kept'); END;",
    );
    e.clock.advance(Duration::hours(2));
    let s = e.run().await;
    assert_eq!((s.counts.failed, s.counts.offboarded), (1, 0));
    assert!(!e.staged("u1").await, "purged; the offboarding is queued");
    assert_eq!(e.count("SELECT count(*) FROM sync_offboarding").await, 1);
    e.app.batch("DROP TRIGGER keep");
    let s = e.run().await;
    assert_eq!(s.counts.offboarded, 1);
    assert!(e.rows().await.is_empty());
    assert_eq!(e.count("SELECT count(*) FROM sync_offboarding").await, 0);
    assert_eq!(e.count("SELECT count(*) FROM sync_links").await, 0);
}

#[tokio::test]
async fn the_guard_holds_mass_offboarding_until_approved() {
    let e = env(
        DELETE,
        "retention_hours = 1\nguard_min = 3\nguard_share = 0.2",
    )
    .await;
    for i in 1..=8 {
        e.user(
            &format!("u{i}"),
            &format!("user{i}"),
            Some(&format!("e{i}")),
        )
        .await;
    }
    e.run().await;
    for i in 1..=5 {
        e.set(&format!("u{i}"), "active", json!(false)).await;
    }
    e.clock.advance(Duration::hours(2));
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::AwaitingApproval, "{s:?}");
    assert_eq!(
        (s.held, s.counts.deactivated, s.counts.offboarded),
        (5, 5, 0)
    );
    assert_eq!(e.rows().await.len(), 8, "nothing offboarded");
    assert!(e.staged("u1").await);
    // One comes back before the approval: it is not offboarded.
    e.set("u5", "active", json!(true)).await;
    let a = e
        .engine
        .approve(s.run_id, Trigger::Api, "ops-admin")
        .await
        .unwrap();
    assert_eq!(a.status, RunStatus::Succeeded, "{a:?}");
    assert_eq!(a.counts.offboarded, 4);
    assert_eq!(e.rows().await.len(), 4);
    assert!(e.staged("u5").await && !e.staged("u1").await);
    assert!(matches!(
        e.engine.approve(s.run_id, Trigger::Api, "ops-admin").await,
        Err(super::SyncError::NotAwaitingApproval(_))
    ));
    let approved_by = e
        .count(&format!(
            "SELECT approved_by FROM sync_runs WHERE id = {}",
            s.run_id
        ))
        .await;
    assert_eq!(approved_by, a.run_id);
    // The held run says it was approved, by whom, and the audit trail has the approval.
    let held = e.store.run(s.run_id).await.unwrap().unwrap();
    assert_eq!(
        (held.status.as_str(), held.approver.as_deref()),
        ("approved", Some("ops-admin"))
    );
    assert!(held.approved_at.is_some());
    assert_eq!(
        e.count("SELECT count(*) FROM sync_audit WHERE action = 'approve' AND actor = 'ops-admin'")
            .await,
        1
    );
    // Each offboarding applied by the approval records its action and the values before it.
    let (_, items) = e.store.items(a.run_id, None, 10, 0).await.unwrap();
    assert_eq!(items.len(), 4);
    for i in &items {
        assert_eq!(
            (i.outcome.as_str(), i.action.as_deref()),
            ("offboarded", Some("delete"))
        );
        assert!(!i.changes.is_empty(), "{i:?}");
        assert!(i.changes.values().all(|c| c["after"].is_null()), "{i:?}");
    }
    // Below the guard, offboarding needs no approval.
    e.set("u6", "active", json!(false)).await;
    e.clock.advance(Duration::hours(2));
    let s = e.run().await;
    assert_eq!((s.status, s.counts.offboarded), (RunStatus::Succeeded, 1));
}

#[tokio::test]
async fn one_run_per_tenant_and_an_expired_lease_is_taken_over() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    let expires = crate::store::format_time(e.now() + Duration::minutes(5));
    e.staging.exec(
        "INSERT INTO sync_leases (tenant, holder, acquired_at, expires_at) VALUES ('t', 'other', ?, ?)",
        &[&crate::store::format_time(e.now()), &expires],
    );
    e.staging.exec(
        "INSERT INTO sync_runs (tenant, trigger, dry_run, full, status, started_at) \
         VALUES ('t', 'schedule', 0, 0, 'running', ?)",
        &[&crate::store::format_time(e.now())],
    );
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Skipped);
    assert!(e.rows().await.is_empty());
    assert_eq!(
        e.count(&format!(
            "SELECT count(*) FROM sync_runs WHERE id = {} AND status = 'skipped'",
            s.run_id
        ))
        .await,
        1
    );
    // The holder stopped; once its lease expires the next run takes over.
    e.clock.advance(Duration::minutes(6));
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Succeeded);
    assert_eq!(e.rows().await.len(), 1);
    assert_eq!(
        e.count("SELECT count(*) FROM sync_leases").await,
        0,
        "released"
    );
    assert_eq!(
        e.count(
            "SELECT count(*) FROM sync_runs WHERE status = 'failed' AND error LIKE 'abandoned%'"
        )
        .await,
        1,
        "the stopped holder's run is closed"
    );
}

#[tokio::test]
async fn concurrent_runs_of_one_tenant_do_not_overlap() {
    let e = env(DELETE, "batch_size = 1").await;
    for i in 1..=20 {
        e.user(
            &format!("u{i}"),
            &format!("user{i}"),
            Some(&format!("e{i}")),
        )
        .await;
    }
    let (a, b) = tokio::join!(e.run(), e.run());
    let statuses = [a.status, b.status];
    assert!(statuses.contains(&RunStatus::Succeeded), "{statuses:?}");
    assert_eq!(a.counts.created + b.counts.created, 20);
    assert_eq!(e.rows().await.len(), 20);
}

#[derive(Default)]
struct Collect(Mutex<Vec<ItemReport>>);

impl Progress for Collect {
    fn item(&self, item: &ItemReport) {
        if let Ok(mut v) = self.0.lock() {
            v.push(item.clone());
        }
    }
}

#[tokio::test]
async fn a_dry_run_reports_changes_and_writes_nothing() {
    let e = env(DELETE, "retention_hours = 1").await;
    e.user("u1", "ann", Some("e1")).await;
    e.user("u2", "bob", Some("e2")).await;
    e.group("g1", "Admins", &["u1"]).await;
    e.run().await;
    e.set("u2", "displayName", json!("Bob B")).await;
    e.members("g1", MemberOp::Add(vec![MemberRef { value: "u2".into() }]))
        .await;
    e.set("u1", "active", json!(false)).await;
    e.run().await;
    e.clock.advance(Duration::hours(2));
    e.user("u3", "cid", Some("e3")).await;
    let before_rows = e.rows().await;
    let before_roles = e.roles().await;
    let collect = Arc::new(Collect::default());
    let s = e
        .run_with(RunOptions {
            dry_run: true,
            progress: Some(collect.clone()),
            ..Default::default()
        })
        .await;
    assert!(s.dry_run);
    assert_eq!((s.counts.created, s.counts.offboarded), (1, 1));
    let items = collect.0.lock().unwrap().clone();
    let by = |id: &str| items.iter().find(|i| i.user_id == id).cloned().unwrap();
    assert_eq!(by("u3").outcome, Outcome::Created);
    assert_eq!(by("u1").outcome, Outcome::Offboarded);
    assert_eq!(
        by("u1").changes["user_name"].after,
        Value::Null,
        "delete: every field goes"
    );
    assert_eq!(e.rows().await, before_rows);
    assert_eq!(e.roles().await, before_roles);
    assert!(e.staged("u1").await, "not purged");
    // The real run does what the dry run said.
    let real = e.run().await;
    assert_eq!((real.counts.created, real.counts.offboarded), (1, 1));
    assert_eq!(e.rows().await.len(), 2);
    assert_eq!(
        e.count(&format!(
            "SELECT dry_run FROM sync_runs WHERE id = {}",
            s.run_id
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn dry_run_field_changes_and_role_diffs() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    e.group("g1", "Admins", &[]).await;
    e.group("g2", "Staff", &["u1"]).await;
    e.run().await;
    e.set("u1", "displayName", json!("Ann A")).await;
    e.members("g1", MemberOp::Add(vec![MemberRef { value: "u1".into() }]))
        .await;
    e.members("g2", MemberOp::Remove(vec!["u1".into()])).await;
    let collect = Arc::new(Collect::default());
    let s = e
        .run_with(RunOptions {
            dry_run: true,
            progress: Some(collect.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(s.counts.updated, 1);
    let items = collect.0.lock().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].changes.len(), 1);
    assert_eq!(
        items[0].changes["display_name"].before,
        json!("ann display")
    );
    assert_eq!(items[0].changes["display_name"].after, json!("Ann A"));
    assert_eq!(items[0].roles_added, ["admin"]);
    assert_eq!(items[0].roles_removed, ["user"]);
    assert_eq!(e.roles().await, roles(&[("e1", "user")]));
}

#[tokio::test]
async fn a_new_key_moves_the_row_and_its_roles() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    e.group("g2", "Staff", &["u1"]).await;
    e.run().await;
    e.set("u1", "externalId", json!("e1-new")).await;
    let s = e.run().await;
    assert_eq!(s.counts.updated, 1, "{s:?}");
    let rows = e.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "e1-new");
    assert_eq!(e.roles().await, roles(&[("e1-new", "user")]));
}

#[tokio::test]
async fn the_schema_is_applied_to_a_new_application_database_only() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    e.run().await;
    // Opening again (a restart, another process) must not apply the schema a second time: its
    // CREATE TABLE statements would fail on the existing tables.
    let text = "[staging]\ndatabase = \"sqlite://staging.db\"\n[applications.app]\n\
        database = \"sqlite://app.db\"\nschema = \"app.sql\"\n[tenants.t]\n\
        token = \"0123456789abcdef\"\n[tenants.t.sync]\nmapping = \"m.toml\"\n";
    let config = Config::parse(text, Path::new("c.toml"), e.dir.path(), []).unwrap();
    let again = engine(&config, &e.seams, &e.clock).await;
    assert_eq!(again.tenants().collect::<Vec<_>>(), ["t"]);
    assert_eq!(e.rows().await.len(), 1);
}

#[tokio::test]
async fn a_user_reactivated_while_the_lifecycle_runs_is_not_purged() {
    let e = Arc::new(env(DELETE, "retention_hours = 1").await);
    e.user("u1", "ann", Some("e1")).await;
    e.run().await;
    e.set("u1", "active", json!(false)).await;
    e.run().await;
    e.clock.advance(Duration::hours(2));
    let (read, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *e.seams.pause_before_due_read.lock().unwrap() = Some((read.clone(), go.clone()));
    let run = tokio::spawn({
        let e = e.clone();
        async move { e.run().await }
    });
    read.notified().await;
    e.set("u1", "active", json!(true)).await;
    go.notify_one();
    let s = run.await.unwrap();
    assert_eq!(s.counts.offboarded, 0, "{s:?}");
    assert!(e.staged("u1").await, "not purged");
    assert_eq!(e.rows().await.len(), 1);
    let s = e.run().await;
    assert_eq!(s.counts.updated, 1);
    assert!(e.rows().await[0].4, "active again");
}

/// The sample configuration syncs the demo tenant into the example schema as shipped.
#[tokio::test]
async fn the_sample_configuration_syncs_out_of_the_box() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = [
        (
            "SCIM_BRIDGE_STAGING__DATABASE".to_string(),
            dir.path().join("staging.db").display().to_string(),
        ),
        (
            "SCIM_BRIDGE_APPLICATIONS__PRIMEDOCS__DATABASE".to_string(),
            dir.path().join("app.db").display().to_string(),
        ),
    ];
    let config = Config::load(&root.join("scim-bridge.toml"), env).unwrap();
    assert!(
        config.tenants["demo"]
            .sync
            .as_ref()
            .unwrap()
            .schedule
            .is_some()
    );
    let store = open_staging(&config.staging_db, Durability::Normal)
        .await
        .unwrap();
    let clock = Arc::new(FakeClock::new(t0()));
    let engine = SyncEngine::new(&config, store.clone(), &Connector, clock.clone())
        .await
        .unwrap();
    let doc = normalize(
        &rt(),
        &json!({"userName": "Anna.Meier@Example.CH", "externalId": "obj-1",
            "name": {"givenName": "Anna", "familyName": "Meier"}}),
        &Limits::default(),
    )
    .unwrap()
    .doc;
    store
        .create_user("demo", &rt(), "u1", &doc, t0(), &RequestLog::default())
        .await
        .unwrap();
    let s = engine
        .run("demo", Trigger::Cli, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (s.status, s.counts.created),
        (RunStatus::Succeeded, 1),
        "{s:?}"
    );
    let row: (String, String, String, bool) = Sql(dir.path().join("app.db")).query(
        "SELECT external_id, user_name, initials, is_active FROM primedocs_users",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )[0]
    .clone();
    assert_eq!(
        row,
        (
            "obj-1".into(),
            "anna.meier@example.ch".into(),
            "AM".into(),
            true
        )
    );
}

/// A scheduler shares one engine between tasks.
#[test]
fn the_engine_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<SyncEngine>();
    shared::<Arc<SyncEngine>>();
}

#[tokio::test]
async fn a_run_that_lost_its_lease_records_nothing_more_and_the_taker_converges() {
    let e = Arc::new(env(DELETE, "batch_size = 2").await);
    for i in 1..=4 {
        e.user(
            &format!("u{i}"),
            &format!("user{i}"),
            Some(&format!("e{i}")),
        )
        .await;
    }
    let (here, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *e.seams.pause_before_record.lock().unwrap() = Some((here.clone(), go.clone()));
    let slow = tokio::spawn({
        let e = e.clone();
        async move { e.run().await }
    });
    here.notified().await;
    // The first run stalls past its lease; another takes over and does the work.
    e.clock.advance(Duration::minutes(6));
    let taker = e.run().await;
    assert_eq!(taker.status, RunStatus::Succeeded, "{taker:?}");
    go.notify_one();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, RunStatus::Failed, "{slow:?}");
    assert!(
        slow.error.as_deref().unwrap_or("").contains("lease"),
        "{slow:?}"
    );
    let keys: Vec<String> = e.rows().await.into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["e1", "e2", "e3", "e4"]);
    assert_eq!(e.count("SELECT count(*) FROM sync_links").await, 4);
    assert_eq!(e.count("SELECT count(*) FROM sync_leases").await, 0);
    assert_eq!(e.run().await.counts, super::Counts::default());
}

/// A scheduled tick that comes while the tenant's run is in progress is recorded as skipped.
#[tokio::test]
async fn a_tick_during_a_run_is_recorded_as_skipped() {
    let e = Arc::new(env(DELETE, "schedule = \"*/5 * * * *\"").await);
    e.user("u1", "ann", Some("e1")).await;
    let (here, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *e.seams.pause_before_record.lock().unwrap() = Some((here.clone(), go.clone()));
    let first = tokio::spawn({
        let e = e.clone();
        async move { super::scheduler::scheduled_run(&e.engine, "t").await }
    });
    here.notified().await;
    let second = super::scheduler::scheduled_run(&e.engine, "t").await;
    go.notify_one();
    assert_eq!(second, Some(RunStatus::Skipped));
    assert_eq!(first.await.unwrap(), Some(RunStatus::Succeeded));
    assert_eq!(
        e.count("SELECT count(*) FROM sync_runs WHERE trigger = 'schedule' AND status = 'skipped'")
            .await,
        1
    );
    assert_eq!(e.rows().await.len(), 1);
}

/// Stops the run it is given to after its first batch, as a shutdown would.
struct StopAfterFirstBatch(Arc<std::sync::atomic::AtomicBool>);

impl Progress for StopAfterFirstBatch {
    fn advance(&self, _n: u64) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// At shutdown a run ends after the batch it is writing: that batch is recorded, the lease is
/// released, and the next run goes on from there.
#[tokio::test]
async fn a_run_stopped_at_shutdown_keeps_its_committed_batches_and_releases_the_lease() {
    let e = env(DELETE, "batch_size = 1").await;
    for i in 1..=3 {
        e.user(
            &format!("u{i}"),
            &format!("user{i}"),
            Some(&format!("e{i}")),
        )
        .await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = e
        .run_with(RunOptions {
            progress: Some(Arc::new(StopAfterFirstBatch(stop.clone()))),
            stop: Some(stop),
            ..RunOptions::default()
        })
        .await;
    assert_eq!(s.status, RunStatus::Failed);
    assert!(
        s.error.as_deref().unwrap_or("").contains("shutdown"),
        "{s:?}"
    );
    assert_eq!(s.counts.created, 1);
    assert_eq!(e.rows().await.len(), 1);
    assert_eq!(
        e.count("SELECT count(*) FROM sync_leases").await,
        0,
        "released"
    );
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Succeeded);
    assert_eq!(s.counts.created, 2, "the rest, not the first again");
    assert_eq!(e.rows().await.len(), 3);
}

/// A user deactivated or deleted before its first sync never reaches the application; its
/// staging row is purged after the retention with nothing to offboard.
#[tokio::test]
async fn a_user_gone_before_its_first_sync_is_never_created() {
    let e = env(DELETE, "retention_hours = 1").await;
    e.user("u1", "ann", Some("e1")).await;
    e.set("u1", "active", json!(false)).await;
    e.user("u2", "bob", Some("e2")).await;
    e.store
        .delete_user("t", "u2", None, e.now(), &RequestLog::default())
        .await
        .unwrap();
    e.user("u3", "cid", Some("e3")).await;
    let s = e.run().await;
    assert_eq!((s.counts.created, s.counts.unchanged), (1, 2), "{s:?}");
    assert_eq!(e.rows().await.len(), 1, "only cid");
    e.clock.advance(Duration::hours(2));
    let s = e.run().await;
    assert_eq!((s.counts.offboarded, s.status), (0, RunStatus::Succeeded));
    let purged: Vec<String> = e
        .items(s.run_id)
        .await
        .into_iter()
        .filter(|i| i.1 == "purged")
        .map(|i| i.0)
        .collect();
    assert_eq!(purged, ["u1", "u2"]);
    assert!(!e.staged("u1").await && !e.staged("u2").await);
    assert_eq!(e.rows().await.len(), 1);
}

/// A user that fails `quarantine_after` runs in a row on one staged version is skipped and
/// counted apart (the run reads `succeeded`); a change to its staged data, or an operator,
/// releases it.
#[tokio::test]
async fn a_user_that_keeps_failing_is_quarantined_until_it_changes_or_is_released() {
    let e = env(DELETE, "quarantine_after = 2").await;
    e.app.batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON app_users WHEN NEW.user_name = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'bad user refused'); END;",
    );
    e.user("u1", "ok", Some("e1")).await;
    e.user("u2", "bad", Some("e2")).await;
    let counts = |s: &RunSummary| (s.status, s.counts.failed, s.counts.quarantined);
    let s = e.run().await;
    assert_eq!(counts(&s), (RunStatus::CompletedWithErrors, 1, 0));
    let s = e.run().await;
    assert_eq!(
        counts(&s),
        (RunStatus::CompletedWithErrors, 1, 1),
        "the second failure in a row quarantines it"
    );
    let s = e.run().await;
    assert_eq!(
        counts(&s),
        (RunStatus::Succeeded, 0, 1),
        "skipped, not failed"
    );
    let s = e
        .run_with(RunOptions {
            full: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(
        counts(&s),
        (RunStatus::Succeeded, 0, 1),
        "a full run skips it too"
    );
    // Its staged data changes: it is tried again, and counted as failing anew.
    e.set("u2", "displayName", json!("changed")).await;
    let s = e.run().await;
    assert_eq!(counts(&s), (RunStatus::CompletedWithErrors, 1, 0));
    let s = e.run().await;
    assert_eq!(counts(&s).2, 1, "quarantined again after two more");
    // The application is fixed; an operator releases the user and the next run writes it.
    e.app.batch("DROP TRIGGER refuse");
    assert!(
        e.store
            .release_quarantine("t", "u2", "ops-admin", e.now())
            .await
            .unwrap()
    );
    assert!(
        !e.store
            .release_quarantine("t", "u2", "ops-admin", e.now())
            .await
            .unwrap(),
        "not quarantined any more"
    );
    assert_eq!(
        e.count(
            "SELECT count(*) FROM sync_audit WHERE action = 'release_quarantine' \
             AND actor = 'ops-admin' AND detail LIKE '%u2%'"
        )
        .await,
        1
    );
    let s = e.run().await;
    assert_eq!(counts(&s), (RunStatus::Succeeded, 0, 0));
    assert_eq!(s.counts.created, 1);
    assert_eq!(e.rows().await.len(), 2);
    assert_eq!(e.count("SELECT count(*) FROM sync_retry").await, 0);
}

/// A pid of this host that no process has.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A lease and runs left by a process of this host that died are not waited for: the next
/// run takes the lease over at once and closes the dead runs (dry ones too) as failed.
#[tokio::test]
async fn a_dead_holders_lease_is_taken_over_at_once_and_its_runs_closed() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    let dead = super::holder::Holder {
        pid: dead_pid(),
        start: 1,
        ..super::holder::Holder::this_process()
    }
    .to_string();
    let now = crate::store::format_time(e.now());
    let expires = crate::store::format_time(e.now() + Duration::minutes(5));
    for dry in [0, 1] {
        e.staging.exec(
            "INSERT INTO sync_runs (tenant, trigger, dry_run, full, status, started_at, holder, \
             heartbeat_at) VALUES ('t', 'cli', ?, 0, 'running', ?, ?, ?)",
            &[&dry, &now, &dead, &now],
        );
    }
    e.staging.exec(
        "INSERT INTO sync_leases (tenant, holder, run_id, acquired_at, expires_at) \
         VALUES ('t', ?, 1, ?, ?)",
        &[&dead, &now, &expires],
    );
    let s = e.run().await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, 1);
    assert_eq!(
        e.count(
            "SELECT count(*) FROM sync_runs WHERE status = 'failed' AND error LIKE 'abandoned%'"
        )
        .await,
        2,
        "the dead real run and the dead dry run"
    );
    assert_eq!(e.count("SELECT count(*) FROM sync_leases").await, 0);
}

/// A live holder elsewhere (another host) keeps its lease until it expires; an operator can
/// release it, which is recorded.
#[tokio::test]
async fn a_live_lease_skips_runs_until_an_operator_releases_it() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    let now = crate::store::format_time(e.now());
    let expires = crate::store::format_time(e.now() + Duration::minutes(5));
    e.staging.exec(
        "INSERT INTO sync_leases (tenant, holder, run_id, acquired_at, expires_at) \
         VALUES ('t', 'host-b/4242:77/abc', 9, ?, ?)",
        &[&now, &expires],
    );
    assert_eq!(e.run().await.status, RunStatus::Skipped);
    let released = e
        .store
        .release_lease("t", "ops-admin", e.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (released.holder.as_str(), released.run_id),
        ("host-b/4242:77/abc", Some(9))
    );
    assert!(
        e.store
            .release_lease("t", "ops-admin", e.now())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        e.count(
            "SELECT count(*) FROM sync_audit WHERE action = 'release_lease' AND actor = 'ops-admin'"
        )
        .await,
        1
    );
    let s = e.run().await;
    assert_eq!((s.status, s.counts.created), (RunStatus::Succeeded, 1));
}

/// A heartbeat renews the lease of the run that holds it and records the run's last sign of
/// life; once the lease is gone it says so.
#[tokio::test]
async fn heartbeats_renew_the_lease_until_it_is_lost() {
    let e = env(DELETE, "").await;
    let holder = super::holder::Holder::this_process().to_string();
    let begun = e
        .store
        .begin_run(BeginRun {
            tenant: "t".into(),
            holder: holder.clone(),
            take_from: None,
            trigger: "cli",
            dry_run: false,
            full: false,
            started_at: e.now(),
            lease_expires: e.now() + Duration::seconds(30),
            watermark_from: Some(0),
        })
        .await
        .unwrap();
    assert!(begun.leased);
    let later = e.now() + Duration::seconds(20);
    let beat = Heartbeat {
        tenant: "t".into(),
        run_id: begun.run_id,
        holder: holder.clone(),
        leased: true,
        now: later,
        lease_expires: later + Duration::seconds(30),
    };
    assert!(e.store.heartbeat(beat.clone()).await.unwrap());
    let lease = e.store.lease_row("t").await.unwrap().unwrap();
    assert_eq!(lease.expires_at, later + Duration::seconds(30));
    let running = e.store.running_runs(Some("t")).await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].heartbeat_at, Some(later));
    assert_eq!(running[0].holder.as_deref(), Some(holder.as_str()));
    e.store.release_lease("t", "ops", later).await.unwrap();
    assert!(!e.store.heartbeat(beat).await.unwrap(), "the lease is lost");
    // A run whose heartbeat stopped three leases ago is abandoned, whoever held it.
    e.clock.advance(Duration::minutes(3));
    assert_eq!(e.engine.close_abandoned_runs(None).await.unwrap(), 1);
}

/// After the application lost or changed rows behind the engine's back (a restore, a hand
/// edit), an incremental run trusts its links and writes nothing, `verify` reports the drift,
/// and a full run writes back what is gone or differs.
#[tokio::test]
async fn a_full_run_repairs_the_application_and_verify_reports_drift() {
    let e = env(DELETE, "").await;
    e.user("u1", "ann", Some("e1")).await;
    e.user("u2", "bob", Some("e2")).await;
    e.user("u3", "cid", Some("e3")).await;
    e.group("g1", "Admins", &["u3"]).await;
    e.run().await;
    assert!(e.engine.verify("t").await.unwrap().is_clean());
    e.app.batch(
        "DELETE FROM app_users WHERE external_id = 'e1';
         UPDATE app_users SET display_name = 'edited by hand' WHERE external_id = 'e2';
         DELETE FROM app_roles WHERE external_id = 'e3' AND role = 'admin';",
    );
    let r = e.engine.verify("t").await.unwrap();
    assert_eq!(
        (r.linked, r.missing, r.differing, r.roles_missing),
        (3, 1, 1, 1)
    );
    let bob = r.drifts.iter().find(|d| d.user_id == "u2").unwrap();
    assert_eq!(
        bob.changes["display_name"],
        super::Change {
            before: json!("edited by hand"),
            after: json!("bob display")
        }
    );
    assert_eq!(
        r.drifts
            .iter()
            .find(|d| d.user_id == "u3")
            .unwrap()
            .roles_missing,
        ["admin"]
    );
    let s = e.run().await;
    assert_eq!(
        s.counts,
        super::Counts::default(),
        "incremental: nothing changed"
    );
    let s = e
        .run_with(RunOptions {
            full: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(
        (s.counts.created, s.counts.updated, s.counts.unchanged),
        (1, 2, 0),
        "{s:?}"
    );
    let items = e.items(s.run_id).await;
    let outcome = |id: &str| items.iter().find(|i| i.0 == id).unwrap().1.clone();
    assert_eq!(
        (outcome("u1"), outcome("u2"), outcome("u3")),
        ("created".into(), "updated".into(), "updated".into())
    );
    let bob_changes: Value = serde_json::from_str(
        items
            .iter()
            .find(|i| i.0 == "u2")
            .unwrap()
            .2
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bob_changes["display_name"]["before"], "edited by hand");
    assert!(e.engine.verify("t").await.unwrap().is_clean());
    assert_eq!(e.rows().await.len(), 3);
    assert!(
        e.roles()
            .await
            .contains(&("e3".to_string(), "admin".to_string()))
    );
    // And a full run over rows that are as the links say writes nothing.
    let s = e
        .run_with(RunOptions {
            full: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!((s.counts.unchanged, s.counts.updated), (3, 0));
}

/// A row the application made with a user's key is not the engine's: the user fails with the
/// reason and the row is left alone; a mapping that adopts takes it over as an `adopted` item
/// and owns it from then on.
#[tokio::test]
async fn rows_the_application_made_are_left_alone_unless_the_mapping_adopts() {
    for adopt in [false, true] {
        let mapping = if adopt {
            MAPPING.replace(
                "key = \"externalId\"\n",
                "key = \"externalId\"\nadopt = \"match-by-key\"\n",
            )
        } else {
            MAPPING.to_string()
        };
        let e = env_with(format!("{mapping}{DELETE}"), "").await;
        e.app.batch(
            "INSERT INTO app_users (external_id, user_name, display_name, active) \
             VALUES ('e1', 'made by the application', 'App', 1)",
        );
        e.user("u1", "ann", Some("e1")).await;
        e.user("u2", "bob", Some("e2")).await;
        let s = e.run().await;
        let items = e.items(s.run_id).await;
        let ann = items.iter().find(|i| i.0 == "u1").unwrap();
        if adopt {
            assert_eq!(
                (s.counts.created, s.counts.updated, s.counts.failed),
                (1, 1, 0)
            );
            assert_eq!(ann.1, "adopted");
            assert_eq!(e.rows().await[0].1, "ann", "updated from then on");
            assert_eq!(
                e.count(
                    "SELECT count(*) FROM sync_owners WHERE app_key = 'e1' AND how = 'adopted'"
                )
                .await,
                1
            );
        } else {
            assert_eq!((s.counts.created, s.counts.failed), (1, 1), "{s:?}");
            assert_eq!(ann.1, "failed");
            assert!(
                ann.3
                    .as_deref()
                    .unwrap()
                    .contains("adopt = \"match-by-key\""),
                "{ann:?}"
            );
            assert_eq!(e.rows().await[0].1, "made by the application", "left alone");
            // Once the application's row is gone, the user is created and owned.
            e.app
                .batch("DELETE FROM app_users WHERE external_id = 'e1'");
            let s = e.run().await;
            assert_eq!((s.counts.created, s.counts.failed), (1, 0), "{s:?}");
        }
        assert_eq!(
            e.count("SELECT count(*) FROM sync_owners WHERE tenant = 't' AND how = 'created'")
                .await,
            if adopt { 1 } else { 2 }
        );
    }
}

/// What a subscriber wrote, for tests that read the log.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// The JSON log lines `f` writes.
fn log_of(f: impl FnOnce()) -> Vec<Value> {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A run's summary keeps its first failing users with reasons that quote no value, and the
/// log says who failed and why, but neither the rendered value, nor the application's
/// message, nor the userName; the ledger keeps the whole reason.
#[tokio::test]
async fn failing_users_are_logged_without_the_values_their_reasons_quote() {
    let mapping = MAPPING.replacen(
        "active = { template = \"true\", type = \"boolean\" }",
        "active = { template = \"{{default title \\\"true\\\"}}\", type = \"boolean\" }",
        1,
    );
    assert_ne!(mapping, MAPPING);
    let e = env_with(format!("{mapping}{DELETE}"), "").await;
    e.app.batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON app_users WHEN NEW.user_name LIKE 'refused-%' \
         BEGIN SELECT RAISE(ABORT, 'the application says no to this person'); END;",
    );
    e.user("u-title", "ann-person", Some("e0")).await;
    e.set("u-title", "title", json!("Secret Title Value")).await;
    e.user("u-nokey", "nokey-person", None).await;
    for i in 0..21 {
        e.user(
            &format!("u{i:02}"),
            &format!("refused-{i:02}"),
            Some(&format!("e{i:02}")),
        )
        .await;
    }
    e.user("u-ok", "ok-person", Some("e-ok")).await;
    let s = e.run().await;
    assert_eq!((s.counts.created, s.counts.failed), (1, 23), "{s:?}");
    assert_eq!(s.failures.len(), RunSummary::FAILURES_KEPT);
    let items = e.items(s.run_id).await;
    let error = |id: &str| items.iter().find(|i| i.0 == id).and_then(|i| i.3.clone());
    assert!(
        error("u-title").unwrap().contains("Secret Title Value"),
        "the ledger keeps the whole reason: {items:?}"
    );
    assert!(error("u00").unwrap().contains("says no"), "{items:?}");

    let lines = log_of(|| s.log_failures());
    let text = serde_json::to_string(&lines).unwrap();
    for secret in ["Secret Title Value", "says no", "-person", "refused-"] {
        assert!(!text.contains(secret), "{secret:?} is in the log: {text}");
    }
    assert_eq!(lines.len(), RunSummary::FAILURES_KEPT + 1, "{text}");
    let reason = |id: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["user_id"] == id)
            .map(|l| l["fields"]["reason"].as_str().unwrap().to_string())
    };
    assert_eq!(
        reason("u-title").as_deref(),
        Some("fields.active: the rendered value is empty or not a valid boolean"),
        "{text}"
    );
    assert_eq!(
        reason("u-nokey").as_deref(),
        Some("key: the key attribute `externalId` is empty for this user"),
        "{text}"
    );
    assert_eq!(
        reason("u00").as_deref(),
        Some("the application refused the write"),
        "{text}"
    );
    for l in &lines {
        assert_eq!(l["level"], "WARN", "{l}");
        assert_eq!(l["fields"]["tenant"], "t", "{l}");
        assert_eq!(l["fields"]["run_id"], s.run_id, "{l}");
    }
    let last = &lines[RunSummary::FAILURES_KEPT]["fields"];
    assert_eq!(last["more"], 3, "{text}");
}

/// A row another tenant owns is never written, whatever the key says.
#[tokio::test]
async fn a_row_another_tenant_owns_is_never_taken_over() {
    let e = env(DELETE, "").await;
    e.staging.exec(
        "INSERT INTO sync_owners (application, app_table, scope, app_key, tenant, user_id, how, at) \
         VALUES ('app', 'app_users', '', 'e1', 'other', 'x1', 'created', '2026-01-01T00:00:00.000Z')",
        &[],
    );
    e.app.batch(
        "INSERT INTO app_users (external_id, user_name, display_name, active) \
         VALUES ('e1', 'other tenant''s', 'O', 1)",
    );
    e.user("u1", "ann", Some("e1")).await;
    let s = e.run().await;
    assert_eq!(s.counts.failed, 1);
    let item = &e.items(s.run_id).await[0];
    assert!(
        item.3
            .as_deref()
            .unwrap()
            .contains("belongs to tenant \"other\""),
        "{item:?}"
    );
    assert_eq!(e.rows().await[0].1, "other tenant's");
}

/// Two tenants writing one application table are refused unless their mappings keep their
/// rows apart with a tenant column; with one, users of both tenants with the same key get a
/// row each, and neither touches the other's.
#[tokio::test]
async fn tenants_sharing_a_table_need_a_tenant_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = |mapping: &str| {
        std::fs::write(dir.path().join("m.toml"), mapping).unwrap();
        std::fs::write(
            dir.path().join("app.sql"),
            "CREATE TABLE app_users (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, \
             external_id TEXT NOT NULL, user_name TEXT NOT NULL, display_name TEXT, dept TEXT, \
             active INTEGER NOT NULL, note TEXT, UNIQUE (external_id, tenant));
             CREATE TABLE app_roles (external_id TEXT NOT NULL, tenant TEXT NOT NULL, role TEXT NOT NULL);",
        )
        .unwrap();
        Config::parse(
            "[staging]\ndatabase = \"sqlite://staging.db\"\n\
             [applications.app]\ndatabase = \"sqlite://app.db\"\nschema = \"app.sql\"\n\
             [tenants.a]\ntoken = \"0123456789abcdef-a\"\n[tenants.a.sync]\nmapping = \"m.toml\"\n\
             [tenants.b]\ntoken = \"0123456789abcdef-b\"\n[tenants.b.sync]\nmapping = \"m.toml\"\n",
            Path::new("c.toml"),
            dir.path(),
            [],
        )
        .unwrap()
    };
    let clock = Arc::new(FakeClock::new(t0()));
    let unscoped = config(&format!("{MAPPING}{DELETE}"));
    let store = open_staging(&unscoped.staging_db, Durability::Normal)
        .await
        .unwrap();
    let e = match SyncEngine::new(&unscoped, store.clone(), &Connector, clock.clone()).await {
        Ok(_) => panic!("two tenants on one table without a tenant column"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tenants a, b all write table app_users"), "{e}");
    assert!(e.contains("tenant_column"), "{e}");
    let scoped = config(&format!(
        "{}{DELETE}",
        MAPPING
            .replace(
                "key = \"externalId\"\n",
                "key = \"externalId\"\ntenant_column = \"tenant\"\n"
            )
            .replace(
                "role_column = \"role\"\n",
                "role_column = \"role\"\ntenant_column = \"tenant\"\n"
            )
    ));
    let engine = SyncEngine::new(&scoped, store.clone(), &Connector, clock.clone())
        .await
        .unwrap();
    for tenant in ["a", "b"] {
        let doc = normalize(
            &rt(),
            &json!({"userName": format!("ann-{tenant}"), "externalId": "e1", "displayName": "Ann"}),
            &Limits::default(),
        )
        .unwrap()
        .doc;
        store
            .create_user(tenant, &rt(), "u1", &doc, t0(), &RequestLog::default())
            .await
            .unwrap();
        let g = normalize(
            &ResourceType::group(),
            &json!({"displayName": "Staff"}),
            &Limits::default(),
        )
        .unwrap();
        store
            .create_group(
                tenant,
                &ResourceType::group(),
                "g1",
                GroupChange::replace_members(g.doc, Some(vec![MemberRef { value: "u1".into() }])),
                t0(),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        let s = engine
            .run(tenant, Trigger::Cli, RunOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (s.counts.created, s.counts.failed),
            (1, 0),
            "{tenant}: {s:?}"
        );
    }
    let app = Sql(dir.path().join("app.db"));
    let rows: Vec<(String, String)> = app.query(
        "SELECT tenant, user_name FROM app_users ORDER BY tenant",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(
        rows,
        [
            ("a".to_string(), "ann-a".to_string()),
            ("b".to_string(), "ann-b".to_string())
        ]
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM app_roles WHERE role = 'user'", &[]),
        2,
        "a role row per tenant"
    );
    // One tenant's change reaches only its own row.
    store
        .update_user(
            "a",
            &rt(),
            "u1",
            None,
            t0(),
            &|mut d| {
                d.insert("displayName".into(), json!("Ann of A"));
                Ok(d)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
    engine
        .run("a", Trigger::Cli, RunOptions::default())
        .await
        .unwrap();
    let names: Vec<(String, String)> = app.query(
        "SELECT tenant, display_name FROM app_users ORDER BY tenant",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(
        names,
        [
            ("a".to_string(), "Ann of A".to_string()),
            ("b".to_string(), "Ann".to_string())
        ]
    );
}
