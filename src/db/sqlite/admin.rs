//! The admin API's counts on SQLite staging, and the provisioning log's table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{ToSql, params, params_from_iter};

use super::SqliteStaging;
use super::conn::snapshot;
use crate::store::{
    About, ProvisioningEntry, ProvisioningLogStore, ProvisioningQuery, ProvisioningRow,
    StagingCounts, StoreError, TenantCounts, UserKey, format_time,
};

/// Rows per INSERT statement: 11 parameters each stays far below SQLite's parameter limit.
const INSERT_CHUNK: usize = 500;
/// Rows per DELETE when pruning: each chunk is a job of its own, so SCIM writes never wait
/// long behind a prune.
const PRUNE_CHUNK: i64 = 5_000;

/// The columns of an entry, in `provisioning_log` and its inbox alike.
const ENTRY_COLUMNS: &str = "tenant, at, request_id, method, path, resource_id, status, \
                             duration_ms, error, user_name, external_id";

/// Rows moved from the inbox to the log per job.
const SETTLE_CHUNK: i64 = 5_000;

/// Where entries are appended.
#[derive(Clone, Copy)]
pub(super) enum LogTable {
    /// `provisioning_log`, with its look-up indexes.
    Log,
    /// `provisioning_log_inbox`, without any: a SCIM write's entry, written with the write.
    Inbox,
}

/// Append provisioning log entries, a few hundred per statement, within the caller's job.
pub(super) fn insert_log_rows(
    c: &rusqlite::Connection,
    table: LogTable,
    entries: &[ProvisioningEntry],
) -> Result<(), rusqlite::Error> {
    let table = match table {
        LogTable::Log => "provisioning_log",
        LogTable::Inbox => "provisioning_log_inbox",
    };
    for chunk in entries.chunks(INSERT_CHUNK) {
        let mut sql = format!("INSERT INTO {table} ({ENTRY_COLUMNS}) VALUES ");
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "));
        let times: Vec<String> = chunk.iter().map(|e| format_time(e.at)).collect();
        let statuses: Vec<i64> = chunk.iter().map(|e| i64::from(e.status)).collect();
        let mut p: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 11);
        for (i, e) in chunk.iter().enumerate() {
            p.extend([
                &e.tenant as &dyn ToSql,
                &times[i],
                &e.request_id,
                &e.method,
                &e.path,
                &e.resource_id,
                &statuses[i],
                &e.duration_ms,
                &e.error,
                &e.user_name,
                &e.external_id,
            ]);
        }
        c.prepare_cached(&sql)?.execute(&p[..])?;
    }
    Ok(())
}

#[async_trait]
impl StagingCounts for SqliteStaging {
    async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts, StoreError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                // Live users from the users_live index alone, the inactive ones through
                // users_deactivated (active = 0 exactly when deactivated_at is set): neither
                // reads the rows of the active users, whose documents make a scan slow. Named,
                // because with one tenant the planner's statistics make a table scan look as
                // cheap (115 ms instead of 4 ms for 100 000 users).
                "SELECT \
                   (SELECT count(*) FROM users INDEXED BY users_live \
                      WHERE tenant = ?1 AND deleted_at IS NULL), \
                   (SELECT count(*) FROM users INDEXED BY users_deactivated \
                      WHERE tenant = ?1 AND deactivated_at IS NOT NULL AND deleted_at IS NULL \
                      AND active = 0), \
                   (SELECT count(*) FROM groups WHERE tenant = ?1), \
                   (SELECT count(*) FROM group_members WHERE tenant = ?1)",
            )?
            .query_row([&tenant], |r| {
                let (live, inactive): (i64, i64) = (r.get(0)?, r.get(1)?);
                Ok(TenantCounts {
                    active_users: live - inactive,
                    inactive_users: inactive,
                    groups: r.get(2)?,
                    memberships: r.get(3)?,
                })
            })?)
        })
        .await
    }

    async fn member_counts(
        &self,
        tenant: &str,
        group_ids: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        let (tenant, ids) = (tenant.to_string(), group_ids.to_vec());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT count(*) FROM group_members WHERE tenant = ? AND group_id = ?",
            )?;
            ids.iter()
                .map(|id| Ok(stmt.query_row(params![tenant, id], |r| r.get(0))?))
                .collect()
        })
        .await
    }

    async fn user_ids(&self, tenant: &str, by: &UserKey) -> Result<Vec<String>, StoreError> {
        let (sql, key) = match by {
            UserKey::UserName(n) => ("user_name_ci = ?", n.to_lowercase()),
            UserKey::ExternalId(x) => ("external_id = ?", x.clone()),
        };
        let sql =
            format!("SELECT id FROM users WHERE tenant = ? AND {sql} ORDER BY pk DESC LIMIT ?");
        let tenant = tenant.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![tenant, key, About::MAX_IDS as i64], |r| r.get(0))?;
            Ok::<_, StoreError>(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }
}

