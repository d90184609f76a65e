//! The sync engine: turns a tenant's staged users into the application's users and roles.
//!
//! A run, per tenant, under a lease (one run per tenant at a time, across processes):
//! 1. users that failed last time (`sync_retry`), then every user whose (change_seq, pk) is
//!    above the tenant's watermark, in batches ordered by change: render with the tenant's
//!    mapping (Active, or Deactivated when inactive or deleted), compare the fingerprint with
//!    the user's link, write what changed to the application in one transaction per batch
//!    (a savepoint per user), then record links, ledger items, retries and the new watermark in
//!    one staging transaction;
//! 2. the lifecycle: users inactive or deleted for longer than the retention are purged from
//!    staging and their offboarding queued in the same transaction, unless there are more than
//!    the guard allows (then the run waits for approval); then the queue is applied.
//!
//! The watermark only moves over committed work, so a run stopped at any point converges on
//! the next one. See docs/sync.md.

pub mod db;
pub mod ledger;
pub mod scheduler;
mod staging;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{Config, SyncConfig};
use crate::mapping::{FieldValue, Mapping, Offboarding, RenderedUser, UserState};
use crate::store::format_time;
use crate::target::{AppDb, TargetError, UserApplied, UserWrite};
use db::SyncDb;
use staging::{LinkWrite, Mark, NewOffboarding, NewRun, Read, Record, Staging, UserRow};

/// How long a lease lasts without renewal; a run renews it at every batch.
pub const LEASE_TTL_SECONDS: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("tenant {0:?} is unknown or has no [tenants.{0}.sync] configuration")]
    NotConfigured(String),
    #[error("staging database error: {0}")]
    Staging(#[from] sqlx::Error),
    #[error("staging database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("staging database error: {0}")]
    SqlServer(#[from] crate::store::mssql::pool::MssqlError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("sync task failed: {0}")]
    Task(String),
    #[error("stored sync state is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("the run lost its lease (it expired and another run took it over)")]
    LeaseLost,
    #[error("stopped at shutdown after its last committed batch; the next run resumes")]
    Stopped,
    #[error("run {0} not found")]
    RunNotFound(i64),
    #[error("run {0} is not awaiting approval")]
    NotAwaitingApproval(i64),
    #[error("another run of tenant {0:?} holds the lease; try again later")]
    Busy(String),
    #[cfg(test)]
    #[error("injected failure")]
    Injected,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Cli,
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Cli => "cli",
            Trigger::Api => "api",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    CompletedWithErrors,
    Failed,
    Skipped,
    AwaitingApproval,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::CompletedWithErrors => "completed_with_errors",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::AwaitingApproval => "awaiting_approval",
        }
    }
}

/// What happened to one user in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Reactivated,
    Deactivated,
    Failed,
    /// Retention ended: the application offboarding was applied (dry run: would be).
    Offboarded,
    /// Retention ended: purged from staging with nothing to do in the application.
    Purged,
    /// Retention ended, but the guard holds the offboarding until the run is approved.
    OffboardingHeld,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Reactivated => "reactivated",
            Outcome::Deactivated => "deactivated",
            Outcome::Failed => "failed",
            Outcome::Offboarded => "offboarded",
            Outcome::Purged => "purged",
            Outcome::OffboardingHeld => "offboarding_held",
        }
    }
}

/// A field's value before and after (JSON: null, string, number, boolean; timestamps as RFC 3339).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub before: Value,
    pub after: Value,
}

/// One ledger item: a user the run changed (or would change), failed on, or offboarded.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    pub user_id: String,
    pub user_name: Option<String>,
    pub app_key: Option<String>,
    pub outcome: Outcome,
    /// Column → before/after, only the columns that differ.
    pub changes: BTreeMap<String, Change>,
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub roles_added: u64,
    pub roles_removed: u64,
    pub deactivated: u64,
    pub offboarded: u64,
    pub failed: u64,
}

/// Hears about a run as it goes (the CLI draws a progress bar and prints dry-run changes).
pub trait Progress: Send + Sync {
    /// The number of users the change pass will read (retries and lifecycle come on top).
    fn start(&self, _users: u64) {}
    /// `n` more users were handled.
    fn advance(&self, _n: u64) {}
    /// An item was recorded.
    fn item(&self, _item: &ItemReport) {}
}

#[derive(Clone, Default)]
pub struct RunOptions {
    /// Compute and report, write nothing (but the run's ledger entry).
    pub dry_run: bool,
    /// Read every user of the tenant, not only those above the watermark.
    pub full: bool,
    pub progress: Option<Arc<dyn Progress>>,
    /// When it turns true (shutdown), the run stops after the batch in progress is committed
    /// and recorded, and lets go of its lease.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The result of a run, as recorded in the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: i64,
    pub tenant: String,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub full: bool,
    pub status: RunStatus,
    pub counts: Counts,
    /// Users whose offboarding the guard held (status awaiting_approval).
    pub held: u64,
    pub watermark_from: Option<i64>,
    pub watermark_to: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub error: Option<String>,
}

