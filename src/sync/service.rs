//! The sync use cases the CLI, the scheduler and the admin API share: start a run and learn its
//! id, approve a held run, reload a tenant's mapping, preview a user, a tenant's sync summary.
//!
//! [`SyncService`] holds the current engine: each run takes the engine current when it starts,
//! so a mapping reload (a new engine) applies from the next run on while a run in progress
//! finishes with the mapping it started with. It also holds the permits of runs in progress
//! (shutdown waits for them) and the metrics every run outside the CLI reports to.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::Semaphore;

use super::engine::{Begun, Start};
use super::ledger::{LedgerReads, LinkRow, RunRow, UserRef};
use super::plan::{diff, field_json, state_name};
use super::scheduler::Schedules;
use super::store::{LeaseRow, Link};
use super::{Change, RunOptions, RunSummary, SyncEngine, SyncError, Trigger};
use crate::clock::Clock;
use crate::config::{ApplicationConfig, ConfigSource, SyncConfig};
use crate::mapping::{StagedUser, UserState};
use crate::metrics::Metrics;
use crate::store::format_time;
use crate::target::AppConnector;

/// Runs in progress at once, at most (a permit each); shutdown takes them all.
pub const MAX_RUNS: u32 = 1024;

pub struct SyncService {
    engine: RwLock<Arc<SyncEngine>>,
    ledger: Arc<dyn LedgerReads>,
    connector: Arc<dyn AppConnector>,
    applications: BTreeMap<String, ApplicationConfig>,
    clock: Arc<dyn Clock>,
    scheduler_running: AtomicBool,
    runs: Arc<Semaphore>,
    /// Held while a reload builds the new engine: one reload at a time.
    reload: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Set at shutdown: runs in progress stop after their current batch.
    stop: Arc<AtomicBool>,
    /// The configuration file a reload reads a tenant's sync section from (None: a reload
    /// reads the mapping file only).
    config_source: Option<ConfigSource>,
    /// The scheduler's jobs while it runs.
    schedules: tokio::sync::Mutex<Option<Schedules>>,
}

/// A run started in the background: its ledger id.
#[derive(Debug, Clone)]
pub struct StartedRun {
    pub run_id: i64,
    pub tenant: String,
}

/// Whom to preview.
pub enum PreviewSource<'a> {
    /// A staged user.
    Staged(UserRef<'a>),
    /// A user document (normalised by the caller) with its groups.
    Document { user: StagedUser, active: bool },
}

/// A user rendered with the tenant's current mapping; nothing is written.
#[derive(Debug, Clone)]
pub struct Preview {
    /// `staged` or `document`.
    pub source: &'static str,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// `active` or `deactivated`.
    pub state: &'static str,
    pub key_column: String,
    pub key: String,
    pub fields: BTreeMap<String, Value>,
    pub roles: Vec<String>,
    pub link: Option<LinkRow>,
    /// With a link: what a run would change, and the role diff.
    pub changes: Option<BTreeMap<String, Change>>,
    pub roles_added: Option<Vec<String>>,
    pub roles_removed: Option<Vec<String>>,
}

/// A tenant's sync state for its summary.
pub struct SyncSummary {
    pub mapping: String,
    pub last_run: Option<RunRow>,
    pub next_run_at: Option<String>,
    pub pending_offboardings: i64,
}

impl SyncService {
    pub fn new(
        engine: SyncEngine,
        ledger: Arc<dyn LedgerReads>,
        connector: Arc<dyn AppConnector>,
        applications: BTreeMap<String, ApplicationConfig>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        config_source: Option<ConfigSource>,
    ) -> SyncService {
        SyncService {
            engine: RwLock::new(Arc::new(engine)),
            ledger,
            connector,
            applications,
            clock,
            scheduler_running: AtomicBool::new(false),
            runs: Arc::new(Semaphore::new(MAX_RUNS as usize)),
            reload: tokio::sync::Mutex::new(()),
            metrics,
            stop: Arc::new(AtomicBool::new(false)),
            config_source,
            schedules: tokio::sync::Mutex::new(None),
        }
    }

    /// Options for a run that stops between batches when the process shuts down.
    pub fn run_options(&self, dry_run: bool, full: bool) -> RunOptions {
        RunOptions {
            dry_run,
            full,
            progress: None,
            stop: Some(self.stop.clone()),
        }
    }

