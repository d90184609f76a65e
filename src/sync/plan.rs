//! The pure planner: what a run does for each user, decided from the staged user, the mapping
//! and the user's link, with no I/O. The change pass, the lifecycle and the admin API's
//! preview all decide here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::store::{Link, Mark, UserRow};
use super::{Change, ItemReport, Outcome, SyncError, UserFailure};
use crate::mapping::{FieldValue, Mapping, Offboarding, RenderedUser, UserState};
use crate::store::format_time;
use crate::target::Existing;

/// The decision for one user of a batch.
pub enum Plan {
    Unchanged,
    /// Quarantined, and unchanged since: skipped.
    Quarantined,
    Failed {
        row: UserRow,
        app_key: Option<String>,
        failure: UserFailure,
    },
    Write(Box<Write>),
    /// A full run: unchanged against the link, to be compared with the application row as it
    /// is (written again when it differs or is gone).
    Check(Box<Write>),
}

pub struct Write {
    /// The user had a link (its row was the engine's).
    pub linked: bool,
    /// What the write does with a row that already has the key (decided from the rows'
    /// owners before the batch is written).
    pub existing: Existing,
    /// Why the write is not made: the row is another tenant's.
    pub refused: Option<String>,
    pub row: UserRow,
    pub rendered: RenderedUser,
    pub fingerprint: String,
    pub state: UserState,
    pub previous_key: Option<String>,
    pub roles_to_add: BTreeSet<String>,
    pub roles_to_remove: BTreeSet<String>,
    pub fields: BTreeMap<String, Value>,
    pub outcome: Outcome,
    pub changes: BTreeMap<String, Change>,
}

/// A field value as JSON, for links and the ledger.
pub fn field_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Null => Value::Null,
        FieldValue::Text(s) => Value::String(s.clone()),
        FieldValue::Integer(i) => Value::from(*i),
        FieldValue::Boolean(b) => Value::Bool(*b),
        FieldValue::Timestamp(t) => Value::String(format_time(*t)),
    }
}

pub fn offboarding_json(o: &Offboarding) -> Value {
    match o {
        Offboarding::None => serde_json::json!({"action": "none"}),
        Offboarding::Delete => serde_json::json!({"action": "delete"}),
        Offboarding::Update(fields) => {
            let mut m = Map::new();
            for (c, v) in fields {
                m.insert(c.clone(), field_json(v));
            }
            serde_json::json!({"action": "update", "fields": m})
        }
    }
}

