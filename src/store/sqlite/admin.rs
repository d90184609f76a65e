//! What the admin API reads from the staging database, and the provisioning log's table.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::SqliteStore;
use crate::store::{
    ProvisioningEntry, ProvisioningQuery, ProvisioningRow, StoreError, TenantCounts, format_time,
};

/// Rows per INSERT statement: 9 parameters each stays far below SQLite's parameter limit.
const INSERT_CHUNK: usize = 500;
/// Rows per DELETE when pruning.
const PRUNE_CHUNK: i64 = 5_000;

impl SqliteStore {
    /// Live users (active and inactive), groups and memberships of `tenant`.
    pub async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts, StoreError> {
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM users WHERE tenant = ?1 AND deleted_at IS NULL AND active = 1), \
               (SELECT count(*) FROM users WHERE tenant = ?1 AND deleted_at IS NULL AND active = 0), \
               (SELECT count(*) FROM groups WHERE tenant = ?1), \
               (SELECT count(*) FROM group_members WHERE tenant = ?1)",
        )
        .bind(tenant)
        .fetch_one(self.reader())
        .await?;
        Ok(TenantCounts {
            active_users: row.try_get(0)?,
            inactive_users: row.try_get(1)?,
            groups: row.try_get(2)?,
            memberships: row.try_get(3)?,
        })
    }

    /// The member count of each of `group_ids` (missing ids: 0).
    pub async fn member_counts(
        &self,
        tenant: &str,
        group_ids: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        let mut out = Vec::with_capacity(group_ids.len());
        for id in group_ids {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM group_members WHERE tenant = ? AND group_id = ?",
            )
            .bind(tenant)
            .bind(id)
            .fetch_one(self.reader())
            .await?;
            out.push(n);
        }
        Ok(out)
    }

    /// Append provisioning log entries, a few hundred per statement.
    pub async fn insert_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        for chunk in entries.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO provisioning_log (tenant, at, request_id, method, path, resource_id, \
                 status, duration_ms, error) VALUES ",
            );
            sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "));
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q
                    .bind(&e.tenant)
                    .bind(format_time(e.at))
                    .bind(&e.request_id)
                    .bind(&e.method)
                    .bind(&e.path)
                    .bind(&e.resource_id)
                    .bind(i64::from(e.status))
                    .bind(e.duration_ms)
                    .bind(&e.error);
            }
            q.execute(self.writer()).await?;
        }
        Ok(())
    }

    /// Delete provisioning log entries older than `cutoff`; returns how many. Per tenant and
    /// a few thousand rows per statement, so SCIM writes never wait long for the write lock.
    pub async fn prune_provisioning_log(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = format_time(cutoff);
        let tenants: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT tenant FROM provisioning_log")
                .fetch_all(self.reader())
                .await?;
        let mut deleted = 0;
        for tenant in tenants {
            loop {
                let r = sqlx::query(
                    "DELETE FROM provisioning_log WHERE id IN (SELECT id FROM provisioning_log \
                     WHERE tenant = ? AND at < ? LIMIT ?)",
                )
                .bind(&tenant)
                .bind(&cutoff)
                .bind(PRUNE_CHUNK)
                .execute(self.writer())
                .await?;
                deleted += r.rows_affected();
                if r.rows_affected() < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// One page of a tenant's provisioning log, newest first, and the number of matches.
    pub async fn provisioning_log(
        &self,
        tenant: &str,
        q: &ProvisioningQuery,
    ) -> Result<(i64, Vec<ProvisioningRow>), StoreError> {
        let (lo, hi) = q.status.map(|s| s.range()).unwrap_or((0, 999));
        let since = q.since.map(format_time).unwrap_or_default();
        // "~" sorts after every timestamp.
        let until = q.until.map(format_time).unwrap_or_else(|| "~".into());
        let filter = "tenant = ? AND status BETWEEN ? AND ? AND at >= ? AND at < ?";
        let mut tx = self.reader().begin().await?;
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM provisioning_log WHERE {filter}"
        ))
        .bind(tenant)
        .bind(i64::from(lo))
        .bind(i64::from(hi))
        .bind(&since)
        .bind(&until)
        .fetch_one(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT id, at, request_id, method, path, resource_id, status, duration_ms, error \
             FROM provisioning_log WHERE {filter} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?"
        ))
        .bind(tenant)
        .bind(i64::from(lo))
        .bind(i64::from(hi))
        .bind(&since)
        .bind(&until)
        .bind(q.limit)
        .bind(q.offset)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let rows = rows
            .into_iter()
            .map(|r| {
                let status: i64 = r.try_get("status")?;
                Ok(ProvisioningRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    request_id: r.try_get("request_id")?,
                    method: r.try_get("method")?,
                    path: r.try_get("path")?,
                    resource_id: r.try_get("resource_id")?,
                    status: u16::try_from(status).unwrap_or(0),
                    duration_ms: r.try_get("duration_ms")?,
                    error: r.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((total, rows))
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
        }
    }

    #[tokio::test]
    async fn log_is_filtered_paged_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db"), Durability::Normal)
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
        let s = SqliteStore::open(&dir.path().join("s.db"), Durability::Normal)
            .await
            .unwrap();
        assert_eq!(
            s.tenant_counts("acme").await.unwrap(),
            TenantCounts::default()
        );
    }
}
