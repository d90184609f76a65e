//! What the sync engine needs of the staging database ([`SyncStore`]), in the engine's terms:
//! the change feed and the links, the batch record, the run bookkeeping and the lease, the
//! lifecycle. Backends (src/db) implement it; each operation is one call, and every call that
//! writes is one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::plan::Planned;
use super::{Counts, ItemReport, RunStatus, SyncError};
use crate::mapping::{StagedGroup, StagedUser};

/// Plans a batch on the thread that read it (the backend hands the rows over, the engine
/// renders them there): one hand-over per batch.
pub type BatchPlanner =
    Box<dyn FnOnce(Vec<UserRow>, HashMap<String, Link>) -> Result<Planned, SyncError> + Send>;

/// Plans a lifecycle batch inside the transaction that read it and records the plan.
pub type LifecyclePlanner = Box<dyn FnOnce(DueBatch) -> Result<LifecycleRecord, SyncError> + Send>;

#[async_trait]
pub trait SyncStore: Send + Sync {
    /// The tenant's watermark (the default mark when it has none yet).
    async fn watermark(&self, tenant: &str) -> Result<Mark, SyncError>;

    /// The highest change sequence value whose writes have all committed.
    async fn high_seq(&self) -> Result<i64, SyncError>;

    /// How many users a run from `after` to `high` reads (for progress).
    async fn count_changed(&self, tenant: &str, after: Mark, high: i64) -> Result<i64, SyncError>;

    /// One batch of users and their links, planned by `plan` on the reading thread.
    async fn read_batch(
        &self,
        tenant: &str,
        read: Read,
        limit: u32,
        plan: BatchPlanner,
    ) -> Result<Planned, SyncError>;

    /// Record a batch in one transaction; `SyncError::LeaseLost` (and nothing written) when
    /// the lease is no longer the run's.
    async fn record(&self, record: Record) -> Result<(), SyncError>;

    /// Start a run: take the tenant's lease (not for a dry run, which needs none), close the
    /// runs a stopped process left running, drop retries of users that are gone, and insert
    /// the run — `skipped` when the lease is someone else's.
    async fn begin_run(&self, run: BeginRun) -> Result<Begun, SyncError>;

    /// Start the run that approves run `approves`: take the lease (`SyncError::Busy` when
    /// someone else holds it), insert the run and mark `approves` approved by it — status
    /// `approved`, when, by which run and by whom (`approver`: the admin token's name, or
    /// `cli`) — and record the approval in the audit trail. `SyncError::NotAwaitingApproval`
    /// (and nothing written) when `approves` is not awaiting approval or was approved already.
    async fn begin_approval(
        &self,
        run: BeginRun,
        approves: i64,
        approver: &str,
    ) -> Result<i64, SyncError>;

    /// Run retention: delete the ended runs `prune` selects, with their items; how many runs.
    /// A run that is running or awaiting approval, or the newest run of its tenant, is never
    /// deleted.
    async fn prune_runs(&self, prune: PruneRuns) -> Result<u64, SyncError>;

    /// Record the end of a run and let go of its lease.
    async fn finish_run(&self, end: FinishRun) -> Result<(), SyncError>;

    /// A running run's signs of life: its heartbeat and, when it holds the lease, the lease's
    /// new expiry. False when the lease is no longer the run's.
    async fn heartbeat(&self, beat: Heartbeat) -> Result<bool, SyncError>;

    /// Runs still recorded as `running`, of one tenant or of all.
    async fn running_runs(&self, tenant: Option<&str>) -> Result<Vec<RunningRun>, SyncError>;

