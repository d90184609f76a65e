//! What the admin API counts in a SQL Server staging database, and the provisioning log's
//! table: the same operations as SQLite's, with their T-SQL here.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tiberius::Query;

use super::MssqlStaging;
use super::pool::Client;
use super::rows::{
    self, SqlError, execute, first, float, int, int32, naive, opt_text, params, results, rows, text,
};
use crate::store::{
    About, ProvisioningEntry, ProvisioningLogStore, ProvisioningQuery, ProvisioningRow,
    StagingCounts, StoreError, TenantCounts, UserKey,
};

/// Rows per DELETE when pruning.
const PRUNE_CHUNK: i64 = 5_000;

/// Live active users, live inactive users, groups and memberships of @P1 tenant.
const TENANT_COUNTS: &str = "SELECT \
     (SELECT COUNT_BIG(*) FROM scim.users WHERE tenant = @P1 AND deleted_at IS NULL AND active = 1), \
     (SELECT COUNT_BIG(*) FROM scim.users WHERE tenant = @P1 AND deleted_at IS NULL AND active = 0), \
     (SELECT COUNT_BIG(*) FROM scim.groups WHERE tenant = @P1), \
     (SELECT COUNT_BIG(*) FROM scim.group_members WHERE tenant = @P1)";

/// The ids of @P1 tenant's staged users (deleted ones too) whose userName (lower-cased) or
/// externalId is @P2, newest first, at most @P3.
fn user_ids_sql(by_name: bool) -> String {
    format!(
        "SELECT TOP (@P3) id FROM scim.users WHERE tenant = @P1 AND {} = @P2 ORDER BY pk DESC",
        if by_name {
            "user_name_ci"
        } else {
            "external_id"
        }
    )
}

/// The member count of one group: @P1 tenant, @P2 group id.
const MEMBER_COUNT: &str =
    "SELECT COUNT_BIG(*) FROM scim.group_members WHERE tenant = @P1 AND group_id = @P2";

/// Parameters per provisioning log row.
const ENTRY_PARAMS: usize = 11;
/// Rows per provisioning log INSERT: below SQL Server's 2100 parameters per statement.
const PROVISIONING_LOG_CHUNK: usize = 150;
const _: () = assert!(PROVISIONING_LOG_CHUNK * ENTRY_PARAMS <= 2100);

/// Append `rows` provisioning log entries; per row, 11 parameters in this order: tenant, at,
/// request_id, method, path, resource_id, status, duration_ms, error, user_name, external_id.
fn insert_provisioning_log(rows: usize) -> String {
    let values = (0..rows)
        .map(|r| format!("({})", params(r * ENTRY_PARAMS + 1, ENTRY_PARAMS)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO scim.provisioning_log (tenant, [at], request_id, method, path, resource_id, \
         status, duration_ms, error, user_name, external_id) VALUES {values}"
    )
}

/// Correct a written entry: @P1 status, @P2 duration_ms, @P3 error of the entry of @P4 tenant,
/// @P5 request_id and @P6 time.
const AMEND_PROVISIONING_LOG: &str = "UPDATE scim.provisioning_log \
     SET status = @P1, duration_ms = @P2, error = @P3 \
     WHERE tenant = @P4 AND request_id = @P5 AND [at] = @P6";

/// Append provisioning log entries, a couple of hundred per statement, on `c` (in the caller's
/// transaction: a SCIM write's entry is written with the write).
pub(super) async fn insert_log_rows(
    c: &mut Client,
    entries: &[ProvisioningEntry],
) -> Result<(), SqlError> {
    for chunk in entries.chunks(PROVISIONING_LOG_CHUNK) {
        let mut q = Query::new(insert_provisioning_log(chunk.len()));
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
            q.bind(e.user_name.clone());
            q.bind(e.external_id.clone());
        }
        execute(c, q).await?;
    }
    Ok(())
}

/// The tenants with provisioning log entries (pruning goes tenant by tenant).
const PROVISIONING_LOG_TENANTS: &str = "SELECT DISTINCT tenant FROM scim.provisioning_log";

/// Delete up to @P3 entries of @P1 tenant older than @P2: short statements, short locks.
const PRUNE_PROVISIONING_LOG: &str = "DELETE FROM scim.provisioning_log WHERE id IN \
     (SELECT TOP (@P3) id FROM scim.provisioning_log WHERE tenant = @P1 AND [at] < @P2)";

/// Which filters a provisioning log page applies.
#[derive(Debug, Clone, Copy, Default)]
struct PageFilter {
    since: bool,
    until: bool,
    method: bool,
    request: bool,
    ids: bool,
    user_name: bool,
    external_id: bool,
}

