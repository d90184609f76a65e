//! The database backends, chosen once at start: SQLite ([`sqlite`], the embedded default, on
//! rusqlite) or SQL Server ([`mssql`]), for the staging database and for each application
//! database.
//!
//! A staging backend plays every role the rest of the code needs of the staging database —
//! the SCIM store, the sync engine's state and lifecycle, the ledger reads, the provisioning
//! log, the admin counts — as one [`Staging`] object; an application backend plays
//! [`AppDatabase`]. This module is the only place that looks at a location to pick a backend;
//! above it, code sees the roles, never a driver. Each backend turns its driver's errors into
//! the domain's ([`DbError`]).

pub mod mssql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{ApplicationConfig, DbLocation, SqliteSettings};
use crate::scim::ScimError;
use crate::scim::filter::Filter;
use crate::store::{
    DbError, ListQuery, ProvisioningLogStore, ScimStore, StagingCounts, StoreError,
};
use crate::sync::ledger::LedgerReads;
use crate::sync::store::SyncStore;
use crate::target::{AppConnector, AppDatabase, TargetError};

/// The staging database in every role it plays.
#[async_trait]
pub trait Staging:
    ScimStore + StagingCounts + ProvisioningLogStore + SyncStore + LedgerReads
{
    /// `sqlite` or `sqlserver`, for logs and readiness.
    fn backend_name(&self) -> &'static str;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether the database can take writes now (readiness). By default: it answers.
    async fn writable(&self) -> Result<(), StoreError> {
        self.ping().await
    }
}

/// Open (creating or migrating as needed) the staging database at `location`; `sqlite` (a
/// [`crate::config::Durability`] alone, or with a size cap) applies to an SQLite file only.
pub async fn open_staging(
    location: &DbLocation,
    sqlite: impl Into<SqliteSettings>,
) -> Result<Arc<dyn Staging>, StoreError> {
    Ok(match location {
        DbLocation::Sqlite(path) => Arc::new(sqlite::SqliteStaging::open(path, sqlite).await?),
        DbLocation::SqlServer(config) => Arc::new(mssql::MssqlStaging::open(config).await?),
    })
}

/// What `migrate` did: the versions already applied and those applied now.
#[derive(Debug, Clone, Default)]
pub struct MigrationReport {
    pub already_applied: Vec<i64>,
    pub applied: Vec<i64>,
}

/// Create or upgrade the staging database and report the migrations.
pub async fn migrate(
    location: &DbLocation,
    sqlite: impl Into<SqliteSettings>,
) -> Result<MigrationReport, StoreError> {
    match location {
        DbLocation::Sqlite(path) => sqlite::migrate_file(path, sqlite.into()).await,
        DbLocation::SqlServer(config) => mssql::migrate_server(config).await,
    }
}

/// Opens application databases with the backend of their location.
pub struct Connector;

#[async_trait]
impl AppConnector for Connector {
    async fn open(&self, config: &ApplicationConfig) -> Result<Arc<dyn AppDatabase>, TargetError> {
        Ok(match &config.location {
            DbLocation::Sqlite(path) => {
                Arc::new(sqlite::app::SqliteApp::open(path, config.schema.as_deref()).await?)
            }
            DbLocation::SqlServer(server) => {
                Arc::new(mssql::app::MssqlApp::open(config, server).await?)
            }
        })
    }
}

/// A sort key for lists: a SQL expression over `r`, from the dialect's filter module.
#[derive(Debug, Clone)]
pub struct Sort {
    pub expr: String,
    pub descending: bool,
}

/// A list request's filter and sort key in one dialect, given its two translations: the
/// filter's condition first, then the ORDER BY expression.
pub fn translate<C>(
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

/// A blocking task that did not finish (it panicked or the runtime is shutting down).
pub(crate) fn task_failed(e: tokio::task::JoinError) -> DbError {
    DbError::Failed(format!("database task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{mssql, sqlite};
    use crate::scim::Limits;
    use crate::scim::filter::parse_filter;
    use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ResourceType};

    /// Both dialects accept and refuse the same filters.
    #[test]
    fn the_dialects_translate_the_same_filters() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        for f in [
            "userName eq \"a\"",
            "emails[type eq \"work\"]",
            "emails ne \"x\"",
            "name eq \"x\"",
            "active gt true",
            "x.y.z eq 1",
        ] {
            let Ok(parsed) = parse_filter(f, &Limits::default()) else {
                continue;
            };
            assert_eq!(
                mssql::filter_sql::compile(&rt, "t", &parsed).is_ok(),
                sqlite::filter_sql::compile(&rt, "t", &parsed).is_ok(),
                "{f}"
            );
        }
    }
}
