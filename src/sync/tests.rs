//! Engine tests: a temp staging store driven through its real API, a temp application
//! database, the real mapping, a fake clock.

use std::sync::atomic::{AtomicU64, Ordering};

use super::SyncError;
use tokio::sync::Notify;

/// Test-only failure injection.
#[derive(Default)]
pub struct Hooks {
    /// Fail the staging commit of this batch number (1-based, counted per run); 0: never.
    pub fail_commit_at_batch: AtomicU64,
    /// After the lifecycle read due users: notify the first, wait for the second.
    pub pause_after_due_read: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    /// After a batch was written to the application, before it is recorded in staging.
    pub pause_before_record: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

/// Tell the test we are here, then wait for it (once: the pair is taken).
async fn pause(slot: &Mutex<Option<(Arc<Notify>, Arc<Notify>)>>) {
    let pair = slot.lock().ok().and_then(|mut g| g.take());
    if let Some((here, go)) = pair {
        here.notify_one();
        go.notified().await;
    }
}

impl Hooks {
    pub async fn after_due_read(&self) {
        pause(&self.pause_after_due_read).await;
    }

    pub async fn before_record(&self) {
        pause(&self.pause_before_record).await;
    }

    pub fn before_commit(&self, batch: u64) -> Result<(), SyncError> {
        if self.fail_commit_at_batch.load(Ordering::SeqCst) == batch {
            return Err(SyncError::Injected);
        }
        Ok(())
    }
}

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::SqlitePool;

use super::{
    ItemReport, Outcome, Progress, RunOptions, RunStatus, RunSummary, SyncEngine, Trigger,
};
use crate::clock::FakeClock;
use crate::config::Config;
use crate::scim::Limits;
use crate::scim::patch::MemberOp;
use crate::scim::resource::{MemberRef, normalize};
use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA, ResourceType};
use crate::store::sqlite::Durability;
use crate::store::{GroupChange, SqliteStore, StoreError};

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

/// No unique index on the key and none on (user, role) (plain indexes only): the writer must
/// not duplicate rows.
const APP_SQL: &str = "
CREATE TABLE app_users (id INTEGER PRIMARY KEY, external_id TEXT NOT NULL, user_name TEXT NOT NULL,
    display_name TEXT, dept TEXT, active INTEGER NOT NULL, note TEXT);
CREATE TABLE app_roles (external_id TEXT NOT NULL, role TEXT NOT NULL);
CREATE INDEX app_users_key ON app_users (external_id);
CREATE INDEX app_roles_key ON app_roles (external_id, role);
";

struct Env {
    dir: tempfile::TempDir,
    store: SqliteStore,
    clock: Arc<FakeClock>,
    engine: SyncEngine,
    app: SqlitePool,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
}

