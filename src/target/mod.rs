//! Application databases: where the sync engine writes users and roles.
//!
//! [`AppDb`] is an enum over backends: SQLite ([`sqlite`]) and SQL Server ([`mssql`]), chosen
//! by the `database` of `[applications.NAME]`. Writes happen in batches: [`AppDb::batch`] runs
//! a synchronous closure in one transaction (committed when it returns Ok), in which
//! [`AppBatch::apply_user`] and [`AppBatch::offboard`] each fail alone: a constraint violation
//! fails only that user (each backend retries a batch with a savepoint per user).
//!
//! Identifiers (tables, columns) come validated from the mapping and are quoted anyway; every
//! value is a bound parameter.

pub mod mssql;
pub mod sqlite;

use std::collections::BTreeSet;

use crate::config::{ApplicationConfig, DbLocation};
use crate::mapping::{FieldValue, Offboarding, Target};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("application database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("application database task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot apply the schema {path}: {message}")]
    Schema { path: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("invalid identifier {0:?}")]
    Identifier(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("application database {application}: {source}")]
    Connect {
        application: String,
        source: crate::store::mssql::pool::MssqlError,
    },
    /// A SQL Server error, as text without the user data some messages quote.
    #[error("application database error: {0}")]
    SqlServer(String),
}

/// One user to write: upsert the row by key, then the role diff.
#[derive(Debug, Clone)]
pub struct UserWrite<'a> {
    pub key: &'a str,
    /// The key the application row had so far, when it differs from `key` (the key source
    /// changed, e.g. a new e-mail address): the row and its roles are re-keyed first.
    pub previous_key: Option<&'a str>,
    pub fields: &'a [(String, FieldValue)],
    pub roles_to_add: &'a BTreeSet<String>,
    pub roles_to_remove: &'a BTreeSet<String>,
}

/// What a user write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserApplied {
    /// A row was inserted (false: an existing row was updated).
    pub created: bool,
}

/// An application database.
#[derive(Clone)]
pub enum AppDb {
    Sqlite(sqlite::SqliteApp),
    Mssql(mssql::MssqlApp),
}

impl AppDb {
    /// Open (creating if missing) the application database; a new file gets the configured schema.
    pub async fn open(config: &ApplicationConfig) -> Result<AppDb, TargetError> {
        Ok(match &config.location {
            DbLocation::Sqlite(path) => {
                AppDb::Sqlite(sqlite::SqliteApp::open(path, config.schema.as_deref()).await?)
            }
            DbLocation::SqlServer(server) => {
                AppDb::Mssql(mssql::MssqlApp::open(config, server).await?)
            }
        })
    }

    /// Run `f` as one batch: one transaction, committed when `f` returns Ok. `f` runs
    /// synchronously, off the async runtime, and may run twice: a backend may try the batch
    /// optimistically first and run it again when a user failed (only the last run's result
    /// counts, and only its writes are committed).
    pub async fn batch<R, F>(&self, mut f: F) -> Result<R, TargetError>
    where
        R: Send + 'static,
        F: FnMut(&mut AppBatch<'_, '_>) -> Result<R, TargetError> + Send + 'static,
    {
        match self {
            AppDb::Sqlite(db) => {
                db.batch(move |b| {
                    let mut batch = AppBatch::Sqlite(b);
                    f(&mut batch)
                })
                .await
            }
            AppDb::Mssql(db) => {
                db.batch(move |b| {
                    let mut batch = AppBatch::Mssql(b);
                    f(&mut batch)
                })
                .await
            }
        }
    }
}

/// One open transaction on an application database.
pub enum AppBatch<'a, 'c> {
    Sqlite(&'a mut sqlite::SqliteBatch<'c>),
    Mssql(&'a mut mssql::MssqlBatch<'c>),
}

impl AppBatch<'_, '_> {
    /// Upsert one user's row and apply its role diff, inside a savepoint: an error leaves the
    /// batch as it was before the call.
    pub fn apply_user(
        &mut self,
        target: &Target,
        write: &UserWrite<'_>,
    ) -> Result<UserApplied, TargetError> {
        match self {
            AppBatch::Sqlite(b) => b.apply_user(target, write),
            AppBatch::Mssql(b) => b.apply_user(target, write),
        }
    }

    /// Offboard one user: remove `roles` (the ones the engine applied), then delete the row,
    /// update its fields, or leave it, inside a savepoint.
    pub fn offboard(
        &mut self,
        target: &Target,
        key: &str,
        action: &Offboarding,
        roles: &BTreeSet<String>,
    ) -> Result<(), TargetError> {
        match self {
            AppBatch::Sqlite(b) => b.offboard(target, key, action, roles),
            AppBatch::Mssql(b) => b.offboard(target, key, action, roles),
        }
    }
}

/// An identifier from a mapping (`name` or `schema.name`) quoted part by part with
/// `open`/`close`, or None when a part holds anything but ASCII letters, digits and `_` (or
/// starts with a digit), whatever the mapping checked: no quote character ever needs escaping.
pub fn quote_parts(ident: &str, open: char, close: char) -> Option<String> {
    let parts: Vec<&str> = ident.split('.').collect();
    if parts.len() > 2
        || parts.iter().any(|p| {
            p.is_empty()
                || p.starts_with(|c: char| c.is_ascii_digit())
                || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|p| format!("{open}{p}{close}"))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Quote a validated identifier for SQLite: each part in double quotes.
pub fn quote_ident(ident: &str) -> Result<String, TargetError> {
    quote_parts(ident, '"', '"').ok_or_else(|| TargetError::Identifier(ident.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_or_refused() {
        assert_eq!(quote_ident("users").unwrap(), "\"users\"");
        assert_eq!(quote_ident("app.users").unwrap(), "\"app\".\"users\"");
        for bad in ["", "a b", "a\"b", "a.b.c", "1a", "a;--", "a."] {
            assert!(quote_ident(bad).is_err(), "{bad}");
        }
    }
}
