//! The staging database the sync engine keeps its state and ledger in: the same database as
//! the shadow directory it reads, SQLite or SQL Server.

use crate::store::mssql::pool::{MssqlError, MssqlPool};
use crate::store::{SqliteStore, Store};

/// The engine's staging database, by backend.
#[derive(Clone)]
pub enum SyncDb {
    Sqlite(SqliteStore),
    SqlServer(MssqlPool),
}

impl SyncDb {
    /// The sync state lives beside the staged users, in the staging store's database.
    pub fn of(store: &Store) -> SyncDb {
        match store {
            Store::Sqlite(s) => SyncDb::Sqlite(s.clone()),
            Store::SqlServer(s) => SyncDb::SqlServer(s.pool().clone()),
        }
    }

    /// The SQLite store, when the staging database is SQLite.
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            SyncDb::Sqlite(s) => Some(s),
            SyncDb::SqlServer(_) => None,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            SyncDb::Sqlite(_) => "sqlite",
            SyncDb::SqlServer(_) => "sqlserver",
        }
    }
}

impl From<SqliteStore> for SyncDb {
    fn from(s: SqliteStore) -> Self {
        SyncDb::Sqlite(s)
    }
}

impl From<tiberius::error::Error> for super::SyncError {
    fn from(e: tiberius::error::Error) -> Self {
        super::SyncError::SqlServer(MssqlError::Database(e))
    }
}
