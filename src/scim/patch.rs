//! The PATCH engine (RFC 7644 §3.5.2) on a normalised document.
//!
//! It works on a copy: the caller stores the result only when every operation succeeded, so a
//! PATCH applies atomically or not at all. Group members are not in the document; operations on
//! them come back as [`MemberOp`]s for the store, which applies them as row changes.
//!
//! Every operation costs time linear in its value and in the attribute it changes: elements
//! are matched through hash sets and filter results through a mask, never pairwise.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value};

use super::entra::{self, OpKind, Quirk};
use super::error::ScimError;
use super::filter::{self, CompValue, CompareOp, Filter, FilterBudget, FilterError, PatchPath};
use super::limits::{Bound, Limits};
use super::resource::{self, MemberRef, single_primary};
use super::schema::{Attr, AttrType, PATCH_OP, ResourceKind, ResourceType};

#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    pub op: OpKind,
    pub path: Option<PatchPath>,
    /// The path as sent: a bare extension URN is a path too, and only the schema knows which.
    pub raw_path: Option<String>,
    pub value: Option<Value>,
}

/// A change to a group's member rows, applied in order.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOp {
    Add(Vec<MemberRef>),
    Remove(Vec<String>),
    RemoveAll,
}

/// Parse a PatchOp request body. The number of operations and the terms of all the value
/// filters in their paths are bounded by `limits`.
pub fn parse(body: &Value, limits: &Limits) -> Result<Vec<PatchOp>, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the PATCH body must be a JSON object"))?;
    let get = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    // Other URNs next to PatchOp's are ignored (RFC 7643 §3: schemas only names namespaces).
    if let Some(schemas) = get("schemas") {
        let ok = schemas
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(PATCH_OP)));
        if !ok {
            return Err(ScimError::invalid_syntax(format!(
                "schemas must contain {PATCH_OP}"
            )));
        }
    }
    let ops = get("Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::invalid_syntax("Operations must be an array"))?;
    if ops.is_empty() {
        return Err(ScimError::invalid_syntax("Operations must not be empty"));
    }
    if ops.len() > limits.max_patch_operations {
        return Err(limits.exceeded(Bound::PatchOperations, None));
    }
    let mut budget = FilterBudget::new(limits);
    ops.iter().map(|op| parse_op(op, &mut budget)).collect()
}

fn parse_op(v: &Value, budget: &mut FilterBudget) -> Result<PatchOp, ScimError> {
    let o = v
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("each operation must be an object"))?;
    let get = |name: &str| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let op = get("op")
        .and_then(Value::as_str)
        .and_then(entra::op_kind)
        .ok_or_else(|| ScimError::invalid_syntax("op must be add, replace or remove"))?;
    let raw_path = get("path")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_string());
    let path = match get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(filter::parse_path(s, budget).map_err(path_error)?),
        Some(_) => return Err(ScimError::invalid_path("path must be a string")),
    };
    let value = get("value").cloned();
    if op != OpKind::Remove && value.is_none() {
        return Err(ScimError::invalid_syntax("add and replace need a value"));
    }
    if op == OpKind::Remove && path.is_none() {
        return Err(ScimError::no_target("remove needs a path"));
    }
    Ok(PatchOp {
        op,
        path,
        raw_path,
        value,
    })
}

/// A malformed path is invalidPath; a well-formed one whose filter is too big is invalidFilter.
fn path_error(e: FilterError) -> ScimError {
    match e.bound {
        Some(_) => ScimError::invalid_filter(format!("path: {e}")),
        None => ScimError::invalid_path(format!("path: {e}")),
    }
}

/// Apply `ops` to `doc` in order. On error, `doc` may be half-changed: callers pass a copy.
pub fn apply(
    rt: &ResourceType,
    doc: &mut Map<String, Value>,
    ops: &[PatchOp],
    limits: &Limits,
) -> Result<Vec<MemberOp>, ScimError> {
    let user_name_before = doc.get("userName").cloned();
    let key_texts_before = resource::KEY_TEXTS.map(|k| doc.get(k).cloned());
    let mut patch = Patch {
        rt,
        limits,
        members: Vec::new(),
        members_named: 0,
    };
    for op in ops {
        if let Some((i, _)) = op.raw_path.as_deref().and_then(|p| rt.extension(p)) {
            // The path names a whole extension: remove it, or apply its attributes.
            let urn = rt.extensions[i].id.clone();
            if op.op != OpKind::Add {
                doc.remove(&urn);
            }
            if op.op != OpKind::Remove {
                let mut wrapped = Map::new();
                wrapped.insert(urn, op.value.clone().unwrap_or(Value::Null));
                patch.pathless(doc, op.op, Some(&Value::Object(wrapped)))?;
            }
            continue;
        }
        match &op.path {
            None => patch.pathless(doc, op.op, op.value.as_ref())?,
            Some(path) => patch.path(doc, op.op, path, op.value.as_ref())?,
        }
    }
    resource::prune_empty_extensions(rt, doc);
    let required = match rt.kind {
        ResourceKind::User => "userName",
        ResourceKind::Group => "displayName",
    };
    let Some(value) = doc
        .get(required)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    else {
        return Err(ScimError::mutability(format!(
            "{required} is required and cannot be removed"
        )));
    };
    // A userName stored before the rule existed stays usable; a new one must follow it.
    if rt.kind == ResourceKind::User && doc.get(required) != user_name_before.as_ref() {
        resource::check_user_name(value, limits)?;
    }
    for (name, before) in resource::KEY_TEXTS.iter().zip(&key_texts_before) {
        let applies = *name != "displayName" || rt.kind == ResourceKind::Group;
        match doc.get(*name) {
            Some(Value::String(now)) if applies && Some(&doc[*name]) != before.as_ref() => {
                resource::check_key_text(name, now)?
            }
            _ => {}
        }
    }
    Ok(patch.members)
}

