//! The engine's statements on SQLite staging: reads and short transactions through sqlx, the
//! change pass's batches (read, record) on the engine's own rusqlite connections, on blocking
//! threads: one hand-over per batch instead of one per statement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::{
    Link, Mark, NewOffboarding, NewRun, Queued, Read, Record, RunState, UserRow, item_json,
};
use crate::store::{SqliteStore, format_time};
use crate::sync::{Counts, ItemReport, RunStatus, SyncError};

/// A connection of the engine's own, used from blocking threads.
type SharedConn = Arc<Mutex<rusqlite::Connection>>;

/// The staging store and the engine's two connections: one records batches while the other
/// reads the next.
#[derive(Clone)]
pub struct SqliteState {
    store: SqliteStore,
    conn: SharedConn,
    read_conn: SharedConn,
}

impl SqliteState {
    pub fn open(store: &SqliteStore) -> Result<SqliteState, SyncError> {
        Ok(SqliteState {
            store: store.clone(),
            conn: Arc::new(Mutex::new(store.connect()?)),
            read_conn: Arc::new(Mutex::new(store.connect()?)),
        })
    }

    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, SyncError> {
        Ok(self.store.writer().begin_with("BEGIN IMMEDIATE").await?)
    }

    fn reader(&self) -> &sqlx::SqlitePool {
        self.store.reader()
    }
}

fn lock(conn: &SharedConn) -> Result<std::sync::MutexGuard<'_, rusqlite::Connection>, SyncError> {
    conn.lock()
        .map_err(|_| SyncError::Task("the staging connection's lock is poisoned".into()))
}

type RawUser = (i64, String, String, String, bool, bool, i64, Option<String>);

fn user_row(r: RawUser) -> UserRow {
    UserRow {
        pk: r.0,
        id: r.1,
        user_name: r.2,
        doc: r.3,
        active: r.4,
        deleted: r.5,
        change_seq: r.6,
        groups: r.7,
    }
}

/// The columns of a UserRow over `users u`, groups included in the same statement.
const USER_COLUMNS: &str = "u.pk, u.id, u.user_name, u.doc, u.active, u.deleted_at IS NOT NULL, u.change_seq, \
     (SELECT json_group_array(json_array(g.id, g.display_name, g.external_id)) \
      FROM group_members m JOIN groups g ON g.tenant = m.tenant AND g.id = m.group_id \
      WHERE m.tenant = u.tenant AND m.member_id = u.id)";

// Statements the async (sqlx) and the blocking (rusqlite) paths share.
const INSERT_ITEM: &str = "INSERT INTO sync_run_items (run_id, user_id, user_name, app_key, outcome, changes, \
    roles_added, roles_removed, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

const UPSERT_LINK: &str = "INSERT INTO sync_links (tenant, user_id, app_key, fingerprint, applied_roles, fields, state, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO UPDATE SET \
    app_key = excluded.app_key, fingerprint = excluded.fingerprint, applied_roles = excluded.applied_roles, \
    fields = excluded.fields, state = excluded.state, updated_at = excluded.updated_at";

const ADD_RETRY: &str = "INSERT INTO sync_retry (tenant, user_id, attempts, last_error, first_failed_at, last_failed_at) \
    VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (tenant, user_id) DO UPDATE SET \
    attempts = sync_retry.attempts + 1, last_error = excluded.last_error, last_failed_at = excluded.last_failed_at";

const CLEAR_RETRIES: &str =
    "DELETE FROM sync_retry WHERE tenant = ? AND user_id IN (SELECT value FROM json_each(?))";

const ADVANCE_WATERMARK: &str = "INSERT INTO sync_watermarks (tenant, change_seq, last_pk, updated_at) VALUES (?, ?, ?, ?) \
    ON CONFLICT (tenant) DO UPDATE SET change_seq = excluded.change_seq, last_pk = excluded.last_pk, \
    updated_at = excluded.updated_at \
    WHERE (excluded.change_seq, excluded.last_pk) > (sync_watermarks.change_seq, sync_watermarks.last_pk)";

const RENEW_LEASE: &str = "UPDATE sync_leases SET expires_at = ? WHERE tenant = ? AND holder = ?";

