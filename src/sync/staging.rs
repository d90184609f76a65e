//! The engine's SQL against the staging database: reads of users, the lease, the ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{SqliteConnection, SqlitePool};

use super::{Counts, ItemReport, RunStatus, SyncError};
use crate::mapping::{StagedGroup, StagedUser};
use crate::store::format_time;

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
    pub groups: Option<String>,
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
        let groups: Vec<(String, String, Option<String>)> = match &self.groups {
            None => vec![],
            Some(text) => serde_json::from_str(text)
                .map_err(|e| format!("stored groups are not valid JSON: {e}"))?,
        };
        Ok(StagedUser {
            id: self.id.clone(),
            doc,
            groups: groups
                .into_iter()
                .map(|(id, display_name, external_id)| StagedGroup {
                    id,
                    display_name,
                    external_id,
                })
                .collect(),
        })
    }
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
    pool: &SqlitePool,
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
    .fetch_one(pool)
    .await?)
}

/// The condition for a user whose retention has ended: inactive since before `cutoff` and,
/// when deleted, deleted before `cutoff` (binds: tenant, cutoff, cutoff).
const DUE: &str = "u.tenant = ? AND u.deactivated_at IS NOT NULL AND u.deactivated_at <= ? \
     AND (u.deleted_at IS NULL OR u.deleted_at <= ?)";

pub async fn count_due(
    pool: &SqlitePool,
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
    Ok(q.bind(tenant).bind(&c).bind(&c).fetch_one(pool).await?)
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
    pool: &SqlitePool,
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
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(user_row).collect())
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

type RawLink = (String, String, String, String, String, String);

/// The links of `ids` (one statement).
pub async fn links(
    c: impl sqlx::SqliteExecutor<'_>,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, Link>, SyncError> {
    let ids = serde_json::to_string(ids)?;
    let rows: Vec<RawLink> = sqlx::query_as(LINKS)
        .bind(tenant)
        .bind(ids)
        .fetch_all(c)
        .await?;
    rows.into_iter()
        .map(|(id, app_key, fingerprint, roles, fields, state)| {
            Ok((
                id,
                Link {
                    app_key,
                    fingerprint,
                    applied_roles: serde_json::from_str(&roles)?,
                    fields: serde_json::from_str(&fields)?,
                    state,
                },
            ))
        })
        .collect()
}

pub async fn count_links(pool: &SqlitePool, tenant: &str) -> Result<i64, SyncError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM sync_links WHERE tenant = ?")
            .bind(tenant)
            .fetch_one(pool)
            .await?,
    )
}

pub async fn watermark(c: impl sqlx::SqliteExecutor<'_>, tenant: &str) -> Result<Mark, SyncError> {
    let m: Option<(i64, i64)> =
        sqlx::query_as("SELECT change_seq, last_pk FROM sync_watermarks WHERE tenant = ?")
            .bind(tenant)
            .fetch_optional(c)
            .await?;
    Ok(m.map(|(seq, pk)| Mark { seq, pk }).unwrap_or_default())
}

