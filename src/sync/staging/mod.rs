//! The engine's statements against the staging database, whichever it is: reads of the change
//! feed and of the engine's own state, the batch record, and the short transactions of the run
//! bookkeeping, the lease and the lifecycle. [`Staging`] and [`Tx`] forward each operation to
//! the SQLite or the SQL Server implementation; both keep the same model (docs/sync.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::db::SyncDb;
use super::{Counts, ItemReport, RunStatus, SyncError};
use crate::mapping::{StagedGroup, StagedUser};
use crate::store::mssql::pool::MssqlPool;

pub mod mssql;
pub mod sqlite;

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
    fn parse(
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
}

pub struct NewRun<'a> {
    pub tenant: &'a str,
    pub trigger: &'a str,
    pub dry_run: bool,
    pub full: bool,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub watermark_from: Option<i64>,
    pub approves_run: Option<i64>,
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
    /// (user id, error) of the users that failed.
    pub retries: Vec<(String, String)>,
    /// Users whose retry row goes (written or unchanged).
    pub cleared: Vec<String>,
    pub advance: Option<Mark>,
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

/// The engine's side of the staging database.
#[derive(Clone)]
pub enum Staging {
    Sqlite(sqlite::SqliteState),
    SqlServer(MssqlPool),
}

/// Forward a call to the backend's function of the same name, the backend's handle first.
macro_rules! forward {
    ($self:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $self {
            Staging::Sqlite(s) => sqlite::$f(s, $($arg),*).await,
            Staging::SqlServer(p) => mssql::$f(p, $($arg),*).await,
        }
    };
}

impl Staging {
    /// The engine's connections to `db` (SQLite: a write and a read connection of its own).
    pub fn open(db: &SyncDb) -> Result<Staging, SyncError> {
        Ok(match db {
            SyncDb::Sqlite(store) => Staging::Sqlite(sqlite::SqliteState::open(store)?),
            SyncDb::SqlServer(pool) => Staging::SqlServer(pool.clone()),
        })
    }

    pub async fn watermark(&self, tenant: &str) -> Result<Mark, SyncError> {
        forward!(self, watermark(tenant))
    }

    /// The highest change sequence value whose writes have all committed.
    pub async fn high_seq(&self) -> Result<i64, SyncError> {
        forward!(self, high_seq())
    }

    /// How many users a run from `after` to `high` reads (for progress).
    pub async fn count_changed(
        &self,
        tenant: &str,
        after: Mark,
        high: i64,
    ) -> Result<i64, SyncError> {
        forward!(self, count_changed(tenant, after, high))
    }

    /// Users whose retention ended at `cutoff` (with `held_in`, only those that run held).
    pub async fn count_due(
        &self,
        tenant: &str,
        cutoff: DateTime<Utc>,
        held_in: Option<i64>,
    ) -> Result<i64, SyncError> {
        forward!(self, count_due(tenant, cutoff, held_in))
    }

    /// The due users by pk, after `after_pk`.
    pub async fn due_users(
        &self,
        tenant: &str,
        cutoff: DateTime<Utc>,
        held_in: Option<i64>,
        after_pk: i64,
        limit: u32,
    ) -> Result<Vec<UserRow>, SyncError> {
        forward!(self, due_users(tenant, cutoff, held_in, after_pk, limit))
    }

    /// The links of `ids` (one statement).
    pub async fn links(
        &self,
        tenant: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, Link>, SyncError> {
        forward!(self, links(tenant, ids))
    }

    pub async fn count_links(&self, tenant: &str) -> Result<i64, SyncError> {
        forward!(self, count_links(tenant))
    }

    /// Queued offboardings by id, after `after_id`.
    pub async fn queued(
        &self,
        tenant: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Queued>, SyncError> {
        forward!(self, queued(tenant, after_id, limit))
    }

    pub async fn run_state(&self, run_id: i64) -> Result<Option<RunState>, SyncError> {
        forward!(self, run_state(run_id))
    }

    /// One batch of users and their links, handed to `then` on a blocking thread (the engine
    /// plans the batch there).
    pub async fn read_batch<R, F>(
        &self,
        tenant: &str,
        read: Read,
        limit: u32,
        then: F,
    ) -> Result<R, SyncError>
    where
        R: Send + 'static,
        F: FnOnce(Vec<UserRow>, HashMap<String, Link>) -> Result<R, SyncError> + Send + 'static,
    {
        forward!(self, read_batch(tenant, read, limit, then))
    }

    /// Record a batch in one transaction; `SyncError::LeaseLost` (and nothing written) when
    /// the lease is no longer the run's.
    pub async fn record(&self, record: Record) -> Result<(), SyncError> {
        forward!(self, record(record))
    }

    /// A write transaction for the run bookkeeping, the lease or the lifecycle.
    pub async fn begin(&self) -> Result<Tx, SyncError> {
        Ok(match self {
            Staging::Sqlite(s) => Tx::Sqlite(s.begin().await?),
            Staging::SqlServer(p) => Tx::SqlServer(Box::new(mssql::MssqlTx::begin(p).await?)),
        })
    }
}

/// A staging write transaction: committed by [`Tx::commit`], rolled back when dropped.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    SqlServer(Box<mssql::MssqlTx>),
}

/// Forward a call inside the transaction.
macro_rules! forward_tx {
    ($self:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $self {
            Tx::Sqlite(t) => sqlite::$f(t, $($arg),*).await,
            Tx::SqlServer(t) => mssql::$f(t, $($arg),*).await,
        }
    };
}

impl Tx {
    pub async fn commit(self) -> Result<(), SyncError> {
        match self {
            Tx::Sqlite(t) => Ok(t.commit().await?),
            Tx::SqlServer(t) => t.commit().await,
        }
    }