const UPDATE_RUN: &str = "UPDATE sync_runs SET status = ?, ended_at = ?, created = ?, updated = ?, unchanged = ?, \
    roles_added = ?, roles_removed = ?, deactivated = ?, offboarded = ?, failed = ?, \
    watermark_to = ?, error = ? WHERE id = ?";

pub const LINKS: &str = "SELECT user_id, app_key, fingerprint, applied_roles, fields, state FROM sync_links \
    WHERE tenant = ? AND user_id IN (SELECT value FROM json_each(?))";

/// How many users a run from `after` to `high` reads (for progress).
pub async fn count_changed(
    s: &SqliteState,
    tenant: &str,
    after: Mark,
    high: i64,
) -> Result<i64, SyncError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM users u WHERE u.tenant = ? AND (u.change_seq, u.pk) > (?, ?) AND u.change_seq <= ?",
    )
    .bind(tenant)
    .bind(after.seq)
    .bind(after.pk)
    .bind(high)
    .fetch_one(s.reader())
    .await?)
}

/// The condition for a user whose retention has ended: inactive since before `cutoff` and,
/// when deleted, deleted before `cutoff` (binds: tenant, cutoff, cutoff).
const DUE: &str = "u.tenant = ? AND u.deactivated_at IS NOT NULL AND u.deactivated_at <= ? \
     AND (u.deleted_at IS NULL OR u.deleted_at <= ?)";

pub async fn count_due(
    s: &SqliteState,
    tenant: &str,
    cutoff: DateTime<Utc>,
    held_in: Option<i64>,
) -> Result<i64, SyncError> {
    let c = format_time(cutoff);
    let (join, sql_held) = held_join(held_in);
    let sql = format!("SELECT count(*) FROM users u{join} WHERE {DUE}{sql_held}");
    let mut q = sqlx::query_scalar(&sql);
    if let Some(run) = held_in {
        q = q.bind(run);
    }
    Ok(q.bind(tenant)
        .bind(&c)
        .bind(&c)
        .fetch_one(s.reader())
        .await?)
}

fn held_join(held_in: Option<i64>) -> (&'static str, &'static str) {
    match held_in {
        None => ("", ""),
        Some(_) => (
            " JOIN sync_run_items i ON i.run_id = ? AND i.user_id = u.id",
            " AND i.outcome = 'offboarding_held'",
        ),
    }
}

/// Users whose retention has ended, by pk; with `held_in`, only those a run held for approval.
pub async fn due_users(
    s: &SqliteState,
    tenant: &str,
    cutoff: DateTime<Utc>,
    held_in: Option<i64>,
    after_pk: i64,
    limit: u32,
) -> Result<Vec<UserRow>, SyncError> {
    let c = format_time(cutoff);
    let (join, sql_held) = held_join(held_in);
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users u{join} WHERE {DUE}{sql_held} AND u.pk > ? ORDER BY u.pk LIMIT ?"
    );
    let mut q = sqlx::query_as::<_, RawUser>(&sql);
    if let Some(run) = held_in {
        q = q.bind(run);
    }
    let rows = q
        .bind(tenant)
        .bind(&c)
        .bind(&c)
        .bind(after_pk)
        .bind(limit)
        .fetch_all(s.reader())
        .await?;
    Ok(rows.into_iter().map(user_row).collect())
}

type RawLink = (String, String, String, String, String, String);

/// The links of `ids` (one statement).
pub async fn links(
    s: &SqliteState,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, Link>, SyncError> {
    let ids = serde_json::to_string(ids)?;
    let rows: Vec<RawLink> = sqlx::query_as(LINKS)
        .bind(tenant)
        .bind(ids)
        .fetch_all(s.reader())
        .await?;
    rows.into_iter()
        .map(|(id, app_key, fingerprint, roles, fields, state)| {
            Ok((
                id,
                Link::parse(app_key, fingerprint, &roles, &fields, state)?,
            ))
        })
        .collect()
}

pub async fn count_links(s: &SqliteState, tenant: &str) -> Result<i64, SyncError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM sync_links WHERE tenant = ?")
            .bind(tenant)
            .fetch_one(s.reader())
            .await?,
    )
}

