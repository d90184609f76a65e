//! Read-only queries over the sync state and the run ledger (sync_runs, sync_run_items,
//! sync_links, sync_leases, sync_offboarding), for the admin API. Every query runs on the
//! store's reader pool; nothing here writes.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::SqlitePool;

use crate::mapping::{StagedGroup, StagedUser};
use crate::store::format_time;

/// One ledger row of `sync_runs`, with the number of offboardings it held.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub tenant: String,
    pub trigger: String,
    pub dry_run: bool,
    pub full: bool,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub roles_added: i64,
    pub roles_removed: i64,
    pub deactivated: i64,
    pub offboarded: i64,
    pub failed: i64,
    pub held: i64,
    pub watermark_from: Option<i64>,
    pub watermark_to: Option<i64>,
    pub error: Option<String>,
    pub approves_run: Option<i64>,
    pub approved_at: Option<String>,
    pub approved_by: Option<i64>,
}

const RUN_COLUMNS: &str = "r.id, r.tenant, r.trigger, r.dry_run, r.full, r.status, r.started_at, \
     r.ended_at, r.created, r.updated, r.unchanged, r.roles_added, r.roles_removed, \
     r.deactivated, r.offboarded, r.failed, \
     (SELECT count(*) FROM sync_run_items i WHERE i.run_id = r.id AND i.outcome = 'offboarding_held') AS held, \
     r.watermark_from, r.watermark_to, r.error, r.approves_run, r.approved_at, r.approved_by";

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub tenant: Option<String>,
    pub status: Option<String>,
    /// Runs started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Runs started before this time.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

/// Runs matching `q`, newest first, and how many match in all.
pub async fn runs(pool: &SqlitePool, q: &RunQuery) -> Result<(i64, Vec<RunRow>), sqlx::Error> {
    let mut cond = vec!["1 = 1"];
    if q.tenant.is_some() {
        cond.push("r.tenant = ?");
    }
    if q.status.is_some() {
        cond.push("r.status = ?");
    }
    if q.since.is_some() {
        cond.push("r.started_at >= ?");
    }
    if q.until.is_some() {
        cond.push("r.started_at < ?");
    }
    let cond = cond.join(" AND ");
    let binds: Vec<String> = [
        q.tenant.clone(),
        q.status.clone(),
        q.since.map(format_time),
        q.until.map(format_time),
    ]
    .into_iter()
    .flatten()
    .collect();
    let count_sql = format!("SELECT count(*) FROM sync_runs r WHERE {cond}");
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
    for b in &binds {
        count = count.bind(b.clone());
    }
    let total = count.fetch_one(pool).await?;
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM sync_runs r WHERE {cond} ORDER BY r.id DESC LIMIT ? OFFSET ?"
    );
    let mut rows = sqlx::query_as::<_, RunRow>(&sql);
    for b in &binds {
        rows = rows.bind(b.clone());
    }
    let rows = rows.bind(q.limit).bind(q.offset).fetch_all(pool).await?;
    Ok((total, rows))
}

pub async fn run(pool: &SqlitePool, id: i64) -> Result<Option<RunRow>, sqlx::Error> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM sync_runs r WHERE r.id = ?");
    sqlx::query_as::<_, RunRow>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The newest run of `tenant`.
pub async fn last_run(pool: &SqlitePool, tenant: &str) -> Result<Option<RunRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM sync_runs r WHERE r.tenant = ? ORDER BY r.id DESC LIMIT 1"
    );
    sqlx::query_as::<_, RunRow>(&sql)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The run that performed the approval of run `approved`, once the engine recorded it.
pub async fn approving_run(pool: &SqlitePool, approved: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM sync_runs WHERE approves_run = ? ORDER BY id DESC LIMIT 1")
        .bind(approved)
        .fetch_optional(pool)
        .await
}

/// The newest run of `tenant` with this trigger and options that is still running.
pub async fn newest_running(
    pool: &SqlitePool,
    tenant: &str,
    trigger: &str,
    dry_run: bool,
    full: bool,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM sync_runs WHERE tenant = ? AND trigger = ? AND dry_run = ? AND full = ? \
         AND status = 'running' ORDER BY id DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(trigger)
    .bind(dry_run)
    .bind(full)
    .fetch_optional(pool)
    .await
}