/// One PATCH request being applied: the schema, the bounds, and the member changes so far.
struct Patch<'a> {
    rt: &'a ResourceType,
    limits: &'a Limits,
    members: Vec<MemberOp>,
    /// Members the operations so far add or remove by id, against `max_members_per_request`.
    members_named: usize,
}

impl Patch<'_> {
    /// A path-less add/replace: the value is an object of attributes. E3: keys may be dotted
    /// ("name.givenName") or URN-qualified ("urn:…:enterprise:2.0:User:department").
    fn pathless(
        &mut self,
        doc: &mut Map<String, Value>,
        op: OpKind,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let rt = self.rt;
        let obj = value.and_then(Value::as_object).ok_or_else(|| {
            ScimError::invalid_syntax("a PATCH operation without path needs an object value")
        })?;
        for (key, v) in obj {
            if key.eq_ignore_ascii_case("schemas") {
                continue;
            }
            if let Some((i, _)) = rt.extension(key) {
                // The extension as a whole: apply each of its attributes.
                let Some(ext) = v.as_object() else {
                    return Err(ScimError::invalid_value(format!(
                        "extension {key} must be an object"
                    )));
                };
                let urn = rt.extensions[i].id.clone();
                for (k, v2) in ext {
                    if k.eq_ignore_ascii_case("schemas") {
                        continue;
                    }
                    let path = key_path(Some(&urn), k);
                    self.path(doc, op, &path, Some(v2))?;
                }
                continue;
            }
            let (urn, name, sub) = rt.split_key(key);
            if urn.is_some() || sub.is_some() {
                entra::record(Quirk::PathlessKeys);
            }
            let path = PatchPath {
                attr: filter::AttrPath {
                    urn: urn.map(str::to_string),
                    name: name.to_string(),
                    sub: sub.map(str::to_string),
                },
                filter: None,
                sub: None,
            };
            match rt.resolve(urn, name) {
                // RFC 7644 §3.5.2: read-only attributes in a path-less value are ignored.
                Some((_, a)) if a.is_read_only() => continue,
                _ => self.path(doc, op, &path, Some(v))?,
            }
        }
        Ok(())
    }

    fn path(
        &mut self,
        doc: &mut Map<String, Value>,
        op: OpKind,
        path: &PatchPath,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let rt = self.rt;
        let (scope, attr) = rt
            .resolve(path.attr.urn.as_deref(), &path.attr.name)
            .ok_or_else(|| {
                ScimError::invalid_path(format!("unknown attribute {}", path.attr.name))
            })?;
        // "name.givenName" parses as attr + sub; "emails[…].value" as attr + filter + sub.
        let sub_name = path.attr.sub.as_deref().or(path.sub.as_deref());
        if attr.is_read_only() {
            return Err(ScimError::mutability(format!("{} is read-only", attr.name)));
        }
        if attr.returned == super::schema::Returned::Never {
            return Ok(()); // password: never stored
        }
        if rt.kind == ResourceKind::Group && attr.name == "members" {
            return self.member_op(op, path.filter.as_ref(), sub_name, value);
        }
        let container = resource::container_mut(rt, doc, scope)?;
        let limits = self.limits;
        match (&path.filter, sub_name) {
            (None, None) => whole_attribute(attr, container, op, value, limits),
            (None, Some(sub)) => sub_attribute(attr, container, op, sub, value, limits),
            (Some(f), sub) => filtered(attr, container, op, f, sub, value, limits),
        }
    }

    /// Operations on group members become row changes.
    fn member_op(
        &mut self,
        op: OpKind,
        f: Option<&Filter>,
        sub: Option<&str>,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        if sub.is_some() {
            return Err(ScimError::mutability(
                "sub-attributes of members cannot be changed; add or remove the member",
            ));
        }
        let change = match (op, f) {
            (OpKind::Add, None) => MemberOp::Add(self.member_refs(value)?),
            (OpKind::Replace, None) => {
                self.members.push(MemberOp::RemoveAll);
                MemberOp::Add(self.member_refs(value)?)
            }
            (OpKind::Remove, None) => match value {
                None | Some(Value::Null) => MemberOp::RemoveAll,
                // E2: Entra lists the members to remove in the value.
                Some(v) => {
                    entra::record(Quirk::MemberRemoveByValue);
                    let refs = self.member_refs(Some(v))?;
                    MemberOp::Remove(refs.into_iter().map(|m| m.value).collect())
                }
            },
            (OpKind::Remove, Some(f)) => {
                let ids = member_ids(f)?;
                self.count_members(ids.len())?;
                MemberOp::Remove(ids)
            }
            (_, Some(_)) => {
                return Err(ScimError::invalid_path(
                    "members can be added or replaced only without a filter",
                ));
            }
        };
        self.members.push(change);
        Ok(())
    }

    fn member_refs(&mut self, value: Option<&Value>) -> Result<Vec<MemberRef>, ScimError> {
        let refs = resource::parse_members(
            value.unwrap_or(&Value::Null),
            self.limits,
            self.members_named,
        )?;
        self.count_members(refs.len())?;
        Ok(refs)
    }

    fn count_members(&mut self, n: usize) -> Result<(), ScimError> {
        self.members_named = self.members_named.saturating_add(n);
        if self.members_named > self.limits.max_members_per_request {
            return Err(self.limits.exceeded(Bound::MembersPerRequest, None));
        }
        Ok(())
    }
}

