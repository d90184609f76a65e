//! Read-only queries over the sync state and the run ledger (runs, run items, links, leases,
//! queued offboardings), for the admin API and the metrics: the [`LedgerReads`] role of the
//! staging database. Nothing here writes. Each backend holds its own SQL and reads the same
//! rows, with the same filters, order and paging; the rows, and how their JSON columns decode,
//! are here.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::SyncError;
use crate::mapping::StagedUser;

#[async_trait]
pub trait LedgerReads: Send + Sync {
    /// Runs matching `q`, newest first, and how many match in all.
    async fn runs(&self, q: &RunQuery) -> Result<(i64, Vec<RunRow>), SyncError>;

    async fn run(&self, id: i64) -> Result<Option<RunRow>, SyncError>;

    /// The newest run of `tenant`.
    async fn last_run(&self, tenant: &str) -> Result<Option<RunRow>, SyncError>;

    /// The items of run `run_id` (optionally of one outcome) in the order they were recorded,
    /// and how many match in all.
    async fn items(
        &self,
        run_id: i64,
        outcome: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<ItemRow>), SyncError>;

    /// The run holding `tenant`'s lease at `now` (an expired lease holds nothing): Some(run
    /// id, when known).
    async fn lease(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<i64>>, SyncError>;

    /// A staged user with its document and groups; None when there is none (or its stored
    /// document is not JSON, which the store never writes).
    async fn staged_user(
        &self,
        tenant: &str,
        who: UserRef<'_>,
    ) -> Result<Option<StagedRow>, SyncError>;

    /// What the application row holds since the engine last wrote it.
    async fn link(&self, tenant: &str, user_id: &str) -> Result<Option<LinkRow>, SyncError>;

    /// Pending offboardings of `tenant`, soonest due first, and how many there are.
    async fn pending_offboardings(
        &self,
        tenant: &str,
        retention_hours: u32,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<PendingRow>), SyncError>;

    async fn count_pending(&self, tenant: &str, retention_hours: u32) -> Result<i64, SyncError>;

    /// The users whose last attempt failed (retried by every run), or only the quarantined
    /// ones, of one tenant or of all, longest failing first, and how many there are.
    async fn failing(
        &self,
        tenant: Option<&str>,
        quarantined_only: bool,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<FailingRow>), SyncError>;

    /// What the sync side knows of one user, in one read: its link, whether it is failing,
    /// its queued offboarding, when its retention started, and its newest `limit` ledger
    /// items (with their runs) and how many it has.
    async fn user_sync(
        &self,
        tenant: &str,
        user_id: &str,
        limit: i64,
    ) -> Result<UserSyncRow, SyncError>;
}

/// A user whose last sync attempt failed: `attempts` runs in a row on one staged version;
/// quarantined (skipped by the runs) since `quarantined_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailingRow {
    pub tenant: String,
    pub user_id: String,
    /// None when the user has left staging since.
    pub user_name: Option<String>,
    pub attempts: i64,
    pub last_error: String,
    pub first_failed_at: String,
    pub last_failed_at: String,
    pub quarantined_at: Option<String>,
}

/// One user's sync side.
#[derive(Debug, Clone, Default)]
pub struct UserSyncRow {
    pub link: Option<LinkRow>,
    pub failing: Option<FailingRow>,
    pub queued: Option<QueuedRow>,
    /// The staged user's deactivated_at and deleted_at (None: active, or not staged).
    pub deactivated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub items_total: i64,
    /// Newest first.
    pub items: Vec<UserItem>,
}

/// A queued offboarding: decided (the user is purged from staging), not applied yet.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRow {
    pub app_key: String,
    /// `delete`, `update` or `none`.
    pub action: String,
    pub queued_at: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// The action of a queued offboarding as stored (`{"action": …}`).
pub fn queued_action(action: &str) -> String {
    serde_json::from_str::<Value>(action)
        .ok()
        .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A ledger item of one user, with the run it belongs to.
#[derive(Debug, Clone)]
pub struct UserItem {
    pub run_id: i64,
    pub trigger: String,
    pub dry_run: bool,
    pub run_status: String,
    pub started_at: String,
    pub item: ItemRow,
}

/// One ledger row of the runs table, with the number of offboardings it held.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: i64,
    pub tenant: String,
    pub trigger: String,
    pub dry_run: bool,
    pub full: bool,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub roles_added: i64,
    pub roles_removed: i64,
    pub deactivated: i64,
    pub offboarded: i64,
    pub failed: i64,
    pub quarantined: i64,
    pub held: i64,
    pub watermark_from: Option<i64>,
    pub watermark_to: Option<i64>,
    pub error: Option<String>,
    pub approves_run: Option<i64>,
    pub approved_at: Option<String>,
    pub approved_by: Option<i64>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub tenant: Option<String>,
    pub status: Option<String>,
    /// `schedule`, `cli` or `api`.
    pub trigger: Option<String>,
    /// Runs started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Runs started before this time.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

/// One ledger item of a run.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: i64,
    pub user_id: String,
    pub user_name: Option<String>,
    pub app_key: Option<String>,
    pub outcome: String,
    /// Column → {"before": …, "after": …}.
    pub changes: Map<String, Value>,
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
    pub error: Option<String>,
}

