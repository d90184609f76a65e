//! The ledger reads on SQL Server staging (schema `sync.*`, users and groups in `scim.*`): the
//! same rows, filters, order and paging as SQLite's, with their T-SQL here.
//!
//! Times are DATETIME2(3) and come back as RFC 3339 text with milliseconds and Z, like the text
//! SQLite stores. A time bound in a comparison is cut to milliseconds first
//! ([`super::rows::at_ms`]). INT counters are read as BIGINT. Every value is bound (@P1…),
//! never formatted into the statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tiberius::{Query, Row};

use super::MssqlStaging;
use super::pool::MssqlPool;
use super::rows::{
    self, SqlError, at_ms, bit, first, int, opt_int, opt_text, opt_time, results, rows, text,
};
use crate::sync::SyncError;
use crate::sync::ledger::{
    FailingRow, ItemRow, LedgerReads, LinkRow, PendingRow, QueuedRow, RunQuery, RunRow, StagedRow,
    UserItem, UserRef, UserSyncRow, decode_item, decode_link, decode_pending, decode_staged,
    queued_action,
};

// ---- statements ---------------------------------------------------------------------------

/// A run's columns over `sync.runs r`, in [`RunRow`]'s field order.
const RUN_COLUMNS: &str = "r.id, r.tenant, r.[trigger], r.dry_run, r.[full], r.status, \
     r.started_at, r.ended_at, CAST(r.created AS BIGINT) AS created, \
     CAST(r.updated AS BIGINT) AS updated, CAST(r.unchanged AS BIGINT) AS unchanged, \
     CAST(r.roles_added AS BIGINT) AS roles_added, CAST(r.roles_removed AS BIGINT) AS roles_removed, \
     CAST(r.deactivated AS BIGINT) AS deactivated, CAST(r.offboarded AS BIGINT) AS offboarded, \
     CAST(r.failed AS BIGINT) AS failed, CAST(r.quarantined AS BIGINT) AS quarantined, \
     (SELECT COUNT_BIG(*) FROM sync.run_items i WHERE i.run_id = r.id AND i.outcome = N'offboarding_held') AS held, \
     r.watermark_from, r.watermark_to, r.error, r.approves_run, r.approved_at, r.approved_by";

/// Which of [`RunQuery`]'s filters are set: each set one is a parameter, numbered from @P1
/// in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunFilters {
    tenant: bool,
    status: bool,
    since: bool,
    until: bool,
}

impl RunFilters {
    fn of(q: &RunQuery) -> Self {
        RunFilters {
            tenant: q.tenant.is_some(),
            status: q.status.is_some(),
            since: q.since.is_some(),
            until: q.until.is_some(),
        }
    }

    /// The WHERE condition and how many parameters it takes.
    fn condition(self) -> (String, usize) {
        let mut cond = vec!["1 = 1".to_string()];
        let mut n = 0;
        for (set, test) in [
            (self.tenant, "r.tenant ="),
            (self.status, "r.status ="),
            (self.since, "r.started_at >="),
            (self.until, "r.started_at <"),
        ] {
            if set {
                n += 1;
                cond.push(format!("{test} @P{n}"));
            }
        }
        (cond.join(" AND "), n)
    }
}

/// How many runs match the filters.
fn count_runs(f: RunFilters) -> String {
    let (cond, _) = f.condition();
    format!("SELECT COUNT_BIG(*) FROM sync.runs r WHERE {cond}")
}

/// The matching runs, newest first, each ending with the number of matches (see
/// [`counted`]); after the filters' parameters: offset, then limit. The page's ids are
/// counted and cut first (narrow), then joined back for their
/// columns, so the count spools ids only and `held` is counted for the page alone.
fn runs_page(f: RunFilters) -> String {
    let (cond, n) = f.condition();
    format!(
        "SELECT {RUN_COLUMNS}, p.total FROM (SELECT r.id, COUNT_BIG(*) OVER () AS total \
         FROM sync.runs r WHERE {cond} ORDER BY r.id DESC \
         OFFSET @P{} ROWS FETCH NEXT @P{} ROWS ONLY) p \
         JOIN sync.runs r ON r.id = p.id ORDER BY r.id DESC",
        n + 1,
        n + 2
    )
}

