//! The sync engine: turns a tenant's staged users into the application's users and roles.
//!
//! A run, per tenant, under a lease (one run per tenant at a time, across processes):
//! 1. users that failed last time (`sync_retry`), then every user whose (change_seq, pk) is
//!    above the tenant's watermark, in batches ordered by change: render with the tenant's
//!    mapping (Active, or Deactivated when inactive or deleted), compare the fingerprint with
//!    the user's link, write what changed to the application in one transaction per batch,
//!    then record links, ledger items, retries and the new watermark in one staging
//!    transaction ([`run`]);
//! 2. the lifecycle: users inactive or deleted for longer than the retention are purged from
//!    staging and their offboarding queued in the same transaction, unless there are more than
//!    the guard allows (then the run waits for approval); then the queue is applied
//!    ([`lifecycle`]).
//!
//! The watermark only moves over committed work, so a run stopped at any point converges on
//! the next one. See docs/sync.md.
//!
//! This module holds the vocabulary; [`engine`] the entry points, [`plan`] the pure planner,
//! [`store`] and [`ledger`] what the engine and the admin API need of the staging database,
//! [`service`] the use cases the CLI and the admin API share, [`scheduler`] the schedules.

pub mod engine;
pub mod holder;
pub mod ledger;
pub mod lifecycle;
pub mod plan;
mod run;
pub mod scheduler;
pub mod service;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::mapping::RenderError;
use crate::store::{DbError, StoreError};
use crate::target::TargetError;
pub use engine::SyncEngine;
pub use plan::field_json;
pub use service::SyncService;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("tenant {0:?} is unknown or has no [tenants.{0}.sync] configuration")]
    NotConfigured(String),
    #[error("staging database error: {0}")]
    Db(#[from] DbError),
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
    #[error(
        "a run of tenant {tenant:?} is in progress; this request was recorded as skipped run {run_id}"
    )]
    Skipped { tenant: String, run_id: i64 },
    #[error("a run of tenant {tenant:?} is in progress{}; try again when it has ended", run_id.map(|id| format!(" (run {id})")).unwrap_or_default())]
    InProgress { tenant: String, run_id: Option<i64> },
    #[error("the server is shutting down; no new runs start")]
    ShuttingDown,
    #[error("tenant {0:?} has no such staged user")]
    NoStagedUser(String),
    #[error("{field}: {reason}")]
    Render { field: String, reason: String },
    /// A mapping that cannot be used (reload): the text says where and why.
    #[error("{0}")]
    Mapping(String),
}

/// The store's failures as the engine sees them (the engine reads and writes no resources).
impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => SyncError::Db(e),
            StoreError::Corrupt(e) => SyncError::Corrupt(e),
            other => SyncError::Db(DbError::Failed(other.to_string())),
        }
    }
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
    /// Was `awaiting_approval`; an approval was recorded (the approving run applies what it
    /// held).
    Approved,
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
            RunStatus::Approved => "approved",
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
    /// A row the application had with the user's key, taken over (the mapping adopts).
    Adopted,
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
            Outcome::Adopted => "adopted",
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
    /// The offboarding action an offboarded item (or a failed offboarding) records:
    /// `delete`, `update` or `none` (the applied roles are removed whatever the action).
    pub action: Option<String>,
    /// Column → before/after, only the columns that differ.
    pub changes: BTreeMap<String, Change>,
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
    /// Why the user failed, in full, for the ledger, the CLI and the admin API. It may quote a
    /// rendered or staged value, or the application's own message.
    pub error: Option<String>,
    /// The same reason without any value (see [`UserFailure::loggable`]): what logs may say.
    #[serde(skip)]
    pub log_reason: Option<String>,
}