fn key_path(urn: Option<&str>, key: &str) -> PatchPath {
    let (name, sub) = match key.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (key, None),
    };
    PatchPath {
        attr: filter::AttrPath {
            urn: urn.map(str::to_string),
            name: name.to_string(),
            sub: sub.map(str::to_string),
        },
        filter: None,
        sub: None,
    }
}

/// An operation may not leave an attribute with more values than the bound. One that already
/// had more (stored before the bound existed) may keep them, shrink, but not grow.
fn check_grown(attr: &Attr, before: usize, after: usize, limits: &Limits) -> Result<(), ScimError> {
    if after > before && after > limits.max_values_per_attribute {
        return Err(limits.exceeded(Bound::ValuesPerAttribute, Some(attr.name)));
    }
    Ok(())
}

/// add/replace/remove of a whole attribute.
fn whole_attribute(
    attr: &'static Attr,
    container: &mut Map<String, Value>,
    op: OpKind,
    value: Option<&Value>,
    limits: &Limits,
) -> Result<(), ScimError> {
    if op == OpKind::Remove {
        match (value, container.get_mut(attr.name)) {
            // E2 generalised: remove with a value list removes only the listed elements.
            (Some(v), Some(Value::Array(items))) if attr.multi && !v.is_null() => {
                let listed = match resource::normalize_value(attr, v, limits)? {
                    Some(Value::Array(listed)) => listed,
                    _ => Vec::new(),
                };
                let listed: HashSet<ElementKey> =
                    listed.iter().map(|l| ElementKey::of(attr, l)).collect();
                items.retain(|item| !listed.contains(&ElementKey::of(attr, item)));
                if items.is_empty() {
                    container.remove(attr.name);
                }
            }
            _ => {
                container.remove(attr.name);
            }
        }
        return Ok(());
    }
    let new = resource::normalize_value(attr, value.unwrap_or(&Value::Null), limits)?;
    let Some(new) = new else {
        if op == OpKind::Replace {
            container.remove(attr.name);
        }
        return Ok(());
    };
    match (op, container.get_mut(attr.name)) {
        (OpKind::Add, Some(Value::Array(items))) if attr.multi => {
            let before = items.len();
            if let Value::Array(new) = new {
                append_absent(items, new);
            }
            check_grown(attr, before, items.len(), limits)?;
            single_primary(items);
        }
        // RFC 7644 §3.5.2.1 and §3.5.2.3: on a singular complex attribute, add and replace both
        // set the sub-attributes given and leave the others unchanged.
        (_, Some(Value::Object(existing))) if attr.ty == AttrType::Complex && !attr.multi => {
            if let Value::Object(n) = new {
                existing.extend(n);
            }
        }
        _ => {
            let mut new = new;
            if let Value::Array(items) = &mut new {
                single_primary(items);
            }
            container.insert(attr.name.to_string(), new);
        }
    }
    Ok(())
}

/// RFC 7644 §3.5.2.1: an add of values to a multi-valued attribute appends those it does not
/// have yet (the existing ones and earlier ones of the same add included).
fn append_absent(items: &mut Vec<Value>, new: Vec<Value>) {
    let keep: Vec<bool> = {
        let mut seen: HashSet<Hashed> = items.iter().map(Hashed).collect();
        new.iter().map(|n| seen.insert(Hashed(n))).collect()
    };
    items.extend(
        new.into_iter()
            .zip(keep)
            .filter_map(|(n, keep)| keep.then_some(n)),
    );
}

