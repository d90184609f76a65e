//! One staging store whatever the database: [`Store`] holds the SQLite or the SQL Server
//! store and forwards each operation; the filter is compiled by the backend's own dialect.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::mssql::{self, MssqlStore};
use super::sqlite::{self, Durability, SqliteStore};
use super::{
    GroupChange, Page, ProvisioningEntry, ProvisioningQuery, ProvisioningRow, Sort, StoreError,
    Stored, TenantCounts,
};
use crate::config::DbLocation;
use crate::scim::ScimError;
use crate::scim::filter::Filter;
use crate::scim::schema::{ResourceKind, ResourceType};

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    SqlServer(MssqlStore),
}

/// A list request's filter and order, independent of the dialect.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    pub filter: Option<&'a Filter>,
    pub sort_by: Option<&'a str>,
    pub descending: bool,
}

/// Forward a call to whichever store this is.
macro_rules! each {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::SqlServer($s) => $call,
        }
    };
}

impl Store {
    /// Open (creating or migrating as needed) the configured staging database.
    pub async fn open(db: &DbLocation, durability: Durability) -> Result<Store, StoreError> {
        Ok(match db {
            DbLocation::Sqlite(path) => Store::Sqlite(SqliteStore::open(path, durability).await?),
            DbLocation::SqlServer(c) => Store::SqlServer(MssqlStore::open(c).await?),
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::SqlServer(_) => "sqlserver",
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping().await)
    }

    pub async fn create_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        doc: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Stored, StoreError> {
        each!(self, s => s.create_user(tenant, rt, id, doc, now).await)
    }

    pub async fn get_user(
        &self,
        tenant: &str,
        id: &str,
        with_groups: bool,
    ) -> Result<Stored, StoreError> {
        each!(self, s => s.get_user(tenant, id, with_groups).await)
    }

    pub async fn update_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: impl Fn(Map<String, Value>) -> Result<Map<String, Value>, ScimError>,
    ) -> Result<Stored, StoreError> {
        each!(self, s => s.update_user(tenant, rt, id, if_match, now, change).await)
    }

    pub async fn delete_user(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.delete_user(tenant, id, if_match, now).await)
    }

    pub async fn create_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        change: GroupChange,
        now: DateTime<Utc>,
    ) -> Result<Stored, StoreError> {
        each!(self, s => s.create_group(tenant, rt, id, change, now).await)
    }

    pub async fn get_group(
        &self,
        tenant: &str,
        id: &str,
        with_members: bool,
    ) -> Result<Stored, StoreError> {
        each!(self, s => s.get_group(tenant, id, with_members).await)
    }

    pub async fn update_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: impl Fn(Map<String, Value>) -> Result<GroupChange, ScimError>,
    ) -> Result<Stored, StoreError> {
        each!(self, s => s.update_group(tenant, rt, id, if_match, now, change).await)
    }

    pub async fn delete_group(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.delete_group(tenant, id, if_match, now).await)
    }

    /// One page of users or groups and the total; the filter and sort key are translated by
    /// the backend's dialect (an untranslatable filter is an invalidFilter error).
    pub async fn list(
        &self,
        tenant: &str,
        rt: &ResourceType,
        query: ListQuery<'_>,
        page: &Page,
        with_related: bool,
    ) -> Result<(i64, Vec<Stored>), StoreError> {
        let kind: ResourceKind = rt.kind;
        match self {
            Store::Sqlite(s) => {
                let (cond, sort) = translate(
                    &query,
                    |f| sqlite::filter_sql::compile(rt, tenant, f),
                    |by| sqlite::filter_sql::sort_expression(rt, by),
                )?;
                let (cond, sort) = (cond.as_ref(), sort.as_ref());
                s.list(tenant, kind, cond, sort, page, with_related).await
            }
            Store::SqlServer(s) => {
                let (cond, sort) = translate(
                    &query,
                    |f| mssql::filter_sql::compile(rt, tenant, f),
                    |by| mssql::filter_sql::sort_expression(rt, by),
                )?;
                let (cond, sort) = (cond.as_ref(), sort.as_ref());
                s.list(tenant, kind, cond, sort, page, with_related).await
            }
        }
    }

    /// Live users (active and inactive), groups and memberships of `tenant`.
    pub async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts, StoreError> {
        each!(self, s => s.tenant_counts(tenant).await)
    }

    /// The member count of each of `group_ids` (missing ids: 0).
    pub async fn member_counts(
        &self,
        tenant: &str,
        group_ids: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        each!(self, s => s.member_counts(tenant, group_ids).await)
    }

    /// Append provisioning log entries.
    pub async fn insert_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError> {
        each!(self, s => s.insert_provisioning_log(entries).await)
    }

    /// Delete provisioning log entries older than `cutoff`; returns how many.
    pub async fn prune_provisioning_log(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        each!(self, s => s.prune_provisioning_log(cutoff).await)
    }

    /// One page of a tenant's provisioning log, newest first, and the number of matches.
    pub async fn provisioning_log(
        &self,
        tenant: &str,
        q: &ProvisioningQuery,
    ) -> Result<(i64, Vec<ProvisioningRow>), StoreError> {
        each!(self, s => s.provisioning_log(tenant, q).await)
    }

    /// The SQLite store, for code that only runs on SQLite (the sync engine today).
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Store::Sqlite(s) => Some(s),
            Store::SqlServer(_) => None,
        }
    }
}

/// A list request's filter and sort key in one dialect, given its two translations: the
/// filter's condition first, then the ORDER BY expression.
fn translate<C>(
    query: &ListQuery<'_>,
    compile: impl Fn(&Filter) -> Result<C, ScimError>,
    sort_expression: impl Fn(&str) -> Result<String, ScimError>,
) -> Result<(Option<C>, Option<Sort>), StoreError> {
    let cond = query.filter.map(compile).transpose()?;
    let sort = query
        .sort_by
        .map(|by| {
            sort_expression(by).map(|expr| Sort {
                expr,
                descending: query.descending,
            })
        })
        .transpose()?;
    Ok((cond, sort))
}