#[async_trait]
impl ProvisioningLogStore for SqliteStaging {
    /// A few hundred entries per statement, all in one job.
    async fn insert_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.writes
            .run(move |c| Ok::<_, StoreError>(insert_log_rows(c, LogTable::Log, &entries)?))
            .await
    }

    /// A few thousand rows per job, oldest first, until the inbox is empty; a look at the
    /// inbox on a read connection first, so an idle log costs no write.
    async fn settle_provisioning_log(&self) -> Result<u64, StoreError> {
        let mut moved = 0;
        loop {
            let waiting: bool = self
                .read(|c| {
                    Ok::<_, StoreError>(
                        c.prepare_cached("SELECT EXISTS (SELECT 1 FROM provisioning_log_inbox)")?
                            .query_row([], |r| r.get(0))?,
                    )
                })
                .await?;
            if !waiting {
                return Ok(moved);
            }
            let n = self
                .writes
                .run(|c| {
                    let last: Option<i64> = c
                        .prepare_cached(
                            "SELECT max(id) FROM (SELECT id FROM provisioning_log_inbox \
                             ORDER BY id LIMIT ?)",
                        )?
                        .query_row([SETTLE_CHUNK], |r| r.get(0))?;
                    let Some(last) = last else {
                        return Ok::<_, StoreError>(0);
                    };
                    c.prepare_cached(&format!(
                        "INSERT INTO provisioning_log ({ENTRY_COLUMNS}) \
                         SELECT {ENTRY_COLUMNS} FROM provisioning_log_inbox WHERE id <= ? ORDER BY id"
                    ))?
                    .execute([last])?;
                    Ok(c.prepare_cached("DELETE FROM provisioning_log_inbox WHERE id <= ?")?
                        .execute([last])? as u64)
                })
                .await?;
            moved += n;
            if n < SETTLE_CHUNK as u64 {
                return Ok(moved);
            }
        }
    }

    async fn amend_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.writes
            .run(move |c| {
                // In the inbox (small, so scanned) or already moved to the log.
                for table in ["provisioning_log_inbox", "provisioning_log"] {
                    let mut stmt = c.prepare_cached(&format!(
                        "UPDATE {table} SET status = ?, duration_ms = ?, error = ? \
                         WHERE tenant = ? AND request_id = ? AND at = ?"
                    ))?;
                    for e in &entries {
                        stmt.execute(params![
                            i64::from(e.status),
                            e.duration_ms,
                            e.error,
                            e.tenant,
                            e.request_id,
                            format_time(e.at)
                        ])?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// Per tenant and a few thousand rows per job.
    async fn prune_provisioning_log(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = format_time(cutoff);
        let tenants: Vec<String> = self
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT DISTINCT tenant FROM provisioning_log")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok::<_, StoreError>(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await?;
        let mut deleted = 0;
        for tenant in tenants {
            loop {
                let (tenant, cutoff) = (tenant.clone(), cutoff.clone());
                let n = self
                    .writes
                    .run(move |c| {
                        Ok::<_, StoreError>(
                            c.prepare_cached(
                                "DELETE FROM provisioning_log WHERE id IN (SELECT id FROM \
                                 provisioning_log WHERE tenant = ? AND at < ? LIMIT ?)",
                            )?
                            .execute(params![
                                tenant,
                                cutoff,
                                PRUNE_CHUNK
                            ])?,
                        )
                    })
                    .await?;
                deleted += n as u64;
                if (n as i64) < PRUNE_CHUNK {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// Count and page in one read transaction, so both see the same entries.
    async fn provisioning_log(
        &self,
        tenant: &str,
        q: &ProvisioningQuery,
    ) -> Result<(i64, Vec<ProvisioningRow>), StoreError> {
        let (lo, hi) = q.status.map(|s| s.range()).unwrap_or((0, 999));
        let mut filter = String::from("tenant = ? AND status BETWEEN ? AND ?");
        let mut args: Vec<Value> = vec![
            Value::Text(tenant.to_string()),
            Value::Integer(i64::from(lo)),
            Value::Integer(i64::from(hi)),
        ];
        let mut and = |sql: &str, v: Value| {
            filter.push_str(sql);
            args.push(v);
        };
        if let Some(t) = q.since {
            and(" AND at >= ?", Value::Text(format_time(t)));
        }
        if let Some(t) = q.until {
            and(" AND at < ?", Value::Text(format_time(t)));
        }
        if let Some(m) = &q.method {
            and(" AND method = ?", Value::Text(m.clone()));
        }
        if let Some(r) = &q.request_id {
            and(" AND request_id = ?", Value::Text(r.clone()));
        }
        if let Some(about) = q.about.as_ref().filter(|a| !a.is_empty()) {
            // Each branch its own index (SQLite's OR optimisation): resource id, userName,
            // externalId.
            let mut any: Vec<&str> = Vec::new();
            if !about.ids.is_empty() {
                any.push("resource_id IN (SELECT value FROM json_each(?))");
                args.push(Value::Text(
                    serde_json::to_string(&about.ids).unwrap_or_else(|_| "[]".into()),
                ));
            }
            if let Some(n) = &about.user_name {
                any.push("user_name = ?");
                args.push(Value::Text(n.clone()));
            }
            if let Some(x) = &about.external_id {
                any.push("external_id = ?");
                args.push(Value::Text(x.clone()));
            }
            filter.push_str(&format!(" AND ({})", any.join(" OR ")));
        }
        let (limit, offset) = (q.limit, q.offset);
        self.read(move |c| {
            snapshot(c, || {
                let total: i64 = c
                    .prepare_cached(&format!(
                        "SELECT count(*) FROM provisioning_log WHERE {filter}"
                    ))?
                    .query_row(params_from_iter(&args), |r| r.get(0))?;
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT id, at, request_id, method, path, resource_id, status, duration_ms, \
                     error, user_name, external_id \
                     FROM provisioning_log WHERE {filter} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?"
                ))?;
                let page = args
                    .iter()
                    .cloned()
                    .chain([Value::Integer(limit), Value::Integer(offset)]);
                let rows = stmt
                    .query_map(params_from_iter(page), |r| {
                        let status: i64 = r.get(6)?;
                        Ok(ProvisioningRow {
                            id: r.get(0)?,
                            at: r.get(1)?,
                            request_id: r.get(2)?,
                            method: r.get(3)?,
                            path: r.get(4)?,
                            resource_id: r.get(5)?,
                            status: u16::try_from(status).unwrap_or(0),
                            duration_ms: r.get(7)?,
                            error: r.get(8)?,
                            user_name: r.get(9)?,
                            external_id: r.get(10)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StoreError>((total, rows))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::StatusFilter;
    use chrono::TimeZone;

    fn entry(tenant: &str, minute: u32, status: u16) -> ProvisioningEntry {
        ProvisioningEntry {
            tenant: tenant.into(),
            at: Utc
                .with_ymd_and_hms(2026, 1, 1, 10, minute, 0)
                .single()
                .unwrap(),
            request_id: format!("r{minute}"),
            method: "GET".into(),
            path: "/Users/{id}".into(),
            resource_id: Some("u1".into()),
            status,
            duration_ms: 1.5,
            error: (status >= 400).then(|| "nope".to_string()),
            user_name: None,
            external_id: None,
        }
    }

    #[tokio::test]
    async fn log_is_filtered_paged_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStaging::open(&dir.path().join("s.db"), Durability::Normal)
            .await
            .unwrap();
        let entries: Vec<_> = [(0, 200), (1, 404), (2, 201), (3, 500), (4, 409)]
            .iter()
            .map(|(m, st)| entry("acme", *m, *st))
            .chain([entry("other", 5, 404)])
            .collect();
        s.insert_provisioning_log(&entries).await.unwrap();
        let all = ProvisioningQuery {
            limit: 10,
            ..Default::default()
        };
        let (total, rows) = s.provisioning_log("acme", &all).await.unwrap();
        assert_eq!(total, 5);
        let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["r4", "r3", "r2", "r1", "r0"]);
        let q = ProvisioningQuery {
            status: Some(StatusFilter::Class(4)),
            limit: 1,
            offset: 1,
            ..Default::default()
        };
        let (total, rows) = s.provisioning_log("acme", &q).await.unwrap();
        assert_eq!((total, rows[0].request_id.as_str()), (2, "r1"));
        let q = ProvisioningQuery {
            since: Some(entries[1].at),
            until: Some(entries[3].at),
            limit: 10,
            ..Default::default()
        };
        let (total, _) = s.provisioning_log("acme", &q).await.unwrap();
        assert_eq!(total, 2, "since is inclusive, until exclusive");
        assert_eq!(s.prune_provisioning_log(entries[2].at).await.unwrap(), 2);
        let (total, _) = s.provisioning_log("acme", &all).await.unwrap();
        assert_eq!(total, 3);
    }

    #[tokio::test]
    async fn counts_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStaging::open(&dir.path().join("s.db"), Durability::Normal)
            .await
            .unwrap();
        assert_eq!(
            s.tenant_counts("acme").await.unwrap(),
            TenantCounts::default()
        );
    }
}
