//! Per-tenant cron schedules, run by tokio-cron-scheduler inside `serve`.
//!
//! Each tenant with `[tenants.NAME.sync] schedule` gets one job. A tick that comes while the
//! tenant's previous run is still going does not wait: its run finds the lease taken and is
//! recorded in the ledger as skipped. Shutting down stops the ticks and waits for runs in
//! progress to end.
//!
//! The scheduler and the admin API reach the engine through a [`SyncHandle`]: each run takes
//! the engine current when it starts, so a mapping reload (a new engine) applies from the next
//! run on while a run in progress finishes with the mapping it started with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::db::SyncDb;
use super::{RunOptions, RunStatus, RunSummary, SyncEngine, Trigger};
use crate::metrics::Metrics;

/// Runs in progress at once, at most (a permit each); shutdown takes them all.
const MAX_RUNS: u32 = 1024;

/// The current sync engine (replaced whole by a mapping reload), whether the scheduler is
/// running, the permits of runs in progress (shutdown waits for them) and the metrics every
/// run outside the CLI reports to.
pub struct SyncHandle {
    engine: RwLock<Arc<SyncEngine>>,
    scheduler_running: AtomicBool,
    runs: Arc<Semaphore>,
    db: SyncDb,
    /// Held while a reload builds the new engine: one reload at a time.
    pub reload: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Set at shutdown: runs in progress stop after their current batch.
    stop: Arc<AtomicBool>,
}

impl SyncHandle {
    pub fn new(engine: SyncEngine, metrics: Arc<Metrics>) -> SyncHandle {
        SyncHandle {
            db: engine.db().clone(),
            engine: RwLock::new(Arc::new(engine)),
            scheduler_running: AtomicBool::new(false),
            runs: Arc::new(Semaphore::new(MAX_RUNS as usize)),
            reload: tokio::sync::Mutex::new(()),
            metrics,
            stop: Arc::new(AtomicBool::new(false)),
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

    /// The staging database the engine keeps its state and ledger in.
    pub fn db(&self) -> &SyncDb {
        &self.db
    }

    /// The engine new runs use.
    pub fn engine(&self) -> Arc<SyncEngine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// From now on, runs use `engine` (runs in progress keep the one they started with).
    pub fn replace(&self, engine: SyncEngine) {
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

    /// Whether the schedules are ticking (set by `Scheduler::start`, cleared at shutdown).
    pub fn scheduler_running(&self) -> bool {
        self.scheduler_running.load(Ordering::SeqCst)
    }

    /// Report a finished run to the metrics: the run by status and duration, its items by
    /// outcome.
    pub fn record(&self, s: &RunSummary) {
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
}

pub struct Scheduler {
    jobs: JobScheduler,
    handle: Arc<SyncHandle>,
}

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(#[from] tokio_cron_scheduler::JobSchedulerError);

impl Scheduler {
    /// Schedule every tenant that has a schedule, and start ticking.
    pub async fn start(handle: Arc<SyncHandle>) -> Result<Scheduler, SchedulerError> {
        let jobs = JobScheduler::new().await?;
        let engine = handle.engine();
        for tenant in engine.tenants().map(str::to_string).collect::<Vec<_>>() {
            let Some(schedule) = engine
                .tenant_config(&tenant)
                .and_then(|c| c.schedule.clone())
            else {
                continue;
            };
            let (handle, name) = (handle.clone(), tenant.clone());
            let job = Job::new_async(schedule.normalized.as_str(), move |_, _| {
                let (handle, tenant) = (handle.clone(), name.clone());
                Box::pin(async move {
                    // Closed at shutdown: no new runs.
                    let Some(_permit) = handle.run_permit().await else {
                        return;
                    };
                    tick(&handle, &tenant).await;
                })
            })?;
            jobs.add(job).await?;
            tracing::info!(tenant, schedule = %schedule.expr, "sync scheduled");
        }
        jobs.start().await?;
        handle.scheduler_running.store(true, Ordering::SeqCst);
        Ok(Scheduler { jobs, handle })
    }

    /// Stop ticking and wait (up to `grace`) for runs in progress (scheduled or started through
    /// the admin API) to end.
    pub async fn shutdown(mut self, grace: Duration) {
        self.handle.scheduler_running.store(false, Ordering::SeqCst);
        // Runs in progress finish the batch they are writing, record it and let go of their lease.
        self.handle.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.jobs.shutdown().await {
            tracing::warn!(error = %e, "stopping the scheduler");
        }
        let runs = &self.handle.runs;
        match tokio::time::timeout(grace, runs.acquire_many(MAX_RUNS)).await {
            Ok(Ok(_all)) => runs.close(),
            _ => {
                tracing::warn!("sync runs still in progress at shutdown; the next run resumes them")
            }
        }
    }
}

/// One scheduled run of `tenant`; the outcome is in the ledger and the log.
pub async fn scheduled_run(engine: &SyncEngine, tenant: &str) -> Option<RunStatus> {
    run_logged(engine, tenant, RunOptions::default())
        .await
        .map(|s| s.status)
}

/// A scheduler tick: one run of `tenant` with the current engine, also reported to the metrics.
async fn tick(handle: &SyncHandle, tenant: &str) {
    let options = handle.run_options(false, false);
    if let Some(summary) = run_logged(&handle.engine(), tenant, options).await {
        handle.record(&summary);
    }
}

async fn run_logged(engine: &SyncEngine, tenant: &str, options: RunOptions) -> Option<RunSummary> {
    match engine.run(tenant, Trigger::Schedule, options).await {
        Ok(summary) => Some(summary),
        Err(e) => {
            tracing::error!(tenant, error = %e, "scheduled sync run could not start");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    /// Every expression the configuration accepts is one the scheduler accepts.
    #[tokio::test]
    async fn scheduler_accepts_what_the_configuration_accepts() {
        for e in [
            "*/5 * * * *",
            "0 */15 * * * *",
            "@weekly",
            "0 30 2 * * SUN",
            "0 0 1 1 JAN *",
        ] {
            let s = Schedule::parse(e).unwrap();
            assert!(
                Job::new_async(s.normalized.as_str(), |_, _| Box::pin(async {})).is_ok(),
                "{e}"
            );
        }
    }
}