/// One ledger item of a run.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: i64,
    pub user_id: String,
    pub user_name: Option<String>,
    pub app_key: Option<String>,
    pub outcome: String,
    /// Column → {"before": …, "after": …}.
    pub changes: Map<String, Value>,
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
    pub error: Option<String>,
}

type RawItem = (
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn json_or_default<T: serde::de::DeserializeOwned + Default>(text: Option<&str>) -> T {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// The items of run `run_id` (optionally of one outcome) in the order they were recorded,
/// and how many match in all.
pub async fn items(
    pool: &SqlitePool,
    run_id: i64,
    outcome: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<ItemRow>), sqlx::Error> {
    let cond = if outcome.is_some() {
        "run_id = ? AND outcome = ?"
    } else {
        "run_id = ?"
    };
    let count_sql = format!("SELECT count(*) FROM sync_run_items WHERE {cond}");
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql).bind(run_id);
    if let Some(o) = outcome {
        count = count.bind(o);
    }
    let total = count.fetch_one(pool).await?;
    let sql = format!(
        "SELECT id, user_id, user_name, app_key, outcome, changes, roles_added, roles_removed, error \
         FROM sync_run_items WHERE {cond} ORDER BY id LIMIT ? OFFSET ?"
    );
    let mut q = sqlx::query_as::<_, RawItem>(&sql).bind(run_id);
    if let Some(o) = outcome {
        q = q.bind(o);
    }
    let rows = q.bind(limit).bind(offset).fetch_all(pool).await?;
    let items = rows
        .into_iter()
        .map(
            |(id, user_id, user_name, app_key, outcome, changes, added, removed, error)| ItemRow {
                id,
                user_id,
                user_name,
                app_key,
                outcome,
                changes: json_or_default(changes.as_deref()),
                roles_added: json_or_default(added.as_deref()),
                roles_removed: json_or_default(removed.as_deref()),
                error,
            },
        )
        .collect();
    Ok((total, items))
}

/// The run holding `tenant`'s lease at `now` (an expired lease holds nothing): Some(run id,
/// when known).
pub async fn lease(
    pool: &SqlitePool,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<Option<Option<i64>>, sqlx::Error> {
    sqlx::query_scalar("SELECT run_id FROM sync_leases WHERE tenant = ? AND expires_at > ?")
        .bind(tenant)
        .bind(format_time(now))
        .fetch_optional(pool)
        .await
}

/// A staged user (live, inactive or deleted but not yet purged) as the engine would read it.
#[derive(Debug, Clone)]
pub struct StagedRow {
    pub user: StagedUser,
    pub user_name: String,
    pub active: bool,
    pub deleted: bool,
}

/// Which staged user.
#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    Id(&'a str),
    /// Case-insensitive; a live user wins over a deleted one of the same name.
    UserName(&'a str),
}

type RawStaged = (String, String, String, bool, bool, Option<String>);

/// A staged user with its document and groups; None when there is none (or its stored
/// document is not JSON, which the store never writes).
pub async fn staged_user(
    pool: &SqlitePool,
    tenant: &str,
    who: UserRef<'_>,
) -> Result<Option<StagedRow>, sqlx::Error> {
    let (cond, value) = match who {
        UserRef::Id(id) => ("u.id = ?", id.to_string()),
        UserRef::UserName(n) => ("u.user_name_ci = ?", n.to_lowercase()),
    };
    let sql = format!(
        "SELECT u.id, u.user_name, u.doc, u.active, u.deleted_at IS NOT NULL, \
         (SELECT json_group_array(json_array(g.id, g.display_name, g.external_id)) \
          FROM group_members m JOIN groups g ON g.tenant = m.tenant AND g.id = m.group_id \
          WHERE m.tenant = u.tenant AND m.member_id = u.id) \
         FROM users u WHERE u.tenant = ? AND {cond} ORDER BY u.deleted_at IS NOT NULL, u.pk DESC LIMIT 1"
    );
    let row: Option<RawStaged> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(value)
        .fetch_optional(pool)
        .await?;
    let Some((id, user_name, doc, active, deleted, groups)) = row else {
        return Ok(None);
    };
    let Ok(doc) = serde_json::from_str::<Map<String, Value>>(&doc) else {
        return Ok(None);
    };
    let groups: Vec<(String, String, Option<String>)> = json_or_default(groups.as_deref());
    Ok(Some(StagedRow {
        user: StagedUser {
            id,
            doc,
            groups: groups
                .into_iter()
                .map(|(id, display_name, external_id)| StagedGroup {
                    id,
                    display_name,
                    external_id,
                })
                .collect(),
        },
        user_name,
        active,
        deleted,
    }))
}

/// What the application row holds since the engine last wrote it.
#[derive(Debug, Clone)]
pub struct LinkRow {
    pub app_key: String,
    pub applied_roles: BTreeSet<String>,
    pub fields: Map<String, Value>,
    pub state: String,
    pub updated_at: String,
}

pub async fn link(
    pool: &SqlitePool,
    tenant: &str,
    user_id: &str,
) -> Result<Option<LinkRow>, sqlx::Error> {
    let row: Option<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT app_key, applied_roles, fields, state, updated_at FROM sync_links \
         WHERE tenant = ? AND user_id = ?",
    )
    .bind(tenant)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(app_key, roles, fields, state, updated_at)| LinkRow {
            app_key,
            applied_roles: json_or_default(Some(&roles)),
            fields: json_or_default(Some(&fields)),
            state,
            updated_at,
        }),
    )
}

