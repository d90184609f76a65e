//! Per-tenant cron schedules, run by tokio-cron-scheduler inside `serve`.
//!
//! Each tenant with `[tenants.NAME.sync] schedule` gets one job. A tick that comes while the
//! tenant's previous run is still going does not wait: its run finds the lease taken and is
//! recorded in the ledger as skipped. Shutting down stops the ticks and waits for runs in
//! progress to end.

use std::sync::Arc;
use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::{RunOptions, RunStatus, SyncEngine, Trigger};

/// Runs in progress at once, at most (a permit each); shutdown takes them all.
const MAX_RUNS: u32 = 1024;

/// The parser the scheduler uses (six fields, a day must match both day fields); the
/// configuration validates with the same one.
pub fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

/// The six-field expression of a nickname.
pub fn nickname(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * SUN",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => return None,
    })
}

pub struct Scheduler {
    jobs: JobScheduler,
    runs: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(#[from] tokio_cron_scheduler::JobSchedulerError);

impl Scheduler {
    /// Schedule every tenant that has a schedule, and start ticking.
    pub async fn start(engine: Arc<SyncEngine>) -> Result<Scheduler, SchedulerError> {
        let jobs = JobScheduler::new().await?;
        let runs = Arc::new(Semaphore::new(MAX_RUNS as usize));
        for tenant in engine.tenants().map(str::to_string).collect::<Vec<_>>() {
            let Some(schedule) = engine
                .tenant_config(&tenant)
                .and_then(|c| c.schedule.clone())
            else {
                continue;
            };
            let (engine, runs, name) = (engine.clone(), runs.clone(), tenant.clone());
            let job = Job::new_async(schedule.normalized.as_str(), move |_, _| {
                let (engine, runs, tenant) = (engine.clone(), runs.clone(), name.clone());
                Box::pin(async move {
                    // Closed at shutdown: no new runs.
                    let Ok(_permit) = runs.acquire_owned().await else {
                        return;
                    };
                    scheduled_run(&engine, &tenant).await;
                })
            })?;
            jobs.add(job).await?;
            tracing::info!(tenant, schedule = %schedule.expr, "sync scheduled");
        }
        jobs.start().await?;
        Ok(Scheduler { jobs, runs })
    }

    /// Stop ticking and wait (up to `grace`) for runs in progress to end.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Err(e) = self.jobs.shutdown().await {
            tracing::warn!(error = %e, "stopping the scheduler");
        }
        match tokio::time::timeout(grace, self.runs.acquire_many(MAX_RUNS)).await {
            Ok(Ok(_all)) => self.runs.close(),
            _ => {
                tracing::warn!("sync runs still in progress at shutdown; the next run resumes them")
            }
        }
    }
}

/// One scheduled run of `tenant`; the outcome is in the ledger and the log.
pub async fn scheduled_run(engine: &SyncEngine, tenant: &str) -> Option<RunStatus> {
    match engine
        .run(tenant, Trigger::Schedule, RunOptions::default())
        .await
    {
        Ok(summary) => Some(summary.status),
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
    use chrono::{TimeZone, Utc};

    #[test]
    fn five_and_six_fields_and_nicknames() {
        let t = Utc.with_ymd_and_hms(2026, 3, 2, 10, 7, 30).unwrap(); // a Monday
        let next = |e: &str| Schedule::parse(e).unwrap().next_after(t).unwrap();
        assert_eq!(
            next("*/15 * * * *"),
            Utc.with_ymd_and_hms(2026, 3, 2, 10, 15, 0).unwrap()
        );
        assert_eq!(
            next("30 */5 * * * *"),
            Utc.with_ymd_and_hms(2026, 3, 2, 10, 10, 30).unwrap()
        );
        assert_eq!(
            next("@hourly"),
            Utc.with_ymd_and_hms(2026, 3, 2, 11, 0, 0).unwrap()
        );
        assert_eq!(
            next("@daily"),
            Utc.with_ymd_and_hms(2026, 3, 3, 0, 0, 0).unwrap()
        );
        assert_eq!(
            next("0 0 6 * * MON-FRI"),
            Utc.with_ymd_and_hms(2026, 3, 3, 6, 0, 0).unwrap()
        );
        assert_eq!(
            Schedule::parse("*/5 * * * *").unwrap().normalized,
            "0 */5 * * * *"
        );
        for bad in ["every hour", "61 * * * *", "@fortnightly", "* * * *", ""] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }

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