pub async fn watermark(s: &SqliteState, tenant: &str) -> Result<Mark, SyncError> {
    let m: Option<(i64, i64)> =
        sqlx::query_as("SELECT change_seq, last_pk FROM sync_watermarks WHERE tenant = ?")
            .bind(tenant)
            .fetch_optional(s.reader())
            .await?;
    Ok(m.map(|(seq, pk)| Mark { seq, pk }).unwrap_or_default())
}

/// SQLite has one writer at a time: every committed write is below the counter.
pub async fn high_seq(s: &SqliteState) -> Result<i64, SyncError> {
    Ok(
        sqlx::query_scalar("SELECT value FROM change_seq WHERE id = 1")
            .fetch_one(s.reader())
            .await?,
    )
}

pub async fn queued(
    s: &SqliteState,
    tenant: &str,
    after_id: i64,
    limit: u32,
) -> Result<Vec<Queued>, SyncError> {
    let rows: Vec<(i64, String, Option<String>, String, String, String)> = sqlx::query_as(
        "SELECT id, user_id, user_name, app_key, action, roles FROM sync_offboarding \
         WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
    )
    .bind(tenant)
    .bind(after_id)
    .bind(limit)
    .fetch_all(s.reader())
    .await?;
    rows.into_iter()
        .map(|(id, user_id, user_name, app_key, action, roles)| {
            Ok(Queued {
                id,
                user_id,
                user_name,
                app_key,
                action: serde_json::from_str(&action)?,
                roles: serde_json::from_str(&roles)?,
            })
        })
        .collect()
}