struct TenantSync {
    config: SyncConfig,
    app: AppDb,
}

impl TenantSync {
    fn mapping(&self) -> &Mapping {
        &self.config.mapping.0
    }
}

/// The sync engine of every configured tenant; share it with `Arc`.
pub struct SyncEngine {
    db: SyncDb,
    staging: Staging,
    clock: Arc<dyn Clock>,
    tenants: BTreeMap<String, TenantSync>,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// The mutable state of one run.
struct Run<'a> {
    engine: &'a SyncEngine,
    tenant: &'a str,
    ts: &'a TenantSync,
    run_id: i64,
    holder: String,
    options: RunOptions,
    counts: Counts,
    held: u64,
    watermark_to: Option<i64>,
    batches: u64,
}

/// The decision for one user of a batch.
enum Plan {
    Unchanged,
    Failed {
        row: UserRow,
        app_key: Option<String>,
        error: String,
    },
    Write(Box<Write>),
}

struct Write {
    row: UserRow,
    rendered: RenderedUser,
    fingerprint: String,
    state: UserState,
    previous_key: Option<String>,
    roles_to_add: BTreeSet<String>,
    roles_to_remove: BTreeSet<String>,
    fields: BTreeMap<String, Value>,
    outcome: Outcome,
    changes: BTreeMap<String, Change>,
}

/// A field value as JSON, for links and the ledger.
pub fn field_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Null => Value::Null,
        FieldValue::Text(s) => Value::String(s.clone()),
        FieldValue::Integer(i) => Value::from(*i),
        FieldValue::Boolean(b) => Value::Bool(*b),
        FieldValue::Timestamp(t) => Value::String(format_time(*t)),
    }
}

fn offboarding_json(o: &Offboarding) -> Value {
    match o {
        Offboarding::None => serde_json::json!({"action": "none"}),
        Offboarding::Delete => serde_json::json!({"action": "delete"}),
        Offboarding::Update(fields) => {
            let mut m = Map::new();
            for (c, v) in fields {
                m.insert(c.clone(), field_json(v));
            }
            serde_json::json!({"action": "update", "fields": m})
        }
    }
}