async fn env(offboarding: &str, settings: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), format!("{MAPPING}{offboarding}")).unwrap();
    std::fs::write(dir.path().join("app.sql"), APP_SQL).unwrap();
    let text = format!(
        "[staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"normal\"\n\
         [applications.app]\ndatabase = \"sqlite://app.db\"\nschema = \"app.sql\"\n\
         [tenants.t]\ntoken = \"0123456789abcdef\"\n\
         [tenants.t.sync]\nmapping = \"m.toml\"\n{settings}\n"
    );
    let config = Config::parse(&text, Path::new("c.toml"), dir.path(), []).unwrap();
    let store = SqliteStore::open(config.staging_sqlite_path().unwrap(), Durability::Normal)
        .await
        .unwrap();
    let clock = Arc::new(FakeClock::new(t0()));
    let engine = SyncEngine::new(&config, store.clone().into(), clock.clone())
        .await
        .unwrap();
    let app = SqlitePool::connect(&format!("sqlite://{}", dir.path().join("app.db").display()))
        .await
        .unwrap();
    Env {
        dir,
        store,
        clock,
        engine,
        app,
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
            .create_user("t", &rt(), id, &doc, self.now())
            .await
            .unwrap();
    }

    async fn set(&self, id: &str, attr: &str, value: Value) {
        self.store
            .update_user("t", &rt(), id, None, self.now(), |mut d| {
                d.insert(attr.into(), value.clone());
                Ok(d)
            })
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
                |doc| {
                    Ok(GroupChange {
                        doc,
                        members: vec![op.clone()],
                    })
                },
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
        sqlx::query_as(
            "SELECT external_id, user_name, display_name, dept, active, note FROM app_users ORDER BY external_id",
        )
        .fetch_all(&self.app)
        .await
        .unwrap()
    }

    async fn roles(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT external_id, role FROM app_roles ORDER BY 1, 2")
            .fetch_all(&self.app)
            .await
            .unwrap()
    }

    async fn items(&self, run_id: i64) -> Vec<(String, String, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT user_id, outcome, changes, error FROM sync_run_items WHERE run_id = ? ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(self.store.reader())
        .await
        .unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.store.reader())
            .await
            .unwrap()
    }

    async fn staged(&self, id: &str) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users WHERE id = ?")
            .bind(id)
            .fetch_one(self.store.reader())
            .await
            .unwrap()
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
    e.engine
        .hooks
        .fail_commit_at_batch
        .store(2, Ordering::SeqCst);
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
    e.engine
        .hooks
        .fail_commit_at_batch
        .store(0, Ordering::SeqCst);
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
    sqlx::raw_sql(
        "CREATE TRIGGER refuse BEFORE INSERT ON app_users WHEN NEW.user_name = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'bad user refused'); END;",
    )
    .execute(&e.app)
    .await
    .unwrap();
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
    sqlx::query("DROP TRIGGER refuse")
        .execute(&e.app)
        .await
        .unwrap();
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
    sqlx::query("INSERT INTO app_roles (external_id, role) VALUES ('e1', 'auditor')")
        .execute(&e.app)
        .await
        .unwrap();
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
    sqlx::query("INSERT INTO app_roles (external_id, role) VALUES ('e1', 'auditor')")
        .execute(&e.app)
        .await
        .unwrap();

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
    let s = e.run().await;
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
    e.store.delete_user("t", "u2", None, e.now()).await.unwrap();
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
    sqlx::raw_sql(
        "CREATE TRIGGER keep BEFORE DELETE ON app_users BEGIN SELECT RAISE(ABORT, 'kept'); END;",
    )
    .execute(&e.app)
    .await
    .unwrap();
    e.clock.advance(Duration::hours(2));
    let s = e.run().await;
    assert_eq!((s.counts.failed, s.counts.offboarded), (1, 0));
    assert!(!e.staged("u1").await, "purged; the offboarding is queued");
    assert_eq!(e.count("SELECT count(*) FROM sync_offboarding").await, 1);
    sqlx::query("DROP TRIGGER keep")
        .execute(&e.app)
        .await
        .unwrap();
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
    let a = e.engine.approve(s.run_id, Trigger::Api).await.unwrap();
    assert_eq!(a.status, RunStatus::Succeeded, "{a:?}");
    assert_eq!(a.counts.offboarded, 4);
    assert_eq!(e.rows().await.len(), 4);
    assert!(e.staged("u5").await && !e.staged("u1").await);
    assert!(matches!(
        e.engine.approve(s.run_id, Trigger::Api).await,
        Err(super::SyncError::NotAwaitingApproval(_))
    ));
    let approved_by = e
        .count(&format!(
            "SELECT approved_by FROM sync_runs WHERE id = {}",
            s.run_id
        ))
        .await;
    assert_eq!(approved_by, a.run_id);
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
    sqlx::query(
        "INSERT INTO sync_leases (tenant, holder, acquired_at, expires_at) VALUES ('t', 'other', ?, ?)",
    )
    .bind(crate::store::format_time(e.now()))
    .bind(&expires)
    .execute(e.store.writer())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sync_runs (tenant, trigger, dry_run, full, status, started_at) \
         VALUES ('t', 'schedule', 0, 0, 'running', ?)",
    )
    .bind(crate::store::format_time(e.now()))
    .execute(e.store.writer())
    .await
    .unwrap();
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
    let again = SyncEngine::new(&config, e.store.clone().into(), e.clock.clone())
        .await
        .unwrap();
    assert_eq!(again.tenants().collect::<Vec<_>>(), ["t"]);
    assert_eq!(e.rows().await.len(), 1);
}

#[tokio::test]
async fn a_user_reactivated_while_the_lifecycle_runs_is_not_purged() {
    let e = Arc::new(env(DELETE, "retention_hours = 1").await);
    e.user("u1", "ann", Some("e1")).await;
    e.set("u1", "active", json!(false)).await;
    e.run().await;
    e.clock.advance(Duration::hours(2));
    let (read, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *e.engine.hooks.pause_after_due_read.lock().unwrap() = Some((read.clone(), go.clone()));
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
    let store = SqliteStore::open(config.staging_sqlite_path().unwrap(), Durability::Normal)
        .await
        .unwrap();
    let clock = Arc::new(FakeClock::new(t0()));
    let engine = SyncEngine::new(&config, store.clone().into(), clock.clone())
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
        .create_user("demo", &rt(), "u1", &doc, t0())
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
    let app = SqlitePool::connect(&format!("sqlite://{}", dir.path().join("app.db").display()))
        .await
        .unwrap();
    let row: (String, String, String, bool) =
        sqlx::query_as("SELECT external_id, user_name, initials, is_active FROM primedocs_users")
            .fetch_one(&app)
            .await
            .unwrap();
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
    *e.engine.hooks.pause_before_record.lock().unwrap() = Some((here.clone(), go.clone()));
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
    *e.engine.hooks.pause_before_record.lock().unwrap() = Some((here.clone(), go.clone()));
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

/// The change feed and the link look-up are answered from indexes: a batch costs the same
/// among 1 000 users as among 1 000 000.
#[tokio::test]
async fn the_change_feed_and_links_use_indexes() {
    let e = env(DELETE, "").await;
    let c = e.store.connect().unwrap();
    let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let feed = plan(
        &super::staging::sqlite::blocking::changed_users_sql(),
        &[&"t", &5, &7, &100, &500],
    );
    assert!(
        feed[0].contains("users_change_seq (tenant=? AND change_seq>? AND change_seq<?)"),
        "{feed:?}"
    );
    assert!(
        !feed.iter().any(|l| l.contains("TEMP B-TREE")),
        "no sort: {feed:?}"
    );
    assert!(
        feed.iter().any(|l| l.contains("group_members_member")),
        "{feed:?}"
    );
    let links = plan(super::staging::sqlite::LINKS, &[&"t", &"[\"u1\"]"]);
    assert!(
        links[0].contains("PRIMARY KEY (tenant=? AND user_id=?)"),
        "{links:?}"
    );
    for p in feed.iter().chain(&links) {
        assert!(
            !p.starts_with("SCAN u") && !p.starts_with("SCAN users"),
            "{p}"
        );
    }
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
