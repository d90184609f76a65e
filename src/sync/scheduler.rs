//! Per-tenant cron schedules, run by tokio-cron-scheduler inside `serve`.
//!
//! Each tenant with `[tenants.NAME.sync] schedule` gets one job. A tick that comes while the
//! tenant's previous run is still going does not wait: its run finds the lease taken and is
//! recorded in the ledger as skipped. Shutting down stops the ticks and waits for runs in
//! progress to end.
//!
//! Each tick runs with the engine the [`SyncService`] holds when it starts; a reload that
//! changes a tenant's schedule replaces its job.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

use crate::config::Schedule;

use super::{RunOptions, RunStatus, RunSummary, SyncEngine, SyncService, Trigger};

pub struct Scheduler {
    jobs: JobScheduler,
    handle: Arc<SyncService>,
}

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(#[from] tokio_cron_scheduler::JobSchedulerError);

impl Scheduler {
    /// Schedule every tenant that has a schedule, and start ticking.
    pub async fn start(handle: Arc<SyncService>) -> Result<Scheduler, SchedulerError> {
        let jobs = JobScheduler::new().await?;
        let engine = handle.engine();
        let mut ids = BTreeMap::new();
        for tenant in engine.tenants() {
            if let Some(schedule) = engine
                .tenant_config(tenant)
                .and_then(|c| c.schedule.as_ref())
            {
                let id = jobs.add(job(&handle, tenant, schedule)?).await?;
                ids.insert(tenant.to_string(), id);
                tracing::info!(tenant, schedule = %schedule.expr, "sync scheduled");
            }
        }
        jobs.start().await?;
        handle
            .set_schedules(Some(Schedules {
                jobs: jobs.clone(),
                ids,
            }))
            .await;
        handle.set_scheduler_running(true);
        Ok(Scheduler { jobs, handle })
    }

    /// Stop ticking and wait (up to `grace`) for runs in progress (scheduled or started through
    /// the admin API) to end.
    pub async fn shutdown(mut self, grace: Duration) {
        self.handle.set_scheduler_running(false);
        self.handle.set_schedules(None).await;
        // Runs in progress finish the batch they are writing, record it and let go of their lease.
        self.handle.stop_runs();
        if let Err(e) = self.jobs.shutdown().await {
            tracing::warn!(error = %e, "stopping the scheduler");
        }
        self.handle.wait_for_runs(grace).await;
    }
}

/// The jobs of a running scheduler, by tenant, so a reload can change a tenant's schedule.
pub struct Schedules {
    jobs: JobScheduler,
    ids: BTreeMap<String, Uuid>,
}

impl Schedules {
    /// From now on, tick `tenant` on `schedule` (None: no more ticks); a run in progress goes
    /// on.
    pub(super) async fn reschedule(
        &mut self,
        handle: &Arc<SyncService>,
        tenant: &str,
        schedule: Option<&Schedule>,
    ) -> Result<(), SchedulerError> {
        if let Some(old) = self.ids.remove(tenant) {
            self.jobs.remove(&old).await?;
        }
        match schedule {
            Some(s) => {
                let id = self.jobs.add(job(handle, tenant, s)?).await?;
                self.ids.insert(tenant.to_string(), id);
                tracing::info!(tenant, schedule = %s.expr, "sync rescheduled");
            }
            None => tracing::info!(tenant, "sync no longer scheduled"),
        }
        Ok(())
    }
}

/// The cron job that ticks `tenant`.
fn job(
    handle: &Arc<SyncService>,
    tenant: &str,
    schedule: &Schedule,
) -> Result<Job, SchedulerError> {
    let (handle, name) = (handle.clone(), tenant.to_string());
    Ok(Job::new_async(
        schedule.normalized.as_str(),
        move |_, _| {
            let (handle, tenant) = (handle.clone(), name.clone());
            Box::pin(async move {
                // Closed at shutdown: no new runs.
                let Some(_permit) = handle.run_permit().await else {
                    return;
                };
                tick(&handle, &tenant).await;
            })
        },
    )?)
}

/// One scheduled run of `tenant`; the outcome is in the ledger and the log.
pub async fn scheduled_run(engine: &SyncEngine, tenant: &str) -> Option<RunStatus> {
    run_logged(engine, tenant, RunOptions::default())
        .await
        .map(|s| s.status)
}

/// A scheduler tick: one run of `tenant` with the current engine, also reported to the metrics.
async fn tick(handle: &SyncService, tenant: &str) {
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
