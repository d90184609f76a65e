//! The ledger reads on SQLite staging (tables `sync_*`, users in `users`), on read connections.
//! Times are stored as RFC 3339 text with milliseconds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, ToSql, params};

use super::SqliteStaging;
use super::conn::snapshot;
use crate::store::format_time;
use crate::sync::SyncError;
use crate::sync::ledger::{
    FailingRow, ItemRow, LedgerReads, LinkRow, PendingRow, QueuedRow, RawLink, RunQuery, RunRow,
    StagedRow, UserItem, UserRef, UserSyncRow, decode_item, decode_link, decode_pending,
    decode_staged, queued_action,
};

const RUN_COLUMNS: &str = "r.id, r.tenant, r.trigger, r.dry_run, r.full, r.status, r.started_at, \
     r.ended_at, r.created, r.updated, r.unchanged, r.roles_added, r.roles_removed, \
     r.deactivated, r.offboarded, r.failed, r.quarantined, \
     (SELECT count(*) FROM sync_run_items i WHERE i.run_id = r.id AND i.outcome = 'offboarding_held') AS held, \
     r.watermark_from, r.watermark_to, r.error, r.approves_run, r.approved_at, r.approved_by";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        trigger: r.get(2)?,
        dry_run: r.get(3)?,
        full: r.get(4)?,
        status: r.get(5)?,
        started_at: r.get(6)?,
        ended_at: r.get(7)?,
        created: r.get(8)?,
        updated: r.get(9)?,
        unchanged: r.get(10)?,
        roles_added: r.get(11)?,
        roles_removed: r.get(12)?,
        deactivated: r.get(13)?,
        offboarded: r.get(14)?,
        failed: r.get(15)?,
        quarantined: r.get(16)?,
        held: r.get(17)?,
        watermark_from: r.get(18)?,
        watermark_to: r.get(19)?,
        error: r.get(20)?,
        approves_run: r.get(21)?,
        approved_at: r.get(22)?,
        approved_by: r.get(23)?,
    })
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

fn count_pending(
    c: &rusqlite::Connection,
    tenant: &str,
    retention_hours: u32,
) -> Result<i64, SyncError> {
    Ok(
        c.prepare_cached(&format!("SELECT count(*) FROM ({PENDING})"))?
            .query_row(params![tenant, retention_modifier(retention_hours)], |r| {
                r.get(0)
            })?,
    )
}