pub async fn high_seq(pool: &SqlitePool) -> Result<i64, SyncError> {
    Ok(
        sqlx::query_scalar("SELECT value FROM change_seq WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

// ---- lease ----------------------------------------------------------------------------

/// Take the tenant's lease unless someone else holds an unexpired one.
pub async fn acquire_lease(
    c: &mut SqliteConnection,
    tenant: &str,
    holder: &str,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> Result<bool, SyncError> {
    let r = sqlx::query(
        "INSERT INTO sync_leases (tenant, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (tenant) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, \
         expires_at = excluded.expires_at, run_id = NULL WHERE sync_leases.expires_at <= ?",
    )
    .bind(tenant)
    .bind(holder)
    .bind(format_time(now))
    .bind(format_time(now + ttl))
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
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> Result<(), SyncError> {
    let r = sqlx::query(RENEW_LEASE)
        .bind(format_time(now + ttl))
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

// ---- ledger ---------------------------------------------------------------------------

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

/// Runs of the tenant left `running` by a holder that stopped: they will never finish.
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

pub async fn insert_item(
    c: &mut SqliteConnection,
    run_id: i64,
    item: &ItemReport,
) -> Result<(), SyncError> {
    let changes = (!item.changes.is_empty())
        .then(|| serde_json::to_string(&item.changes))
        .transpose()?;
    let list = |v: &Vec<String>| {
        (!v.is_empty())
            .then(|| serde_json::to_string(v))
            .transpose()
    };
    sqlx::query(INSERT_ITEM)
        .bind(run_id)
        .bind(&item.user_id)
        .bind(&item.user_name)
        .bind(&item.app_key)
        .bind(item.outcome.as_str())
        .bind(changes)
        .bind(list(&item.roles_added)?)
        .bind(list(&item.roles_removed)?)
        .bind(&item.error)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Retry rows of users that no longer exist in staging: one index look-up per retry row (a
/// `NOT IN (SELECT id …)` would list every user of the tenant).
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

/// Whether the user is still as read (no SCIM write since: a reactivation must not be purged).
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

/// Remove a user and its memberships from staging (the groups it left get a new version).
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

/// Whether another user of the tenant is linked to the same application row.
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

#[allow(clippy::too_many_arguments)]
pub async fn queue_offboarding(
    c: &mut SqliteConnection,
    tenant: &str,
    user_id: &str,
    user_name: &str,
    app_key: &str,
    action: &Value,
    roles: &BTreeSet<String>,
    run_id: i64,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    sqlx::query(
        "INSERT INTO sync_offboarding (tenant, user_id, user_name, app_key, action, roles, queued_at, run_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(user_id)
    .bind(user_name)
    .bind(app_key)
    .bind(serde_json::to_string(action)?)
    .bind(serde_json::to_string(roles)?)
    .bind(format_time(now))
    .bind(run_id)
    .execute(&mut *c)
    .await?;
    Ok(())
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

pub async fn queued(
    pool: &SqlitePool,
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
    .fetch_all(pool)
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

/// An offboarding was applied: forget it and the user's link.
pub async fn offboarding_done(
    c: &mut SqliteConnection,
    tenant: &str,
    q: &Queued,
) -> Result<(), SyncError> {
    sqlx::query("DELETE FROM sync_offboarding WHERE id = ?")
        .bind(q.id)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM sync_links WHERE tenant = ? AND user_id = ?")
        .bind(tenant)
        .bind(&q.user_id)
        .execute(&mut *c)
        .await?;
    Ok(())
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

/// The change pass's statements on the engine's own staging connection, run synchronously
/// (on a blocking thread): one hand-over per batch instead of one per statement.
pub mod blocking {
    use std::collections::HashMap;

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
                Link {
                    app_key,
                    fingerprint,
                    applied_roles: serde_json::from_str(&roles)?,
                    fields: serde_json::from_str(&fields)?,
                    state,
                },
            );
        }
        Ok(out)
    }

    pub fn insert_item(c: &Connection, run_id: i64, item: &ItemReport) -> Result<(), SyncError> {
        let changes = (!item.changes.is_empty())
            .then(|| serde_json::to_string(&item.changes))
            .transpose()?;
        let list = |v: &Vec<String>| {
            (!v.is_empty())
                .then(|| serde_json::to_string(v))
                .transpose()
        };
        c.prepare_cached(INSERT_ITEM)?.execute(params![
            run_id,
            item.user_id,
            item.user_name,
            item.app_key,
            item.outcome.as_str(),
            changes,
            list(&item.roles_added)?,
            list(&item.roles_removed)?,
            item.error,
        ])?;
        Ok(())
    }

    /// Record the state written to the application for a user.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert_link(
        c: &Connection,
        tenant: &str,
        user_id: &str,
        app_key: &str,
        fingerprint: &str,
        roles: &BTreeSet<String>,
        fields: &BTreeMap<String, Value>,
        state: &str,
        now: &str,
    ) -> Result<(), SyncError> {
        c.prepare_cached(UPSERT_LINK)?.execute(params![
            tenant,
            user_id,
            app_key,
            fingerprint,
            serde_json::to_string(roles)?,
            serde_json::to_string(fields)?,
            state,
            now,
        ])?;
        Ok(())
    }

    pub fn add_retry(
        c: &Connection,
        tenant: &str,
        user_id: &str,
        error: &str,
        now: &str,
    ) -> Result<(), SyncError> {
        c.prepare_cached(ADD_RETRY)?
            .execute(params![tenant, user_id, error, now, now])?;
        Ok(())
    }

    /// Remove retry rows of `ids` (users that synced, or had nothing to sync).
    pub fn clear_retries(c: &Connection, tenant: &str, ids: &[&str]) -> Result<(), SyncError> {
        if ids.is_empty() {
            return Ok(());
        }
        c.prepare_cached(CLEAR_RETRIES)?
            .execute(params![tenant, serde_json::to_string(ids)?])?;
        Ok(())
    }

    /// Move the watermark forward to `to` (never back: a full run starts below it).
    pub fn advance_watermark(
        c: &Connection,
        tenant: &str,
        to: Mark,
        now: &str,
    ) -> Result<(), SyncError> {
        c.prepare_cached(ADVANCE_WATERMARK)?
            .execute(params![tenant, to.seq, to.pk, now])?;
        Ok(())
    }

    /// Extend the lease; an error when it is no longer ours (it expired and was taken over).
    pub fn renew_lease(
        c: &Connection,
        tenant: &str,
        holder: &str,
        expires: &str,
    ) -> Result<(), SyncError> {
        let n = c
            .prepare_cached(RENEW_LEASE)?
            .execute(params![expires, tenant, holder])?;
        if n == 0 {
            return Err(SyncError::LeaseLost);
        }
        Ok(())
    }

    pub fn update_run(
        c: &Connection,
        run_id: i64,
        status: RunStatus,
        counts: &Counts,
        watermark_to: Option<i64>,
    ) -> Result<(), SyncError> {
        c.prepare_cached(UPDATE_RUN)?.execute(params![
            status.as_str(),
            None::<String>,
            counts.created as i64,
            counts.updated as i64,
            counts.unchanged as i64,
            counts.roles_added as i64,
            counts.roles_removed as i64,
            counts.deactivated as i64,
            counts.offboarded as i64,
            counts.failed as i64,
            watermark_to,
            None::<String>,
            run_id,
        ])?;
        Ok(())
    }
}