/// An offboarding that has not been applied yet.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// `inactive` or `deleted`: staged, inside (or just past) its retention; `queued`: purged
    /// from staging, its application offboarding not applied yet.
    pub state: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub app_key: String,
    pub deactivated_at: Option<String>,
    pub deleted_at: Option<String>,
    /// When its retention ends (staged) or when it was queued.
    pub due_at: String,
    pub queued_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// Staged users with an application row whose retention clock runs (inactive or deleted),
/// then queued offboardings: `?1` tenant, `?2` the retention as an SQLite time modifier.
const PENDING: &str = "\
    SELECT CASE WHEN u.deleted_at IS NOT NULL THEN 'deleted' ELSE 'inactive' END AS state, \
           u.id AS user_id, u.user_name AS user_name, l.app_key AS app_key, \
           u.deactivated_at AS deactivated_at, u.deleted_at AS deleted_at, \
           strftime('%Y-%m-%dT%H:%M:%fZ', max(u.deactivated_at, coalesce(u.deleted_at, u.deactivated_at)), ?2) AS due_at, \
           NULL AS queued_at, 0 AS attempts, NULL AS last_error \
    FROM users u JOIN sync_links l ON l.tenant = u.tenant AND l.user_id = u.id \
    WHERE u.tenant = ?1 AND u.deactivated_at IS NOT NULL \
    UNION ALL \
    SELECT 'queued', o.user_id, o.user_name, o.app_key, NULL, NULL, o.queued_at, o.queued_at, \
           o.attempts, o.last_error \
    FROM sync_offboarding o WHERE o.tenant = ?1";

fn retention_modifier(retention_hours: u32) -> String {
    format!("+{retention_hours} hours")
}

/// Pending offboardings of `tenant`, soonest due first, and how many there are.
pub async fn pending_offboardings(
    pool: &SqlitePool,
    tenant: &str,
    retention_hours: u32,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<PendingRow>), sqlx::Error> {
    let total = count_pending(pool, tenant, retention_hours).await?;
    type Raw = (
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        i64,
        Option<String>,
    );
    let rows: Vec<Raw> = sqlx::query_as(&format!(
        "SELECT * FROM ({PENDING}) ORDER BY due_at, user_id LIMIT ?3 OFFSET ?4"
    ))
    .bind(tenant)
    .bind(retention_modifier(retention_hours))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok((
        total,
        rows.into_iter()
            .map(
                |(
                    state,
                    user_id,
                    user_name,
                    app_key,
                    deactivated_at,
                    deleted_at,
                    due_at,
                    queued_at,
                    attempts,
                    last_error,
                )| PendingRow {
                    state,
                    user_id,
                    user_name,
                    app_key,
                    deactivated_at,
                    deleted_at,
                    due_at,
                    queued_at,
                    attempts,
                    last_error,
                },
            )
            .collect(),
    ))
}

pub async fn count_pending(
    pool: &SqlitePool,
    tenant: &str,
    retention_hours: u32,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM ({PENDING})"))
        .bind(tenant)
        .bind(retention_modifier(retention_hours))
        .fetch_one(pool)
        .await
}