/// "name.givenName" style paths on a singular complex attribute.
fn sub_attribute(
    attr: &'static Attr,
    container: &mut Map<String, Value>,
    op: OpKind,
    sub: &str,
    value: Option<&Value>,
    limits: &Limits,
) -> Result<(), ScimError> {
    if attr.multi {
        // "emails.value" without a filter addresses every element.
        let sub_attr = attr.sub_attr(sub).ok_or_else(|| {
            ScimError::invalid_path(format!("unknown attribute {}.{sub}", attr.name))
        })?;
        let all = Filter::Present(filter::AttrPath {
            urn: None,
            name: sub_attr.name.to_string(),
            sub: None,
        });
        if op == OpKind::Remove {
            return filtered(attr, container, op, &all, Some(sub), value, limits);
        }
        return Err(ScimError::invalid_path(format!(
            "{}.{sub} needs a filter to say which element to change",
            attr.name
        )));
    }
    let sub_attr = resource::sub_of(attr, sub)?;
    let entry = container
        .entry(attr.name.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(o) = entry {
        match op {
            OpKind::Remove => {
                o.remove(sub_attr.name);
            }
            _ => match resource::normalize_single(sub_attr, value.unwrap_or(&Value::Null))? {
                Some(v) => {
                    o.insert(sub_attr.name.to_string(), v);
                }
                None => {
                    o.remove(sub_attr.name);
                }
            },
        }
        if o.is_empty() {
            container.remove(attr.name);
        }
    }
    Ok(())
}

/// Paths with a value filter: `emails[type eq "work"]` and `emails[type eq "work"].value`.
fn filtered(
    attr: &'static Attr,
    container: &mut Map<String, Value>,
    op: OpKind,
    f: &Filter,
    sub: Option<&str>,
    value: Option<&Value>,
    limits: &Limits,
) -> Result<(), ScimError> {
    if !attr.multi || attr.ty != AttrType::Complex {
        return Err(ScimError::invalid_path(format!(
            "{} is not a multi-valued complex attribute; it cannot take a filter",
            attr.name
        )));
    }
    let sub_attr = match sub {
        Some(s) => Some(attr.sub_attr(s).ok_or_else(|| {
            ScimError::invalid_path(format!("unknown attribute {}.{s}", attr.name))
        })?),
        None => None,
    };
    let case_exact = |_: Option<&str>, name: &str, _: Option<&str>| {
        attr.sub_attr(name).is_some_and(|s| s.case_exact)
    };
    let mut items = match container.remove(attr.name) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    // One evaluation per element; `matched[i]` says whether element i matched.
    let matched: Vec<bool> = items
        .iter()
        .map(|item| filter::matches(f, item, &case_exact))
        .collect();
    let any_matched = matched.contains(&true);
    match op {
        OpKind::Remove => {
            if let Some(s) = sub_attr {
                for (item, _) in items.iter_mut().zip(&matched).filter(|(_, m)| **m) {
                    if let Some(o) = item.as_object_mut() {
                        o.remove(s.name);
                    }
                }
                items.retain(|i| !i.as_object().is_some_and(Map::is_empty));
            } else {
                let mut matched = matched.iter();
                items.retain(|_| !matched.next().copied().unwrap_or(false));
            }
        }
        OpKind::Add | OpKind::Replace => {
            let value = value.unwrap_or(&Value::Null);
            let new_part = match sub_attr {
                Some(s) => resource::normalize_single(s, value)?.map(|v| {
                    let mut o = Map::new();
                    o.insert(s.name.to_string(), v);
                    o
                }),
                None => match resource::normalize_single(attr, value)? {
                    Some(Value::Object(o)) => Some(o),
                    _ => None,
                },
            };
            if !any_matched {
                // Entra replaces `emails[type eq "work"].value` also when there is no work email
                // yet: create the element the filter describes.
                if let Some(part) = new_part {
                    let mut o = equalities(f).ok_or_else(|| {
                        ScimError::no_target(format!(
                            "no {} value matches the filter, and the filter does not describe a new one",
                            attr.name
                        ))
                    })?;
                    o.extend(part);
                    items.push(Value::Object(o));
                    check_grown(attr, items.len() - 1, items.len(), limits)?;
                }
            } else {
                for (item, _) in items.iter_mut().zip(&matched).filter(|(_, m)| **m) {
                    match (&new_part, item.as_object_mut()) {
                        (Some(part), Some(o)) if sub_attr.is_some() || op == OpKind::Add => {
                            o.extend(part.clone())
                        }
                        (Some(part), _) => *item = Value::Object(part.clone()),
                        (None, Some(o)) => {
                            if let Some(s) = sub_attr {
                                o.remove(s.name);
                            }
                        }
                        (None, None) => {}
                    }
                }
                // The elements this operation made primary win over the others, wherever
                // they stand in the list.
                let made_primary = new_part
                    .as_ref()
                    .is_some_and(|p| p.get("primary") == Some(&Value::Bool(true)));
                if made_primary {
                    for (item, _) in items.iter_mut().zip(&matched).filter(|(_, m)| !**m) {
                        if let Some(o) = item.as_object_mut()
                            && o.get("primary") == Some(&Value::Bool(true))
                        {
                            o.insert("primary".into(), Value::Bool(false));
                        }
                    }
                }
            }
            single_primary(&mut items);
        }
    }
    if !items.is_empty() {
        container.insert(attr.name.to_string(), Value::Array(items));
    }
    Ok(())
}

/// The attributes a filter made only of `eq` comparisons joined by `and` pins down.
fn equalities(f: &Filter) -> Option<Map<String, Value>> {
    match f {
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value,
        } if path.sub.is_none() => {
            let v = match value {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::Num(n) => Value::Number(n.clone()),
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Null => return None,
            };
            let mut o = Map::new();
            o.insert(path.name.clone(), v);
            Some(o)
        }
        Filter::And(a, b) => {
            let mut o = equalities(a)?;
            o.extend(equalities(b)?);
            Some(o)
        }
        _ => None,
    }
}