/// Why one user failed.
#[derive(Debug, Clone)]
pub enum UserFailure {
    /// The staged document or its groups could not be read back.
    Staged(String),
    /// The mapping could not render the user or its offboarding.
    Render(RenderError),
    /// The application refused the user's write (its message may quote the row's values).
    Application(String),
    /// The application refused the user's offboarding.
    Offboarding(String),
    /// The engine would not write the row (another tenant's, or one the application made):
    /// the engine's own text, which names only columns, options and tenants.
    Refused(String),
}

impl UserFailure {
    /// The whole reason, for the ledger, the CLI and the admin API.
    pub fn reason(&self) -> String {
        match self {
            UserFailure::Render(e) => e.to_string(),
            UserFailure::Staged(s)
            | UserFailure::Application(s)
            | UserFailure::Offboarding(s)
            | UserFailure::Refused(s) => s.clone(),
        }
    }

    /// The reason without any rendered or staged value, nor the application's message (which
    /// can quote the row, as SQL Server's duplicate-key error does): what logs may say. The
    /// ledger has the whole reason.
    pub fn loggable(&self) -> String {
        match self {
            UserFailure::Staged(_) => {
                "the staged user's stored document or groups are not valid JSON".to_string()
            }
            UserFailure::Render(e) => e.loggable(),
            UserFailure::Application(_) => "the application refused the write".to_string(),
            UserFailure::Offboarding(_) => "the application refused the offboarding".to_string(),
            UserFailure::Refused(s) => s.clone(),
        }
    }
}

/// A user a run failed on, as logs may tell it: its id and a reason with no value in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedUser {
    pub user_id: String,
    pub reason: String,
}

impl FailedUser {
    /// The failure of a failed item (None for any other).
    pub fn of(item: &ItemReport) -> Option<FailedUser> {
        (item.outcome == Outcome::Failed).then(|| FailedUser {
            user_id: item.user_id.clone(),
            reason: item
                .log_reason
                .clone()
                .unwrap_or_else(|| "failed".to_string()),
        })
    }
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
    /// Users skipped because they are quarantined (not new failures).
    pub quarantined: u64,
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
    /// The run's first failing users (at most [`RunSummary::FAILURES_KEPT`]) with value-free
    /// reasons, for the log; `counts.failed` counts them all, and the ledger has every one with
    /// its whole reason.
    pub failures: Vec<FailedUser>,
}

impl RunSummary {
    /// Failing users a summary keeps (and a server-started run logs).
    pub const FAILURES_KEPT: usize = 20;

    /// Log the failing users the summary kept, at WARN, one event each (tenant, run id, user
    /// id and the value-free reason; never the userName), then how many more failed. Runs the
    /// server starts are logged so; the CLI prints the whole reasons instead.
    pub fn log_failures(&self) {
        for f in &self.failures {
            tracing::warn!(
                tenant = %self.tenant,
                run_id = self.run_id,
                dry_run = self.dry_run,
                user_id = %f.user_id,
                reason = %f.reason,
                "sync user failed"
            );
        }
        let more = self
            .counts
            .failed
            .saturating_sub(self.failures.len() as u64);
        if more > 0 {
            tracing::warn!(
                tenant = %self.tenant,
                run_id = self.run_id,
                dry_run = self.dry_run,
                more,
                "more sync users failed than are logged: the run's failed items list every one \
                 with its reason (GET /admin/v1/runs/{{id}}/items?outcome=failed)"
            );
        }
    }
}

impl Counts {
    /// Count one recorded item: its outcome and its role changes.
    pub fn add(&mut self, item: &ItemReport) {
        match item.outcome {
            Outcome::Created => self.created += 1,
            Outcome::Updated | Outcome::Reactivated | Outcome::Adopted => self.updated += 1,
            Outcome::Deactivated => self.deactivated += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Offboarded => self.offboarded += 1,
            Outcome::Purged | Outcome::OffboardingHeld => {}
        }
        self.roles_added += item.roles_added.len() as u64;
        self.roles_removed += item.roles_removed.len() as u64;
    }
}

#[cfg(test)]
mod tests;
