//! The half of an optimistic update that does not depend on the database: check the client's
//! version, apply the change to the stored document, and work out what has to be written.
//! Each backend reads the current row, calls this, and writes with a compare-and-swap on the
//! version it read.

use serde_json::{Map, Value};

use super::{StoreError, Stored, UserColumns};
use crate::blocking;
use crate::scim::ScimError;
use crate::scim::patch::MemberOp;
use crate::scim::resource::fold_case;
use crate::scim::schema::ResourceType;

use super::GroupChange;

/// A live resource's row as read before an update.
#[derive(Debug, Clone)]
pub struct Current {
    pub pk: i64,
    pub doc: String,
    pub version: i64,
    pub created: String,
    pub last_modified: String,
}

impl Current {
    /// The resource as it is: the answer to an update that changes nothing.
    pub fn unchanged(&self, id: &str) -> Stored {
        Stored {
            id: id.to_string(),
            doc: self.doc.clone(),
            version: self.version,
            created: self.created.clone(),
            last_modified: self.last_modified.clone(),
            related: None,
        }
    }
}

/// `If-Match`: the versions the client accepts, if it named any.
pub fn check_version(if_match: Option<&[i64]>, version: i64) -> Result<(), StoreError> {
    match if_match {
        Some(list) if !list.contains(&version) => Err(StoreError::VersionMismatch),
        _ => Ok(()),
    }
}

/// A group's displayName and externalId columns.
pub fn group_columns(doc: &Map<String, Value>) -> (String, Option<String>) {
    let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
    (s("displayName").unwrap_or_default(), s("externalId"))
}

/// What a user update writes.
pub struct UserUpdate {
    pub cols: UserColumns,
    pub emails_changed: bool,
    /// userName or externalId changed: their indexes need new entries. Writing an unchanged
    /// indexed column still rewrites its index entries, so a write leaves them out otherwise.
    pub keys_changed: bool,
    /// active changed (and with it deactivated_at).
    pub active_changed: bool,
    pub text: String,
    pub text_ci: String,
}

/// Check the version and apply `change`; None when the document stays as it is (no new
/// version, nothing for the sync engine to do).
pub fn plan_user(
    rt: &ResourceType,
    current: &Current,
    if_match: Option<&[i64]>,
    change: impl Fn(Map<String, Value>) -> Result<Map<String, Value>, ScimError>,
) -> Result<Option<UserUpdate>, StoreError> {
    blocking::off_worker_if_large(current.doc.len(), blocking::LARGE_UPDATE, || {
        plan_user_here(rt, current, if_match, change)
    })
}

fn plan_user_here(
    rt: &ResourceType,
    current: &Current,
    if_match: Option<&[i64]>,
    change: impl Fn(Map<String, Value>) -> Result<Map<String, Value>, ScimError>,
) -> Result<Option<UserUpdate>, StoreError> {
    check_version(if_match, current.version)?;
    let old: Map<String, Value> = serde_json::from_str(&current.doc)?;
    let new = change(old.clone())?;
    if new == old {
        return Ok(None);
    }
    let cols = UserColumns::from_doc(&new, rt.custom_urn().unwrap_or_default());
    let was = UserColumns::from_doc(&old, "");
    Ok(Some(UserUpdate {
        emails_changed: was.emails != cols.emails,
        keys_changed: was.user_name != cols.user_name || was.external_id != cols.external_id,
        active_changed: was.active != cols.active,
        text: serde_json::to_string(&new)?,
        text_ci: serde_json::to_string(&fold_case(rt, &new))?,
        cols,
    }))
}

/// What a group update writes.
pub struct GroupUpdate {
    pub members: Vec<MemberOp>,
    pub doc_changed: bool,
    /// displayName or externalId changed: the members' group context changed too.
    pub renamed: bool,
    pub display: String,
    pub external_id: Option<String>,
    pub text: String,
    pub text_ci: String,
    /// Whether the write must find the version it read. Member rows change by key,
    /// independently of the document: when the document stays and the client named no
    /// version, concurrent member changes need not wait for each other (Entra sends them in
    /// parallel batches).
    pub needs_version: bool,
}

/// Check the version and apply `change`; None when neither the document nor the members
/// change.
pub fn plan_group(
    rt: &ResourceType,
    current: &Current,
    if_match: Option<&[i64]>,
    change: impl Fn(Map<String, Value>) -> Result<GroupChange, ScimError>,
) -> Result<Option<GroupUpdate>, StoreError> {
    blocking::off_worker_if_large(current.doc.len(), blocking::LARGE_UPDATE, || {
        plan_group_here(rt, current, if_match, change)
    })
}

fn plan_group_here(
    rt: &ResourceType,
    current: &Current,
    if_match: Option<&[i64]>,
    change: impl Fn(Map<String, Value>) -> Result<GroupChange, ScimError>,
) -> Result<Option<GroupUpdate>, StoreError> {
    check_version(if_match, current.version)?;
    let old: Map<String, Value> = serde_json::from_str(&current.doc)?;
    let GroupChange { doc, members } = change(old.clone())?;
    let doc_changed = doc != old;
    if !doc_changed && members.is_empty() {
        return Ok(None);
    }
    let (display, external_id) = group_columns(&doc);
    let renamed = group_columns(&old) != (display.clone(), external_id.clone());
    Ok(Some(GroupUpdate {
        members,
        doc_changed,
        renamed,
        display,
        external_id,
        text: serde_json::to_string(&doc)?,
        text_ci: serde_json::to_string(&fold_case(rt, &doc))?,
        needs_version: doc_changed || if_match.is_some(),
    }))
}
