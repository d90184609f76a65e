//! The staging "operations" database, in the domain's terms: users, groups and memberships
//! per tenant, with a change sequence for the sync engine; the roles a backend plays for the
//! SCIM API ([`ScimStore`]), the admin API ([`StagingCounts`]) and the provisioning log
//! ([`ProvisioningLogStore`]). Backends (src/db) implement them; nothing here knows SQL, a
//! driver or HTTP. The update plan ([`update`]) and the walk over filters ([`filter_walk`]) are
//! shared by every backend.

pub mod filter_walk;
pub mod request_log;
pub mod update;

pub use request_log::RequestLog;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::scim::ScimError;
use crate::scim::filter::Filter;
use crate::scim::patch::MemberOp;
use crate::scim::resource::MemberRef;
use crate::scim::schema::ResourceType;

/// A database failure in the domain's terms: each backend turns its driver's errors into these,
/// so nothing above a backend matches a driver's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// Another writer holds a lock the statement needed, past the wait (SQLite busy or locked,
    /// a SQL Server deadlock victim or lock timeout): worth retrying.
    #[error("the database is busy")]
    Busy,
    /// The database cannot be reached or cannot take writes (no connection, the writer has
    /// stopped, a read-only or full disk).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The storage under the database is full (or the database at its size limit): writes
    /// fail until space is freed, then resume by themselves.
    #[error("the database's storage is full")]
    Full,
    /// Anything else; the text names the failure, never the values involved.
    #[error("{0}")]
    Failed(String),
}

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
    Db(#[from] DbError),
    #[error("stored document is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the resource kept changing; retry")]
    Contended,
}

impl From<ScimError> for StoreError {
    fn from(e: ScimError) -> Self {
        StoreError::Rejected(e)
    }
}

/// A list request's filter and order, independent of the dialect.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    pub filter: Option<&'a Filter>,
    pub sort_by: Option<&'a str>,
    pub descending: bool,
}

/// A user's new document from its current one (an error leaves the store as it was).
pub type UserChange<'a> =
    &'a (dyn Fn(Map<String, Value>) -> Result<Map<String, Value>, ScimError> + Send + Sync);

/// A group's change (document and member operations) from its current document.
pub type GroupChangeFn<'a> =
    &'a (dyn Fn(Map<String, Value>) -> Result<GroupChange, ScimError> + Send + Sync);

/// What the SCIM API needs of the staging database.
///
/// Updates are optimistic: the backend reads the resource, [`update`] plans the change, and the
/// write succeeds only if the resource did not change in between (compare-and-swap on its
/// version); `if_match` are the versions the client accepts. A write that changes something
/// writes `log`'s entry ([`RequestLog::for_write`]) in its own transaction and reports it
/// ([`RequestLog::written`]) once committed.
#[async_trait]
pub trait ScimStore: Send + Sync {
    async fn create_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        doc: &Map<String, Value>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError>;

    async fn get_user(
        &self,
        tenant: &str,
        id: &str,
        with_groups: bool,
    ) -> Result<Stored, StoreError>;

    // What to change, under which version and time, and the entry to log with it.
    #[allow(clippy::too_many_arguments)]
    async fn update_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: UserChange<'_>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError>;

    /// DELETE from the client: the user disappears from SCIM at once and loses its
    /// memberships; the row stays (deleted) so the sync lifecycle can offboard it after
    /// retention.
    async fn delete_user(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<(), StoreError>;

    async fn create_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        change: GroupChange,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError>;

    async fn get_group(
        &self,
        tenant: &str,
        id: &str,
        with_members: bool,
    ) -> Result<Stored, StoreError>;

    /// A group's document and member rows, changed atomically.
    // What to change, under which version and time, and the entry to log with it.
    #[allow(clippy::too_many_arguments)]
    async fn update_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: GroupChangeFn<'_>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError>;

    async fn delete_group(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<(), StoreError>;

    /// One page of users or groups and the total; the backend translates the filter and sort
    /// key into its dialect (an untranslatable filter is an invalidFilter error).
    async fn list(
        &self,
        tenant: &str,
        rt: &ResourceType,
        query: ListQuery<'_>,
        page: &Page,
        with_related: bool,
    ) -> Result<(i64, Vec<Stored>), StoreError>;
}

/// What the admin API counts in the staging database.
#[async_trait]
pub trait StagingCounts: Send + Sync {
    /// Live users (active and inactive), groups and memberships of `tenant`.
    async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts, StoreError>;

    /// The member count of each of `group_ids` (missing ids: 0).
    async fn member_counts(
        &self,
        tenant: &str,
        group_ids: &[String],
    ) -> Result<Vec<i64>, StoreError>;

    /// The ids of the staged users (deleted ones too, until purged) with this userName
    /// (case-insensitive) or externalId, newest first, at most `About::MAX_IDS`.
    async fn user_ids(&self, tenant: &str, by: &UserKey) -> Result<Vec<String>, StoreError>;
}

/// A user's name or externalId, as an admin asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKey {
    /// Compared case-insensitively.
    UserName(String),
    ExternalId(String),
}

/// The provisioning log: one entry per SCIM request.
#[async_trait]
pub trait ProvisioningLogStore: Send + Sync {
    async fn insert_provisioning_log(
        &self,
        entries: &[ProvisioningEntry],
    ) -> Result<(), StoreError>;

    /// Make the entries written with their writes ([`ScimStore`]) part of the log's pages and
    /// look-ups, if the backend keeps them apart until then (SQLite appends them to an inbox
    /// without indexes, for the writes' sake); how many were moved.
    async fn settle_provisioning_log(&self) -> Result<u64, StoreError>;

    /// Set the status, duration and error of entries already written (found by tenant,
    /// request id and time): a write's entry, committed with the write, whose request was
    /// answered otherwise than the write's success.
    async fn amend_provisioning_log(&self, entries: &[ProvisioningEntry])
    -> Result<(), StoreError>;

    /// Delete entries older than `cutoff`, in bounded steps; how many.
    async fn prune_provisioning_log(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;

    /// One page of a tenant's log, newest first, and the number of matches.
    async fn provisioning_log(
        &self,
        tenant: &str,
        q: &ProvisioningQuery,
    ) -> Result<(i64, Vec<ProvisioningRow>), StoreError>;
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
    /// Whom a POST or PUT was about, as its body said (failures included, so a refused create
    /// can be found): the userName, lower-cased (users only), and the externalId.
    pub user_name: Option<String>,
    pub external_id: Option<String>,
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
    /// Lower-cased.
    pub user_name: Option<String>,
    pub external_id: Option<String>,
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
    /// `POST`, `PUT`, …
    pub method: Option<String>,
    pub request_id: Option<String>,
    /// Entries about one resource.
    pub about: Option<About>,
    /// Inclusive lower bound of `at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `at`.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

/// The entries about a resource: those naming one of `ids` as their resource, or whose body
/// carried `user_name` (lower-cased) or `external_id`. Any one matches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct About {
    pub ids: Vec<String>,
    pub user_name: Option<String>,
    pub external_id: Option<String>,
}

impl About {
    /// At most this many resource ids (a userName names one live user, and its deleted
    /// predecessors until they are purged).
    pub const MAX_IDS: usize = 20;

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.user_name.is_none() && self.external_id.is_none()
    }
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