    /// Close the runs `ids` that are still running as failed, with `reason`; how many.
    async fn close_runs(
        &self,
        ids: &[i64],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, SyncError>;

    /// The tenant's lease as stored, expired or not.
    async fn lease_row(&self, tenant: &str) -> Result<Option<LeaseRow>, SyncError>;

    /// Let go of the tenant's lease whoever holds it, and record who did (`actor`) in the
    /// audit trail; the lease that was released.
    async fn release_lease(
        &self,
        tenant: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LeaseRow>, SyncError>;

    /// Who owns the application rows of `keys` in `rows`' table: key → owning tenant (keys
    /// nobody owns are absent).
    async fn owners(
        &self,
        rows: &RowsOf,
        keys: &[String],
    ) -> Result<HashMap<String, String>, SyncError>;

    /// Claim the rows about to be created (before they are written, so a run that crashes
    /// after writing them still owns them); the keys another tenant owns already (not
    /// claimed).
    async fn claim(
        &self,
        rows: &RowsOf,
        tenant: &str,
        claims: Vec<Owned>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, SyncError>;

    /// The tenant's links by user id, after `after_user_id` (`sync --verify` walks them).
    async fn links_page(
        &self,
        tenant: &str,
        after_user_id: &str,
        limit: u32,
    ) -> Result<Vec<(String, Link)>, SyncError>;

    /// How many of the tenant's users are quarantined.
    async fn count_quarantined(&self, tenant: &str) -> Result<i64, SyncError>;

    /// Release a quarantined user (it is retried by the next run) and record who did; false
    /// when it was not quarantined.
    async fn release_quarantine(
        &self,
        tenant: &str,
        user_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, SyncError>;

    /// What an approval needs to know about the run it approves.
    async fn run_state(&self, run_id: i64) -> Result<Option<RunState>, SyncError>;

    /// Users whose retention ended at `cutoff` (with `held_in`, only those that run held).
    async fn count_due(
        &self,
        tenant: &str,
        cutoff: DateTime<Utc>,
        held_in: Option<i64>,
    ) -> Result<i64, SyncError>;

    /// How many users of the tenant have an application row.
    async fn count_links(&self, tenant: &str) -> Result<i64, SyncError>;

    /// The next batch of due users (by pk after `due.after_pk`), with their links and how many
    /// links share each of their keys, planned by `plan` and recorded, in one transaction: no
    /// SCIM write comes between the read and the purge. None when no user is left.
    async fn lifecycle_batch(
        &self,
        due: DueQuery,
        plan: LifecyclePlanner,
    ) -> Result<Option<LifecycleDone>, SyncError>;

    /// Queued offboardings by id, after `after_id`.
    async fn queued(
        &self,
        tenant: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Queued>, SyncError>;

    /// Record what the application did with queued offboardings (and their items).
    async fn record_lifecycle(&self, record: LifecycleRecord) -> Result<(), SyncError>;
}

/// A position in the change stream: (change_seq, pk) of the last user covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub seq: i64,
    pub pk: i64,
}

/// One staged user as read for a run.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub pk: i64,
    pub id: String,
    pub user_name: String,
    pub doc: String,
    pub active: bool,
    pub deleted: bool,
    pub change_seq: i64,
    /// JSON array of the user's groups: `[id, display_name, external_id]` arrays (SQLite) or
    /// `{"id", "display_name", "external_id"}` objects (SQL Server's FOR JSON).
    pub groups: Option<String>,
    /// Quarantined at this very version: it failed too many runs in a row and has not changed
    /// since (the change feed only reads users whose version moved, so only a full run sees it).
    pub quarantined: bool,
}

/// One group of a user, in either shape the backends produce.
#[derive(Deserialize)]
#[serde(untagged)]
enum GroupJson {
    Row(String, String, Option<String>),
    Object {
        id: String,
        display_name: String,
        #[serde(default)]
        external_id: Option<String>,
    },
}

impl From<GroupJson> for StagedGroup {
    fn from(g: GroupJson) -> StagedGroup {
        let (id, display_name, external_id) = match g {
            GroupJson::Row(id, display_name, external_id) => (id, display_name, external_id),
            GroupJson::Object {
                id,
                display_name,
                external_id,
            } => (id, display_name, external_id),
        };
        StagedGroup {
            id,
            display_name,
            external_id,
        }
    }
}

/// A user's groups from the JSON either backend returns (None: no groups).
pub fn groups_from_json(text: Option<&str>) -> Result<Vec<StagedGroup>, serde_json::Error> {
    let groups: Vec<GroupJson> = match text {
        None => vec![],
        Some(text) => serde_json::from_str(text)?,
    };
    Ok(groups.into_iter().map(StagedGroup::from).collect())
}

impl UserRow {
    pub fn mark(&self) -> Mark {
        Mark {
            seq: self.change_seq,
            pk: self.pk,
        }
    }

    /// The user as the mapping sees it.
    pub fn staged(&self) -> Result<StagedUser, String> {
        let doc: Map<String, Value> = serde_json::from_str(&self.doc)
            .map_err(|e| format!("stored document is not valid JSON: {e}"))?;
        let groups = groups_from_json(self.groups.as_deref())
            .map_err(|e| format!("stored groups are not valid JSON: {e}"))?;
        Ok(StagedUser {
            id: self.id.clone(),
            doc,
            groups,
        })
    }
}

/// A user's link: what the application row holds since the last write.
#[derive(Debug, Clone)]
pub struct Link {
    pub app_key: String,
    pub fingerprint: String,
    pub applied_roles: BTreeSet<String>,
    pub fields: Map<String, Value>,
    pub state: String,
}

impl Link {
    /// From the stored columns (roles and fields as JSON text).
    pub fn parse(
        app_key: String,
        fingerprint: String,
        roles: &str,
        fields: &str,
        state: String,
    ) -> Result<Link, SyncError> {
        Ok(Link {
            app_key,
            fingerprint,
            applied_roles: serde_json::from_str(roles)?,
            fields: serde_json::from_str(fields)?,
            state,
        })
    }
}

/// One queued offboarding.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub user_id: String,
    pub user_name: Option<String>,
    pub app_key: String,
    pub action: Value,
    pub roles: BTreeSet<String>,
    /// What the engine last wrote to the row (the user's link's fields; empty when the link
    /// is gone): the values before the offboarding.
    pub applied: Map<String, Value>,
}

/// A run to insert.
#[derive(Debug, Clone)]
pub struct BeginRun {
    pub tenant: String,
    /// Who runs it (host, process, run; see `sync::holder`): the lease's holder.
    pub holder: String,
    /// A holder whose process has stopped: its lease is taken over whatever its expiry.
    pub take_from: Option<String>,
    pub trigger: &'static str,
    pub dry_run: bool,
    pub full: bool,
    pub started_at: DateTime<Utc>,
    pub lease_expires: DateTime<Utc>,
    pub watermark_from: Option<i64>,
}

/// A run as inserted: its id, and whether it got the lease (a dry run always does).
#[derive(Debug, Clone, Copy)]
pub struct Begun {
    pub run_id: i64,
    pub leased: bool,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct FinishRun {
    pub tenant: String,
    pub run_id: i64,
    /// The lease to let go of (None: a dry run, which took none).
    pub holder: Option<String>,
    pub status: RunStatus,
    pub counts: Counts,
    pub watermark_to: Option<i64>,
    pub ended_at: DateTime<Utc>,
    pub error: Option<String>,
}

/// A running run's signs of life.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub tenant: String,
    pub run_id: i64,
    pub holder: String,
    /// The run holds the lease (false: a dry run).
    pub leased: bool,
    pub now: DateTime<Utc>,
    pub lease_expires: DateTime<Utc>,
}

/// A run recorded as running.
#[derive(Debug, Clone)]
pub struct RunningRun {
    pub id: i64,
    pub tenant: String,
    /// None: recorded by a version that did not record holders.
    pub holder: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub dry_run: bool,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub holder: String,
    pub run_id: Option<i64>,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Which runs retention deletes: no-op runs (no item — nothing changed, nothing failed,
/// nothing held or offboarded — and not failed, nor part of an approval) started before
/// `noop_before`, every other run started before `before`; of one tenant, or of every tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRuns {
    pub noop_before: DateTime<Utc>,
    pub before: DateTime<Utc>,
    pub tenant: Option<String>,
}

/// What an approval needs to know about the run it approves.
pub struct RunState {
    pub tenant: String,
    pub status: String,
    pub dry_run: bool,
    pub approved: bool,
}

/// Which users a batch reads.
#[derive(Debug, Clone, Copy)]
pub enum Read {
    /// Users to retry that the watermark has passed, after this pk.
    Retry { watermark: Mark, after_pk: i64 },
    /// Users changed after this mark, up to `high`.
    Changed { after: Mark, high: i64 },
}

/// The state written to the application for one user.
pub struct LinkWrite {
    pub user_id: String,
    pub app_key: String,
    pub fingerprint: String,
    pub applied_roles: BTreeSet<String>,
    pub fields: BTreeMap<String, Value>,
    pub state: &'static str,
}

/// What one batch records in staging, in one transaction: ledger items, links, retries, the
/// watermark, the lease and the run's counts.
pub struct Record {
    pub tenant: String,
    pub holder: String,
    pub run_id: i64,
    pub now: DateTime<Utc>,
    pub lease_expires: DateTime<Utc>,
    pub counts: Counts,
    pub watermark_to: Option<i64>,
    /// Ledger items, in batch order.
    pub items: Vec<ItemReport>,
    /// Dry run: only the items and the run's counts are written, nothing below.
    pub dry_run: bool,
    pub links: Vec<LinkWrite>,
    /// The users that failed.
    pub retries: Vec<RetryWrite>,
    /// A user that failed this many runs in a row on one staged version is quarantined (0:
    /// never).
    pub quarantine_after: u32,
    /// Users whose retry row goes (written or unchanged).
    pub cleared: Vec<String>,
    pub advance: Option<Mark>,
    /// The application table the batch wrote, for its rows' owners.
    pub rows_of: RowsOf,
    /// Rows this tenant now owns: created, adopted, or found linked without an owner record.
    pub owned: Vec<Owned>,
    /// Keys whose rows moved away (a key change): their owner records go.
    pub disowned: Vec<String>,
}

/// An application table, and the scope a tenant's rows have in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowsOf {
    /// The `[applications.NAME]`.
    pub application: String,
    pub table: String,
    /// The tenant's name when the mapping has a tenant column (rows of different tenants never
    /// share a key then), else empty.
    pub scope: String,
}

/// A row a tenant's user owns.
#[derive(Debug, Clone)]
pub struct Owned {
    pub key: String,
    pub user_id: String,
    /// `created`, `adopted` or `linked`.
    pub how: &'static str,
}

/// A user that failed, at the staged version it failed on.
pub struct RetryWrite {
    pub user_id: String,
    pub error: String,
    pub change_seq: i64,
}

/// An item's optional JSON columns (None when empty).
pub struct ItemJson {
    pub changes: Option<String>,
    pub roles_added: Option<String>,
    pub roles_removed: Option<String>,
}

pub fn item_json(item: &ItemReport) -> Result<ItemJson, SyncError> {
    let list = |v: &Vec<String>| {
        (!v.is_empty())
            .then(|| serde_json::to_string(v))
            .transpose()
    };
    Ok(ItemJson {
        changes: (!item.changes.is_empty())
            .then(|| serde_json::to_string(&item.changes))
            .transpose()?,
        roles_added: list(&item.roles_added)?,
        roles_removed: list(&item.roles_removed)?,
    })
}

/// Which due users a lifecycle batch reads.
#[derive(Debug, Clone)]
pub struct DueQuery {
    pub tenant: String,
    /// Inactive (and, when deleted, deleted) at or before this time.
    pub cutoff: DateTime<Utc>,
    /// Only the users this run held for approval.
    pub held_in: Option<i64>,
    pub after_pk: i64,
    pub limit: u32,
}

/// A lifecycle batch as read: due users by pk, their links, and for each of their links' keys
/// how many links of the tenant have it.
pub struct DueBatch {
    pub rows: Vec<UserRow>,
    pub links: HashMap<String, Link>,
    pub key_links: HashMap<String, i64>,
}

/// An offboarding to queue.
#[derive(Debug, Clone)]
pub struct NewOffboarding {
    pub user_id: String,
    pub user_name: String,
    pub app_key: String,
    pub action: Value,
    pub roles: BTreeSet<String>,
}

/// What a lifecycle step records, in one transaction.
#[derive(Default)]
pub struct LifecycleRecord {
    pub tenant: String,
    pub run_id: i64,
    pub now: DateTime<Utc>,
    /// Renew this holder's lease (None: a dry run).
    pub holder: Option<String>,
    pub lease_expires: DateTime<Utc>,
    /// Ledger items, in order.
    pub items: Vec<ItemReport>,
    /// Offboardings to queue (unless one is queued for the user).
    pub queue: Vec<NewOffboarding>,
    /// Users removed from staging with their memberships and retry rows (the groups they
    /// leave get a new version).
    pub purge: Vec<String>,
    /// Users whose link goes.
    pub unlink: Vec<String>,
    /// Queued offboardings that were applied: (queue id, user id); the queue row and the
    /// user's link go.
    pub done: Vec<(i64, String)>,
    /// Queued offboardings that failed: (queue id, error).
    pub failed: Vec<(i64, String)>,
    /// Rows deleted from the application: their owner records go.
    pub rows_of: RowsOf,
    pub disowned: Vec<String>,
}

/// A lifecycle batch done: the last user read, and the items recorded.
pub struct LifecycleDone {
    pub last_pk: i64,
    pub items: Vec<ItemReport>,
}