#[async_trait]
impl LedgerReads for SqliteStaging {
    async fn runs(&self, q: &RunQuery) -> Result<(i64, Vec<RunRow>), SyncError> {
        let q = q.clone();
        self.read(move |c| {
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
            let mut p: Vec<&dyn ToSql> = binds.iter().map(|b| b as &dyn ToSql).collect();
            snapshot(c, || {
                let total: i64 = c
                    .prepare_cached(&format!("SELECT count(*) FROM sync_runs r WHERE {cond}"))?
                    .query_row(&p[..], |r| r.get(0))?;
                p.extend([&q.limit as &dyn ToSql, &q.offset]);
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM sync_runs r WHERE {cond} ORDER BY r.id DESC LIMIT ? OFFSET ?"
                ))?;
                let rows = stmt
                    .query_map(&p[..], run_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, SyncError>((total, rows))
            })
        })
        .await
    }

    async fn run(&self, id: i64) -> Result<Option<RunRow>, SyncError> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM sync_runs r WHERE r.id = ?"
            ))?
            .query_row([id], run_row)
            .optional()?)
        })
        .await
    }

    async fn last_run(&self, tenant: &str) -> Result<Option<RunRow>, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM sync_runs r WHERE r.tenant = ? ORDER BY r.id DESC LIMIT 1"
            ))?
            .query_row([&tenant], run_row)
            .optional()?)
        })
        .await
    }

    async fn items(
        &self,
        run_id: i64,
        outcome: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<ItemRow>), SyncError> {
        let outcome = outcome.map(str::to_string);
        self.read(move |c| {
            let cond = if outcome.is_some() {
                "run_id = ? AND outcome = ?"
            } else {
                "run_id = ?"
            };
            let mut p: Vec<&dyn ToSql> = vec![&run_id];
            if let Some(o) = &outcome {
                p.push(o);
            }
            snapshot(c, || {
                let total: i64 = c
                    .prepare_cached(&format!(
                        "SELECT count(*) FROM sync_run_items WHERE {cond}"
                    ))?
                    .query_row(&p[..], |r| r.get(0))?;
                p.extend([&limit as &dyn ToSql, &offset]);
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT id, user_id, user_name, app_key, outcome, changes, roles_added, roles_removed, error \
                     FROM sync_run_items WHERE {cond} ORDER BY id LIMIT ? OFFSET ?"
                ))?;
                let rows = stmt
                    .query_map(&p[..], |r| {
                        Ok(decode_item((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        )))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, SyncError>((total, rows))
            })
        })
        .await
    }

    async fn lease(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<i64>>, SyncError> {
        let (tenant, now) = (tenant.to_string(), format_time(now));
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT run_id FROM sync_leases WHERE tenant = ? AND expires_at > ?",
            )?
            .query_row(params![tenant, now], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn staged_user(
        &self,
        tenant: &str,
        who: UserRef<'_>,
    ) -> Result<Option<StagedRow>, SyncError> {
        let cond = match who {
            UserRef::Id(_) => "u.id = ?",
            UserRef::UserName(_) => "u.user_name_ci = ?",
            UserRef::ExternalId(_) => "u.external_id = ?",
        };
        let sql = format!(
            "SELECT u.id, u.user_name, u.doc, u.active, u.deleted_at IS NOT NULL, \
             (SELECT json_group_array(json_array(g.id, g.display_name, g.external_id)) \
              FROM group_members m JOIN groups g ON g.tenant = m.tenant AND g.id = m.group_id \
              WHERE m.tenant = u.tenant AND m.member_id = u.id) \
             FROM users u WHERE u.tenant = ? AND {cond} ORDER BY u.deleted_at IS NOT NULL, u.pk DESC LIMIT 1"
        );
        let (tenant, key) = (tenant.to_string(), who.key());
        self.read(move |c| {
            let row = c
                .prepare_cached(&sql)?
                .query_row(params![tenant, key], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .optional()?;
            Ok(row.and_then(decode_staged))
        })
        .await
    }

    async fn link(&self, tenant: &str, user_id: &str) -> Result<Option<LinkRow>, SyncError> {
        let (tenant, user_id) = (tenant.to_string(), user_id.to_string());
        self.read(move |c| {
            let row = c
                .prepare_cached(LINK)?
                .query_row(params![tenant, user_id], link_row)
                .optional()?;
            Ok(row.map(decode_link))
        })
        .await
    }

    async fn pending_offboardings(
        &self,
        tenant: &str,
        retention_hours: u32,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<PendingRow>), SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            snapshot(c, || {
                let total = count_pending(c, &tenant, retention_hours)?;
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT * FROM ({PENDING}) ORDER BY due_at, user_id LIMIT ?3 OFFSET ?4"
                ))?;
                let rows = stmt
                    .query_map(
                        params![tenant, retention_modifier(retention_hours), limit, offset],
                        |r| {
                            Ok(decode_pending((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                                r.get(8)?,
                                r.get(9)?,
                            )))
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, SyncError>((total, rows))
            })
        })
        .await
    }

    async fn count_pending(&self, tenant: &str, retention_hours: u32) -> Result<i64, SyncError> {
        let tenant = tenant.to_string();
        self.read(move |c| count_pending(c, &tenant, retention_hours))
            .await
    }

    async fn failing(
        &self,
        tenant: Option<&str>,
        quarantined_only: bool,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<FailingRow>), SyncError> {
        // A tenant's in its index order; all tenants' sorted (the failing users, not the users).
        let mut cond = vec![if tenant.is_some() {
            "r.tenant = ?1"
        } else {
            "?1 IS NULL"
        }];
        if quarantined_only {
            cond.push("r.quarantined_at IS NOT NULL");
        }
        let cond = cond.join(" AND ");
        let tenant = tenant.map(str::to_string);
        self.read(move |c| {
            snapshot(c, || {
                let total: i64 = c
                    .prepare_cached(&format!("SELECT count(*) FROM sync_retry r WHERE {cond}"))?
                    .query_row([&tenant], |r| r.get(0))?;
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {FAILING_COLUMNS} FROM sync_retry r \
                     LEFT JOIN users u ON u.tenant = r.tenant AND u.id = r.user_id \
                     WHERE {cond} ORDER BY r.first_failed_at, r.tenant, r.user_id LIMIT ?2 OFFSET ?3"
                ))?;
                let rows = stmt
                    .query_map(params![tenant, limit, offset], failing_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, SyncError>((total, rows))
            })
        })
        .await
    }

    /// One snapshot: the user's link, retry row, queued offboarding, lifecycle times and
    /// newest items (the items by their user index, newest first).
    async fn user_sync(
        &self,
        tenant: &str,
        user_id: &str,
        limit: i64,
    ) -> Result<UserSyncRow, SyncError> {
        let (tenant, user_id) = (tenant.to_string(), user_id.to_string());
        self.read(move |c| {
            snapshot(c, || {
                let p = params![tenant, user_id];
                let link = c
                    .prepare_cached(LINK)?
                    .query_row(p, link_row)
                    .optional()?
                    .map(decode_link);
                let failing = c
                    .prepare_cached(&format!(
                        "SELECT {FAILING_COLUMNS} FROM sync_retry r \
                         LEFT JOIN users u ON u.tenant = r.tenant AND u.id = r.user_id \
                         WHERE r.tenant = ? AND r.user_id = ?"
                    ))?
                    .query_row(p, failing_row)
                    .optional()?;
                let queued = c
                    .prepare_cached(
                        "SELECT app_key, action, queued_at, attempts, last_error \
                         FROM sync_offboarding WHERE tenant = ? AND user_id = ?",
                    )?
                    .query_row(p, |r| {
                        Ok(QueuedRow {
                            app_key: r.get(0)?,
                            action: queued_action(&r.get::<_, String>(1)?),
                            queued_at: r.get(2)?,
                            attempts: r.get(3)?,
                            last_error: r.get(4)?,
                        })
                    })
                    .optional()?;
                let (deactivated_at, deleted_at) = c
                    .prepare_cached(
                        "SELECT deactivated_at, deleted_at FROM users WHERE tenant = ? AND id = ?",
                    )?
                    .query_row(p, |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                    .unwrap_or((None, None));
                let items_total: i64 = c
                    .prepare_cached(
                        "SELECT count(*) FROM sync_run_items i JOIN sync_runs r ON r.id = i.run_id \
                         WHERE i.user_id = ?2 AND r.tenant = ?1",
                    )?
                    .query_row(p, |r| r.get(0))?;
                let mut stmt = c.prepare_cached(
                    "SELECT r.id, r.trigger, r.dry_run, r.status, r.started_at, i.id, i.user_id, \
                     i.user_name, i.app_key, i.outcome, i.changes, i.roles_added, i.roles_removed, \
                     i.error FROM sync_run_items i JOIN sync_runs r ON r.id = i.run_id \
                     WHERE i.user_id = ?2 AND r.tenant = ?1 ORDER BY i.id DESC LIMIT ?3",
                )?;
                let items = stmt
                    .query_map(params![tenant, user_id, limit], |r| {
                        Ok(UserItem {
                            run_id: r.get(0)?,
                            trigger: r.get(1)?,
                            dry_run: r.get(2)?,
                            run_status: r.get(3)?,
                            started_at: r.get(4)?,
                            item: decode_item((
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                                r.get(8)?,
                                r.get(9)?,
                                r.get(10)?,
                                r.get(11)?,
                                r.get(12)?,
                                r.get(13)?,
                            )),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, SyncError>(UserSyncRow {
                    link,
                    failing,
                    queued,
                    deactivated_at,
                    deleted_at,
                    items_total,
                    items,
                })
            })
        })
        .await
    }
}

/// A link: binds tenant, user id.
const LINK: &str = "SELECT app_key, applied_roles, fields, state, updated_at FROM sync_links \
     WHERE tenant = ? AND user_id = ?";

fn link_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawLink> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// A retry row `r` with its user `u`, in [`FailingRow`]'s field order.
const FAILING_COLUMNS: &str = "r.user_id, u.user_name, r.attempts, r.last_error, \
     r.first_failed_at, r.last_failed_at, r.quarantined_at, r.tenant";

fn failing_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FailingRow> {
    Ok(FailingRow {
        user_id: r.get(0)?,
        user_name: r.get(1)?,
        attempts: r.get(2)?,
        last_error: r.get(3)?,
        first_failed_at: r.get(4)?,
        last_failed_at: r.get(5)?,
        quarantined_at: r.get(6)?,
        tenant: r.get(7)?,
    })
}
