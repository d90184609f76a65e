//! What the admin API reads from a SQL Server staging database, and the provisioning log's
//! table: the same operations as `crate::store::sqlite::admin`, with the statements of
//! [`super::statements`].

use chrono::{DateTime, Utc};
use tiberius::Query;

use super::MssqlStore;
use super::statements as st;
use super::store::{first, get_i64, get_text, get_time, naive, rows};
use crate::store::{
    ProvisioningEntry, ProvisioningQuery, ProvisioningRow, StoreError, TenantCounts,
};

/// Rows per DELETE when pruning.
const PRUNE_CHUNK: i64 = 5_000;

impl MssqlStore {
    /// Live users (active and inactive), groups and memberships of `tenant`.
    pub async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts, StoreError> {
        let mut q = Query::new(st::TENANT_COUNTS);
        q.bind(tenant.to_string());
        let mut c = self.pool().get().await?;
        let row = first(&mut c, q)
            .await?
            .ok_or_else(|| StoreError::CommitFailed("no tenant counts".into()))?;
        Ok(TenantCounts {
            active_users: get_i64(&row, 0)?,
            inactive_users: get_i64(&row, 1)?,
            groups: get_i64(&row, 2)?,
            memberships: get_i64(&row, 3)?,
        })
    }

    /// The member count of each of `group_ids` (missing ids: 0).
    pub async fn member_counts(
        &self,
        tenant: &str,
        group_ids: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        let mut c = self.pool().get().await?;
        let mut out = Vec::with_capacity(group_ids.len());
        for id in group_ids {
            let mut q = Query::new(st::MEMBER_COUNT);
            q.bind(tenant.to_string());
            q.bind(id.clone());
            let n = match first(&mut c, q).await? {
                Some(row) => get_i64(&row, 0)?,
                None => 0,
            };
            out.push(n);
        }
        Ok(out)
    }

    /// Append provisioning log entries, a couple of hundred per statement.
    pub async fn insert_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        let mut c = self.pool().get().await?;
        for chunk in entries.chunks(st::PROVISIONING_LOG_CHUNK) {
            let mut q = Query::new(st::insert_provisioning_log(chunk.len()));
            for e in chunk {
                q.bind(e.tenant.clone());
                q.bind(naive(e.at));
                q.bind(e.request_id.clone());
                q.bind(e.method.clone());
                q.bind(e.path.clone());
                q.bind(e.resource_id.clone());
                q.bind(i32::from(e.status));
                q.bind(e.duration_ms);
                q.bind(e.error.clone());
            }
            q.execute(&mut *c).await?;
        }
        Ok(())
    }

    /// Delete provisioning log entries older than `cutoff`; returns how many. Per tenant and
    /// a few thousand rows per statement, so no statement holds its locks for long.
    pub async fn prune_provisioning_log(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut c = self.pool().get().await?;
        let tenants = rows(&mut c, Query::new(st::PROVISIONING_LOG_TENANTS))
            .await?
            .iter()
            .map(|r| get_text(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut deleted = 0;
        for tenant in tenants {
            loop {
                let mut q = Query::new(st::PRUNE_PROVISIONING_LOG);
                q.bind(tenant.clone());
                q.bind(naive(cutoff));
                q.bind(PRUNE_CHUNK);
                let n = q.execute(&mut *c).await?.total();
                deleted += n;
                if n < PRUNE_CHUNK as u64 {
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
        let mut query = Query::new(st::provisioning_log_page(
            q.since.is_some(),
            q.until.is_some(),
        ));
        query.bind(tenant.to_string());
        query.bind(i32::from(lo));
        query.bind(i32::from(hi));
        // Bound even when the statement leaves them out, so the numbering stays fixed.
        query.bind(q.since.map(naive).unwrap_or_default());
        query.bind(q.until.map(naive).unwrap_or_default());
        query.bind(q.offset.max(0));
        query.bind(q.limit.max(0));
        let mut c = self.pool().get().await?;
        let mut results = query
            .query(&mut *c)
            .await?
            .into_results()
            .await?
            .into_iter();
        let total = match results.next().and_then(|r| r.into_iter().next()) {
            Some(r) => get_i64(&r, 0)?,
            None => 0,
        };
        let rows = results
            .next()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                Ok(ProvisioningRow {
                    id: get_i64(r, 0)?,
                    at: get_time(r, 1)?,
                    request_id: get_text(r, 2)?,
                    method: get_text(r, 3)?,
                    path: get_text(r, 4)?,
                    resource_id: r.try_get::<&str, _>(5)?.map(str::to_string),
                    status: u16::try_from(r.try_get::<i32, _>(6)?.unwrap_or_default()).unwrap_or(0),
                    duration_ms: r.try_get::<f64, _>(7)?.unwrap_or_default(),
                    error: r.try_get::<&str, _>(8)?.map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((total, rows))
    }
}
