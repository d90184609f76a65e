//! The ledger reads on SQLite staging (tables `sync_*`, users in `users`), on the store's
//! reader pool. Times are stored as RFC 3339 text with milliseconds.

use chrono::{DateTime, Utc};
use sqlx::SqlitePool;

use super::{
    ItemRow, LinkRow, PendingRow, RawItem, RawLink, RawPending, RawStaged, RunQuery, RunRow,
    StagedRow, UserRef, decode_item, decode_link, decode_pending, decode_staged,
};
use crate::store::format_time;

const RUN_COLUMNS: &str = "r.id, r.tenant, r.trigger, r.dry_run, r.full, r.status, r.started_at, \
     r.ended_at, r.created, r.updated, r.unchanged, r.roles_added, r.roles_removed, \
     r.deactivated, r.offboarded, r.failed, \
     (SELECT count(*) FROM sync_run_items i WHERE i.run_id = r.id AND i.outcome = 'offboarding_held') AS held, \
     r.watermark_from, r.watermark_to, r.error, r.approves_run, r.approved_at, r.approved_by";

pub(super) async fn runs(
    pool: &SqlitePool,
    q: &RunQuery,
) -> Result<(i64, Vec<RunRow>), sqlx::Error> {
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

pub(super) async fn run(pool: &SqlitePool, id: i64) -> Result<Option<RunRow>, sqlx::Error> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM sync_runs r WHERE r.id = ?");
    sqlx::query_as::<_, RunRow>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn last_run(
    pool: &SqlitePool,
    tenant: &str,
) -> Result<Option<RunRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM sync_runs r WHERE r.tenant = ? ORDER BY r.id DESC LIMIT 1"
    );
    sqlx::query_as::<_, RunRow>(&sql)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

pub(super) async fn approving_run(
    pool: &SqlitePool,
    approved: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM sync_runs WHERE approves_run = ? ORDER BY id DESC LIMIT 1")
        .bind(approved)
        .fetch_optional(pool)
        .await
}

pub(super) async fn newest_running(
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

pub(super) async fn items(
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
    Ok((total, rows.into_iter().map(decode_item).collect()))
}

pub(super) async fn lease(
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

pub(super) async fn staged_user(
    pool: &SqlitePool,
    tenant: &str,
    who: UserRef<'_>,
) -> Result<Option<StagedRow>, sqlx::Error> {
    let cond = match who {
        UserRef::Id(_) => "u.id = ?",
        UserRef::UserName(_) => "u.user_name_ci = ?",
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
        .bind(who.key())
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(decode_staged))
}

pub(super) async fn link(
    pool: &SqlitePool,
    tenant: &str,
    user_id: &str,
) -> Result<Option<LinkRow>, sqlx::Error> {
    let row: Option<RawLink> = sqlx::query_as(
        "SELECT app_key, applied_roles, fields, state, updated_at FROM sync_links \
         WHERE tenant = ? AND user_id = ?",
    )
    .bind(tenant)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(decode_link))
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

pub(super) async fn pending_offboardings(
    pool: &SqlitePool,
    tenant: &str,
    retention_hours: u32,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<PendingRow>), sqlx::Error> {
    let total = count_pending(pool, tenant, retention_hours).await?;
    let rows: Vec<RawPending> = sqlx::query_as(&format!(
        "SELECT * FROM ({PENDING}) ORDER BY due_at, user_id LIMIT ?3 OFFSET ?4"
    ))
    .bind(tenant)
    .bind(retention_modifier(retention_hours))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok((total, rows.into_iter().map(decode_pending).collect()))
}

pub(super) async fn count_pending(
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