pub async fn run_state(s: &SqliteState, run_id: i64) -> Result<Option<RunState>, SyncError> {
    let row: Option<(String, String, bool, Option<String>)> =
        sqlx::query_as("SELECT tenant, status, dry_run, approved_at FROM sync_runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(s.reader())
            .await?;
    Ok(row.map(|(tenant, status, dry_run, approved_at)| RunState {
        tenant,
        status,
        dry_run,
        approved: approved_at.is_some(),
    }))
}

/// One batch of users and their links, read on the engine's read connection, then handed to
/// `then` on the same blocking thread (with the connection free for the next read).
pub async fn read_batch<R, F>(
    s: &SqliteState,
    tenant: &str,
    read: Read,
    limit: u32,
    then: F,
) -> Result<R, SyncError>
where
    R: Send + 'static,
    F: FnOnce(Vec<UserRow>, HashMap<String, Link>) -> Result<R, SyncError> + Send + 'static,
{
    let conn = s.read_conn.clone();
    let tenant = tenant.to_string();
    tokio::task::spawn_blocking(move || {
        let (rows, links) = {
            let c = lock(&conn)?;
            let rows = match read {
                Read::Retry {
                    watermark,
                    after_pk,
                } => blocking::retry_users(&c, &tenant, watermark, after_pk, limit)?,
                Read::Changed { after, high } => {
                    blocking::changed_users(&c, &tenant, after, high, limit)?
                }
            };
            let links = blocking::links(&c, &tenant, &rows)?;
            (rows, links)
        };
        then(rows, links)
    })
    .await
    .map_err(|e| SyncError::Task(e.to_string()))?
}

/// Record a batch on the engine's write connection, in one transaction, on a blocking thread.
pub async fn record(s: &SqliteState, r: Record) -> Result<(), SyncError> {
    let conn = s.conn.clone();
    tokio::task::spawn_blocking(move || blocking::record(&mut *lock(&conn)?, &r))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
}

// ---- lease ----------------------------------------------------------------------------

/// Take the tenant's lease unless someone else holds an unexpired one.
pub async fn acquire_lease(
    c: &mut SqliteConnection,
    tenant: &str,
    holder: &str,
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
) -> Result<bool, SyncError> {
    let r = sqlx::query(
        "INSERT INTO sync_leases (tenant, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (tenant) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, \
         expires_at = excluded.expires_at, run_id = NULL WHERE sync_leases.expires_at <= ?",
    )
    .bind(tenant)
    .bind(holder)
    .bind(format_time(now))
    .bind(format_time(expires))
    .bind(format_time(now))
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Extend the lease; an error when it is no longer ours (it expired and was taken over).
pub async fn renew_lease(
    c: &mut SqliteConnection,
    tenant: &str,
    holder: &str,
    expires: DateTime<Utc>,
) -> Result<(), SyncError> {
    let r = sqlx::query(RENEW_LEASE)
        .bind(format_time(expires))
        .bind(tenant)
        .bind(holder)
        .execute(&mut *c)
        .await?;
    if r.rows_affected() == 0 {
        return Err(SyncError::LeaseLost);
    }
    Ok(())
}

pub async fn release_lease(
    c: &mut SqliteConnection,
    tenant: &str,
    holder: &str,
) -> Result<(), SyncError> {
    sqlx::query("DELETE FROM sync_leases WHERE tenant = ? AND holder = ?")
        .bind(tenant)
        .bind(holder)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn lease_run(
    c: &mut SqliteConnection,
    tenant: &str,
    holder: &str,
    run_id: i64,
) -> Result<(), SyncError> {
    sqlx::query("UPDATE sync_leases SET run_id = ? WHERE tenant = ? AND holder = ?")
        .bind(run_id)
        .bind(tenant)
        .bind(holder)
        .execute(&mut *c)
        .await?;
    Ok(())
}

// ---- ledger ---------------------------------------------------------------------------

pub async fn insert_run(c: &mut SqliteConnection, r: &NewRun<'_>) -> Result<i64, SyncError> {
    let ended = (r.status != RunStatus::Running).then(|| format_time(r.started_at));
    Ok(sqlx::query_scalar(
        "INSERT INTO sync_runs (tenant, trigger, dry_run, full, status, started_at, ended_at, \
         watermark_from, approves_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(r.tenant)
    .bind(r.trigger)
    .bind(r.dry_run)
    .bind(r.full)
    .bind(r.status.as_str())
    .bind(format_time(r.started_at))
    .bind(ended)
    .bind(r.watermark_from)
    .bind(r.approves_run)
    .fetch_one(&mut *c)
    .await?)
}

pub async fn abandon_stale_runs(
    c: &mut SqliteConnection,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    sqlx::query(
        "UPDATE sync_runs SET status = 'failed', ended_at = ?, \
         error = 'abandoned: the process running it stopped before it finished' \
         WHERE tenant = ? AND status = 'running' AND dry_run = 0",
    )
    .bind(format_time(now))
    .bind(tenant)
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub async fn update_run(
    c: &mut SqliteConnection,
    run_id: i64,
    status: RunStatus,
    counts: &Counts,
    watermark_to: Option<i64>,
    ended_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), SyncError> {
    sqlx::query(UPDATE_RUN)
        .bind(status.as_str())
        .bind(ended_at.map(format_time))
        .bind(counts.created as i64)
        .bind(counts.updated as i64)
        .bind(counts.unchanged as i64)
        .bind(counts.roles_added as i64)
        .bind(counts.roles_removed as i64)
        .bind(counts.deactivated as i64)
        .bind(counts.offboarded as i64)
        .bind(counts.failed as i64)
        .bind(watermark_to)
        .bind(error)
        .bind(run_id)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn approve_run(
    c: &mut SqliteConnection,
    run_id: i64,
    at: DateTime<Utc>,
    by: i64,
) -> Result<(), SyncError> {
    sqlx::query("UPDATE sync_runs SET approved_at = ?, approved_by = ? WHERE id = ?")
        .bind(format_time(at))
        .bind(by)
        .bind(run_id)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn insert_item(
    c: &mut SqliteConnection,
    run_id: i64,
    item: &ItemReport,
) -> Result<(), SyncError> {
    let j = item_json(item)?;
    sqlx::query(INSERT_ITEM)
        .bind(run_id)
        .bind(&item.user_id)
        .bind(&item.user_name)
        .bind(&item.app_key)
        .bind(item.outcome.as_str())
        .bind(j.changes)
        .bind(j.roles_added)
        .bind(j.roles_removed)
        .bind(&item.error)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// One index look-up per retry row (a `NOT IN (SELECT id …)` would list every user of the
/// tenant).
pub async fn drop_orphan_retries(c: &mut SqliteConnection, tenant: &str) -> Result<(), SyncError> {
    sqlx::query(
        "DELETE FROM sync_retry WHERE tenant = ?1 AND NOT EXISTS \
         (SELECT 1 FROM users u WHERE u.tenant = ?1 AND u.id = sync_retry.user_id)",
    )
    .bind(tenant)
    .execute(&mut *c)
    .await?;
    Ok(())
}

// ---- lifecycle ------------------------------------------------------------------------

pub async fn unchanged_since_read(
    c: &mut SqliteConnection,
    tenant: &str,
    row: &UserRow,
) -> Result<bool, SyncError> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT change_seq FROM users WHERE tenant = ? AND id = ?")
            .bind(tenant)
            .bind(&row.id)
            .fetch_optional(&mut *c)
            .await?;
    Ok(seq == Some(row.change_seq))
}

pub async fn purge_user(
    c: &mut SqliteConnection,
    tenant: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    let in_groups: i64 =
        sqlx::query_scalar("SELECT count(*) FROM group_members WHERE tenant = ? AND member_id = ?")
            .bind(tenant)
            .bind(user_id)
            .fetch_one(&mut *c)
            .await?;
    if in_groups > 0 {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE change_seq SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .fetch_one(&mut *c)
        .await?;
        sqlx::query(
            "UPDATE groups SET change_seq = ?, last_modified = ? WHERE tenant = ? AND id IN \
             (SELECT group_id FROM group_members WHERE tenant = ? AND member_id = ?)",
        )
        .bind(seq)
        .bind(format_time(now))
        .bind(tenant)
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *c)
        .await?;
        sqlx::query("DELETE FROM group_members WHERE tenant = ? AND member_id = ?")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *c)
            .await?;
    }
    // user_emails go with the row (ON DELETE CASCADE).
    sqlx::query("DELETE FROM users WHERE tenant = ? AND id = ?")
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM sync_retry WHERE tenant = ? AND user_id = ?")
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn key_shared(
    c: &mut SqliteConnection,
    tenant: &str,
    user_id: &str,
    app_key: &str,
) -> Result<bool, SyncError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_links WHERE tenant = ? AND app_key = ? AND user_id <> ?",
    )
    .bind(tenant)
    .bind(app_key)
    .bind(user_id)
    .fetch_one(&mut *c)
    .await?;
    Ok(n > 0)
}

pub async fn delete_link(
    c: &mut SqliteConnection,
    tenant: &str,
    user_id: &str,
) -> Result<(), SyncError> {
    sqlx::query("DELETE FROM sync_links WHERE tenant = ? AND user_id = ?")
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn queue_offboarding(
    c: &mut SqliteConnection,
    q: &NewOffboarding<'_>,
) -> Result<(), SyncError> {
    sqlx::query(
        "INSERT INTO sync_offboarding (tenant, user_id, user_name, app_key, action, roles, queued_at, run_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO NOTHING",
    )
    .bind(q.tenant)
    .bind(q.user_id)
    .bind(q.user_name)
    .bind(q.app_key)
    .bind(serde_json::to_string(q.action)?)
    .bind(serde_json::to_string(q.roles)?)
    .bind(format_time(q.now))
    .bind(q.run_id)
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub async fn offboarding_done(
    c: &mut SqliteConnection,
    tenant: &str,
    q: &Queued,
) -> Result<(), SyncError> {
    sqlx::query("DELETE FROM sync_offboarding WHERE id = ?")
        .bind(q.id)
        .execute(&mut *c)
        .await?;
    delete_link(c, tenant, &q.user_id).await
}

pub async fn offboarding_failed(
    c: &mut SqliteConnection,
    id: i64,
    error: &str,
) -> Result<(), SyncError> {
    sqlx::query("UPDATE sync_offboarding SET attempts = attempts + 1, last_error = ? WHERE id = ?")
        .bind(error)
        .bind(id)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The change pass's statements on the engine's own connections, run synchronously.
pub mod blocking {
    use rusqlite::{Connection, params};

    use super::*;

    fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
        Ok(UserRow {
            pk: r.get(0)?,
            id: r.get(1)?,
            user_name: r.get(2)?,
            doc: r.get(3)?,
            active: r.get(4)?,
            deleted: r.get(5)?,
            change_seq: r.get(6)?,
            groups: r.get(7)?,
        })
    }

    /// The change feed: binds tenant, after.seq, after.pk, high, limit.
    pub fn changed_users_sql() -> String {
        format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant = ? AND (u.change_seq, u.pk) > (?, ?) \
             AND u.change_seq <= ? ORDER BY u.change_seq, u.pk LIMIT ?"
        )
    }

    /// Users changed after `after` and at or before sequence `high`, in change order.
    pub fn changed_users(
        c: &Connection,
        tenant: &str,
        after: Mark,
        high: i64,
        limit: u32,
    ) -> Result<Vec<UserRow>, SyncError> {
        let mut stmt = c.prepare_cached(&changed_users_sql())?;
        let rows = stmt.query_map(params![tenant, after.seq, after.pk, high, limit], user_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Users to retry that the watermark has already passed (the others come with the changes).
    pub fn retry_users(
        c: &Connection,
        tenant: &str,
        watermark: Mark,
        after_pk: i64,
        limit: u32,
    ) -> Result<Vec<UserRow>, SyncError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM sync_retry r JOIN users u ON u.tenant = r.tenant AND u.id = r.user_id \
             WHERE r.tenant = ? AND (u.change_seq, u.pk) <= (?, ?) AND u.pk > ? ORDER BY u.pk LIMIT ?"
        );
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![tenant, watermark.seq, watermark.pk, after_pk, limit],
            user_row,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The links of `rows` (one statement).
    pub fn links(
        c: &Connection,
        tenant: &str,
        rows: &[UserRow],
    ) -> Result<HashMap<String, Link>, SyncError> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let ids = serde_json::to_string(&ids)?;
        let mut stmt = c.prepare_cached(LINKS)?;
        let raw = stmt.query_map(params![tenant, ids], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = HashMap::new();
        for r in raw {
            let (id, app_key, fingerprint, roles, fields, state) = r?;
            out.insert(
                id,
                Link::parse(app_key, fingerprint, &roles, &fields, state)?,
            );
        }
        Ok(out)
    }

    /// A batch's record, statement by statement (prepared once per connection), in one
    /// transaction.
    pub fn record(c: &mut Connection, r: &Record) -> Result<(), SyncError> {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let t = r.tenant.as_str();
        let now = format_time(r.now);
        {
            let mut insert = tx.prepare_cached(INSERT_ITEM)?;
            for item in &r.items {
                let j = item_json(item)?;
                insert.execute(params![
                    r.run_id,
                    item.user_id,
                    item.user_name,
                    item.app_key,
                    item.outcome.as_str(),
                    j.changes,
                    j.roles_added,
                    j.roles_removed,
                    item.error,
                ])?;
            }
        }
        if !r.dry_run {
            let mut link = tx.prepare_cached(UPSERT_LINK)?;
            for l in &r.links {
                link.execute(params![
                    t,
                    l.user_id,
                    l.app_key,
                    l.fingerprint,
                    serde_json::to_string(&l.applied_roles)?,
                    serde_json::to_string(&l.fields)?,
                    l.state,
                    now,
                ])?;
            }
            let mut retry = tx.prepare_cached(ADD_RETRY)?;
            for (user_id, error) in &r.retries {
                retry.execute(params![t, user_id, error, now, now])?;
            }
            if !r.cleared.is_empty() {
                tx.prepare_cached(CLEAR_RETRIES)?
                    .execute(params![t, serde_json::to_string(&r.cleared)?])?;
            }
            if let Some(mark) = r.advance {
                tx.prepare_cached(ADVANCE_WATERMARK)?
                    .execute(params![t, mark.seq, mark.pk, now])?;
            }
            let renewed = tx.prepare_cached(RENEW_LEASE)?.execute(params![
                format_time(r.lease_expires),
                t,
                r.holder
            ])?;
            if renewed == 0 {
                return Err(SyncError::LeaseLost);
            }
        }
        let c = &r.counts;
        tx.prepare_cached(UPDATE_RUN)?.execute(params![
            RunStatus::Running.as_str(),
            None::<String>,
            c.created as i64,
            c.updated as i64,
            c.unchanged as i64,
            c.roles_added as i64,
            c.roles_removed as i64,
            c.deactivated as i64,
            c.offboarded as i64,
            c.failed as i64,
            r.watermark_to,
            None::<String>,
            r.run_id,
        ])?;
        tx.commit()?;
        Ok(())
    }
}
