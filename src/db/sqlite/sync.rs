//! The sync engine's state on SQLite staging (tables `sync_*`): the change feed and links read
//! on blocking threads, and every write — a batch's record, run bookkeeping, lease, lifecycle
//! — one job of the writer thread, so each is one transaction (a savepoint in the writer's
//! group commit) with no other writer of this process in between.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, ToSql, params};

use super::SqliteStaging;
use super::conn::snapshot;
use crate::store::format_time;
use crate::sync::plan::Planned;
use crate::sync::store::{
    BatchPlanner, BeginRun, Begun, DueBatch, DueQuery, FinishRun, Heartbeat, LeaseRow,
    LifecycleDone, LifecyclePlanner, LifecycleRecord, Link, Mark, Owned, PruneRuns, Queued, Read,
    Record, RowsOf, RunState, RunningRun, SyncStore, UserRow, item_json,
};
use crate::sync::{Counts, ItemReport, RunStatus, SyncError};

/// The columns of a UserRow over `users u`, groups and quarantine included in the same
/// statement.
const USER_COLUMNS: &str = "u.pk, u.id, u.user_name, u.doc, u.active, u.deleted_at IS NOT NULL, u.change_seq, \
     (SELECT json_group_array(json_array(g.id, g.display_name, g.external_id)) \
      FROM group_members m JOIN groups g ON g.tenant = m.tenant AND g.id = m.group_id \
      WHERE m.tenant = u.tenant AND m.member_id = u.id), \
     EXISTS (SELECT 1 FROM sync_retry q WHERE q.tenant = u.tenant AND q.user_id = u.id \
      AND q.quarantined_at IS NOT NULL AND q.change_seq = u.change_seq)";