/// @P1 id.
fn run_by_id() -> String {
    format!("SELECT {RUN_COLUMNS} FROM sync.runs r WHERE r.id = @P1")
}

/// @P1 tenant.
fn last_run_of() -> String {
    format!("SELECT TOP (1) {RUN_COLUMNS} FROM sync.runs r WHERE r.tenant = @P1 ORDER BY r.id DESC")
}

/// @P1 run id and, with `outcome`, @P2 the outcome.
fn items_condition(outcome: bool) -> &'static str {
    if outcome {
        "run_id = @P1 AND outcome = @P2"
    } else {
        "run_id = @P1"
    }
}

fn count_items(outcome: bool) -> String {
    format!(
        "SELECT COUNT_BIG(*) FROM sync.run_items WHERE {}",
        items_condition(outcome)
    )
}

/// The items in the order they were recorded, each ending with the number of matches (see
/// [`counted`]); after the condition's parameters: offset, then limit. Ids first, as for
/// runs: the JSON columns of a large run's items are read for the page only.
fn items_page(outcome: bool) -> String {
    let n = if outcome { 2 } else { 1 };
    format!(
        "SELECT i.id, i.user_id, i.user_name, i.app_key, i.outcome, i.changes, i.roles_added, \
         i.roles_removed, i.error, p.total FROM (SELECT id, COUNT_BIG(*) OVER () AS total \
         FROM sync.run_items WHERE {} ORDER BY id OFFSET @P{} ROWS FETCH NEXT @P{} ROWS ONLY) p \
         JOIN sync.run_items i ON i.id = p.id ORDER BY i.id",
        items_condition(outcome),
        n + 1,
        n + 2
    )
}

/// @P1 tenant, @P2 now.
const LEASE: &str = "SELECT run_id FROM sync.leases WHERE tenant = @P1 AND expires_at > @P2";