/// What makes two elements of a multi-valued attribute the same: equal "value"s, or, for
/// elements without one, equality as a whole.
#[derive(PartialEq, Eq, Hash)]
enum ElementKey<'a> {
    Value(Hashed<'a>),
    Whole(Hashed<'a>),
}

impl<'a> ElementKey<'a> {
    fn of(attr: &Attr, element: &'a Value) -> Self {
        match element.get("value") {
            Some(v) if attr.ty == AttrType::Complex => ElementKey::Value(Hashed(v)),
            _ => ElementKey::Whole(Hashed(element)),
        }
    }
}

/// A JSON value hashed consistently with `==`, so that sets of values need no pairwise scans.
struct Hashed<'a>(&'a Value);

impl PartialEq for Hashed<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Hashed<'_> {}

impl Hash for Hashed<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(value_hash(self.0));
    }
}

fn value_hash(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => (1u8, b).hash(&mut h),
        Value::Number(n) => {
            // serde_json compares numbers as stored: integers by value, floats as f64 (where
            // 0.0 == -0.0).
            if let Some(i) = n.as_u64() {
                (2u8, i).hash(&mut h);
            } else if let Some(i) = n.as_i64() {
                (3u8, i).hash(&mut h);
            } else if let Some(f) = n.as_f64() {
                (4u8, if f == 0.0 { 0 } else { f.to_bits() }).hash(&mut h);
            }
        }
        Value::String(s) => (5u8, s).hash(&mut h),
        Value::Array(items) => {
            (6u8, items.len()).hash(&mut h);
            for item in items {
                h.write_u64(value_hash(item));
            }
        }
        Value::Object(o) => {
            // Summed, so the hash does not depend on the map's iteration order.
            let entries = o.iter().fold(0u64, |sum, (k, v)| {
                let mut e = DefaultHasher::new();
                k.hash(&mut e);
                e.write_u64(value_hash(v));
                sum.wrapping_add(e.finish())
            });
            (7u8, o.len(), entries).hash(&mut h);
        }
    }
    h.finish()
}