/// Back from the queue's JSON. Values come back as text, integers, booleans or null
/// (timestamps were stored as RFC 3339 text, which is also how they are written).
pub fn offboarding_from_json(v: &Value) -> Offboarding {
    match v.get("action").and_then(Value::as_str) {
        Some("delete") => Offboarding::Delete,
        Some("update") => Offboarding::Update(
            v.get("fields")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(c, v)| {
                            let fv = match v {
                                Value::Null => FieldValue::Null,
                                Value::Bool(b) => FieldValue::Boolean(*b),
                                Value::Number(n) => match n.as_i64() {
                                    Some(i) => FieldValue::Integer(i),
                                    None => FieldValue::Text(n.to_string()),
                                },
                                Value::String(s) => FieldValue::Text(s.clone()),
                                other => FieldValue::Text(other.to_string()),
                            };
                            (c.clone(), fv)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => Offboarding::None,
    }
}

pub fn state_name(s: UserState) -> &'static str {
    match s {
        UserState::Active => "active",
        UserState::Deactivated => "deactivated",
    }
}

/// What writing a rendered user changes against its link: the columns (key included) whose
/// value differs, before → after (every column when there is no link yet), and the role diff.
pub struct Diff {
    /// Every rendered column as JSON.
    pub fields: BTreeMap<String, Value>,
    pub changes: BTreeMap<String, Change>,
    pub roles_to_add: BTreeSet<String>,
    pub roles_to_remove: BTreeSet<String>,
}

pub fn diff(mapping: &Mapping, rendered: &RenderedUser, link: Option<&Link>) -> Diff {
    let empty = BTreeSet::new();
    let applied = link.map(|l| &l.applied_roles).unwrap_or(&empty);
    let roles_to_add: BTreeSet<String> = rendered.roles.difference(applied).cloned().collect();
    let roles_to_remove: BTreeSet<String> = applied.difference(&rendered.roles).cloned().collect();
    let fields: BTreeMap<String, Value> = rendered
        .fields
        .iter()
        .map(|(c, v)| (c.clone(), field_json(v)))
        .collect();
    let mut changes = BTreeMap::new();
    let before_key = link.map(|l| Value::String(l.app_key.clone()));
    if before_key.as_ref().and_then(Value::as_str) != Some(rendered.key.as_str()) {
        changes.insert(
            mapping.target().key_column.clone(),
            Change {
                before: before_key.unwrap_or(Value::Null),
                after: Value::String(rendered.key.clone()),
            },
        );
    }
    for (c, after) in &fields {
        let before = link
            .and_then(|l| l.fields.get(c))
            .cloned()
            .unwrap_or(Value::Null);
        if &before != after || link.is_none() {
            changes.insert(
                c.clone(),
                Change {
                    before,
                    after: after.clone(),
                },
            );
        }
    }
    Diff {
        fields,
        changes,
        roles_to_add,
        roles_to_remove,
    }
}

/// The state a staged user is rendered in.
pub fn user_state(active: bool, deleted: bool) -> UserState {
    if deleted || !active {
        UserState::Deactivated
    } else {
        UserState::Active
    }
}

/// Decide what to do for one user.
pub fn plan(mapping: &Mapping, row: UserRow, link: Option<&Link>, full: bool) -> Plan {
    if row.quarantined {
        return Plan::Quarantined;
    }
    let state = user_state(row.active, row.deleted);
    if link.is_none() && state == UserState::Deactivated {
        // Inactive or deleted before its first sync: the application never hears of it (its
        // staging row is purged after the retention like any other).
        return Plan::Unchanged;
    }
    let staged = match row.staged() {
        Ok(s) => s,
        Err(error) => {
            return Plan::Failed {
                app_key: link.map(|l| l.app_key.clone()),
                row,
                failure: UserFailure::Staged(error),
            };
        }
    };
    let rendered = match mapping.render(&staged, state) {
        Ok(r) => r,
        Err(e) => {
            return Plan::Failed {
                app_key: link.map(|l| l.app_key.clone()),
                row,
                failure: UserFailure::Render(e),
            };
        }
    };
    let fingerprint = rendered.fingerprint();
    let unchanged = link.is_some_and(|l| l.fingerprint == fingerprint && l.app_key == rendered.key);
    if unchanged && !full {
        return Plan::Unchanged;
    }
    let Diff {
        fields,
        changes,
        roles_to_add,
        roles_to_remove,
    } = diff(mapping, &rendered, link);
    let outcome = match (link.map(|l| l.state.as_str()), state) {
        (None, _) => Outcome::Created,
        (Some("active"), UserState::Deactivated) => Outcome::Deactivated,
        (Some("deactivated"), UserState::Active) => Outcome::Reactivated,
        _ => Outcome::Updated,
    };
    let write = Box::new(Write {
        linked: link.is_some(),
        existing: Existing::Owned,
        refused: None,
        previous_key: link
            .map(|l| l.app_key.clone())
            .filter(|k| *k != rendered.key),
        row,
        fingerprint,
        state,
        roles_to_add,
        roles_to_remove,
        fields,
        outcome,
        changes,
        rendered,
    });
    if unchanged {
        Plan::Check(write)
    } else {
        Plan::Write(write)
    }
}

/// One batch as read and planned: the ids of its users and their versions, their plans, the
/// last user's mark.
pub struct Planned {
    pub ids: Vec<String>,
    pub seqs: Vec<i64>,
    pub plans: Vec<Plan>,
    pub last: Option<Mark>,
}

/// Plan a batch, spread over the cores. Runs on a blocking thread.
pub fn plan_batch(
    mapping: &Mapping,
    rows: Vec<UserRow>,
    links: &HashMap<String, Link>,
    full: bool,
) -> Result<Planned, SyncError> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.change_seq).collect();
    let last = rows.last().map(UserRow::mark);
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 8);
    let per = rows.len().div_ceil(threads).max(64);
    let plans = if rows.len() <= per {
        rows.into_iter()
            .map(|row| {
                let link = links.get(&row.id);
                plan(mapping, row, link, full)
            })
            .collect()
    } else {
        let mut chunks: Vec<Vec<UserRow>> = Vec::new();
        let mut it = rows.into_iter();
        loop {
            let chunk: Vec<UserRow> = it.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let links = &links;
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|row| {
                                let link = links.get(&row.id);
                                plan(mapping, row, link, full)
                            })
                            .collect::<Vec<Plan>>()
                    })
                })
                .collect();
            let mut plans = Vec::new();
            for h in handles {
                plans.extend(
                    h.join()
                        .map_err(|_| SyncError::Task("a render thread panicked".into()))?,
                );
            }
            Ok::<_, SyncError>(plans)
        })?
    };
    Ok(Planned {
        ids,
        seqs,
        plans,
        last,
    })
}

pub fn failed_item(row: &UserRow, app_key: Option<String>, failure: UserFailure) -> ItemReport {
    ItemReport {
        user_id: row.id.clone(),
        user_name: Some(row.user_name.clone()),
        app_key,
        outcome: Outcome::Failed,
        changes: BTreeMap::new(),
        roles_added: vec![],
        roles_removed: vec![],
        error: Some(failure.reason()),
        action: None,
        log_reason: Some(failure.loggable()),
    }
}

/// The name of an offboarding's action, as the ledger records it: `none`, `delete` or
/// `update` (the applied roles are removed whatever the action).
pub fn offboarding_action(action: &Offboarding) -> &'static str {
    match action {
        Offboarding::None => "none",
        Offboarding::Delete => "delete",
        Offboarding::Update(_) => "update",
    }
}

/// What an offboarding changes, from the values last applied to the row (a link's fields):
/// a deletion takes every column to null, an update the columns it sets that differ.
pub fn offboarding_changes(
    action: &Offboarding,
    applied: &Map<String, Value>,
) -> BTreeMap<String, Change> {
    match action {
        Offboarding::None => BTreeMap::new(),
        Offboarding::Delete => applied
            .iter()
            .map(|(c, v)| {
                (
                    c.clone(),
                    Change {
                        before: v.clone(),
                        after: Value::Null,
                    },
                )
            })
            .collect(),
        Offboarding::Update(fields) => fields
            .iter()
            .filter_map(|(c, v)| {
                let after = field_json(v);
                let before = applied.get(c).cloned().unwrap_or(Value::Null);
                (before != after).then(|| (c.clone(), Change { before, after }))
            })
            .collect(),
    }
}