/// Back from the queue's JSON. Values come back as text, integers, booleans or null
/// (timestamps were stored as RFC 3339 text, which is also how they are written).
fn offboarding_from_json(v: &Value) -> Offboarding {
    match v.get("action").and_then(Value::as_str) {
        Some("delete") => Offboarding::Delete,
        Some("update") => Offboarding::Update(
            v.get("fields")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(c, v)| {
                            let fv = match v {
                                Value::Null => FieldValue::Null,
                                Value::Bool(b) => FieldValue::Boolean(*b),
                                Value::Number(n) => match n.as_i64() {
                                    Some(i) => FieldValue::Integer(i),
                                    None => FieldValue::Text(n.to_string()),
                                },
                                Value::String(s) => FieldValue::Text(s.clone()),
                                other => FieldValue::Text(other.to_string()),
                            };
                            (c.clone(), fv)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => Offboarding::None,
    }
}

fn state_name(s: UserState) -> &'static str {
    match s {
        UserState::Active => "active",
        UserState::Deactivated => "deactivated",
    }
}

impl SyncEngine {
    /// Open the application databases of every tenant that has a `[tenants.NAME.sync]`.
    pub async fn new(
        config: &Config,
        db: SyncDb,
        clock: Arc<dyn Clock>,
    ) -> Result<SyncEngine, SyncError> {
        let mut apps: HashMap<String, AppDb> = HashMap::new();
        let mut tenants = BTreeMap::new();
        for (name, t) in &config.tenants {
            let Some(sync) = &t.sync else { continue };
            let db_name = &sync.mapping.0.target().database;
            let app = match apps.get(db_name) {
                Some(a) => a.clone(),
                None => {
                    let Some(app_config) = config.applications.get(db_name) else {
                        return Err(SyncError::NotConfigured(name.clone()));
                    };
                    let a = AppDb::open(app_config).await?;
                    apps.insert(db_name.clone(), a.clone());
                    a
                }
            };
            tenants.insert(
                name.clone(),
                TenantSync {
                    config: sync.clone(),
                    app,
                },
            );
        }
        Ok(SyncEngine {
            staging: Staging::open(&db)?,
            db,
            clock,
            tenants,
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        })
    }

    /// The staging database the engine keeps its state and ledger in.
    pub fn db(&self) -> &SyncDb {
        &self.db
    }

    /// The tenants that sync.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// The sync settings of a tenant (schedule, retention, …).
    pub fn tenant_config(&self, tenant: &str) -> Option<&SyncConfig> {
        self.tenants.get(tenant).map(|t| &t.config)
    }

    fn tenant(&self, tenant: &str) -> Result<&TenantSync, SyncError> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| SyncError::NotConfigured(tenant.to_string()))
    }

    fn lease_ttl() -> chrono::Duration {
        chrono::Duration::seconds(LEASE_TTL_SECONDS)
    }

    /// Run one sync of `tenant`. A run that cannot get the tenant's lease is recorded as
    /// skipped. Errors that end a started run are recorded in its ledger row and returned in
    /// the summary (status failed); `Err` means the run could not be recorded at all.
    pub async fn run(
        &self,
        tenant: &str,
        trigger: Trigger,
        options: RunOptions,
    ) -> Result<RunSummary, SyncError> {
        let ts = self.tenant(tenant)?;
        let started = self.clock.now();
        let holder = uuid::Uuid::new_v4().to_string();
        let wm = self.staging.watermark(tenant).await?;
        let mut tx = self.staging.begin().await?;
        // A dry run writes nothing but its ledger entry, so it needs no lease.
        let leased = options.dry_run
            || tx
                .acquire_lease(tenant, &holder, started, started + Self::lease_ttl())
                .await?;
        if leased && !options.dry_run {
            tx.abandon_stale_runs(tenant, started).await?;
            tx.drop_orphan_retries(tenant).await?;
        }
        let status = if leased {
            RunStatus::Running
        } else {
            RunStatus::Skipped
        };
        let run_id = tx
            .insert_run(&NewRun {
                tenant,
                trigger: trigger.as_str(),
                dry_run: options.dry_run,
                full: options.full,
                status,
                started_at: started,
                watermark_from: Some(if options.full { 0 } else { wm.seq }),
                approves_run: None,
            })
            .await?;
        if leased && !options.dry_run {
            tx.lease_run(tenant, &holder, run_id).await?;
        }
        tx.commit().await?;
        if !leased {
            tracing::info!(
                tenant,
                run_id,
                "sync run skipped: another run holds the lease"
            );
            return Ok(RunSummary {
                run_id,
                tenant: tenant.to_string(),
                trigger,
                dry_run: options.dry_run,
                full: options.full,
                status: RunStatus::Skipped,
                counts: Counts::default(),
                held: 0,
                watermark_from: Some(wm.seq),
                watermark_to: None,
                started_at: started,
                ended_at: started,
                error: Some("another run holds the tenant's lease".into()),
            });
        }
        tracing::info!(
            tenant,
            run_id,
            trigger = trigger.as_str(),
            dry_run = options.dry_run,
            full = options.full,
            "sync run started"
        );
        let mut run = Run {
            engine: self,
            tenant,
            ts,
            run_id,
            holder,
            options: options.clone(),
            counts: Counts::default(),
            held: 0,
            watermark_to: None,
            batches: 0,
        };
        let result = run.sync(wm).await;
        run.finish(
            trigger,
            started,
            Some(if options.full { 0 } else { wm.seq }),
            result,
        )
        .await
    }

    /// Approve a run that is awaiting approval: perform the offboardings it held that are
    /// still due (users reactivated since are left alone). Recorded as a run of its own.
    pub async fn approve(&self, run_id: i64, trigger: Trigger) -> Result<RunSummary, SyncError> {
        let Some(approved) = self.staging.run_state(run_id).await? else {
            return Err(SyncError::RunNotFound(run_id));
        };
        if approved.status != RunStatus::AwaitingApproval.as_str()
            || approved.dry_run
            || approved.approved
        {
            return Err(SyncError::NotAwaitingApproval(run_id));
        }
        let tenant = approved.tenant;
        let ts = self.tenant(&tenant)?;
        let started = self.clock.now();
        let holder = uuid::Uuid::new_v4().to_string();
        let mut tx = self.staging.begin().await?;
        if !tx
            .acquire_lease(&tenant, &holder, started, started + Self::lease_ttl())
            .await?
        {
            return Err(SyncError::Busy(tenant));
        }
        tx.abandon_stale_runs(&tenant, started).await?;
        let new_id = tx
            .insert_run(&NewRun {
                tenant: &tenant,
                trigger: trigger.as_str(),
                dry_run: false,
                full: false,
                status: RunStatus::Running,
                started_at: started,
                watermark_from: None,
                approves_run: Some(run_id),
            })
            .await?;
        tx.approve_run(run_id, started, new_id).await?;
        tx.commit().await?;
        tracing::info!(
            tenant,
            run_id = new_id,
            approves = run_id,
            "offboarding approved"
        );
        let mut run = Run {
            engine: self,
            tenant: &tenant,
            ts,
            run_id: new_id,
            holder,
            options: RunOptions::default(),
            counts: Counts::default(),
            held: 0,
            watermark_to: None,
            batches: 0,
        };
        let result = run.lifecycle(Some(run_id)).await;
        run.finish(trigger, started, None, result).await
    }
}