const INSERT_ITEM: &str = "INSERT INTO sync_run_items (run_id, user_id, user_name, app_key, outcome, changes, \
    roles_added, roles_removed, error, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const UPSERT_LINK: &str = "INSERT INTO sync_links (tenant, user_id, app_key, fingerprint, applied_roles, fields, state, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO UPDATE SET \
    app_key = excluded.app_key, fingerprint = excluded.fingerprint, applied_roles = excluded.applied_roles, \
    fields = excluded.fields, state = excluded.state, updated_at = excluded.updated_at";

/// A failed user: one more failure on the same staged version, or the first on a new one;
/// quarantined once it failed `?7` runs in a row (binds tenant, user, error, now, now,
/// change_seq, quarantine_after; 0 never quarantines).
const ADD_RETRY: &str = "INSERT INTO sync_retry (tenant, user_id, attempts, last_error, first_failed_at, last_failed_at, \
    change_seq, quarantined_at) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, CASE WHEN ?7 = 1 THEN ?5 END) \
    ON CONFLICT (tenant, user_id) DO UPDATE SET \
    attempts = CASE WHEN sync_retry.change_seq IS excluded.change_seq THEN sync_retry.attempts + 1 ELSE 1 END, \
    first_failed_at = CASE WHEN sync_retry.change_seq IS excluded.change_seq THEN sync_retry.first_failed_at \
        ELSE excluded.first_failed_at END, \
    quarantined_at = CASE WHEN ?7 > 0 AND (CASE WHEN sync_retry.change_seq IS excluded.change_seq \
        THEN sync_retry.attempts + 1 ELSE 1 END) >= ?7 THEN coalesce(sync_retry.quarantined_at, excluded.last_failed_at) END, \
    change_seq = excluded.change_seq, last_error = excluded.last_error, last_failed_at = excluded.last_failed_at";

const CLEAR_RETRIES: &str =
    "DELETE FROM sync_retry WHERE tenant = ? AND user_id IN (SELECT value FROM json_each(?))";

const ADVANCE_WATERMARK: &str = "INSERT INTO sync_watermarks (tenant, change_seq, last_pk, updated_at) VALUES (?, ?, ?, ?) \
    ON CONFLICT (tenant) DO UPDATE SET change_seq = excluded.change_seq, last_pk = excluded.last_pk, \
    updated_at = excluded.updated_at \
    WHERE (excluded.change_seq, excluded.last_pk) > (sync_watermarks.change_seq, sync_watermarks.last_pk)";

/// Take the lease when it is free, expired, or held by `?5`, a holder whose process stopped.
const ACQUIRE_LEASE: &str = "INSERT INTO sync_leases (tenant, holder, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT (tenant) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, \
    expires_at = excluded.expires_at, run_id = NULL \
    WHERE sync_leases.expires_at <= ?3 OR sync_leases.holder = ?5";

const RENEW_LEASE: &str = "UPDATE sync_leases SET expires_at = ? WHERE tenant = ? AND holder = ?";

const INSERT_RUN: &str = "INSERT INTO sync_runs (tenant, trigger, dry_run, full, status, started_at, ended_at, \
    watermark_from, approves_run, holder, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id";

const UPDATE_RUN: &str = "UPDATE sync_runs SET status = ?, ended_at = ?, created = ?, updated = ?, unchanged = ?, \
    roles_added = ?, roles_removed = ?, deactivated = ?, offboarded = ?, failed = ?, quarantined = ?, \
    watermark_to = ?, error = ? WHERE id = ?";

/// Mark an awaiting_approval run approved: @1 approved_at, @2 the approving run, @3 the
/// approver, @4 the run; no row when it is not awaiting approval or was approved already.
const APPROVE_RUN: &str = "UPDATE sync_runs SET status = 'approved', approved_at = ?, approved_by = ?, \
    approver = ? WHERE id = ? AND status = 'awaiting_approval' AND approved_at IS NULL AND dry_run = 0";

/// Runs pruned per writer job.
const PRUNE_BATCH: i64 = 500;

/// The runs retention deletes (see `PruneRuns`), oldest first: binds before, noop_before,
/// limit, tenant (NULL: every tenant). Never a running or awaiting_approval run, nor the newest run of its tenant. A no-op
/// run has no item, did not fail and is no part of an approval.
const PRUNABLE_RUNS: &str = "SELECT r.id FROM sync_runs r \
    WHERE r.status NOT IN ('running', 'awaiting_approval') \
    AND r.id < (SELECT max(n.id) FROM sync_runs n WHERE n.tenant = r.tenant) \
    AND (r.started_at < ?1 OR (r.started_at < ?2 AND r.status IN ('succeeded', 'skipped') \
        AND r.approves_run IS NULL AND r.approved_at IS NULL \
        AND NOT EXISTS (SELECT 1 FROM sync_run_items i WHERE i.run_id = r.id))) \
    AND (?4 IS NULL OR r.tenant = ?4) \
    ORDER BY r.id LIMIT ?3";

/// Delete the runs of a JSON array of ids with their items; runs kept that point at them (an
/// approval and the run it approved) let go of the reference first. The last statement
/// deletes the runs.
const PRUNE_RUNS: [&str; 4] = [
    "UPDATE sync_runs SET approves_run = NULL WHERE approves_run IN (SELECT value FROM json_each(?))",
    "UPDATE sync_runs SET approved_by = NULL WHERE approved_by IN (SELECT value FROM json_each(?))",
    "DELETE FROM sync_run_items WHERE run_id IN (SELECT value FROM json_each(?))",
    "DELETE FROM sync_runs WHERE id IN (SELECT value FROM json_each(?))",
];

pub const LINKS: &str = "SELECT user_id, app_key, fingerprint, applied_roles, fields, state FROM sync_links \
    WHERE tenant = ? AND user_id IN (SELECT value FROM json_each(?))";

/// The condition for a user whose retention has ended: inactive since before `cutoff` and,
/// when deleted, deleted before `cutoff` (binds: tenant, cutoff, cutoff).
const DUE: &str = "u.tenant = ? AND u.deactivated_at IS NOT NULL AND u.deactivated_at <= ? \
     AND (u.deleted_at IS NULL OR u.deleted_at <= ?)";

/// The change feed: binds tenant, after.seq, after.pk, high, limit.
pub fn changed_users_sql() -> String {
    format!(
        "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant = ? AND (u.change_seq, u.pk) > (?, ?) \
         AND u.change_seq <= ? ORDER BY u.change_seq, u.pk LIMIT ?"
    )
}

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
        quarantined: r.get(8)?,
    })
}

