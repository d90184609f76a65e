//! The staging "operations" database: users, groups and memberships per tenant, with a change
//! sequence for the sync engine. The store knows SQL, not HTTP; it speaks in SCIM's terms.

mod backend;
mod filter_walk;
pub mod mssql;
pub mod sqlite;
pub mod update;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::scim::ScimError;
use crate::scim::patch::MemberOp;
use crate::scim::resource::MemberRef;

pub use backend::{ListQuery, Store};
pub use mssql::MssqlStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the resource has changed since the given version")]
    VersionMismatch,
    #[error("{0}")]
    Rejected(ScimError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    SqlServer(mssql::pool::MssqlError),
    #[error("stored document is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the write was not committed: {0}")]
    CommitFailed(String),
    #[error("the staging writer has stopped")]
    WriterGone,
    #[error("the resource kept changing; retry")]
    Contended,
}

impl From<ScimError> for StoreError {
    fn from(e: ScimError) -> Self {
        StoreError::Rejected(e)
    }
}

/// The one timestamp format of the store: RFC 3339, UTC, milliseconds; sorts as text.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A resource as stored, ready to render.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    /// The normalised document as JSON text.
    pub doc: String,
    pub version: i64,
    pub created: String,
    pub last_modified: String,
    /// Group: its members; User: the groups it belongs to. None when not read.
    pub related: Option<Vec<Related>>,
}

/// A member of a group, or a group of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct Related {
    pub id: String,
    /// "User" or "Group" (members); "direct" for a user's groups.
    pub kind: String,
    pub display: Option<String>,
}

/// A sort key for lists.
#[derive(Debug, Clone)]
pub struct Sort {
    /// A SQL expression over `r` produced by the dialect's filter module.
    pub expr: String,
    pub descending: bool,
}

/// One page of a list request.
#[derive(Debug, Clone)]
pub struct Page {
    /// 1-based, as in SCIM.
    pub start_index: i64,
    pub count: i64,
}

/// What to write for a user besides its document: the columns derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserColumns {
    pub user_name: String,
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub active: bool,
    pub custom: [Option<String>; 16],
    pub emails: Vec<EmailRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailRow {
    pub type_ci: Option<String>,
    pub value_ci: String,
    pub primary: bool,
}

impl UserColumns {
    /// Derive the columns from a normalised user document; `custom_urn` is the tenant's extension.
    pub fn from_doc(doc: &Map<String, Value>, custom_urn: &str) -> Self {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let mut custom: [Option<String>; 16] = Default::default();
        if let Some(ext) = doc.get(custom_urn).and_then(Value::as_object) {
            for (i, name) in crate::scim::schema::CUSTOM_ATTR_NAMES.iter().enumerate() {
                custom[i] = s(ext.get(*name));
            }
        }
        let emails = doc
            .get("emails")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|e| {
                        Some(EmailRow {
                            type_ci: e.get("type").and_then(Value::as_str).map(str::to_lowercase),
                            value_ci: e.get("value")?.as_str()?.to_lowercase(),
                            primary: e.get("primary").and_then(Value::as_bool).unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        UserColumns {
            user_name: s(doc.get("userName")).unwrap_or_default(),
            external_id: s(doc.get("externalId")),
            display_name: s(doc.get("displayName")),
            // RFC 7643 leaves a missing "active" to the provider; a provisioned user is active.
            active: doc.get("active").and_then(Value::as_bool).unwrap_or(true),
            custom,
            emails,
        }
    }
}

/// What a group write does to the document and the member rows.
#[derive(Clone)]
pub struct GroupChange {
    pub doc: Map<String, Value>,
    pub members: Vec<MemberOp>,
}

impl GroupChange {
    /// PUT: the new member list replaces the old one; no members attribute means no members.
    pub fn replace_members(doc: Map<String, Value>, members: Option<Vec<MemberRef>>) -> Self {
        GroupChange {
            doc,
            members: vec![
                MemberOp::RemoveAll,
                MemberOp::Add(members.unwrap_or_default()),
            ],
        }
    }
}

/// How many of each kind a tenant has staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantCounts {
    pub active_users: i64,
    pub inactive_users: i64,
    pub groups: i64,
    pub memberships: i64,
}

/// One SCIM request as the provisioning log keeps it: never bodies, never query strings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisioningEntry {
    pub tenant: String,
    pub at: DateTime<Utc>,
    pub request_id: String,
    pub method: String,
    /// The route template, e.g. `/Users/{id}`.
    pub path: String,
    pub resource_id: Option<String>,
    pub status: u16,
    pub duration_ms: f64,
    /// The SCIM error's detail, for error answers.
    pub error: Option<String>,
}

/// A stored provisioning log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisioningRow {
    pub id: i64,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub resource_id: Option<String>,
    pub status: u16,
    pub duration_ms: f64,
    pub error: Option<String>,
}

/// Which statuses to list: one status, or a class (`4` for 4xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u16),
}

impl StatusFilter {
    /// `404`, or `4xx` (any case).
    pub fn parse(s: &str) -> Option<StatusFilter> {
        let s = s.trim();
        if s.len() != 3 {
            return None;
        }
        let lower = s.to_ascii_lowercase();
        if let Some(d) = lower.strip_suffix("xx") {
            let c: u16 = d.parse().ok()?;
            return (1..=5).contains(&c).then_some(StatusFilter::Class(c));
        }
        let n: u16 = s.parse().ok()?;
        (100..=599).contains(&n).then_some(StatusFilter::Exact(n))
    }

    /// The inclusive status range this filter selects.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusFilter::Exact(n) => (n, n),
            StatusFilter::Class(c) => (c * 100, c * 100 + 99),
        }
    }
}

/// A page of a tenant's provisioning log, newest first.
#[derive(Debug, Clone, Default)]
pub struct ProvisioningQuery {
    pub status: Option<StatusFilter>,
    /// Inclusive lower bound of `at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `at`.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!(StatusFilter::parse("404"), Some(StatusFilter::Exact(404)));
        assert_eq!(StatusFilter::parse("4xx"), Some(StatusFilter::Class(4)));
        assert_eq!(StatusFilter::parse("5XX"), Some(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::Class(4).range(), (400, 499));
        for bad in ["", "4x", "6xx", "0xx", "99", "600", "abc", "40x"] {
            assert_eq!(StatusFilter::parse(bad), None, "{bad}");
        }
    }
}