impl PageFilter {
    fn of(q: &ProvisioningQuery) -> PageFilter {
        let about = q.about.as_ref();
        PageFilter {
            since: q.since.is_some(),
            until: q.until.is_some(),
            method: q.method.is_some(),
            request: q.request_id.is_some(),
            ids: about.is_some_and(|a| !a.ids.is_empty()),
            user_name: about.is_some_and(|a| a.user_name.is_some()),
            external_id: about.is_some_and(|a| a.external_id.is_some()),
        }
    }
}

/// A page of a tenant's provisioning log and the number of matches, in one batch of two
/// result sets. @P1 tenant, @P2..@P3 the status range, @P4 since (inclusive), @P5 until
/// (exclusive), @P6 offset, @P7 limit, @P8 method, @P9 request id, then the entries about a
/// resource — any of @P10 its ids (a JSON array), @P11 userName (lower-cased), @P12
/// externalId. Every parameter is always bound, the statement uses those its filter has.
/// Rows: id, at, request_id, method, path, resource_id, status, duration_ms, error, user_name,
/// external_id, newest first.
fn provisioning_log_page(f: PageFilter) -> String {
    let mut filter = String::from("tenant = @P1 AND status BETWEEN @P2 AND @P3");
    for (on, sql) in [
        (f.since, " AND [at] >= @P4"),
        (f.until, " AND [at] < @P5"),
        (f.method, " AND method = @P8"),
        (f.request, " AND request_id = @P9"),
    ] {
        if on {
            filter.push_str(sql);
        }
    }
    let any: Vec<&str> = [
        (f.ids, "resource_id IN (SELECT value FROM OPENJSON(@P10))"),
        (f.user_name, "user_name = @P11"),
        (f.external_id, "external_id = @P12"),
    ]
    .into_iter()
    .filter_map(|(on, sql)| on.then_some(sql))
    .collect();
    if !any.is_empty() {
        filter.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    format!(
        "SELECT COUNT_BIG(*) FROM scim.provisioning_log WHERE {filter}; \
         SELECT id, [at], request_id, method, path, resource_id, status, duration_ms, error, \
         user_name, external_id \
         FROM scim.provisioning_log WHERE {filter} ORDER BY [at] DESC, id DESC \
         OFFSET @P6 ROWS FETCH NEXT @P7 ROWS ONLY"
    )
}

#[async_trait]
impl StagingCounts for MssqlStaging {
    async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts, StoreError> {
        let mut q = Query::new(TENANT_COUNTS);
        q.bind(tenant.to_string());
        let mut c = self.pool.get().await?;
        let row = first(&mut c, q)
            .await?
            .ok_or_else(|| SqlError::missing("tenant counts"))?;
        Ok(TenantCounts {
            active_users: int(&row, 0)?,
            inactive_users: int(&row, 1)?,
            groups: int(&row, 2)?,
            memberships: int(&row, 3)?,
        })
    }

    async fn member_counts(
        &self,
        tenant: &str,
        group_ids: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        let mut c = self.pool.get().await?;
        let mut out = Vec::with_capacity(group_ids.len());
        for id in group_ids {
            let mut q = Query::new(MEMBER_COUNT);
            q.bind(tenant.to_string());
            q.bind(id.clone());
            let n = match first(&mut c, q).await? {
                Some(row) => int(&row, 0)?,
                None => 0,
            };
            out.push(n);
        }
        Ok(out)
    }

    async fn user_ids(&self, tenant: &str, by: &UserKey) -> Result<Vec<String>, StoreError> {
        let (by_name, key) = match by {
            UserKey::UserName(n) => (true, n.to_lowercase()),
            UserKey::ExternalId(x) => (false, x.clone()),
        };
        let mut q = Query::new(user_ids_sql(by_name));
        q.bind(tenant.to_string());
        q.bind(key);
        q.bind(About::MAX_IDS as i64);
        let mut c = self.pool.get().await?;
        Ok(rows(&mut c, q)
            .await?
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<Vec<_>, _>>()?)
    }
}

#[async_trait]
impl ProvisioningLogStore for MssqlStaging {
    /// A couple of hundred entries per statement.
    async fn insert_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        Ok(insert_log_rows(&mut c, entries).await?)
    }

    /// Nothing to move: a write's entry goes into the log itself.
    async fn settle_provisioning_log(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn amend_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        for e in entries {
            let mut q = Query::new(AMEND_PROVISIONING_LOG);
            q.bind(i32::from(e.status));
            q.bind(e.duration_ms);
            q.bind(e.error.clone());
            q.bind(e.tenant.clone());
            q.bind(e.request_id.clone());
            q.bind(naive(e.at));
            execute(&mut c, q).await?;
        }
        Ok(())
    }

    /// Per tenant and a few thousand rows per statement, so no statement holds its locks for
    /// long.
    async fn prune_provisioning_log(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut c = self.pool.get().await?;
        let tenants = rows(&mut c, Query::new(PROVISIONING_LOG_TENANTS))
            .await?
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut deleted = 0;
        for tenant in tenants {
            loop {
                let mut q = Query::new(PRUNE_PROVISIONING_LOG);
                q.bind(tenant.clone());
                q.bind(naive(cutoff));
                q.bind(PRUNE_CHUNK);
                let n = execute(&mut c, q).await?;
                deleted += n;
                if n < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    async fn provisioning_log(
        &self,
        tenant: &str,
        q: &ProvisioningQuery,
    ) -> Result<(i64, Vec<ProvisioningRow>), StoreError> {
        let (lo, hi) = q.status.map(|s| s.range()).unwrap_or((0, 999));
        let mut query = Query::new(provisioning_log_page(PageFilter::of(q)));
        query.bind(tenant.to_string());
        query.bind(i32::from(lo));
        query.bind(i32::from(hi));
        // Bound even when the statement leaves them out, so the numbering stays fixed.
        query.bind(q.since.map(naive).unwrap_or_default());
        query.bind(q.until.map(naive).unwrap_or_default());
        query.bind(q.offset.max(0));
        query.bind(q.limit.max(0));
        let about = q.about.clone().unwrap_or_default();
        query.bind(q.method.clone().unwrap_or_default());
        query.bind(q.request_id.clone().unwrap_or_default());
        query.bind(serde_json::to_string(&about.ids).unwrap_or_else(|_| "[]".into()));
        query.bind(about.user_name.unwrap_or_default());
        query.bind(about.external_id.unwrap_or_default());
        let mut c = self.pool.get().await?;
        let mut sets = results(&mut c, query).await?.into_iter();
        let total = match sets.next().and_then(|r| r.into_iter().next()) {
            Some(r) => int(&r, 0)?,
            None => 0,
        };
        let rows = sets
            .next()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                Ok(ProvisioningRow {
                    id: int(r, 0)?,
                    at: rows::time(r, 1)?,
                    request_id: text(r, 2)?,
                    method: text(r, 3)?,
                    path: text(r, 4)?,
                    resource_id: opt_text(r, 5)?,
                    status: u16::try_from(int32(r, 6)?).unwrap_or(0),
                    duration_ms: float(r, 7)?,
                    error: opt_text(r, 8)?,
                    user_name: opt_text(r, 9)?,
                    external_id: opt_text(r, 10)?,
                })
            })
            .collect::<Result<Vec<_>, SqlError>>()?;
        Ok((total, rows))
    }
}

#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("TENANT_COUNTS", TENANT_COUNTS),
        ("MEMBER_COUNT", MEMBER_COUNT),
        ("PROVISIONING_LOG_TENANTS", PROVISIONING_LOG_TENANTS),
        ("PRUNE_PROVISIONING_LOG", PRUNE_PROVISIONING_LOG),
        ("AMEND_PROVISIONING_LOG", AMEND_PROVISIONING_LOG),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
    for by_name in [false, true] {
        out.push((format!("user_ids_sql({by_name})"), user_ids_sql(by_name)));
    }
    for rows in [1, 3, PROVISIONING_LOG_CHUNK] {
        out.push((
            format!("insert_provisioning_log({rows})"),
            insert_provisioning_log(rows),
        ));
    }
    // Every combination of filters.
    for bits in 0u8..128 {
        let on = |i: u8| bits & (1 << i) != 0;
        let f = PageFilter {
            since: on(0),
            until: on(1),
            method: on(2),
            request: on(3),
            ids: on(4),
            user_name: on(5),
            external_id: on(6),
        };
        out.push((
            format!("provisioning_log_page({f:?})"),
            provisioning_log_page(f),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_log_inserts_number_their_parameters_row_by_row() {
        assert_eq!(
            insert_provisioning_log(2),
            "INSERT INTO scim.provisioning_log (tenant, [at], request_id, method, path, \
             resource_id, status, duration_ms, error, user_name, external_id) VALUES (@P1, @P2, \
             @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11), (@P12, @P13, @P14, @P15, @P16, \
             @P17, @P18, @P19, @P20, @P21, @P22)"
        );
        let page = provisioning_log_page(PageFilter {
            until: true,
            ..PageFilter::default()
        });
        assert!(
            page.contains("[at] < @P5") && !page.contains("@P4"),
            "{page}"
        );
        // The entries about a resource: any of its ids, its userName, its externalId.
        let about = provisioning_log_page(PageFilter {
            ids: true,
            external_id: true,
            method: true,
            ..PageFilter::default()
        });
        assert!(
            about.contains(
                "AND method = @P8 AND (resource_id IN (SELECT value FROM OPENJSON(@P10)) OR external_id = @P12)"
            ),
            "{about}"
        );
    }
}