/// The column a [`UserRef`] is compared with.
fn staged_user_column(who: &UserRef<'_>) -> &'static str {
    match who {
        UserRef::Id(_) => "u.id",
        UserRef::UserName(_) => "u.user_name_ci",
        UserRef::ExternalId(_) => "u.external_id",
    }
}

/// One staged user with its groups (FOR JSON PATH objects, a NULL external_id left out): @P1
/// tenant, @P2 the value of `column` (the id, the lower-cased userName or the externalId). A
/// live user wins over a deleted one, then the newest.
fn staged_user_sql(column: &str) -> String {
    let cond = format!("{column} = @P2");
    format!(
        "SELECT TOP (1) u.id, u.user_name, u.doc, u.active, \
         CAST(CASE WHEN u.deleted_at IS NULL THEN 0 ELSE 1 END AS BIT) AS deleted, \
         ISNULL((SELECT g.id AS id, g.display_name AS display_name, g.external_id AS external_id \
         FROM scim.group_members m JOIN scim.groups g ON g.tenant = m.tenant AND g.id = m.group_id \
         WHERE m.tenant = u.tenant AND m.member_id = u.id FOR JSON PATH), N'[]') AS groups \
         FROM scim.users u WHERE u.tenant = @P1 AND {cond} \
         ORDER BY CASE WHEN u.deleted_at IS NULL THEN 0 ELSE 1 END, u.pk DESC"
    )
}

/// @P1 tenant, @P2 user id.
const LINK: &str = "SELECT app_key, applied_roles, fields, state, updated_at FROM sync.links \
     WHERE tenant = @P1 AND user_id = @P2";

/// Staged users with an application row whose retention clock runs (inactive or deleted), due
/// @P2 hours after the later of deactivated_at and deleted_at, then queued offboardings: @P1
/// tenant. Columns in [`PendingRow`]'s field order.
const PENDING: &str = "\
    SELECT CASE WHEN u.deleted_at IS NOT NULL THEN N'deleted' ELSE N'inactive' END AS state, \
           u.id AS user_id, u.user_name AS user_name, l.app_key AS app_key, \
           u.deactivated_at AS deactivated_at, u.deleted_at AS deleted_at, \
           DATEADD(hour, @P2, CASE WHEN u.deleted_at > u.deactivated_at THEN u.deleted_at \
           ELSE u.deactivated_at END) AS due_at, \
           CAST(NULL AS DATETIME2(3)) AS queued_at, CAST(0 AS BIGINT) AS attempts, \
           CAST(NULL AS NVARCHAR(MAX)) AS last_error \
    FROM scim.users u JOIN sync.links l ON l.tenant = u.tenant AND l.user_id = u.id \
    WHERE u.tenant = @P1 AND u.deactivated_at IS NOT NULL \
    UNION ALL \
    SELECT N'queued', o.user_id, o.user_name, o.app_key, NULL, NULL, o.queued_at, o.queued_at, \
           CAST(o.attempts AS BIGINT), o.last_error \
    FROM sync.offboarding o WHERE o.tenant = @P1";

/// Soonest due first, each ending with the number of matches (see [`counted`]): @P1 tenant,
/// @P2 retention hours, @P3 offset, @P4 limit.
fn pending_page() -> String {
    format!(
        "SELECT p.state, p.user_id, p.user_name, p.app_key, p.deactivated_at, p.deleted_at, \
         p.due_at, p.queued_at, p.attempts, p.last_error, COUNT_BIG(*) OVER () AS total \
         FROM ({PENDING}) p \
         ORDER BY p.due_at, p.user_id OFFSET @P3 ROWS FETCH NEXT @P4 ROWS ONLY"
    )
}

/// A retry row `x` with its user `u`, in [`FailingRow`]'s field order.
const FAILING_COLUMNS: &str = "x.user_id, u.user_name, CAST(x.attempts AS BIGINT) AS attempts, \
     x.last_error, x.first_failed_at, x.last_failed_at, x.quarantined_at, x.tenant";

/// Which failing users: of one tenant (@P1) or of all (@P1 bound, unused), quarantined only.
#[derive(Debug, Clone, Copy)]
struct FailingFilter {
    tenant: bool,
    quarantined_only: bool,
}

fn failing_condition(f: FailingFilter) -> String {
    let mut cond = vec![if f.tenant {
        "x.tenant = @P1"
    } else {
        "@P1 IS NULL"
    }];
    if f.quarantined_only {
        cond.push("x.quarantined_at IS NOT NULL");
    }
    cond.join(" AND ")
}

/// Failing users, longest failing first, with their userName while they are staged, each
/// ending with the number of matches (see [`counted`]): @P1 tenant, @P2 offset, @P3 limit.
fn failing_page(f: FailingFilter) -> String {
    format!(
        "SELECT {FAILING_COLUMNS}, COUNT_BIG(*) OVER () AS total \
         FROM sync.retry x LEFT JOIN scim.users u ON u.tenant = x.tenant AND u.id = x.user_id \
         WHERE {} ORDER BY x.first_failed_at, x.tenant, x.user_id \
         OFFSET @P2 ROWS FETCH NEXT @P3 ROWS ONLY",
        failing_condition(f)
    )
}

fn count_failing(f: FailingFilter) -> String {
    format!(
        "SELECT COUNT_BIG(*) FROM sync.retry x WHERE {}",
        failing_condition(f)
    )
}

/// One user's sync side, six result sets: its link, its retry row, its queued offboarding,
/// its staged lifecycle times, how many ledger items it has, and its newest @P3 items with
/// their runs. @P1 tenant, @P2 user id.
fn user_sync_sql() -> String {
    format!(
        "{LINK}; \
         SELECT {FAILING_COLUMNS} FROM sync.retry x \
         LEFT JOIN scim.users u ON u.tenant = x.tenant AND u.id = x.user_id \
         WHERE x.tenant = @P1 AND x.user_id = @P2; \
         SELECT app_key, action, queued_at, CAST(attempts AS BIGINT) AS attempts, last_error \
         FROM sync.offboarding WHERE tenant = @P1 AND user_id = @P2; \
         SELECT deactivated_at, deleted_at FROM scim.users WHERE tenant = @P1 AND id = @P2; \
         SELECT COUNT_BIG(*) FROM sync.run_items i JOIN sync.runs r ON r.id = i.run_id \
         WHERE i.user_id = @P2 AND r.tenant = @P1; \
         SELECT TOP (@P3) r.id, r.[trigger], r.dry_run, r.status, r.started_at, i.id, i.user_id, \
         i.user_name, i.app_key, i.outcome, i.changes, i.roles_added, i.roles_removed, i.error \
         FROM sync.run_items i JOIN sync.runs r ON r.id = i.run_id \
         WHERE i.user_id = @P2 AND r.tenant = @P1 ORDER BY i.id DESC"
    )
}

/// @P1 tenant, @P2 retention hours.
fn count_pending_sql() -> String {
    format!("SELECT COUNT_BIG(*) FROM ({PENDING}) p")
}

// ---- reading rows -------------------------------------------------------------------------

fn run_row(r: &Row) -> Result<RunRow, SqlError> {
    Ok(RunRow {
        id: int(r, 0)?,
        tenant: text(r, 1)?,
        trigger: text(r, 2)?,
        dry_run: bit(r, 3)?,
        full: bit(r, 4)?,
        status: text(r, 5)?,
        started_at: rows::time(r, 6)?,
        ended_at: opt_time(r, 7)?,
        created: int(r, 8)?,
        updated: int(r, 9)?,
        unchanged: int(r, 10)?,
        roles_added: int(r, 11)?,
        roles_removed: int(r, 12)?,
        deactivated: int(r, 13)?,
        offboarded: int(r, 14)?,
        failed: int(r, 15)?,
        quarantined: int(r, 16)?,
        held: int(r, 17)?,
        watermark_from: opt_int(r, 18)?,
        watermark_to: opt_int(r, 19)?,
        error: opt_text(r, 20)?,
        approves_run: opt_int(r, 21)?,
        approved_at: opt_time(r, 22)?,
        approved_by: opt_int(r, 23)?,
    })
}

/// The one BIGINT of a COUNT_BIG(*).
async fn count(pool: &MssqlPool, q: Query<'_>) -> Result<i64, SqlError> {
    let mut c = pool.get().await?;
    match first(&mut c, q).await? {
        Some(row) => int(&row, 0),
        None => Ok(0),
    }
}

/// A page whose rows end with the number of matches (`COUNT_BIG(*) OVER ()`), and that
/// number: the count and the page come from one statement, so they agree (on SQLite, one read
/// transaction does that; a second statement here would read after the first under READ
/// COMMITTED, and SNAPSHOT isolation is a database setting this service does not require). A
/// page past the end has no row to carry the count: then `count_query` is asked (at offset 0
/// there is nothing to count).
async fn counted<T>(
    pool: &MssqlPool,
    page: Query<'_>,
    offset: i64,
    count_query: impl FnOnce() -> Query<'static>,
    read: impl Fn(&Row) -> Result<T, SqlError>,
) -> Result<(i64, Vec<T>), SqlError> {
    let found = {
        let mut c = pool.get().await?;
        rows(&mut c, page).await?
    };
    let Some(row) = found.first() else {
        let total = if offset > 0 {
            count(pool, count_query()).await?
        } else {
            0
        };
        return Ok((total, Vec::new()));
    };
    let total = int(row, row.len().saturating_sub(1))?;
    let items = found.iter().map(read).collect::<Result<_, _>>()?;
    Ok((total, items))
}

async fn one_run(pool: &MssqlPool, q: Query<'_>) -> Result<Option<RunRow>, SqlError> {
    let mut c = pool.get().await?;
    first(&mut c, q).await?.as_ref().map(run_row).transpose()
}

/// DATEADD takes an INT; a retention beyond it is beyond DATETIME2 too, and fails there.
fn retention(hours: u32) -> i32 {
    i32::try_from(hours).unwrap_or(i32::MAX)
}

fn count_pending_query(tenant: &str, retention_hours: u32) -> Query<'static> {
    let mut q = Query::new(count_pending_sql());
    q.bind(tenant.to_string());
    q.bind(retention(retention_hours));
    q
}