/// An item as stored: id, user_id, user_name, app_key, outcome, then the JSON texts of
/// changes, roles_added and roles_removed, and error.
pub type RawItem = (
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn json_or_default<T: serde::de::DeserializeOwned + Default>(text: Option<&str>) -> T {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

pub fn decode_item(
    (id, user_id, user_name, app_key, outcome, changes, added, removed, error): RawItem,
) -> ItemRow {
    ItemRow {
        id,
        user_id,
        user_name,
        app_key,
        outcome,
        changes: json_or_default(changes.as_deref()),
        roles_added: json_or_default(added.as_deref()),
        roles_removed: json_or_default(removed.as_deref()),
        error,
    }
}

/// A staged user (live, inactive or deleted but not yet purged) as the engine would read it.
#[derive(Debug, Clone)]
pub struct StagedRow {
    pub user: StagedUser,
    pub user_name: String,
    pub active: bool,
    pub deleted: bool,
}

/// Which staged user.
#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    Id(&'a str),
    /// Case-insensitive; a live user wins over a deleted one of the same name.
    UserName(&'a str),
    /// Case-exact; a live user wins over a deleted one.
    ExternalId(&'a str),
}

impl UserRef<'_> {
    /// The value compared with users.id or users.user_name_ci (names are stored lower-cased).
    pub fn key(&self) -> String {
        match self {
            UserRef::Id(id) | UserRef::ExternalId(id) => id.to_string(),
            UserRef::UserName(n) => n.to_lowercase(),
        }
    }
}

/// A staged user as stored: id, user_name, doc (JSON text), active, deleted, groups (JSON text).
pub type RawStaged = (String, String, String, bool, bool, Option<String>);

/// None when the stored document is not a JSON object (which the store never writes).
pub fn decode_staged(
    (id, user_name, doc, active, deleted, groups): RawStaged,
) -> Option<StagedRow> {
    let doc = serde_json::from_str::<Map<String, Value>>(&doc).ok()?;
    // Unreadable groups read as none, like the other stored JSON the ledger shows.
    let groups = super::store::groups_from_json(groups.as_deref()).unwrap_or_default();
    Some(StagedRow {
        user: StagedUser { id, doc, groups },
        user_name,
        active,
        deleted,
    })
}

/// What the application row holds since the engine last wrote it.
#[derive(Debug, Clone)]
pub struct LinkRow {
    pub app_key: String,
    pub applied_roles: BTreeSet<String>,
    pub fields: Map<String, Value>,
    pub state: String,
    pub updated_at: String,
}

/// A link as stored: app_key, applied_roles (JSON), fields (JSON), state, updated_at.
pub type RawLink = (String, String, String, String, String);

pub fn decode_link((app_key, roles, fields, state, updated_at): RawLink) -> LinkRow {
    LinkRow {
        app_key,
        applied_roles: json_or_default(Some(&roles)),
        fields: json_or_default(Some(&fields)),
        state,
        updated_at,
    }
}

/// An offboarding that has not been applied yet.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// `inactive` or `deleted`: staged, inside (or just past) its retention; `queued`: purged
    /// from staging, its application offboarding not applied yet.
    pub state: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub app_key: String,
    pub deactivated_at: Option<String>,
    pub deleted_at: Option<String>,
    /// When its retention ends (staged) or when it was queued.
    pub due_at: String,
    pub queued_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// A pending offboarding as stored, in [`PendingRow`]'s field order.
pub type RawPending = (
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    i64,
    Option<String>,
);

pub fn decode_pending(
    (
        state,
        user_id,
        user_name,
        app_key,
        deactivated_at,
        deleted_at,
        due_at,
        queued_at,
        attempts,
        last_error,
    ): RawPending,
) -> PendingRow {
    PendingRow {
        state,
        user_id,
        user_name,
        app_key,
        deactivated_at,
        deleted_at,
        due_at,
        queued_at,
        attempts,
        last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(groups: &str) -> StagedRow {
        decode_staged((
            "u1".into(),
            "Ann".into(),
            r#"{"userName":"Ann"}"#.into(),
            true,
            false,
            Some(groups.into()),
        ))
        .unwrap()
    }

    fn groups(r: &StagedRow) -> Vec<(&str, &str, Option<&str>)> {
        r.user
            .groups
            .iter()
            .map(|g| {
                (
                    g.id.as_str(),
                    g.display_name.as_str(),
                    g.external_id.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn staged_groups_decode_from_both_backends() {
        let want = vec![("g1", "Sales", Some("x1")), ("g2", "Ops", None)];
        // SQLite: json_group_array(json_array(id, display_name, external_id)).
        let sqlite = staged(r#"[["g1","Sales","x1"],["g2","Ops",null]]"#);
        assert_eq!(groups(&sqlite), want);
        // SQL Server: FOR JSON PATH, a NULL external_id left out.
        let mssql = staged(
            r#"[{"id":"g1","display_name":"Sales","external_id":"x1"},{"id":"g2","display_name":"Ops"}]"#,
        );
        assert_eq!(groups(&mssql), want);
        assert!(staged("[]").user.groups.is_empty());
        assert_eq!(sqlite.user.doc.get("userName"), Some(&Value::from("Ann")));
    }

    #[test]
    fn a_staged_user_whose_document_is_not_an_object_is_none() {
        let raw = |doc: &str| ("u1".into(), "a".into(), doc.into(), true, false, None);
        assert!(decode_staged(raw("not json")).is_none());
        assert!(decode_staged(raw("[1]")).is_none());
        assert!(decode_staged(raw("{}")).is_some_and(|r| r.user.groups.is_empty()));
    }

    #[test]
    fn user_names_are_looked_up_lower_cased() {
        assert_eq!(
            UserRef::UserName("Ann.Ö@Example.COM").key(),
            "ann.ö@example.com"
        );
        assert_eq!(UserRef::Id("AbC").key(), "AbC");
    }
}