/// Users changed after `after` and at or before sequence `high`, in change order.
fn changed_users(
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
fn retry_users(
    c: &Connection,
    tenant: &str,
    watermark: Mark,
    after_pk: i64,
    limit: u32,
) -> Result<Vec<UserRow>, SyncError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM sync_retry r JOIN users u ON u.tenant = r.tenant AND u.id = r.user_id \
         WHERE r.tenant = ? AND r.quarantined_at IS NULL AND (u.change_seq, u.pk) <= (?, ?) \
         AND u.pk > ? ORDER BY u.pk LIMIT ?"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![tenant, watermark.seq, watermark.pk, after_pk, limit],
        user_row,
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The links of `rows` (one statement).
fn links(
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

/// `held_in`'s join and condition (binds the run first).
fn held_join(held_in: Option<i64>) -> (&'static str, &'static str) {
    match held_in {
        None => ("", ""),
        Some(_) => (
            " JOIN sync_run_items i ON i.run_id = ? AND i.user_id = u.id",
            " AND i.outcome = 'offboarding_held'",
        ),
    }
}

fn insert_items(c: &Connection, run_id: i64, items: &[ItemReport]) -> Result<(), SyncError> {
    let mut insert = c.prepare_cached(INSERT_ITEM)?;
    for item in items {
        let j = item_json(item)?;
        insert.execute(params![
            run_id,
            item.user_id,
            item.user_name,
            item.app_key,
            item.outcome.as_str(),
            j.changes,
            j.roles_added,
            j.roles_removed,
            item.error,
            item.action,
        ])?;
    }
    Ok(())
}

/// Extend the lease; `SyncError::LeaseLost` when it is no longer ours (it expired and was
/// taken over).
fn renew_lease(
    c: &Connection,
    tenant: &str,
    holder: &str,
    expires: DateTime<Utc>,
) -> Result<(), SyncError> {
    let n =
        c.prepare_cached(RENEW_LEASE)?
            .execute(params![format_time(expires), tenant, holder])?;
    if n == 0 {
        return Err(SyncError::LeaseLost);
    }
    Ok(())
}

fn update_run(
    c: &Connection,
    run_id: i64,
    status: RunStatus,
    counts: &Counts,
    watermark_to: Option<i64>,
    ended_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), SyncError> {
    c.prepare_cached(UPDATE_RUN)?.execute(params![
        status.as_str(),
        ended_at.map(format_time),
        counts.created as i64,
        counts.updated as i64,
        counts.unchanged as i64,
        counts.roles_added as i64,
        counts.roles_removed as i64,
        counts.deactivated as i64,
        counts.offboarded as i64,
        counts.failed as i64,
        counts.quarantined as i64,
        watermark_to,
        error,
        run_id,
    ])?;
    Ok(())
}

/// Take the tenant's lease unless someone else holds an unexpired one.
fn acquire_lease(c: &Connection, r: &BeginRun) -> Result<bool, SyncError> {
    let n = c.prepare_cached(ACQUIRE_LEASE)?.execute(params![
        r.tenant,
        r.holder,
        format_time(r.started_at),
        format_time(r.lease_expires),
        r.take_from
    ])?;
    Ok(n == 1)
}

/// Runs of the tenant left `running` by a holder that stopped: they will never finish.
fn abandon_stale_runs(c: &Connection, tenant: &str, now: DateTime<Utc>) -> Result<(), SyncError> {
    c.prepare_cached(
        "UPDATE sync_runs SET status = 'failed', ended_at = ?, \
         error = 'abandoned: the process running it stopped before it finished' \
         WHERE tenant = ? AND status = 'running' AND dry_run = 0",
    )?
    .execute(params![format_time(now), tenant])?;
    Ok(())
}

fn insert_run(
    c: &Connection,
    r: &BeginRun,
    status: RunStatus,
    approves: Option<i64>,
) -> Result<i64, SyncError> {
    let started = format_time(r.started_at);
    let ended = (status != RunStatus::Running).then(|| started.clone());
    Ok(c.prepare_cached(INSERT_RUN)?.query_row(
        params![
            r.tenant,
            r.trigger,
            r.dry_run,
            r.full,
            status.as_str(),
            started,
            ended,
            r.watermark_from,
            approves,
            r.holder,
            started
        ],
        |row| row.get(0),
    )?)
}

fn lease_run(c: &Connection, r: &BeginRun, run_id: i64) -> Result<(), SyncError> {
    c.prepare_cached("UPDATE sync_leases SET run_id = ? WHERE tenant = ? AND holder = ?")?
        .execute(params![run_id, r.tenant, r.holder])?;
    Ok(())
}

/// Remove a user, its memberships and its retry row from staging; the groups it leaves get a
/// new version. user_emails go with the row (ON DELETE CASCADE).
fn purge_user(c: &Connection, tenant: &str, user_id: &str, now: &str) -> Result<(), SyncError> {
    let in_groups: i64 = c
        .prepare_cached("SELECT count(*) FROM group_members WHERE tenant = ? AND member_id = ?")?
        .query_row(params![tenant, user_id], |r| r.get(0))?;
    if in_groups > 0 {
        let seq: i64 = c
            .prepare_cached("UPDATE change_seq SET value = value + 1 WHERE id = 1 RETURNING value")?
            .query_row([], |r| r.get(0))?;
        c.prepare_cached(
            "UPDATE groups SET change_seq = ?1, last_modified = ?2 WHERE tenant = ?3 AND id IN \
             (SELECT group_id FROM group_members WHERE tenant = ?3 AND member_id = ?4)",
        )?
        .execute(params![seq, now, tenant, user_id])?;
        c.prepare_cached("DELETE FROM group_members WHERE tenant = ? AND member_id = ?")?
            .execute(params![tenant, user_id])?;
    }
    c.prepare_cached("DELETE FROM users WHERE tenant = ? AND id = ?")?
        .execute(params![tenant, user_id])?;
    c.prepare_cached("DELETE FROM sync_retry WHERE tenant = ? AND user_id = ?")?
        .execute(params![tenant, user_id])?;
    Ok(())
}

fn delete_link(c: &Connection, tenant: &str, user_id: &str) -> Result<(), SyncError> {
    c.prepare_cached("DELETE FROM sync_links WHERE tenant = ? AND user_id = ?")?
        .execute(params![tenant, user_id])?;
    Ok(())
}

/// A lifecycle step's writes, in the caller's transaction.
fn apply_lifecycle(c: &Connection, r: &LifecycleRecord) -> Result<(), SyncError> {
    let t = r.tenant.as_str();
    let now = format_time(r.now);
    insert_items(c, r.run_id, &r.items)?;
    {
        let mut queue = c.prepare_cached(
            "INSERT INTO sync_offboarding (tenant, user_id, user_name, app_key, action, roles, queued_at, run_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO NOTHING",
        )?;
        for q in &r.queue {
            queue.execute(params![
                t,
                q.user_id,
                q.user_name,
                q.app_key,
                serde_json::to_string(&q.action)?,
                serde_json::to_string(&q.roles)?,
                now,
                r.run_id
            ])?;
        }
    }
    for user_id in &r.purge {
        purge_user(c, t, user_id, &now)?;
    }
    for user_id in &r.unlink {
        delete_link(c, t, user_id)?;
    }
    for (id, user_id) in &r.done {
        c.prepare_cached("DELETE FROM sync_offboarding WHERE id = ?")?
            .execute([id])?;
        delete_link(c, t, user_id)?;
    }
    for (id, error) in &r.failed {
        c.prepare_cached(
            "UPDATE sync_offboarding SET attempts = attempts + 1, last_error = ? WHERE id = ?",
        )?
        .execute(params![error, id])?;
    }
    own(c, &r.rows_of, t, &[], &r.disowned, &now)?;
    if let Some(holder) = &r.holder {
        renew_lease(c, t, holder, r.lease_expires)?;
    }
    Ok(())
}

/// Record the rows `tenant` now owns in `rows_of`'s table, and forget `disowned` ones (of
/// this tenant only). A row another tenant owns keeps its owner.
fn own(
    c: &Connection,
    rows_of: &RowsOf,
    tenant: &str,
    owned: &[Owned],
    disowned: &[String],
    now: &str,
) -> Result<(), SyncError> {
    let RowsOf {
        application,
        table,
        scope,
    } = rows_of;
    if !disowned.is_empty() {
        let mut gone = c.prepare_cached(
            "DELETE FROM sync_owners WHERE application = ? AND app_table = ? AND scope = ? \
             AND app_key = ? AND tenant = ?",
        )?;
        for key in disowned {
            gone.execute(params![application, table, scope, key, tenant])?;
        }
    }
    let mut insert = c.prepare_cached(
        "INSERT INTO sync_owners (application, app_table, scope, app_key, tenant, user_id, how, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET user_id = excluded.user_id, \
         at = excluded.at WHERE sync_owners.tenant = excluded.tenant",
    )?;
    for o in owned {
        insert.execute(params![
            application,
            table,
            scope,
            o.key,
            tenant,
            o.user_id,
            o.how,
            now
        ])?;
    }
    Ok(())
}

/// A batch's record, statement by statement (each prepared once per connection).
fn record(c: &Connection, r: &Record) -> Result<(), SyncError> {
    let t = r.tenant.as_str();
    let now = format_time(r.now);
    insert_items(c, r.run_id, &r.items)?;
    if !r.dry_run {
        let mut link = c.prepare_cached(UPSERT_LINK)?;
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
        let mut retry = c.prepare_cached(ADD_RETRY)?;
        for f in &r.retries {
            retry.execute(params![
                t,
                f.user_id,
                f.error,
                now,
                now,
                f.change_seq,
                r.quarantine_after
            ])?;
        }
        if !r.cleared.is_empty() {
            c.prepare_cached(CLEAR_RETRIES)?
                .execute(params![t, serde_json::to_string(&r.cleared)?])?;
        }
        if let Some(mark) = r.advance {
            c.prepare_cached(ADVANCE_WATERMARK)?
                .execute(params![t, mark.seq, mark.pk, now])?;
        }
        own(c, &r.rows_of, t, &r.owned, &r.disowned, &now)?;
        renew_lease(c, t, &r.holder, r.lease_expires)?;
    }
    update_run(
        c,
        r.run_id,
        RunStatus::Running,
        &r.counts,
        r.watermark_to,
        None,
        None,
    )
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn lease_row(c: &Connection, tenant: &str) -> Result<Option<LeaseRow>, SyncError> {
    let row = c
        .prepare_cached(
            "SELECT holder, run_id, acquired_at, expires_at FROM sync_leases WHERE tenant = ?",
        )?
        .query_row([tenant], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(holder, run_id, acquired, expires)| LeaseRow {
        holder,
        run_id,
        acquired_at: parse_time(&acquired).unwrap_or_default(),
        expires_at: parse_time(&expires).unwrap_or_default(),
    }))
}

/// A link's fields as the values before an offboarding (none when the link is gone or its
/// JSON unreadable: the offboarding is applied all the same).
pub(crate) fn applied_fields(text: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// An operator's action on the sync side, in the audit trail.
fn audit(
    c: &Connection,
    tenant: &str,
    actor: &str,
    action: &str,
    detail: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    c.prepare_cached(
        "INSERT INTO sync_audit (at, tenant, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
    )?
    .execute(params![
        format_time(now),
        tenant,
        actor,
        action,
        detail.to_string()
    ])?;
    Ok(())
}

/// The due users of `q` (by pk), on `c`.
fn due_users(c: &Connection, q: &DueQuery) -> Result<Vec<UserRow>, SyncError> {
    let cutoff = format_time(q.cutoff);
    let (join, held) = held_join(q.held_in);
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users u{join} WHERE {DUE}{held} AND u.pk > ? ORDER BY u.pk LIMIT ?"
    );
    let mut p: Vec<&dyn ToSql> = Vec::with_capacity(6);
    if let Some(run) = &q.held_in {
        p.push(run);
    }
    p.extend([
        &q.tenant as &dyn ToSql,
        &cutoff,
        &cutoff,
        &q.after_pk,
        &q.limit,
    ]);
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(&p[..], user_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// For each of `keys`, how many links of the tenant have it.
fn key_links(
    c: &Connection,
    tenant: &str,
    keys: &[&str],
) -> Result<HashMap<String, i64>, SyncError> {
    let mut stmt = c.prepare_cached(
        "SELECT app_key, count(*) FROM sync_links WHERE tenant = ? AND app_key IN \
         (SELECT value FROM json_each(?)) GROUP BY app_key",
    )?;
    let rows = stmt.query_map(params![tenant, serde_json::to_string(keys)?], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
}

#[async_trait]
impl SyncStore for SqliteStaging {
    async fn watermark(&self, tenant: &str) -> Result<Mark, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            let m: Option<(i64, i64)> = c
                .prepare_cached("SELECT change_seq, last_pk FROM sync_watermarks WHERE tenant = ?")?
                .query_row([&tenant], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(m.map(|(seq, pk)| Mark { seq, pk }).unwrap_or_default())
        })
        .await
    }

    /// SQLite has one writer at a time: every committed write is below the counter.
    async fn high_seq(&self) -> Result<i64, SyncError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT value FROM change_seq WHERE id = 1")?
                    .query_row([], |r| r.get(0))?,
            )
        })
        .await
    }

    async fn count_changed(&self, tenant: &str, after: Mark, high: i64) -> Result<i64, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT count(*) FROM users u WHERE u.tenant = ? AND (u.change_seq, u.pk) > (?, ?) \
                 AND u.change_seq <= ?",
            )?
            .query_row(params![tenant, after.seq, after.pk, high], |r| r.get(0))?)
        })
        .await
    }

    /// Users and links read in one read transaction (one snapshot), then planned on the same
    /// blocking thread with the connection given back.
    async fn read_batch(
        &self,
        tenant: &str,
        read: Read,
        limit: u32,
        plan: BatchPlanner,
    ) -> Result<Planned, SyncError> {
        let tenant = tenant.to_string();
        let reads = self.reads.clone();
        tokio::task::spawn_blocking(move || {
            let (rows, links) = reads.with(|c| {
                snapshot(c, || {
                    let rows = match read {
                        Read::Retry {
                            watermark,
                            after_pk,
                        } => retry_users(c, &tenant, watermark, after_pk, limit)?,
                        Read::Changed { after, high } => {
                            changed_users(c, &tenant, after, high, limit)?
                        }
                    };
                    let links = links(c, &tenant, &rows)?;
                    Ok::<_, SyncError>((rows, links))
                })
            })?;
            plan(rows, links)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
    }

    async fn record(&self, r: Record) -> Result<(), SyncError> {
        self.writes.run(move |c| record(c, &r)).await
    }

    async fn begin_run(&self, run: BeginRun) -> Result<Begun, SyncError> {
        self.writes
            .run(move |c| {
                // A dry run writes nothing but its ledger entry, so it needs no lease.
                let leased = run.dry_run || acquire_lease(c, &run)?;
                if leased && !run.dry_run {
                    abandon_stale_runs(c, &run.tenant, run.started_at)?;
                    // One index look-up per retry row (a `NOT IN (SELECT id …)` would list
                    // every user of the tenant).
                    c.prepare_cached(
                        "DELETE FROM sync_retry WHERE tenant = ?1 AND NOT EXISTS \
                         (SELECT 1 FROM users u WHERE u.tenant = ?1 AND u.id = sync_retry.user_id)",
                    )?
                    .execute([&run.tenant])?;
                }
                let status = if leased {
                    RunStatus::Running
                } else {
                    RunStatus::Skipped
                };
                let run_id = insert_run(c, &run, status, None)?;
                if leased && !run.dry_run {
                    lease_run(c, &run, run_id)?;
                }
                Ok(Begun { run_id, leased })
            })
            .await
    }

    async fn begin_approval(
        &self,
        run: BeginRun,
        approves: i64,
        approver: &str,
    ) -> Result<i64, SyncError> {
        let approver = approver.to_string();
        self.writes
            .run(move |c| {
                if !acquire_lease(c, &run)? {
                    return Err(SyncError::Busy(run.tenant.clone()));
                }
                abandon_stale_runs(c, &run.tenant, run.started_at)?;
                let run_id = insert_run(c, &run, RunStatus::Running, Some(approves))?;
                // The admin API reports which run holds the lease.
                lease_run(c, &run, run_id)?;
                let n = c.prepare_cached(APPROVE_RUN)?.execute(params![
                    format_time(run.started_at),
                    run_id,
                    approver,
                    approves
                ])?;
                if n == 0 {
                    // Approved meanwhile (or never held): the job's writes are undone.
                    return Err(SyncError::NotAwaitingApproval(approves));
                }
                let detail = serde_json::json!({ "run_id": approves, "approving_run": run_id });
                audit(
                    c,
                    &run.tenant,
                    &approver,
                    "approve",
                    &detail,
                    run.started_at,
                )?;
                Ok(run_id)
            })
            .await
    }

    async fn prune_runs(&self, prune: PruneRuns) -> Result<u64, SyncError> {
        let (noop_before, before) = (format_time(prune.noop_before), format_time(prune.before));
        let mut pruned = 0;
        // A bounded batch per job: the writer's other callers wait for one batch at most.
        loop {
            let (noop_before, before) = (noop_before.clone(), before.clone());
            let tenant = prune.tenant.clone();
            let n = self
                .writes
                .run(move |c| -> Result<u64, SyncError> {
                    let ids: Vec<i64> = c
                        .prepare_cached(PRUNABLE_RUNS)?
                        .query_map(params![before, noop_before, PRUNE_BATCH, tenant], |r| {
                            r.get(0)
                        })?
                        .collect::<Result<_, rusqlite::Error>>()?;
                    if ids.is_empty() {
                        return Ok(0u64);
                    }
                    let ids = serde_json::to_string(&ids)?;
                    let mut deleted = 0;
                    for sql in PRUNE_RUNS {
                        deleted = c.prepare_cached(sql)?.execute([&ids])?;
                    }
                    Ok(deleted as u64)
                })
                .await?;
            pruned += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }

    async fn finish_run(&self, end: FinishRun) -> Result<(), SyncError> {
        self.writes
            .run(move |c| {
                update_run(
                    c,
                    end.run_id,
                    end.status,
                    &end.counts,
                    end.watermark_to,
                    Some(end.ended_at),
                    end.error.as_deref(),
                )?;
                if let Some(holder) = &end.holder {
                    c.prepare_cached("DELETE FROM sync_leases WHERE tenant = ? AND holder = ?")?
                        .execute(params![end.tenant, holder])?;
                }
                Ok(())
            })
            .await
    }

    async fn heartbeat(&self, beat: Heartbeat) -> Result<bool, SyncError> {
        self.writes
            .run(move |c| {
                c.prepare_cached("UPDATE sync_runs SET heartbeat_at = ? WHERE id = ?")?
                    .execute(params![format_time(beat.now), beat.run_id])?;
                if !beat.leased {
                    return Ok(true);
                }
                let n = c.prepare_cached(RENEW_LEASE)?.execute(params![
                    format_time(beat.lease_expires),
                    beat.tenant,
                    beat.holder
                ])?;
                Ok(n > 0)
            })
            .await
    }

    async fn running_runs(&self, tenant: Option<&str>) -> Result<Vec<RunningRun>, SyncError> {
        let tenant = tenant.map(str::to_string);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, tenant, holder, heartbeat_at, started_at, dry_run FROM sync_runs \
                 WHERE status = 'running' AND (?1 IS NULL OR tenant = ?1) ORDER BY id",
            )?;
            let rows = stmt.query_map([&tenant], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })?;
            rows.map(|r| {
                let (id, tenant, holder, heartbeat_at, started_at, dry_run) = r?;
                Ok(RunningRun {
                    id,
                    tenant,
                    holder,
                    heartbeat_at: heartbeat_at.as_deref().and_then(parse_time),
                    started_at: parse_time(&started_at).unwrap_or_default(),
                    dry_run,
                })
            })
            .collect()
        })
        .await
    }

    async fn close_runs(
        &self,
        ids: &[i64],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, SyncError> {
        let (ids, reason) = (serde_json::to_string(ids)?, reason.to_string());
        self.writes
            .run(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE sync_runs SET status = 'failed', ended_at = ?, error = ? \
                         WHERE status = 'running' AND id IN (SELECT value FROM json_each(?))",
                    )?
                    .execute(params![format_time(now), reason, ids])?;
                Ok(n as u64)
            })
            .await
    }

    async fn lease_row(&self, tenant: &str) -> Result<Option<LeaseRow>, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| lease_row(c, &tenant)).await
    }

    async fn release_lease(
        &self,
        tenant: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LeaseRow>, SyncError> {
        let (tenant, actor) = (tenant.to_string(), actor.to_string());
        self.writes
            .run(move |c| {
                let Some(lease) = lease_row(c, &tenant)? else {
                    return Ok(None);
                };
                c.prepare_cached("DELETE FROM sync_leases WHERE tenant = ?")?
                    .execute([&tenant])?;
                let detail = serde_json::json!({
                    "holder": lease.holder,
                    "run_id": lease.run_id,
                    "expires_at": format_time(lease.expires_at),
                });
                audit(c, &tenant, &actor, "release_lease", &detail, now)?;
                Ok(Some(lease))
            })
            .await
    }

    async fn owners(
        &self,
        rows: &RowsOf,
        keys: &[String],
    ) -> Result<HashMap<String, String>, SyncError> {
        let (rows, keys) = (rows.clone(), serde_json::to_string(keys)?);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT app_key, tenant FROM sync_owners WHERE application = ? AND app_table = ? \
                 AND scope = ? AND app_key IN (SELECT value FROM json_each(?))",
            )?;
            let found = stmt.query_map(
                params![rows.application, rows.table, rows.scope, keys],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )?;
            Ok(found.collect::<Result<HashMap<_, _>, _>>()?)
        })
        .await
    }

    async fn claim(
        &self,
        rows: &RowsOf,
        tenant: &str,
        claims: Vec<Owned>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, SyncError> {
        let (rows, tenant) = (rows.clone(), tenant.to_string());
        self.writes
            .run(move |c| {
                own(c, &rows, &tenant, &claims, &[], &format_time(now))?;
                let mut owner = c.prepare_cached(
                    "SELECT tenant FROM sync_owners WHERE application = ? AND app_table = ? \
                     AND scope = ? AND app_key = ?",
                )?;
                let mut taken = Vec::new();
                for o in &claims {
                    let t: String = owner.query_row(
                        params![rows.application, rows.table, rows.scope, o.key],
                        |r| r.get(0),
                    )?;
                    if t != tenant {
                        taken.push(o.key.clone());
                    }
                }
                Ok(taken)
            })
            .await
    }

    async fn links_page(
        &self,
        tenant: &str,
        after_user_id: &str,
        limit: u32,
    ) -> Result<Vec<(String, Link)>, SyncError> {
        let (tenant, after) = (tenant.to_string(), after_user_id.to_string());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, app_key, fingerprint, applied_roles, fields, state FROM sync_links \
                 WHERE tenant = ? AND user_id > ? ORDER BY user_id LIMIT ?",
            )?;
            let rows = stmt.query_map(params![tenant, after, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            rows.map(|r| {
                let (id, app_key, fingerprint, roles, fields, state) = r?;
                Ok((id, Link::parse(app_key, fingerprint, &roles, &fields, state)?))
            })
            .collect()
        })
        .await
    }

    async fn count_quarantined(&self, tenant: &str) -> Result<i64, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT count(*) FROM sync_retry WHERE tenant = ? AND quarantined_at IS NOT NULL",
            )?
            .query_row([&tenant], |r| r.get(0))?)
        })
        .await
    }

    async fn release_quarantine(
        &self,
        tenant: &str,
        user_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, SyncError> {
        let (tenant, user_id, actor) = (tenant.to_string(), user_id.to_string(), actor.to_string());
        self.writes
            .run(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE sync_retry SET quarantined_at = NULL, attempts = 0 \
                         WHERE tenant = ? AND user_id = ? AND quarantined_at IS NOT NULL",
                    )?
                    .execute(params![tenant, user_id])?;
                if n > 0 {
                    let detail = serde_json::json!({ "user_id": user_id });
                    audit(c, &tenant, &actor, "release_quarantine", &detail, now)?;
                }
                Ok(n > 0)
            })
            .await
    }

    async fn run_state(&self, run_id: i64) -> Result<Option<RunState>, SyncError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT tenant, status, dry_run, approved_at IS NOT NULL FROM sync_runs WHERE id = ?",
            )?
            .query_row([run_id], |r| {
                Ok(RunState {
                    tenant: r.get(0)?,
                    status: r.get(1)?,
                    dry_run: r.get(2)?,
                    approved: r.get(3)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn count_due(
        &self,
        tenant: &str,
        cutoff: DateTime<Utc>,
        held_in: Option<i64>,
    ) -> Result<i64, SyncError> {
        let (tenant, cutoff) = (tenant.to_string(), format_time(cutoff));
        self.read(move |c| {
            let (join, held) = held_join(held_in);
            let sql = format!("SELECT count(*) FROM users u{join} WHERE {DUE}{held}");
            let mut p: Vec<&dyn ToSql> = Vec::with_capacity(4);
            if let Some(run) = &held_in {
                p.push(run);
            }
            p.extend([&tenant as &dyn ToSql, &cutoff, &cutoff]);
            Ok(c.prepare_cached(&sql)?.query_row(&p[..], |r| r.get(0))?)
        })
        .await
    }

    async fn count_links(&self, tenant: &str) -> Result<i64, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT count(*) FROM sync_links WHERE tenant = ?")?
                    .query_row([&tenant], |r| r.get(0))?,
            )
        })
        .await
    }

    async fn lifecycle_batch(
        &self,
        due: DueQuery,
        plan: LifecyclePlanner,
    ) -> Result<Option<LifecycleDone>, SyncError> {
        self.writes
            .run(move |c| {
                let rows = due_users(c, &due)?;
                let Some(last_pk) = rows.last().map(|r| r.pk) else {
                    return Ok(None);
                };
                let links = links(c, &due.tenant, &rows)?;
                let keys: Vec<&str> = links.values().map(|l| l.app_key.as_str()).collect();
                let key_links = key_links(c, &due.tenant, &keys)?;
                let record = plan(DueBatch {
                    rows,
                    links,
                    key_links,
                })?;
                apply_lifecycle(c, &record)?;
                Ok(Some(LifecycleDone {
                    last_pk,
                    items: record.items,
                }))
            })
            .await
    }

    async fn queued(
        &self,
        tenant: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Queued>, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT o.id, o.user_id, o.user_name, o.app_key, o.action, o.roles, l.fields \
                 FROM sync_offboarding o LEFT JOIN sync_links l \
                 ON l.tenant = o.tenant AND l.user_id = o.user_id \
                 WHERE o.tenant = ? AND o.id > ? ORDER BY o.id LIMIT ?",
            )?;
            let rows = stmt.query_map(params![tenant, after_id, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            rows.map(|r| {
                let (id, user_id, user_name, app_key, action, roles, applied) = r?;
                Ok(Queued {
                    id,
                    user_id,
                    user_name,
                    app_key,
                    action: serde_json::from_str(&action)?,
                    roles: serde_json::from_str(&roles)?,
                    applied: applied_fields(applied.as_deref()),
                })
            })
            .collect()
        })
        .await
    }

    async fn record_lifecycle(&self, record: LifecycleRecord) -> Result<(), SyncError> {
        self.writes.run(move |c| apply_lifecycle(c, &record)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    /// The change feed and the link look-up are answered from indexes: a batch costs the same
    /// among 1 000 users as among 1 000 000.
    #[tokio::test]
    async fn the_change_feed_and_links_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        SqliteStaging::open(&path, Durability::Normal)
            .await
            .unwrap();
        let c = Connection::open(&path).unwrap();
        let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            stmt.query_map(params, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let feed = plan(&changed_users_sql(), &[&"t", &5, &7, &100, &500]);
        assert!(
            feed[0].contains("users_change_seq (tenant=? AND change_seq>? AND change_seq<?)"),
            "{feed:?}"
        );
        assert!(
            !feed.iter().any(|l| l.contains("TEMP B-TREE")),
            "no sort: {feed:?}"
        );
        assert!(
            feed.iter().any(|l| l.contains("group_members_member")),
            "{feed:?}"
        );
        let links = plan(LINKS, &[&"t", &"[\"u1\"]"]);
        assert!(
            links[0].contains("PRIMARY KEY (tenant=? AND user_id=?)"),
            "{links:?}"
        );
        for p in feed.iter().chain(&links) {
            assert!(
                !p.starts_with("SCAN u") && !p.starts_with("SCAN users"),
                "{p}"
            );
        }
    }
}
