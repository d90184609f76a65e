//! SQL Server, on tiberius pooled by bb8: the staging database ([`MssqlStaging`], schemas
//! `scim` and `sync`) and application databases ([`app::MssqlApp`]).
//!
//! Shared by both: the pool and the staging transactions ([`pool`]), the migrator
//! ([`migrate`]), and [`rows`], the one place driver errors become domain errors, with the
//! redaction of user data from server messages, typed parameters and row reading. The
//! staging roles each have a module with their T-SQL beside the code that runs it: the SCIM
//! store ([`scim`], with its filter translation [`filter_sql`]), the admin counts and the
//! provisioning log (`admin`), the sync engine's state and lifecycle (`sync`), the ledger
//! reads (`ledger`); the change sequence's protocol is [`seq`]. Connection settings are
//! configuration ([`crate::config::MssqlConfig`]).

mod admin;
pub mod app;
pub(super) mod filter_sql;
mod ledger;
mod migrate;
pub mod pool;
mod rows;
mod scim;
mod seq;
mod sync;
#[cfg(test)]
mod tsql;

use async_trait::async_trait;

use crate::config::MssqlConfig;
use crate::db::{MigrationReport, Staging};
use crate::store::StoreError;
use pool::MssqlPool;

/// The health check of `ping`.
const PING: &str = "SELECT 1";

/// The write probe of `writable`: the one row of scim.health (sql/mssql/0008_health.sql),
/// updated and committed. A full transaction log (9002), a read-only database, a login that
/// lost its write permission fail it; a full data file (1105) does not (the row is updated in
/// place), and shows in the writes themselves.
const WRITE_PROBE: &str = "UPDATE scim.health SET probed_at = SYSUTCDATETIME() WHERE id = 1";

/// The staging database on SQL Server.
#[derive(Clone)]
pub struct MssqlStaging {
    pool: MssqlPool,
}

impl MssqlStaging {
    /// Connect (failing fast with the server and database named), then migrate.
    pub async fn open(config: &MssqlConfig) -> Result<Self, StoreError> {
        let pool = MssqlPool::connect(config).await?;
        {
            let mut c = pool.get().await?;
            migrate::run(&mut c).await?;
        }
        Ok(MssqlStaging { pool })
    }
}

/// `scim-bridge migrate` on a SQL Server database.
pub async fn migrate_server(config: &MssqlConfig) -> Result<MigrationReport, StoreError> {
    let pool = MssqlPool::connect(config).await?;
    let mut c = pool.get().await?;
    Ok(migrate::run(&mut c).await?)
}

#[async_trait]
impl Staging for MssqlStaging {
    fn backend_name(&self) -> &'static str {
        "sqlserver"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        Ok(rows::simple(&mut c, PING).await?)
    }

    /// A real write, committed (classified as every driver error: 1105 and 9002 are
    /// `DbError::Full`), not only an answer.
    async fn writable(&self) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        Ok(rows::simple(&mut c, WRITE_PROBE).await?)
    }
}

#[cfg(test)]
fn statements() -> Vec<(String, String)> {
    vec![
        ("PING".into(), PING.into()),
        ("WRITE_PROBE".into(), WRITE_PROBE.into()),
    ]
}