impl Run<'_> {
    fn staging(&self) -> &Staging {
        &self.engine.staging
    }

    fn now(&self) -> DateTime<Utc> {
        self.engine.clock.now()
    }

    fn report(&self, item: &ItemReport) {
        if let Some(p) = &self.options.progress {
            p.item(item);
        }
    }

    /// Start reading and planning a batch on a blocking thread.
    fn fetch(&self, read: Read) -> tokio::task::JoinHandle<Result<Fetched, SyncError>> {
        let staging = self.engine.staging.clone();
        let mapping = self.ts.config.mapping.0.clone();
        let tenant = self.tenant.to_string();
        let limit = self.ts.config.batch_size;
        tokio::spawn(async move {
            staging
                .read_batch(&tenant, read, limit, move |rows, links| {
                    plan_batch(&mapping, rows, &links)
                })
                .await
        })
    }

    /// The change pass, then the lifecycle.
    async fn sync(&mut self, wm: Mark) -> Result<(), SyncError> {
        let high = self.staging().high_seq().await?;
        let from = if self.options.full {
            Mark::default()
        } else {
            wm
        };
        if let Some(p) = &self.options.progress {
            let n = self
                .staging()
                .count_changed(self.tenant, from, high)
                .await?;
            p.start(u64::try_from(n).unwrap_or(0));
        }
        if !self.options.full {
            // Failed users the watermark has passed; the others come with the changes.
            let mut after = 0;
            loop {
                let read = Read::Retry {
                    watermark: wm,
                    after_pk: after,
                };
                let fetched = self.fetch(read).await.map_err(join_error)??;
                let Some(last) = fetched.last else { break };
                after = last.pk;
                self.batch(fetched, None).await?;
                self.check_stop()?;
            }
        }
        // The next batch is read and planned while the current one is written and recorded.
        let mut next = Some(self.fetch(Read::Changed { after: from, high }));
        while let Some(handle) = next.take() {
            let fetched = handle.await.map_err(join_error)??;
            let Some(cursor) = fetched.last else { break };
            next = Some(self.fetch(Read::Changed {
                after: cursor,
                high,
            }));
            let n = fetched.ids.len() as u64;
            self.batch(fetched, Some(cursor)).await?;
            self.watermark_to = Some(cursor.seq.max(wm.seq));
            if let Some(p) = &self.options.progress {
                p.advance(n);
            }
            self.check_stop()?;
        }
        if self.watermark_to.is_none() {
            self.watermark_to = Some(wm.seq);
        }
        self.lifecycle(None).await
    }

    /// Stop between batches when asked to (shutdown): what is committed stays, the watermark
    /// covers it, and the next run goes on from there.
    fn check_stop(&self) -> Result<(), SyncError> {
        match &self.options.stop {
            Some(stop) if stop.load(std::sync::atomic::Ordering::SeqCst) => Err(SyncError::Stopped),
            _ => Ok(()),
        }
    }

    /// One batch: plan, write to the application, record in staging (advancing the watermark
    /// to `advance` when given).
    async fn batch(&mut self, fetched: Fetched, advance: Option<Mark>) -> Result<(), SyncError> {
        let Fetched { ids, plans, .. } = fetched;
        // The users to write, in batch order; failures keep their place among them.
        enum Slot {
            Failed(ItemReport),
            Write(usize),
        }
        let mut slots = Vec::with_capacity(plans.len());
        let mut writes: Vec<Box<Write>> = Vec::new();
        for plan in plans {
            match plan {
                Plan::Unchanged => self.counts.unchanged += 1,
                Plan::Failed {
                    row,
                    app_key,
                    error,
                } => slots.push(Slot::Failed(failed_item(&row, app_key, error))),
                Plan::Write(w) => {
                    slots.push(Slot::Write(writes.len()));
                    writes.push(w);
                }
            }
        }
        let (writes, applied): (Vec<Box<Write>>, Vec<Applied>) =
            if self.options.dry_run || writes.is_empty() {
                let n = writes.len();
                (writes, vec![None; n])
            } else {
                let target = self.ts.mapping().target().clone();
                let writes = Arc::new(writes);
                let shared = writes.clone();
                let applied = self
                    .ts
                    .app
                    .batch(move |app| {
                        Ok(shared
                            .iter()
                            .map(|w| {
                                let write = UserWrite {
                                    key: &w.rendered.key,
                                    previous_key: w.previous_key.as_deref(),
                                    fields: &w.rendered.fields,
                                    // Every desired role: a role row lost in the application
                                    // comes back, and a write repeated after a crash adds
                                    // nothing twice.
                                    roles_to_add: &w.rendered.roles,
                                    roles_to_remove: &w.roles_to_remove,
                                };
                                Some(app.apply_user(&target, &write).map_err(|e| e.to_string()))
                            })
                            .collect::<Vec<Applied>>())
                    })
                    .await?;
                // The closure (and its reference) is gone once the batch returned.
                let writes = Arc::try_unwrap(writes)
                    .map_err(|_| SyncError::Task("the batch's writes are still shared".into()))?;
                (writes, applied)
            };
        let mut writes: Vec<Option<Box<Write>>> = writes.into_iter().map(Some).collect();
        let mut items: Vec<(ItemReport, Option<Box<Write>>)> = Vec::with_capacity(slots.len());
        for slot in slots {
            let i = match slot {
                Slot::Failed(item) => {
                    items.push((item, None));
                    continue;
                }
                Slot::Write(i) => i,
            };
            let Some(w) = writes.get_mut(i).and_then(Option::take) else {
                continue;
            };
            let mut item = ItemReport {
                user_id: w.row.id.clone(),
                user_name: Some(w.row.user_name.clone()),
                app_key: Some(w.rendered.key.clone()),
                outcome: w.outcome,
                changes: w.changes.clone(),
                roles_added: w.roles_to_add.iter().cloned().collect(),
                roles_removed: w.roles_to_remove.iter().cloned().collect(),
                error: None,
            };
            match applied.get(i).cloned().flatten() {
                None => {}
                Some(Ok(applied)) => {
                    if applied.created && item.outcome != Outcome::Created {
                        // The row had gone from the application: written again.
                        item.outcome = Outcome::Created;
                    } else if !applied.created && item.outcome == Outcome::Created {
                        // A row with this key was already there (a re-run after a crash, or
                        // a row the application made): now linked.
                        item.outcome = Outcome::Updated;
                    }
                }
                Some(Err(e)) => {
                    items.push((failed_item(&w.row, Some(w.rendered.key.clone()), e), None));
                    continue;
                }
            }
            items.push((item, Some(w)));
        }
        for (item, _) in &items {
            match item.outcome {
                Outcome::Created => self.counts.created += 1,
                Outcome::Updated | Outcome::Reactivated => self.counts.updated += 1,
                Outcome::Deactivated => self.counts.deactivated += 1,
                Outcome::Failed => self.counts.failed += 1,
                _ => {}
            }
            self.counts.roles_added += item.roles_added.len() as u64;
            self.counts.roles_removed += item.roles_removed.len() as u64;
            self.report(item);
        }
        #[cfg(test)]
        self.engine.hooks.before_record().await;
        self.batches += 1;
        #[cfg(test)]
        self.engine.hooks.before_commit(self.batches)?;
        let now = self.now();
        let mut record = Record {
            tenant: self.tenant.to_string(),
            holder: self.holder.clone(),
            run_id: self.run_id,
            now,
            lease_expires: now + SyncEngine::lease_ttl(),
            counts: self.counts,
            watermark_to: self.watermark_to,
            items: Vec::with_capacity(items.len()),
            dry_run: self.options.dry_run,
            links: Vec::new(),
            retries: Vec::new(),
            cleared: Vec::new(),
            advance,
        };
        let mut failed = std::collections::HashSet::new();
        for (item, w) in items {
            match w {
                Some(w) => record.links.push(LinkWrite {
                    user_id: w.row.id,
                    app_key: w.rendered.key,
                    fingerprint: w.fingerprint,
                    applied_roles: w.rendered.roles,
                    fields: w.fields,
                    state: state_name(w.state),
                }),
                None => {
                    failed.insert(item.user_id.clone());
                    record.retries.push((
                        item.user_id.clone(),
                        item.error.clone().unwrap_or_else(|| "failed".into()),
                    ));
                }
            }
            record.items.push(item);
        }
        // Written and unchanged users that were waiting for a retry are fine now.
        record.cleared = ids.into_iter().filter(|id| !failed.contains(id)).collect();
        self.staging().record(record).await
    }

    /// Retention: purge and offboard the users that are due (all of them, or with `held_in`
    /// only those that run held), unless the guard stops it; then apply the queue.
    async fn lifecycle(&mut self, held_in: Option<i64>) -> Result<(), SyncError> {
        let cutoff = self.now() - self.ts.config.retention();
        let due = self
            .staging()
            .count_due(self.tenant, cutoff, held_in)
            .await?;
        let batch = self.ts.config.batch_size;
        if held_in.is_none() && due > 0 {
            let linked = self.staging().count_links(self.tenant).await?;
            let allowed =
                f64::from(self.ts.config.guard_min).max(self.ts.config.guard_share * linked as f64);
            if due as f64 > allowed {
                tracing::warn!(
                    tenant = self.tenant,
                    run_id = self.run_id,
                    due,
                    allowed,
                    "offboarding guard: the run waits for approval"
                );
                let mut after = 0;
                loop {
                    let rows = self
                        .staging()
                        .due_users(self.tenant, cutoff, None, after, batch)
                        .await?;
                    let Some(last) = rows.last() else { break };
                    after = last.pk;
                    let links = self.links_of(&rows).await?;
                    let mut tx = self.staging().begin().await?;
                    for row in &rows {
                        let item = ItemReport {
                            user_id: row.id.clone(),
                            user_name: Some(row.user_name.clone()),
                            app_key: links.get(&row.id).map(|l| l.app_key.clone()),
                            outcome: Outcome::OffboardingHeld,
                            changes: BTreeMap::new(),
                            roles_added: vec![],
                            roles_removed: vec![],
                            error: None,
                        };
                        self.report(&item);
                        tx.insert_item(self.run_id, &item).await?;
                        self.held += 1;
                    }
                    if !self.options.dry_run {
                        let now = self.now();
                        tx.renew_lease(self.tenant, &self.holder, now + SyncEngine::lease_ttl())
                            .await?;
                    }
                    tx.commit().await?;
                }
                return self.apply_queue().await;
            }
        }
        let mut after = 0;
        loop {
            let rows = self
                .staging()
                .due_users(self.tenant, cutoff, held_in, after, batch)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.pk;
            let links = self.links_of(&rows).await?;
            #[cfg(test)]
            self.engine.hooks.after_due_read().await;
            let now = self.now();
            let mut tx = self.staging().begin().await?;
            for row in &rows {
                if !self.options.dry_run && !tx.unchanged_since_read(self.tenant, row).await? {
                    // Changed since it was read (reactivated?): the next run looks again.
                    continue;
                }
                let link = links.get(&row.id);
                let offboarding = row
                    .staged()
                    .and_then(|s| self.ts.mapping().offboarding(&s).map_err(|e| e.to_string()));
                let action = match offboarding {
                    Ok(a) => a,
                    Err(error) => {
                        // Not purged: it stays due and is tried again by the next run.
                        let item = failed_item(row, link.map(|l| l.app_key.clone()), error);
                        self.counts.failed += 1;
                        self.report(&item);
                        tx.insert_item(self.run_id, &item).await?;
                        continue;
                    }
                };
                let shared = match link {
                    Some(l) => tx.key_shared(self.tenant, &row.id, &l.app_key).await?,
                    None => false,
                };
                let mut item = ItemReport {
                    user_id: row.id.clone(),
                    user_name: Some(row.user_name.clone()),
                    app_key: link.map(|l| l.app_key.clone()),
                    outcome: Outcome::Purged,
                    changes: BTreeMap::new(),
                    roles_added: vec![],
                    roles_removed: vec![],
                    error: None,
                };
                match link {
                    Some(l) if !shared => {
                        if self.options.dry_run {
                            item.outcome = Outcome::Offboarded;
                            item.changes = offboarding_changes(&action, l);
                            item.roles_removed = l.applied_roles.iter().cloned().collect();
                            self.counts.offboarded += 1;
                            self.counts.roles_removed += item.roles_removed.len() as u64;
                            self.report(&item);
                            tx.insert_item(self.run_id, &item).await?;
                        } else {
                            // Recorded with the purge; applied (and reported) from the queue.
                            tx.queue_offboarding(&NewOffboarding {
                                tenant: self.tenant,
                                user_id: &row.id,
                                user_name: &row.user_name,
                                app_key: &l.app_key,
                                action: &offboarding_json(&action),
                                roles: &l.applied_roles,
                                run_id: self.run_id,
                                now,
                            })
                            .await?;
                            tx.purge_user(self.tenant, &row.id, now).await?;
                        }
                    }
                    _ => {
                        // Nothing in the application, or its row now belongs to another user.
                        self.report(&item);
                        tx.insert_item(self.run_id, &item).await?;
                        if !self.options.dry_run {
                            tx.purge_user(self.tenant, &row.id, now).await?;
                            tx.delete_link(self.tenant, &row.id).await?;
                        }
                    }
                }
            }
            if !self.options.dry_run {
                tx.renew_lease(self.tenant, &self.holder, now + SyncEngine::lease_ttl())
                    .await?;
            }
            tx.commit().await?;
        }
        self.apply_queue().await
    }

    async fn links_of(
        &self,
        rows: &[UserRow],
    ) -> Result<HashMap<String, staging::Link>, SyncError> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        self.staging().links(self.tenant, &ids).await
    }

    /// Apply the queued offboardings to the application, then forget them.
    async fn apply_queue(&mut self) -> Result<(), SyncError> {
        let target = self.ts.mapping().target().clone();
        let mut after = 0;
        loop {
            let queued = self
                .staging()
                .queued(self.tenant, after, self.ts.config.batch_size)
                .await?;
            let Some(last) = queued.last() else { break };
            after = last.id;
            let results: Vec<(staging::Queued, Option<String>)> = if self.options.dry_run {
                queued.into_iter().map(|q| (q, None)).collect()
            } else {
                let target = target.clone();
                let shared = Arc::new(queued.clone());
                let errors: Vec<Option<String>> = self
                    .ts
                    .app
                    .batch(move |app| {
                        Ok(shared
                            .iter()
                            .map(|q| {
                                let action = offboarding_from_json(&q.action);
                                let r = app.offboard(&target, &q.app_key, &action, &q.roles);
                                r.err().map(|e| e.to_string())
                            })
                            .collect())
                    })
                    .await?;
                queued.into_iter().zip(errors).collect()
            };
            let now = self.now();
            let mut tx = self.staging().begin().await?;
            for (q, error) in &results {
                let item = ItemReport {
                    user_id: q.user_id.clone(),
                    user_name: q.user_name.clone(),
                    app_key: Some(q.app_key.clone()),
                    outcome: if error.is_some() {
                        Outcome::Failed
                    } else {
                        Outcome::Offboarded
                    },
                    changes: BTreeMap::new(),
                    roles_added: vec![],
                    roles_removed: if error.is_some() {
                        vec![]
                    } else {
                        q.roles.iter().cloned().collect()
                    },
                    error: error.clone(),
                };
                if error.is_some() {
                    self.counts.failed += 1;
                } else {
                    self.counts.offboarded += 1;
                    self.counts.roles_removed += item.roles_removed.len() as u64;
                }
                self.report(&item);
                tx.insert_item(self.run_id, &item).await?;
                if self.options.dry_run {
                    continue;
                }
                match error {
                    None => tx.offboarding_done(self.tenant, q).await?,
                    Some(e) => tx.offboarding_failed(q.id, e).await?,
                }
            }
            if !self.options.dry_run {
                tx.renew_lease(self.tenant, &self.holder, now + SyncEngine::lease_ttl())
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Record the end of the run and let go of the lease.
    async fn finish(
        &mut self,
        trigger: Trigger,
        started: DateTime<Utc>,
        watermark_from: Option<i64>,
        result: Result<(), SyncError>,
    ) -> Result<RunSummary, SyncError> {
        let ended = self.now();
        let error = result.err().map(|e| e.to_string());
        let status = if error.is_some() {
            RunStatus::Failed
        } else if self.held > 0 {
            RunStatus::AwaitingApproval
        } else if self.counts.failed > 0 {
            RunStatus::CompletedWithErrors
        } else {
            RunStatus::Succeeded
        };
        let mut tx = self.staging().begin().await?;
        tx.update_run(
            self.run_id,
            status,
            &self.counts,
            self.watermark_to,
            Some(ended),
            error.as_deref(),
        )
        .await?;
        if !self.options.dry_run {
            tx.release_lease(self.tenant, &self.holder).await?;
        }
        tx.commit().await?;
        match &error {
            Some(e) => {
                tracing::error!(tenant = self.tenant, run_id = self.run_id, error = %e, "sync run failed")
            }
            None => tracing::info!(
                tenant = self.tenant,
                run_id = self.run_id,
                status = status.as_str(),
                created = self.counts.created,
                updated = self.counts.updated,
                unchanged = self.counts.unchanged,
                deactivated = self.counts.deactivated,
                offboarded = self.counts.offboarded,
                failed = self.counts.failed,
                "sync run finished"
            ),
        }
        Ok(RunSummary {
            run_id: self.run_id,
            tenant: self.tenant.to_string(),
            trigger,
            dry_run: self.options.dry_run,
            full: self.options.full,
            status,
            counts: self.counts,
            held: self.held,
            watermark_from,
            watermark_to: self.watermark_to,
            started_at: started,
            ended_at: ended,
            error,
        })
    }
}

/// Decide what to do for one user.
fn plan(mapping: &Mapping, row: UserRow, link: Option<&staging::Link>) -> Plan {
    let state = if row.deleted || !row.active {
        UserState::Deactivated
    } else {
        UserState::Active
    };
    let staged = match row.staged() {
        Ok(s) => s,
        Err(error) => {
            return Plan::Failed {
                app_key: link.map(|l| l.app_key.clone()),
                row,
                error,
            };
        }
    };
    let rendered = match mapping.render(&staged, state) {
        Ok(r) => r,
        Err(e) => {
            return Plan::Failed {
                app_key: link.map(|l| l.app_key.clone()),
                row,
                error: e.to_string(),
            };
        }
    };
    let fingerprint = rendered.fingerprint();
    if let Some(l) = link
        && l.fingerprint == fingerprint
        && l.app_key == rendered.key
    {
        return Plan::Unchanged;
    }
    let empty = BTreeSet::new();
    let applied = link.map(|l| &l.applied_roles).unwrap_or(&empty);
    let roles_to_add: BTreeSet<String> = rendered.roles.difference(applied).cloned().collect();
    let roles_to_remove: BTreeSet<String> = applied.difference(&rendered.roles).cloned().collect();
    let fields: BTreeMap<String, Value> = rendered
        .fields
        .iter()
        .map(|(c, v)| (c.clone(), field_json(v)))
        .collect();
    let mut changes = BTreeMap::new();
    let target = mapping.target();
    let before_key = link.map(|l| Value::String(l.app_key.clone()));
    if before_key.as_ref().and_then(Value::as_str) != Some(rendered.key.as_str()) {
        changes.insert(
            target.key_column.clone(),
            Change {
                before: before_key.unwrap_or(Value::Null),
                after: Value::String(rendered.key.clone()),
            },
        );
    }
    for (c, after) in &fields {
        let before = link
            .and_then(|l| l.fields.get(c))
            .cloned()
            .unwrap_or(Value::Null);
        if &before != after || link.is_none() {
            changes.insert(
                c.clone(),
                Change {
                    before,
                    after: after.clone(),
                },
            );
        }
    }
    let outcome = match (link.map(|l| l.state.as_str()), state) {
        (None, _) => Outcome::Created,
        (Some("active"), UserState::Deactivated) => Outcome::Deactivated,
        (Some("deactivated"), UserState::Active) => Outcome::Reactivated,
        _ => Outcome::Updated,
    };
    Plan::Write(Box::new(Write {
        previous_key: link
            .map(|l| l.app_key.clone())
            .filter(|k| *k != rendered.key),
        row,
        fingerprint,
        state,
        roles_to_add,
        roles_to_remove,
        fields,
        outcome,
        changes,
        rendered,
    }))
}

/// What the application did with one write (None: not written, a dry run).
type Applied = Option<Result<UserApplied, String>>;

/// One batch as read and planned: the ids of its users, their plans, the last user's mark.
struct Fetched {
    ids: Vec<String>,
    plans: Vec<Plan>,
    last: Option<Mark>,
}

/// Plan a batch, spread over the cores. Runs on a blocking thread.
fn plan_batch(
    mapping: &Mapping,
    rows: Vec<UserRow>,
    links: &HashMap<String, staging::Link>,
) -> Result<Fetched, SyncError> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let last = rows.last().map(UserRow::mark);
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 8);
    let per = rows.len().div_ceil(threads).max(64);
    let plans = if rows.len() <= per {
        rows.into_iter()
            .map(|row| {
                let link = links.get(&row.id);
                plan(mapping, row, link)
            })
            .collect()
    } else {
        let mut chunks: Vec<Vec<UserRow>> = Vec::new();
        let mut it = rows.into_iter();
        loop {
            let chunk: Vec<UserRow> = it.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let links = &links;
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|row| {
                                let link = links.get(&row.id);
                                plan(mapping, row, link)
                            })
                            .collect::<Vec<Plan>>()
                    })
                })
                .collect();
            let mut plans = Vec::new();
            for h in handles {
                plans.extend(
                    h.join()
                        .map_err(|_| SyncError::Task("a render thread panicked".into()))?,
                );
            }
            Ok::<_, SyncError>(plans)
        })?
    };
    Ok(Fetched { ids, plans, last })
}

fn join_error(e: tokio::task::JoinError) -> SyncError {
    SyncError::Task(e.to_string())
}

fn failed_item(row: &UserRow, app_key: Option<String>, error: String) -> ItemReport {
    ItemReport {
        user_id: row.id.clone(),
        user_name: Some(row.user_name.clone()),
        app_key,
        outcome: Outcome::Failed,
        changes: BTreeMap::new(),
        roles_added: vec![],
        roles_removed: vec![],
        error: Some(error),
    }
}

/// What an offboarding would change, from the link's last applied values.
fn offboarding_changes(action: &Offboarding, link: &staging::Link) -> BTreeMap<String, Change> {
    match action {
        Offboarding::None => BTreeMap::new(),
        Offboarding::Delete => link
            .fields
            .iter()
            .map(|(c, v)| {
                (
                    c.clone(),
                    Change {
                        before: v.clone(),
                        after: Value::Null,
                    },
                )
            })
            .collect(),
        Offboarding::Update(fields) => fields
            .iter()
            .filter_map(|(c, v)| {
                let after = field_json(v);
                let before = link.fields.get(c).cloned().unwrap_or(Value::Null);
                (before != after).then(|| (c.clone(), Change { before, after }))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