/// `members[value eq "a" or value eq "b"]` → ["a", "b"]. Other member filters would need the
/// whole member list; they are refused rather than answered wrongly.
fn member_ids(f: &Filter) -> Result<Vec<String>, ScimError> {
    match f {
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: CompValue::Str(s),
        } if path.name.eq_ignore_ascii_case("value") && path.sub.is_none() => Ok(vec![s.clone()]),
        Filter::Or(a, b) => {
            let mut ids = member_ids(a)?;
            ids.extend(member_ids(b)?);
            Ok(ids)
        }
        _ => Err(ScimError::invalid_filter(
            "member filters support `value eq \"id\"`, joined with `or`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA};
    use serde_json::json;

    fn user() -> (ResourceType, Map<String, Value>) {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let doc = resource::normalize(
            &rt,
            &json!({"userName": "ann", "active": true, "name": {"givenName": "Ann"},
                "emails": [{"value": "ann@work.example", "type": "work", "primary": true},
                           {"value": "ann@home.example", "type": "home"}]}),
            &Limits::default(),
        )
        .unwrap()
        .doc;
        (rt, doc)
    }

    fn patch(
        rt: &ResourceType,
        doc: &mut Map<String, Value>,
        body: Value,
    ) -> Result<Vec<MemberOp>, ScimError> {
        patch_within(rt, doc, body, &Limits::default())
    }

    fn patch_within(
        rt: &ResourceType,
        doc: &mut Map<String, Value>,
        body: Value,
        limits: &Limits,
    ) -> Result<Vec<MemberOp>, ScimError> {
        let ops = parse(&body, limits)?;
        apply(rt, doc, &ops, limits)
    }

    fn ops(list: Value) -> Value {
        json!({"schemas": [PATCH_OP], "Operations": list})
    }

    #[test]
    fn e1_capitalised_ops_and_e4_string_booleans() {
        let (rt, mut doc) = user();
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .unwrap();
        assert_eq!(doc["active"], false);
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "Add", "path": "active", "value": "True"}])),
        )
        .unwrap();
        assert_eq!(doc["active"], true);
    }

    #[test]
    fn e3_pathless_dotted_and_urn_keys() {
        let (rt, mut doc) = user();
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "value": {
                "name.familyName": "Smith",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "FIN",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager": "m-1",
                "urn:ietf:params:scim:schemas:extension:primedocs:2.0:User:customAttribute05": "X",
                "displayName": "Ann Smith",
                "id": "ignored"
            }}])),
        )
        .unwrap();
        assert_eq!(
            doc["name"],
            json!({"givenName": "Ann", "familyName": "Smith"})
        );
        assert_eq!(
            doc[ENTERPRISE_SCHEMA],
            json!({"department": "FIN", "manager": {"value": "m-1"}})
        );
        assert_eq!(doc[DEFAULT_CUSTOM_SCHEMA]["customAttribute05"], "X");
        assert_eq!(doc["displayName"], "Ann Smith");
    }

    #[test]
    fn e5_manager_forms() {
        let (rt, mut doc) = user();
        let mgr = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "add", "path": mgr, "value": {"value": "m-2"}}])),
        )
        .unwrap();
        assert_eq!(doc[ENTERPRISE_SCHEMA]["manager"]["value"], "m-2");
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "path": mgr, "value": ""}])),
        )
        .unwrap();
        assert!(!doc.contains_key(ENTERPRISE_SCHEMA));
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "path": "roles", "value": "[{\"value\":\"Admin\"}]"}])),
        )
        .unwrap();
        assert_eq!(doc["roles"], json!([{"value": "Admin"}]));
    }

    #[test]
    fn value_filtered_paths() {
        let (rt, mut doc) = user();
        patch(&rt, &mut doc, ops(json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "new@work.example"}]))).unwrap();
        assert_eq!(doc["emails"][0]["value"], "new@work.example");
        assert_eq!(doc["emails"][1]["value"], "ann@home.example");
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": "emails[type eq \"home\"]"}])),
        )
        .unwrap();
        assert_eq!(doc["emails"].as_array().unwrap().len(), 1);
        // No matching element: Entra expects it to be created.
        patch(&rt, &mut doc, ops(json!([{"op": "replace", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+41 79"}]))).unwrap();
        assert_eq!(
            doc["phoneNumbers"],
            json!([{"type": "mobile", "value": "+41 79"}])
        );
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": "emails[type eq \"work\"].primary"}])),
        )
        .unwrap();
        assert!(doc["emails"][0].get("primary").is_none());
        // Making an earlier element primary takes it from a later one.
        patch(&rt, &mut doc, ops(json!([{"op": "add", "path": "emails", "value": [{"value": "z@x", "primary": true}]}]))).unwrap();
        patch(&rt, &mut doc, ops(json!([{"op": "Replace", "path": "emails[type eq \"work\"].primary", "value": "True"}]))).unwrap();
        assert_eq!(doc["emails"][0]["primary"], true);
        assert_eq!(doc["emails"][1]["primary"], false);
    }

    #[test]
    fn add_appends_and_keeps_one_primary() {
        let (rt, mut doc) = user();
        patch(&rt, &mut doc, ops(json!([{"op": "add", "path": "emails", "value": [{"value": "x@y", "type": "other", "primary": true}]}]))).unwrap();
        let emails = doc["emails"].as_array().unwrap();
        assert_eq!(emails.len(), 3);
        assert_eq!(emails.iter().filter(|e| e["primary"] == true).count(), 1);
        assert_eq!(emails[2]["primary"], true);
    }

    #[test]
    fn whole_extension_as_path() {
        let (rt, mut doc) = user();
        patch(&rt, &mut doc, ops(json!([{"op": "add", "path": ENTERPRISE_SCHEMA, "value": {"department": "D", "costCenter": "C"}}]))).unwrap();
        assert_eq!(
            doc[ENTERPRISE_SCHEMA],
            json!({"department": "D", "costCenter": "C"})
        );
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "path": ENTERPRISE_SCHEMA, "value": {"division": "X"}}])),
        )
        .unwrap();
        assert_eq!(doc[ENTERPRISE_SCHEMA], json!({"division": "X"}));
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": ENTERPRISE_SCHEMA}])),
        )
        .unwrap();
        assert!(!doc.contains_key(ENTERPRISE_SCHEMA));
    }

    #[test]
    fn replace_of_a_complex_attribute_keeps_unnamed_sub_attributes() {
        let (rt, mut doc) = user();
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "path": "name", "value": {"familyName": "Lee"}}])),
        )
        .unwrap();
        assert_eq!(
            doc["name"],
            json!({"givenName": "Ann", "familyName": "Lee"})
        );
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "Replace", "value": {"name": {"givenName": "Anna"}}}])),
        )
        .unwrap();
        assert_eq!(
            doc["name"],
            json!({"givenName": "Anna", "familyName": "Lee"})
        );
        // Multi-valued attributes are still replaced as a whole.
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "path": "emails", "value": [{"value": "x@y"}]}])),
        )
        .unwrap();
        assert_eq!(doc["emails"], json!([{"value": "x@y"}]));
    }

    #[test]
    fn sub_attribute_paths_and_removal() {
        let (rt, mut doc) = user();
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "replace", "path": "name.givenName", "value": "Anna"}])),
        )
        .unwrap();
        assert_eq!(doc["name"]["givenName"], "Anna");
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": "name.givenName"}])),
        )
        .unwrap();
        assert!(!doc.contains_key("name"));
    }

    #[test]
    fn errors_and_atomicity_contract() {
        let (rt, mut doc) = user();
        let before = doc.clone();
        let mut copy = doc.clone();
        let e = patch(
            &rt,
            &mut copy,
            ops(json!([
            {"op": "replace", "path": "displayName", "value": "changed"},
            {"op": "replace", "path": "nope", "value": 1}])),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidPath));
        assert_eq!(
            doc, before,
            "callers keep the original when a later op fails"
        );
        assert!(
            patch(
                &rt,
                &mut doc,
                ops(json!([{"op": "remove", "path": "userName"}]))
            )
            .is_err()
        );
        assert!(patch(&rt, &mut doc, ops(json!([{"op": "remove"}]))).is_err());
        assert!(
            patch(
                &rt,
                &mut doc,
                ops(json!([{"op": "frobnicate", "path": "x"}]))
            )
            .is_err()
        );
        assert!(
            patch(
                &rt,
                &mut doc,
                ops(json!([{"op": "replace", "path": "id", "value": "x"}]))
            )
            .is_err()
        );
        assert!(patch(&rt, &mut doc, json!({"Operations": "nope"})).is_err());
        assert!(
            patch(
                &rt,
                &mut doc,
                ops(json!([{"op": "replace", "path": "emails[type eq", "value": "x"}]))
            )
            .is_err()
        );
    }

    #[test]
    fn e2_member_removal_by_value_and_filters() {
        let rt = ResourceType::group();
        let mut doc = resource::normalize(&rt, &json!({"displayName": "G"}), &Limits::default())
            .unwrap()
            .doc;
        let m = patch(
            &rt,
            &mut doc,
            ops(json!([
                {"op": "Add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]},
                {"op": "Remove", "path": "members", "value": [{"value": "u1"}]},
                {"op": "remove", "path": "members[value eq \"u2\" or value eq \"u3\"]"},
            ])),
        )
        .unwrap();
        assert_eq!(
            m,
            vec![
                MemberOp::Add(vec![
                    MemberRef { value: "u1".into() },
                    MemberRef { value: "u2".into() }
                ]),
                MemberOp::Remove(vec!["u1".into()]),
                MemberOp::Remove(vec!["u2".into(), "u3".into()]),
            ]
        );
        let m = patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": "members"}])),
        )
        .unwrap();
        assert_eq!(m, vec![MemberOp::RemoveAll]);
        let m = patch(&rt, &mut doc, ops(json!([{"op": "replace", "value": {"members": [{"value": "u9"}], "displayName": "H"}}]))).unwrap();
        assert_eq!(
            m,
            vec![
                MemberOp::RemoveAll,
                MemberOp::Add(vec![MemberRef { value: "u9".into() }])
            ]
        );
        assert_eq!(doc["displayName"], "H");
        assert!(
            patch(
                &rt,
                &mut doc,
                ops(json!([{"op": "remove", "path": "members[display eq \"x\"]"}]))
            )
            .is_err()
        );
    }

    #[test]
    fn add_appends_only_values_not_there_yet_and_remove_takes_the_listed_ones() {
        let (rt, mut doc) = user();
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "add", "path": "emails", "value": [
                {"value": "ann@home.example", "type": "home"},
                {"value": "new@x"}, {"value": "new@x"}, {"value": "other@x"}]}])),
        )
        .unwrap();
        let values: Vec<&str> = doc["emails"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["value"].as_str())
            .collect();
        assert_eq!(
            values,
            ["ann@work.example", "ann@home.example", "new@x", "other@x"]
        );
        // Remove with a value list matches on "value", whatever the other sub-attributes say.
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": "emails", "value": [
                {"value": "new@x", "type": "work"}, {"value": "nobody@x"}, {"value": "ann@home.example"}]}])),
        )
        .unwrap();
        let values: Vec<&str> = doc["emails"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["value"].as_str())
            .collect();
        assert_eq!(values, ["ann@work.example", "other@x"]);
        // Elements without a "value" are matched as a whole.
        doc.insert(
            "addresses".into(),
            json!([{"locality": "Bern"}, {"locality": "Basel", "type": "work"}]),
        );
        patch(
            &rt,
            &mut doc,
            ops(json!([{"op": "remove", "path": "addresses", "value": [
                {"locality": "Basel"}, {"locality": "Bern"}]}])),
        )
        .unwrap();
        assert_eq!(
            doc["addresses"],
            json!([{"locality": "Basel", "type": "work"}])
        );
    }

    #[test]
    fn value_hashes_agree_with_equality() {
        let equal = [
            (
                json!({"a": 1, "b": [true, null, "x"]}),
                json!({"b": [true, null, "x"], "a": 1}),
            ),
            (json!(0.0), json!(-0.0)),
            (json!(1.5), json!(1.5)),
            (json!(-3), json!(-3)),
            (json!(u64::MAX), json!(u64::MAX)),
        ];
        for (a, b) in &equal {
            assert_eq!(a, b);
            assert_eq!(value_hash(a), value_hash(b), "{a} {b}");
        }
        let different = [
            json!(1),
            json!(1.0),
            json!("1"),
            json!([1]),
            json!({"1": 1}),
            json!(null),
        ];
        for (i, a) in different.iter().enumerate() {
            for b in &different[i + 1..] {
                assert_ne!(a, b);
                assert_ne!(value_hash(a), value_hash(b), "{a} {b}");
            }
        }
        assert_ne!(value_hash(&json!([1, 2])), value_hash(&json!([2, 1])));
    }

    #[test]
    fn bounds_on_operations_filter_terms_and_members() {
        let (rt, mut doc) = user();
        let limits = Limits {
            max_patch_operations: 2,
            max_filter_terms: 2,
            max_members_per_request: 3,
            ..Limits::default()
        };
        let title = json!({"op": "replace", "path": "title", "value": "T"});
        assert!(patch_within(&rt, &mut doc, ops(json!([title, title])), &limits).is_ok());
        let e =
            patch_within(&rt, &mut doc, ops(json!([title, title, title])), &limits).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidSyntax));
        assert_eq!(
            e.detail,
            "more than 2 PATCH operations (limit max_patch_operations)"
        );

        // The terms of all the paths of one request count together.
        let work =
            json!({"op": "replace", "path": "emails[type eq \"work\"].primary", "value": true});
        assert!(patch_within(&rt, &mut doc, ops(json!([work, work])), &limits).is_ok());
        let both = json!({"op": "remove", "path": "emails[type eq \"a\" or type eq \"b\"]"});
        let e = patch_within(&rt, &mut doc, ops(json!([work, both])), &limits).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidFilter));
        assert!(e.detail.contains("max_filter_terms"), "{}", e.detail);
        // A malformed path is still invalidPath.
        let bad = json!({"op": "remove", "path": "emails[type eq"});
        let e = patch_within(&rt, &mut doc, ops(json!([bad])), &limits).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidPath));

        // Members named by all the operations of one request count together.
        let g = ResourceType::group();
        let mut group = resource::normalize(&g, &json!({"displayName": "G"}), &limits)
            .unwrap()
            .doc;
        let add = |ids: &[&str]| {
            let value: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
            json!({"op": "add", "path": "members", "value": value})
        };
        let three =
            ops(json!([add(&["a", "b"]), {"op": "remove", "path": "members[value eq \"c\"]"}]));
        assert!(patch_within(&g, &mut group, three, &limits).is_ok());
        let four = ops(json!([add(&["a", "b"]), add(&["c", "d"])]));
        let e = patch_within(&g, &mut group, four, &limits).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidValue));
        assert!(e.detail.contains("max_members_per_request"), "{}", e.detail);
        let four = ops(
            json!([add(&["a", "b", "c"]), {"op": "remove", "path": "members", "value": [{"value": "x"}]}]),
        );
        assert!(patch_within(&g, &mut group, four, &limits).is_err());
        // Removing every member names none.
        let all = ops(json!([add(&["a", "b", "c"]), {"op": "remove", "path": "members"}]));
        assert!(patch_within(&g, &mut group, all, &limits).is_ok());
    }

    #[test]
    fn an_add_may_not_grow_an_attribute_beyond_the_bound() {
        let (rt, mut doc) = user();
        let limits = Limits {
            max_values_per_attribute: 3,
            ..Limits::default()
        };
        let add = |v: &str| json!({"op": "add", "path": "emails", "value": [{"value": v}]});
        assert!(patch_within(&rt, &mut doc, ops(json!([add("c@x")])), &limits).is_ok());
        // Adding a value that is there already adds nothing.
        assert!(patch_within(&rt, &mut doc, ops(json!([add("c@x")])), &limits).is_ok());
        let e = patch_within(&rt, &mut doc.clone(), ops(json!([add("d@x")])), &limits).unwrap_err();
        assert_eq!(
            e.detail,
            "emails: more than 3 values (limit max_values_per_attribute)"
        );
        let create =
            json!({"op": "add", "path": "emails[type eq \"other\"].value", "value": "o@x"});
        assert!(patch_within(&rt, &mut doc.clone(), ops(json!([create])), &limits).is_err());
        let replace = json!({"op": "replace", "path": "emails", "value": [{"value": "1"}, {"value": "2"}, {"value": "3"}, {"value": "4"}]});
        assert!(patch_within(&rt, &mut doc.clone(), ops(json!([replace])), &limits).is_err());

        // A user stored with more values than the bound keeps working: it may shrink, not grow.
        let mut legacy = doc.clone();
        legacy.insert(
            "emails".into(),
            Value::Array((0..5).map(|i| json!({"value": format!("{i}@x")})).collect()),
        );
        let active = json!({"op": "replace", "path": "active", "value": false});
        assert!(patch_within(&rt, &mut legacy, ops(json!([active])), &limits).is_ok());
        assert!(
            patch_within(
                &rt,
                &mut legacy.clone(),
                ops(json!([add("new@x")])),
                &limits
            )
            .is_err()
        );
        let remove = json!({"op": "remove", "path": "emails[value eq \"0@x\"]"});
        assert!(patch_within(&rt, &mut legacy, ops(json!([remove])), &limits).is_ok());
        assert_eq!(legacy["emails"].as_array().map(Vec::len), Some(4));
    }

    #[test]
    fn a_new_user_name_follows_the_rule_an_old_one_stays_usable() {
        let (rt, mut doc) = user();
        for bad in [" ann", "ann\u{0}", "a\tb"] {
            let op = json!({"op": "replace", "path": "userName", "value": bad});
            let e = patch(&rt, &mut doc.clone(), ops(json!([op]))).unwrap_err();
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidValue),
                "{bad:?}"
            );
        }
        let op = json!({"op": "Replace", "value": {"userName": "x".repeat(257)}});
        assert!(patch(&rt, &mut doc.clone(), ops(json!([op]))).is_err());
        doc.insert("userName".into(), json!("legacy "));
        let op = json!({"op": "replace", "path": "active", "value": false});
        assert!(patch(&rt, &mut doc, ops(json!([op]))).is_ok());
    }
}