// ---- the reads ----------------------------------------------------------------------------

#[async_trait]
impl LedgerReads for MssqlStaging {
    async fn runs(&self, q: &RunQuery) -> Result<(i64, Vec<RunRow>), SyncError> {
        let f = RunFilters::of(q);
        let bind = |query: &mut Query<'_>| {
            if let Some(t) = &q.tenant {
                query.bind(t.clone());
            }
            if let Some(s) = &q.status {
                query.bind(s.clone());
            }
            if let Some(t) = q.since {
                query.bind(at_ms(t));
            }
            if let Some(t) = q.until {
                query.bind(at_ms(t));
            }
        };
        let mut page = Query::new(runs_page(f));
        bind(&mut page);
        page.bind(q.offset);
        page.bind(q.limit);
        let count_query = || {
            let mut total = Query::new(count_runs(f));
            bind(&mut total);
            total
        };
        Ok(counted(&self.pool, page, q.offset, count_query, run_row).await?)
    }

    async fn run(&self, id: i64) -> Result<Option<RunRow>, SyncError> {
        let mut q = Query::new(run_by_id());
        q.bind(id);
        Ok(one_run(&self.pool, q).await?)
    }

    async fn last_run(&self, tenant: &str) -> Result<Option<RunRow>, SyncError> {
        let mut q = Query::new(last_run_of());
        q.bind(tenant.to_string());
        Ok(one_run(&self.pool, q).await?)
    }

    async fn items(
        &self,
        run_id: i64,
        outcome: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<ItemRow>), SyncError> {
        let bind = |q: &mut Query<'_>| {
            q.bind(run_id);
            if let Some(o) = outcome {
                q.bind(o.to_string());
            }
        };
        let mut page = Query::new(items_page(outcome.is_some()));
        bind(&mut page);
        page.bind(offset);
        page.bind(limit);
        let count_query = || {
            let mut total = Query::new(count_items(outcome.is_some()));
            bind(&mut total);
            total
        };
        let read = |r: &Row| {
            Ok::<_, SqlError>(decode_item((
                int(r, 0)?,
                text(r, 1)?,
                opt_text(r, 2)?,
                opt_text(r, 3)?,
                text(r, 4)?,
                opt_text(r, 5)?,
                opt_text(r, 6)?,
                opt_text(r, 7)?,
                opt_text(r, 8)?,
            )))
        };
        Ok(counted(&self.pool, page, offset, count_query, read).await?)
    }

    async fn lease(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<i64>>, SyncError> {
        let mut q = Query::new(LEASE);
        q.bind(tenant.to_string());
        q.bind(at_ms(now));
        let mut c = self.pool.get().await?;
        Ok(first(&mut c, q)
            .await?
            .map(|r| opt_int(&r, 0))
            .transpose()?)
    }

    async fn staged_user(
        &self,
        tenant: &str,
        who: UserRef<'_>,
    ) -> Result<Option<StagedRow>, SyncError> {
        let mut q = Query::new(staged_user_sql(staged_user_column(&who)));
        q.bind(tenant.to_string());
        q.bind(who.key());
        let mut c = self.pool.get().await?;
        let Some(r) = first(&mut c, q).await? else {
            return Ok(None);
        };
        Ok(decode_staged((
            text(&r, 0)?,
            text(&r, 1)?,
            text(&r, 2)?,
            bit(&r, 3)?,
            bit(&r, 4)?,
            opt_text(&r, 5)?,
        )))
    }

    async fn link(&self, tenant: &str, user_id: &str) -> Result<Option<LinkRow>, SyncError> {
        let mut q = Query::new(LINK);
        q.bind(tenant.to_string());
        q.bind(user_id.to_string());
        let mut c = self.pool.get().await?;
        Ok(first(&mut c, q).await?.as_ref().map(link_row).transpose()?)
    }

    async fn pending_offboardings(
        &self,
        tenant: &str,
        retention_hours: u32,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<PendingRow>), SyncError> {
        let mut q = Query::new(pending_page());
        q.bind(tenant.to_string());
        q.bind(retention(retention_hours));
        q.bind(offset);
        q.bind(limit);
        let count_query = || count_pending_query(tenant, retention_hours);
        let read = |r: &Row| {
            Ok::<_, SqlError>(decode_pending((
                text(r, 0)?,
                text(r, 1)?,
                opt_text(r, 2)?,
                text(r, 3)?,
                opt_time(r, 4)?,
                opt_time(r, 5)?,
                rows::time(r, 6)?,
                opt_time(r, 7)?,
                int(r, 8)?,
                opt_text(r, 9)?,
            )))
        };
        Ok(counted(&self.pool, q, offset, count_query, read).await?)
    }

    async fn count_pending(&self, tenant: &str, retention_hours: u32) -> Result<i64, SyncError> {
        Ok(count(&self.pool, count_pending_query(tenant, retention_hours)).await?)
    }

    async fn failing(
        &self,
        tenant: Option<&str>,
        quarantined_only: bool,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<FailingRow>), SyncError> {
        let f = FailingFilter {
            tenant: tenant.is_some(),
            quarantined_only,
        };
        let tenant = tenant.map(str::to_string);
        let mut q = Query::new(failing_page(f));
        q.bind(tenant.clone());
        q.bind(offset);
        q.bind(limit);
        let count_query = || {
            let mut q = Query::new(count_failing(f));
            q.bind(tenant);
            q
        };
        Ok(counted(&self.pool, q, offset, count_query, failing_row).await?)
    }

    /// One batch of six statements (under READ COMMITTED each sees the latest commit; an
    /// admin's view of one user, not a snapshot the engine relies on).
    async fn user_sync(
        &self,
        tenant: &str,
        user_id: &str,
        limit: i64,
    ) -> Result<UserSyncRow, SyncError> {
        let mut q = Query::new(user_sync_sql());
        q.bind(tenant.to_string());
        q.bind(user_id.to_string());
        q.bind(limit.max(0));
        let mut c = self.pool.get().await?;
        let sets = results(&mut c, q).await?;
        let set = |i: usize| sets.get(i).map(Vec::as_slice).unwrap_or_default();
        let first_of = |i: usize| set(i).first();
        let queued = first_of(2)
            .map(|r| {
                Ok::<_, SqlError>(QueuedRow {
                    app_key: text(r, 0)?,
                    action: queued_action(&text(r, 1)?),
                    queued_at: rows::time(r, 2)?,
                    attempts: int(r, 3)?,
                    last_error: opt_text(r, 4)?,
                })
            })
            .transpose()?;
        let (deactivated_at, deleted_at) = match first_of(3) {
            Some(r) => (opt_time(r, 0)?, opt_time(r, 1)?),
            None => (None, None),
        };
        let items = set(5)
            .iter()
            .map(|r| {
                Ok::<_, SqlError>(UserItem {
                    run_id: int(r, 0)?,
                    trigger: text(r, 1)?,
                    dry_run: bit(r, 2)?,
                    run_status: text(r, 3)?,
                    started_at: rows::time(r, 4)?,
                    item: decode_item((
                        int(r, 5)?,
                        text(r, 6)?,
                        opt_text(r, 7)?,
                        opt_text(r, 8)?,
                        text(r, 9)?,
                        opt_text(r, 10)?,
                        opt_text(r, 11)?,
                        opt_text(r, 12)?,
                        opt_text(r, 13)?,
                    )),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UserSyncRow {
            link: first_of(0).map(link_row).transpose()?,
            failing: first_of(1).map(failing_row).transpose()?,
            queued,
            deactivated_at,
            deleted_at,
            items_total: first_of(4).map(|r| int(r, 0)).transpose()?.unwrap_or(0),
            items,
        })
    }
}

fn link_row(r: &Row) -> Result<LinkRow, SqlError> {
    Ok(decode_link((
        text(r, 0)?,
        text(r, 1)?,
        text(r, 2)?,
        text(r, 3)?,
        rows::time(r, 4)?,
    )))
}

fn failing_row(r: &Row) -> Result<FailingRow, SqlError> {
    Ok(FailingRow {
        user_id: text(r, 0)?,
        user_name: opt_text(r, 1)?,
        attempts: int(r, 2)?,
        last_error: text(r, 3)?,
        first_failed_at: rows::time(r, 4)?,
        last_failed_at: rows::time(r, 5)?,
        quarantined_at: opt_time(r, 6)?,
        tenant: text(r, 7)?,
    })
}

/// Every statement the ledger can issue, each variant of the dynamic ones.
#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![
        ("run_by_id".into(), run_by_id()),
        ("last_run_of".into(), last_run_of()),
        ("LEASE".into(), LEASE.into()),
        ("LINK".into(), LINK.into()),
        ("pending_page".into(), pending_page()),
        ("count_pending_sql".into(), count_pending_sql()),
        ("user_sync_sql".into(), user_sync_sql()),
    ];
    for f in tests::all_filters() {
        out.push((format!("count_runs({f:?})"), count_runs(f)));
        out.push((format!("runs_page({f:?})"), runs_page(f)));
    }
    for o in [false, true] {
        out.push((format!("count_items({o})"), count_items(o)));
        out.push((format!("items_page({o})"), items_page(o)));
    }
    for tenant in [false, true] {
        for quarantined_only in [false, true] {
            let f = FailingFilter {
                tenant,
                quarantined_only,
            };
            out.push((format!("failing_page({f:?})"), failing_page(f)));
            out.push((format!("count_failing({f:?})"), count_failing(f)));
        }
    }
    for who in [
        UserRef::Id(""),
        UserRef::UserName(""),
        UserRef::ExternalId(""),
    ] {
        let column = staged_user_column(&who);
        out.push((
            format!("staged_user_sql({column})"),
            staged_user_sql(column),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn all_filters() -> Vec<RunFilters> {
        let mut out = vec![];
        for bits in 0..16u8 {
            out.push(RunFilters {
                tenant: bits & 1 != 0,
                status: bits & 2 != 0,
                since: bits & 4 != 0,
                until: bits & 8 != 0,
            });
        }
        out
    }

    /// 7 fixed statements, 16 filter combinations of two, 2 pairs of variants, 4 failing
    /// pairs, 3 look-ups.
    #[test]
    fn every_ledger_statement_is_collected() {
        assert_eq!(statements().len(), 7 + 32 + 4 + 8 + 3);
    }

    #[test]
    fn run_filters_number_their_parameters_in_order_then_page() {
        let f = RunFilters {
            tenant: true,
            status: false,
            since: true,
            until: true,
        };
        assert_eq!(
            count_runs(f),
            "SELECT COUNT_BIG(*) FROM sync.runs r WHERE 1 = 1 AND r.tenant = @P1 \
             AND r.started_at >= @P2 AND r.started_at < @P3"
        );
        assert_eq!(
            runs_page(f),
            format!(
                "SELECT {RUN_COLUMNS}, p.total FROM (SELECT r.id, COUNT_BIG(*) OVER () AS total \
                 FROM sync.runs r WHERE 1 = 1 AND r.tenant = @P1 \
                 AND r.started_at >= @P2 AND r.started_at < @P3 ORDER BY r.id DESC \
                 OFFSET @P4 ROWS FETCH NEXT @P5 ROWS ONLY) p \
                 JOIN sync.runs r ON r.id = p.id ORDER BY r.id DESC"
            )
        );
        let none = RunFilters::of(&RunQuery::default());
        assert_eq!(
            count_runs(none),
            "SELECT COUNT_BIG(*) FROM sync.runs r WHERE 1 = 1"
        );
        assert!(runs_page(none).contains("OFFSET @P1 ROWS FETCH NEXT @P2 ROWS ONLY) p"));
        // Every variant numbers its page parameters right after its filters.
        for f in all_filters() {
            let n = [f.tenant, f.status, f.since, f.until]
                .iter()
                .filter(|b| **b)
                .count();
            let page = runs_page(f);
            let last_filter = if n == 0 {
                "WHERE 1 = 1 ORDER BY".to_string()
            } else {
                format!("@P{n} ORDER BY")
            };
            assert!(page.contains(&last_filter), "{page}");
            assert!(
                page.contains(&format!(
                    "OFFSET @P{} ROWS FETCH NEXT @P{} ROWS ONLY) p",
                    n + 1,
                    n + 2
                )),
                "{page}"
            );
            assert!(!page.contains(&format!("@P{}", n + 3)), "{page}");
        }
    }

    #[test]
    fn items_page_after_the_outcome() {
        assert!(
            items_page(false)
                .contains("WHERE run_id = @P1 ORDER BY id OFFSET @P2 ROWS FETCH NEXT @P3")
        );
        assert!(items_page(true).contains(
            "WHERE run_id = @P1 AND outcome = @P2 ORDER BY id OFFSET @P3 ROWS FETCH NEXT @P4"
        ));
    }

    #[test]
    fn retention_beyond_int_saturates() {
        assert_eq!(retention(720), 720);
        assert_eq!(retention(u32::MAX), i32::MAX);
    }
}
