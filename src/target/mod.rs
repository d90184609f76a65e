//! Application databases: where the sync engine writes users and roles.
//!
//! [`AppDatabase`] is the role an application database plays; backends (src/db) implement it
//! for SQLite and SQL Server, and [`AppConnector`] opens one by its location. A batch runs a
//! synchronous closure in one transaction, in which [`writer::AppBatch::apply_user`] and
//! [`writer::AppBatch::offboard`] each fail alone. How a batch writes — upsert by key, re-key,
//! the role diff, offboarding, the optimistic attempt and the savepoint per user after a
//! failure — is written once, in [`writer`], over each dialect's spelling.
//!
//! Identifiers (tables, columns) come validated from the mapping and are quoted anyway; every
//! value is a bound parameter.

pub mod row;
pub mod schema;
pub mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::ApplicationConfig;
use crate::mapping::{FieldValue, Target};
use crate::store::DbError;
pub use writer::AppBatch;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("application database error: {0}")]
    Db(#[from] DbError),
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
    /// The error a user's write ended the transaction with in an earlier attempt.
    #[error("{0}")]
    Ended(String),
    /// A row with the user's key exists and is not the tenant's to write.
    #[error("{0}")]
    NotOwned(String),
    #[error("application database {application}: {source}")]
    Connect {
        application: String,
        source: DbError,
    },
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
    /// The tenant's name: written into, and matched on, the mapping's tenant columns.
    pub tenant: &'a str,
    /// What to do when a row already has the key.
    pub existing: Existing,
}

/// What a user write does when the application already has a row with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// The row is this tenant's (the engine created or adopted it): update it (or create it
    /// again when it is gone).
    Owned,
    /// Take it over (the mapping allows adoption).
    Adopt,
    /// There was no row: create it, and fail the user if one has appeared meanwhile (the
    /// application made it; it is not the engine's to write).
    Create,
}

/// What a user write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserApplied {
    /// A row was inserted (false: an existing row was updated).
    pub created: bool,
}

/// A batch: called with the open transaction, it makes its writes and answers what each did
/// (the error text of a write that failed). It may run more than once (see
/// [`AppDatabase::batch`]).
pub type BatchFn = Box<
    dyn FnMut(&mut AppBatch<'_>) -> Result<Vec<Result<UserApplied, String>>, TargetError>
        + Send
        + 'static,
>;

/// An application database.
#[async_trait]
pub trait AppDatabase: Send + Sync {
    /// Run `f` as one batch: one transaction, committed when it returns. `f` runs
    /// synchronously, off the async runtime, and may run more than once: the first attempt
    /// is optimistic and runs again with a savepoint per user when a user failed (only the
    /// last run's result counts, and only its writes are committed).
    async fn batch(&self, f: BatchFn) -> Result<Vec<Result<UserApplied, String>>, TargetError>;

    /// The rows of `keys` as they are now: `columns` of the user table (as the mapping names
    /// them) and the role rows. Keys without a row are absent.
    async fn read_rows(
        &self,
        target: &Target,
        tenant: &str,
        columns: &[String],
        keys: &[String],
    ) -> Result<HashMap<String, row::AppRow>, TargetError>;

    /// The columns and unique keys of `table` (`name` or `schema.name`); None when there is no
    /// such table.
    async fn describe(&self, table: &str) -> Result<Option<schema::TableInfo>, TargetError>;
}

/// Opens application databases, each with the backend its location names.
#[async_trait]
pub trait AppConnector: Send + Sync {
    /// Open (creating it if the backend can) the application database; one with no tables
    /// gets the configured schema.
    async fn open(&self, config: &ApplicationConfig) -> Result<Arc<dyn AppDatabase>, TargetError>;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_or_refused() {
        let quote = |s: &str| quote_parts(s, '"', '"');
        assert_eq!(quote("users").unwrap(), "\"users\"");
        assert_eq!(quote("app.users").unwrap(), "\"app\".\"users\"");
        assert_eq!(quote_parts("app.users", '[', ']').unwrap(), "[app].[users]");
        for bad in ["", "a b", "a\"b", "a.b.c", "1a", "a;--", "a.", "a]b"] {
            assert!(quote(bad).is_none(), "{bad}");
        }
    }
}