    /// Take the tenant's lease unless someone else holds an unexpired one.
    pub async fn acquire_lease(
        &mut self,
        tenant: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<bool, SyncError> {
        forward_tx!(self, acquire_lease(tenant, holder, now, expires))
    }

    /// Extend the lease; `SyncError::LeaseLost` when it is no longer ours.
    pub async fn renew_lease(
        &mut self,
        tenant: &str,
        holder: &str,
        expires: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        forward_tx!(self, renew_lease(tenant, holder, expires))
    }

    pub async fn release_lease(&mut self, tenant: &str, holder: &str) -> Result<(), SyncError> {
        forward_tx!(self, release_lease(tenant, holder))
    }

    /// Note which run holds the lease (the admin API reports it).
    pub async fn lease_run(
        &mut self,
        tenant: &str,
        holder: &str,
        run_id: i64,
    ) -> Result<(), SyncError> {
        forward_tx!(self, lease_run(tenant, holder, run_id))
    }

    /// Runs of the tenant left `running` by a holder that stopped: they will never finish.
    pub async fn abandon_stale_runs(
        &mut self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        forward_tx!(self, abandon_stale_runs(tenant, now))
    }

    /// Retry rows of users that are no longer in staging.
    pub async fn drop_orphan_retries(&mut self, tenant: &str) -> Result<(), SyncError> {
        forward_tx!(self, drop_orphan_retries(tenant))
    }

    pub async fn insert_run(&mut self, run: &NewRun<'_>) -> Result<i64, SyncError> {
        forward_tx!(self, insert_run(run))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn update_run(
        &mut self,
        run_id: i64,
        status: RunStatus,
        counts: &Counts,
        watermark_to: Option<i64>,
        ended_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> Result<(), SyncError> {
        forward_tx!(
            self,
            update_run(run_id, status, counts, watermark_to, ended_at, error)
        )
    }

    /// Mark `run_id` approved by run `by`.
    pub async fn approve_run(
        &mut self,
        run_id: i64,
        at: DateTime<Utc>,
        by: i64,
    ) -> Result<(), SyncError> {
        forward_tx!(self, approve_run(run_id, at, by))
    }

    pub async fn insert_item(&mut self, run_id: i64, item: &ItemReport) -> Result<(), SyncError> {
        forward_tx!(self, insert_item(run_id, item))
    }

    /// Whether the user is still as read (no SCIM write since: a reactivation must not be
    /// purged). Locks the row on SQL Server until the transaction ends.
    pub async fn unchanged_since_read(
        &mut self,
        tenant: &str,
        row: &UserRow,
    ) -> Result<bool, SyncError> {
        forward_tx!(self, unchanged_since_read(tenant, row))
    }

    /// Whether another user of the tenant is linked to the same application row.
    pub async fn key_shared(
        &mut self,
        tenant: &str,
        user_id: &str,
        app_key: &str,
    ) -> Result<bool, SyncError> {
        forward_tx!(self, key_shared(tenant, user_id, app_key))
    }

    /// Queue an offboarding (unless one is queued for the user).
    pub async fn queue_offboarding(&mut self, q: &NewOffboarding<'_>) -> Result<(), SyncError> {
        forward_tx!(self, queue_offboarding(q))
    }

    /// Remove a user, its memberships and its retry row from staging (the groups it left get
    /// a new version).
    pub async fn purge_user(
        &mut self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        forward_tx!(self, purge_user(tenant, user_id, now))
    }

    pub async fn delete_link(&mut self, tenant: &str, user_id: &str) -> Result<(), SyncError> {
        forward_tx!(self, delete_link(tenant, user_id))
    }

    /// An offboarding was applied: forget it and the user's link.
    pub async fn offboarding_done(&mut self, tenant: &str, q: &Queued) -> Result<(), SyncError> {
        forward_tx!(self, offboarding_done(tenant, q))
    }

    pub async fn offboarding_failed(&mut self, id: i64, error: &str) -> Result<(), SyncError> {
        forward_tx!(self, offboarding_failed(id, error))
    }
}

/// An offboarding to queue.
pub struct NewOffboarding<'a> {
    pub tenant: &'a str,
    pub user_id: &'a str,
    pub user_name: &'a str,
    pub app_key: &'a str,
    pub action: &'a Value,
    pub roles: &'a BTreeSet<String>,
    pub run_id: i64,
    pub now: DateTime<Utc>,
}