    /// The ledger the engine writes.
    pub fn ledger(&self) -> &Arc<dyn LedgerReads> {
        &self.ledger
    }

    /// The engine new runs use.
    pub fn engine(&self) -> Arc<SyncEngine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// From now on, runs use `engine` (runs in progress keep the one they started with).
    fn replace(&self, engine: SyncEngine) {
        let engine = Arc::new(engine);
        match self.engine.write() {
            Ok(mut e) => *e = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
    }

    /// A permit for a run that shutdown waits for; None once shutdown has begun.
    pub async fn run_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.runs.clone().acquire_owned().await.ok()
    }

    /// Whether the schedules are ticking (set by the scheduler, cleared at shutdown).
    pub fn scheduler_running(&self) -> bool {
        self.scheduler_running.load(Ordering::SeqCst)
    }

    /// The running scheduler's jobs (None: it stopped).
    pub(super) async fn set_schedules(&self, schedules: Option<Schedules>) {
        *self.schedules.lock().await = schedules;
    }

    pub(super) fn set_scheduler_running(&self, running: bool) {
        self.scheduler_running.store(running, Ordering::SeqCst);
    }

    /// Shutdown: runs in progress stop after their current batch.
    pub(super) fn stop_runs(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Shutdown: wait (up to `grace`) for runs in progress, and take every permit so no new
    /// run starts.
    pub(super) async fn wait_for_runs(&self, grace: std::time::Duration) {
        match tokio::time::timeout(grace, self.runs.acquire_many(MAX_RUNS)).await {
            Ok(Ok(_all)) => self.runs.close(),
            _ => {
                tracing::warn!("sync runs still in progress at shutdown; the next run resumes them")
            }
        }
    }

    /// Report a finished run to the metrics (the run by status and duration, its items by
    /// outcome) and its failing users to the log.
    pub fn record(&self, s: &RunSummary) {
        s.log_failures();
        let elapsed = (s.ended_at - s.started_at).to_std().unwrap_or_default();
        self.metrics
            .sync_run_finished(&s.tenant, s.status.as_str(), elapsed);
        let c = &s.counts;
        for (outcome, n) in [
            ("created", c.created),
            ("updated", c.updated),
            ("unchanged", c.unchanged),
            ("deactivated", c.deactivated),
            ("offboarded", c.offboarded),
            ("failed", c.failed),
            ("offboarding_held", s.held),
        ] {
            if n > 0 {
                self.metrics.sync_items(&s.tenant, outcome, n);
            }
        }
    }

    /// The sync settings of a tenant that syncs.
    pub fn tenant_config(&self, tenant: &str) -> Result<SyncConfig, SyncError> {
        self.engine()
            .tenant_config(tenant)
            .cloned()
            .ok_or_else(|| SyncError::NotConfigured(tenant.to_string()))
    }

    /// Carry out a begun run in the background, under a permit, reporting it to the metrics.
    fn spawn(
        self: &Arc<Self>,
        engine: Arc<SyncEngine>,
        begun: Begun,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> StartedRun {
        let service = self.clone();
        let started = StartedRun {
            run_id: begun.run_id,
            tenant: begun.tenant.clone(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            match engine.execute(begun).await {
                Ok(s) => service.record(&s),
                Err(e) => tracing::error!(error = %e, "sync run could not be recorded"),
            }
        });
        started
    }

    /// Start a run of `tenant` in the background; answers once it is in the ledger. A real
    /// run while another holds the lease is refused (`SyncError::Busy`) without a ledger
    /// entry; one that loses the race for the lease is recorded as skipped
    /// (`SyncError::Skipped`).
    pub async fn start_run(
        self: &Arc<Self>,
        tenant: &str,
        trigger: Trigger,
        dry_run: bool,
        full: bool,
    ) -> Result<StartedRun, SyncError> {
        let engine = self.engine();
        engine.tenant(tenant)?;
        if !dry_run {
            // A dry run takes no lease and may run beside another run.
            self.not_busy(tenant).await?;
        }
        let permit = self.run_permit().await.ok_or(SyncError::ShuttingDown)?;
        let options = self.run_options(dry_run, full);
        match engine.begin(tenant, trigger, options).await? {
            Start::Begun(begun) => Ok(self.spawn(engine.clone(), *begun, permit)),
            Start::Skipped(s) => {
                self.record(&s);
                Err(SyncError::Skipped {
                    tenant: tenant.to_string(),
                    run_id: s.run_id,
                })
            }
        }
    }

    /// Approve a run that waits for approval on behalf of `approver` (the admin token's name):
    /// its held offboardings are applied by a new run, started in the background; answers
    /// with that run's id.
    pub async fn approve(
        self: &Arc<Self>,
        run_id: i64,
        trigger: Trigger,
        approver: &str,
    ) -> Result<StartedRun, SyncError> {
        let engine = self.engine();
        let permit = self.run_permit().await.ok_or(SyncError::ShuttingDown)?;
        let begun = engine.begin_approval(run_id, trigger, approver).await?;
        Ok(self.spawn(engine.clone(), begun, permit))
    }

    /// `SyncError::InProgress` when a run of `tenant` holds its lease.
    async fn not_busy(&self, tenant: &str) -> Result<(), SyncError> {
        match self.ledger.lease(tenant, self.clock.now()).await? {
            None => Ok(()),
            Some(run_id) => Err(SyncError::InProgress {
                tenant: tenant.to_string(),
                run_id,
            }),
        }
    }

    /// Read `tenant`'s sync section again (its mapping file, schedule, retention, guard,
    /// batch size, lease and quarantine settings) from the configuration file, or only its
    /// mapping file when the configuration was not read from a file. A section or mapping that
    /// fails to load, or whose mapping fails its own tests or the application's schema, is
    /// rejected (`SyncError::Mapping`) and the settings in force stay. The new settings apply
    /// from the next run on; a changed schedule from its next tick.
    pub async fn reload(
        self: &Arc<Self>,
        tenant: &str,
        custom_schema: &str,
    ) -> Result<SyncConfig, SyncError> {
        let _one = self.reload.lock().await;
        // Under the lock: the engine as the last reload left it.
        let engine = self.engine();
        let current = engine
            .tenant_config(tenant)
            .cloned()
            .ok_or_else(|| SyncError::NotConfigured(tenant.to_string()))?;
        let old_schedule = current.schedule.as_ref().map(|s| s.normalized.clone());
        let (custom_schema, applications) = (custom_schema.to_string(), self.applications.clone());
        let (source, name) = (self.config_source.clone(), tenant.to_string());
        // Reading the files, compiling the templates and running the tests: blocking work.
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = match source {
                Some(source) => source.reload_sync(&name),
                None => current.reload_mapping(&custom_schema, &applications),
            }
            .map_err(SyncError::Mapping)?;
            let failures: Vec<String> = loaded
                .mapping
                .0
                .run_tests()
                .into_iter()
                .flat_map(|o| {
                    let origin = loaded.mapping_path.display().to_string();
                    o.failures
                        .into_iter()
                        .map(move |f| format!("{origin}:{}: test {:?}: {f}", o.line, o.name))
                })
                .collect();
            if !failures.is_empty() {
                return Err(SyncError::Mapping(format!(
                    "the mapping's own tests fail: {}",
                    failures.join("; ")
                )));
            }
            Ok(loaded)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??;
        let new = engine
            .with_tenant(
                tenant,
                loaded.clone(),
                &self.applications,
                self.connector.as_ref(),
            )
            .await
            .map_err(|e| {
                SyncError::Mapping(format!(
                    "the mapping loads, but the sync engine cannot use it: {e}"
                ))
            })?;
        let changed = loaded.schedule.as_ref().map(|s| &s.normalized) != old_schedule.as_ref();
        if let Some(schedules) = self.schedules.lock().await.as_mut().filter(|_| changed) {
            schedules
                .reschedule(self, tenant, loaded.schedule.as_ref())
                .await
                .map_err(|e| SyncError::Task(e.to_string()))?;
        }
        self.replace(new);
        Ok(loaded)
    }

    /// Render a staged user, or a user document, with the tenant's current mapping, and what
    /// a run would change against its application row; the engine's own planner decides.
    pub async fn preview(
        &self,
        tenant: &str,
        source: PreviewSource<'_>,
    ) -> Result<Preview, SyncError> {
        let config = self.tenant_config(tenant)?;
        let (source, staged, state, user_name, link) = match source {
            PreviewSource::Staged(who) => {
                let row = self
                    .ledger
                    .staged_user(tenant, who)
                    .await?
                    .ok_or_else(|| SyncError::NoStagedUser(tenant.to_string()))?;
                let link = self.ledger.link(tenant, &row.user.id).await?;
                let state = super::plan::user_state(row.active, row.deleted);
                ("staged", row.user, state, Some(row.user_name), link)
            }
            PreviewSource::Document { user, active } => {
                let user_name = user
                    .doc
                    .get("userName")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let state = if active {
                    UserState::Active
                } else {
                    UserState::Deactivated
                };
                ("document", user, state, user_name, None)
            }
        };
        let mapping = &config.mapping.0;
        let rendered = mapping
            .render(&staged, state)
            .map_err(|e| SyncError::Render {
                field: e.field.clone(),
                reason: e.reason.clone(),
            })?;
        let as_link = link.as_ref().map(|l| Link {
            app_key: l.app_key.clone(),
            fingerprint: String::new(),
            applied_roles: l.applied_roles.clone(),
            fields: l.fields.clone(),
            state: l.state.clone(),
        });
        let d = diff(mapping, &rendered, as_link.as_ref());
        let linked = link.is_some();
        Ok(Preview {
            source,
            user_id: (!staged.id.is_empty()).then(|| staged.id.clone()),
            user_name,
            state: state_name(state),
            key_column: mapping.target().key_column.clone(),
            key: rendered.key.clone(),
            fields: rendered
                .fields
                .iter()
                .map(|(c, v)| (c.clone(), field_json(v)))
                .collect(),
            roles: rendered.roles.iter().cloned().collect(),
            changes: linked.then_some(d.changes),
            roles_added: linked.then(|| d.roles_to_add.into_iter().collect()),
            roles_removed: linked.then(|| d.roles_to_remove.into_iter().collect()),
            link,
        })
    }

    /// Let go of `tenant`'s lease whoever holds it (an operator's action, recorded with
    /// `actor`); a run still holding it stops at its next heartbeat or batch. The run the
    /// lease named is closed as failed when its process is gone. None when there was no lease.
    pub async fn release_lease(
        &self,
        tenant: &str,
        actor: &str,
    ) -> Result<Option<LeaseRow>, SyncError> {
        let engine = self.engine();
        engine.tenant(tenant)?;
        let now = self.clock.now();
        let released = engine.store().release_lease(tenant, actor, now).await?;
        if let Some(l) = &released {
            tracing::warn!(tenant, actor, run_id = ?l.run_id, "sync lease released by an operator");
            engine.close_abandoned_runs(Some(tenant)).await?;
        }
        Ok(released)
    }

    /// Release a quarantined user: the next run tries it again (an operator's action,
    /// recorded with `actor`). False when it was not quarantined.
    pub async fn release_quarantine(
        &self,
        tenant: &str,
        user_id: &str,
        actor: &str,
    ) -> Result<bool, SyncError> {
        let engine = self.engine();
        engine.tenant(tenant)?;
        let released = engine
            .store()
            .release_quarantine(tenant, user_id, actor, self.clock.now())
            .await?;
        if released {
            tracing::info!(
                tenant,
                actor,
                user_id,
                "quarantined user released by an operator"
            );
        }
        Ok(released)
    }

    /// Close the runs stopped processes left running, of every tenant (at start).
    pub async fn close_abandoned_runs(&self) -> Result<u64, SyncError> {
        self.engine().close_abandoned_runs(None).await
    }

    /// The sync side of a tenant's summary; None when the tenant does not sync.
    pub async fn summary(&self, tenant: &str) -> Result<Option<SyncSummary>, SyncError> {
        let Some(c) = self.engine().tenant_config(tenant).cloned() else {
            return Ok(None);
        };
        Ok(Some(SyncSummary {
            mapping: c.mapping_path.display().to_string(),
            last_run: self.ledger.last_run(tenant).await?,
            next_run_at: c
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(self.clock.now()))
                .map(format_time),
            pending_offboardings: self.ledger.count_pending(tenant, c.retention_hours).await?,
        }))
    }
}
