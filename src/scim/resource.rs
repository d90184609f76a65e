//! Incoming resources → the normalised stored document, and stored documents → responses.
//!
//! The stored document holds every client-writable attribute under its canonical name
//! (core attributes at the top level, extensions under their URN), so filters, PATCH and the
//! sync engine never deal with the spelling a client happened to use. id, meta, groups and
//! members are not in it: they come from columns and rows.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::entra;
use super::error::ScimError;
use super::limits::{Bound, Limits};
use super::schema::{
    Attr, AttrType, GROUP_SCHEMA, ResourceKind, ResourceType, Returned, Scope, USER_SCHEMA,
};
use super::work;

/// A group member as given by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    pub value: String,
}

/// A validated resource ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub doc: Map<String, Value>,
    /// Group members, when the request carried a members attribute.
    pub members: Option<Vec<MemberRef>>,
}

/// Validate and normalise a POST/PUT body.
pub fn normalize(
    rt: &ResourceType,
    input: &Value,
    limits: &Limits,
) -> Result<Normalized, ScimError> {
    let obj = input
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the request body must be a JSON object"))?;
    let mut doc = Map::new();
    let mut members = None;
    for (key, value) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            check_schemas(rt, value)?;
            continue;
        }
        if let Some((i, _)) = rt.extension(key) {
            let ext_obj = match value {
                Value::Null => continue,
                Value::Object(o) => o,
                _ => {
                    return Err(ScimError::invalid_value(format!(
                        "extension {} must be an object",
                        rt.extensions[i].id
                    )));
                }
            };
            for (k, v) in ext_obj
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("schemas"))
            {
                let urn = Some(rt.extensions[i].id.as_str());
                set_path(rt, &mut doc, urn, k, v, &mut members, limits)?;
            }
            continue;
        }
        let (urn, name, sub) = rt.split_key(key);
        let name = match sub {
            Some(_) => key.as_str(),
            None => name,
        };
        set_path(rt, &mut doc, urn, name, value, &mut members, limits)?;
    }
    check_required(rt, &doc, limits)?;
    Ok(Normalized { doc, members })
}

/// RFC 7643 §3: `schemas` names the namespaces of the attributes present; the attributes are
/// validated one by one anyway. So URNs this server does not know are ignored (Entra sends
/// Microsoft's "…/ADSCIM/2.0/Group" next to the core Group schema). Only the core schema of the
/// other resource type is refused: such a body is not a resource of this type.
fn check_schemas(rt: &ResourceType, value: &Value) -> Result<(), ScimError> {
    let list = value
        .as_array()
        .ok_or_else(|| ScimError::invalid_syntax("schemas must be an array of URNs"))?;
    let other_core = match rt.kind {
        ResourceKind::User => GROUP_SCHEMA,
        ResourceKind::Group => USER_SCHEMA,
    };
    for s in list {
        let urn = s
            .as_str()
            .ok_or_else(|| ScimError::invalid_syntax("schemas must be an array of URNs"))?;
        if urn.eq_ignore_ascii_case(other_core) {
            return Err(ScimError::invalid_value(format!(
                "schemas names {other_core}, which is not a schema of a {}",
                rt.kind.name()
            )));
        }
    }
    Ok(())
}

fn check_required(
    rt: &ResourceType,
    doc: &Map<String, Value>,
    limits: &Limits,
) -> Result<(), ScimError> {
    let name = match rt.kind {
        ResourceKind::User => "userName",
        ResourceKind::Group => "displayName",
    };
    match doc.get(name).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => match rt.kind {
            ResourceKind::User => check_user_name(s, limits),
            ResourceKind::Group => check_key_text("displayName", s),
        }?,
        _ => {
            return Err(ScimError::invalid_value(format!(
                "{name} is required and must be a non-empty string"
            )));
        }
    }
    match doc.get("externalId") {
        Some(Value::String(x)) => check_key_text("externalId", x),
        _ => Ok(()),
    }
}

/// Characters a staging key column holds (`externalId`, a group's `displayName`): the width of
/// the column on SQL Server, so that what one backend accepts the other does too.
pub const KEY_TEXT_CHARS: usize = 256;

/// The attributes [`check_key_text`] applies to (`displayName`: a group's only).
pub const KEY_TEXTS: [&str; 2] = ["externalId", "displayName"];

/// A group's displayName and an externalId are looked up and compared: at most
/// [`KEY_TEXT_CHARS`] characters, no control characters.
pub fn check_key_text(name: &str, value: &str) -> Result<(), ScimError> {
    if value.chars().any(char::is_control) {
        return Err(ScimError::invalid_value(format!(
            "{name} must not contain control characters"
        )));
    }
    if value.chars().nth(KEY_TEXT_CHARS).is_some() {
        return Err(ScimError::invalid_value(format!(
            "{name}: longer than {KEY_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

/// The userName rule (docs/scim.md): no whitespace at either end, no control characters (NUL
/// included), at most `max_user_name_chars` characters. A name people sign in with must look
/// the same wherever it is shown, compared or written to the application's database.
pub fn check_user_name(user_name: &str, limits: &Limits) -> Result<(), ScimError> {
    if user_name.chars().any(char::is_control) {
        return Err(ScimError::invalid_value(
            "userName must not contain control characters",
        ));
    }
    if user_name.starts_with(char::is_whitespace) || user_name.ends_with(char::is_whitespace) {
        return Err(ScimError::invalid_value(
            "userName must not begin or end with whitespace",
        ));
    }
    if user_name.chars().nth(limits.max_user_name_chars).is_some() {
        return Err(limits.exceeded(Bound::UserNameChars, Some("userName")));
    }
    Ok(())
}

/// Set one attribute (key possibly "attr.sub") in the document after type normalisation.
fn set_path(
    rt: &ResourceType,
    doc: &mut Map<String, Value>,
    urn: Option<&str>,
    key: &str,
    value: &Value,
    members: &mut Option<Vec<MemberRef>>,
    limits: &Limits,
) -> Result<(), ScimError> {
    let (name, sub) = match key.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (key, None),
    };
    let (scope, attr) = rt
        .resolve(urn, name)
        .ok_or_else(|| ScimError::invalid_value(format!("unknown attribute {key}")))?;
    if attr.is_read_only() {
        // RFC 7644 §3.3: read-only attributes in a request are ignored.
        return Ok(());
    }
    if attr.returned == Returned::Never {
        // password: accepted and dropped; it is never stored.
        return Ok(());
    }
    if rt.kind == ResourceKind::Group && attr.name == "members" {
        *members = Some(parse_members(value, limits, 0)?);
        return Ok(());
    }
    let container = container_mut(rt, doc, scope)?;
    match sub {
        None => match normalize_value(attr, value, limits)? {
            Some(v) => {
                container.insert(attr.name.to_string(), v);
            }
            None => {
                container.remove(attr.name);
            }
        },
        Some(sub_name) => {
            let sub_attr = sub_of(attr, sub_name)?;
            let v = normalize_single(sub_attr, value)?;
            let entry = container
                .entry(attr.name.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = entry {
                match v {
                    Some(v) => o.insert(sub_attr.name.to_string(), v),
                    None => o.remove(sub_attr.name),
                };
                if o.is_empty() {
                    container.remove(attr.name);
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn sub_of(attr: &Attr, sub: &str) -> Result<&'static Attr, ScimError> {
    if attr.ty != AttrType::Complex || attr.multi {
        return Err(ScimError::invalid_path(format!(
            "{} has no sub-attribute {sub} that can be addressed this way",
            attr.name
        )));
    }
    attr.sub_attr(sub)
        .ok_or_else(|| ScimError::invalid_path(format!("unknown attribute {}.{sub}", attr.name)))
}

/// The object that holds attributes of `scope`: the document itself or an extension object in it.
pub(crate) fn container_mut<'a>(
    rt: &ResourceType,
    doc: &'a mut Map<String, Value>,
    scope: Scope,
) -> Result<&'a mut Map<String, Value>, ScimError> {
    match scope {
        Scope::Core => Ok(doc),
        Scope::Extension(i) => {
            let urn = &rt.extensions[i].id;
            if !doc.get(urn).is_some_and(Value::is_object) {
                doc.insert(urn.clone(), Value::Object(Map::new()));
            }
            doc.get_mut(urn)
                .and_then(Value::as_object_mut)
                .ok_or_else(ScimError::internal)
        }
    }
}

/// Remove extension objects that became empty.
pub(crate) fn prune_empty_extensions(rt: &ResourceType, doc: &mut Map<String, Value>) {
    for ext in &rt.extensions {
        if doc
            .get(&ext.id)
            .is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
        {
            doc.remove(&ext.id);
        }
    }
}

/// The members a request names; `already` were named by earlier operations of the same request,
/// and together they are bounded by `max_members_per_request`.
pub(crate) fn parse_members(
    value: &Value,
    limits: &Limits,
    already: usize,
) -> Result<Vec<MemberRef>, ScimError> {
    let parsed;
    let items: &[Value] = match value {
        Value::Null => &[],
        Value::Array(a) => a,
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => {
                parsed = a;
                &parsed
            }
            _ => std::slice::from_ref(value),
        },
        other => std::slice::from_ref(other),
    };
    if already.saturating_add(items.len()) > limits.max_members_per_request {
        return Err(limits.exceeded(Bound::MembersPerRequest, None));
    }
    items
        .iter()
        .map(|m| {
            let id = match m {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("value"))
                    .and_then(|(_, v)| v.as_str()),
                _ => None,
            };
            match id {
                Some(s) if !s.is_empty() => Ok(MemberRef {
                    value: s.to_string(),
                }),
                _ => Err(ScimError::invalid_value(
                    "each member needs a \"value\" with the member's id",
                )),
            }
        })
        .collect()
}

/// Normalise a whole attribute value (single or multi). `None` means "unassigned". A multi-valued
/// one has at most `max_values_per_attribute` values.
pub(crate) fn normalize_value(
    attr: &Attr,
    value: &Value,
    limits: &Limits,
) -> Result<Option<Value>, ScimError> {
    if !attr.multi {
        return normalize_single(attr, value);
    }
    let parsed;
    let items: &[Value] = match value {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        // E5: roles and other multi-valued complex attributes sometimes arrive as a JSON string.
        Value::String(s) if attr.ty == AttrType::Complex => match entra::json_string(s) {
            Some(v) => {
                parsed = v;
                match &parsed {
                    Value::Array(a) => a,
                    v => std::slice::from_ref(v),
                }
            }
            None => std::slice::from_ref(value),
        },
        other => std::slice::from_ref(other),
    };
    if items.len() > limits.max_values_per_attribute {
        return Err(limits.exceeded(Bound::ValuesPerAttribute, Some(attr.name)));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(v) = normalize_single(attr, item)? {
            out.push(v);
        }
    }
    single_primary(&mut out);
    Ok(if out.is_empty() {
        None
    } else {
        Some(Value::Array(out))
    })
}

/// RFC 7643 §2.4: at most one element may be primary; the last one set wins.
pub(crate) fn single_primary(items: &mut [Value]) {
    let last = items
        .iter()
        .rposition(|i| i.get("primary") == Some(&Value::Bool(true)));
    if let Some(last) = last {
        for (i, item) in items.iter_mut().enumerate() {
            if i != last
                && let Some(o) = item.as_object_mut()
                && o.get("primary") == Some(&Value::Bool(true))
            {
                o.insert("primary".into(), Value::Bool(false));
            }
        }
    }
}

/// Normalise one value (an element of a multi-valued attribute, or a singular value).
pub(crate) fn normalize_single(attr: &Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    let bad =
        |what: &str| ScimError::invalid_value(format!("attribute {} must be {what}", attr.name));
    let v = match attr.ty {
        AttrType::String | AttrType::Reference | AttrType::Binary => match value {
            Value::String(_) => value.clone(),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(bad("a string")),
        },
        AttrType::Boolean => Value::Bool(entra::boolean(value).ok_or_else(|| bad("a boolean"))?),
        AttrType::Integer => match value {
            Value::Number(n) if n.is_i64() => value.clone(),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| bad("an integer"))?,
            _ => return Err(bad("an integer")),
        },
        AttrType::Decimal => match value {
            Value::Number(_) => value.clone(),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("a number"))?,
            _ => return Err(bad("a number")),
        },
        AttrType::DateTime => match value {
            Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(_) => value.clone(),
                Err(_) => return Err(bad("an RFC 3339 date-time")),
            },
            _ => return Err(bad("an RFC 3339 date-time")),
        },
        AttrType::Complex => return normalize_complex(attr, value),
    };
    Ok(Some(v))
}

fn normalize_complex(attr: &Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    let parsed;
    let obj = match value {
        Value::Object(o) => o,
        // E5: manager as a bare id; "" clears it.
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => {
            parsed = match entra::json_string(s) {
                Some(Value::Object(o)) => o,
                _ => entra::bare_value(s),
            };
            &parsed
        }
        _ => {
            return Err(ScimError::invalid_value(format!(
                "attribute {} must be an object",
                attr.name
            )));
        }
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let sub = attr.sub_attr(k).ok_or_else(|| {
            ScimError::invalid_value(format!("unknown attribute {}.{k}", attr.name))
        })?;
        if sub.is_read_only() {
            continue;
        }
        if let Some(v) = normalize_single(sub, v)? {
            out.insert(sub.name.to_string(), v);
        }
    }
    // E5: {"value": ""} clears the manager as "" does.
    if out.get("value").and_then(Value::as_str) == Some("") && attr.sub_attr("value").is_some() {
        out.remove("value");
    }
    Ok(if out.is_empty() {
        None
    } else {
        Some(Value::Object(out))
    })
}

/// A copy of the document in which every string of a case-insensitive attribute is lower-cased,
/// so case-insensitive filters compare with `=` in SQL (and Unicode folding happens here, in Rust).
pub fn fold_case(rt: &ResourceType, doc: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (k, v) in doc {
        if let Some((_, ext)) = rt.extension(k) {
            let folded = match v {
                Value::Object(o) => Value::Object(
                    o.iter()
                        .map(|(k2, v2)| {
                            let a = ext.attrs.iter().find(|a| a.name == k2);
                            (k2.clone(), fold_attr(a, v2))
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            out.insert(k.clone(), folded);
        } else {
            let a = rt.resolve(None, k).map(|(_, a)| a);
            out.insert(k.clone(), fold_attr(a, v));
        }
    }
    Value::Object(out)
}

fn fold_attr(attr: Option<&Attr>, v: &Value) -> Value {
    match (attr, v) {
        (Some(a), Value::String(s)) if !a.case_exact => Value::String(s.to_lowercase()),
        (Some(a), Value::Array(items)) => {
            Value::Array(items.iter().map(|i| fold_attr(Some(a), i)).collect())
        }
        (Some(a), Value::Object(o)) if a.ty == AttrType::Complex => Value::Object(
            o.iter()
                .map(|(k, sv)| (k.clone(), fold_attr(a.sub_attr(k), sv)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Attribute projection (RFC 7644 §3.9): which attributes a response carries.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    /// attributes=…: only these (plus the "returned: always" ones); empty when not given.
    include: Selection,
    /// excludedAttributes=…
    exclude: Selection,
}

/// Attribute paths grouped by attribute, each named once however often a request repeats it,
/// so that applying them is one pass over the resource.
#[derive(Debug, Clone, Default)]
struct Selection {
    core: BTreeMap<&'static str, Part>,
    /// By extension index; `None` names the whole extension.
    extensions: BTreeMap<usize, Option<BTreeMap<&'static str, Part>>>,
}

/// All of an attribute, or some of its sub-attributes.
#[derive(Debug, Clone)]
enum Part {
    Whole,
    Subs(BTreeSet<&'static str>),
}

impl Selection {
    /// Parse one comma-separated parameter. Unknown attribute names are ignored, as RFC 7644
    /// asks servers to ignore what they do not support; more than `max_attribute_paths` entries
    /// are refused before the rest is read.
    fn parse(
        rt: &ResourceType,
        list: Option<&str>,
        parameter: &str,
        limits: &Limits,
    ) -> Result<Self, ScimError> {
        let mut selection = Selection::default();
        let paths = list
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty());
        for (n, p) in paths.enumerate() {
            work::step(1);
            if n == limits.max_attribute_paths {
                return Err(limits.exceeded(Bound::AttributePaths, Some(parameter)));
            }
            let (urn, name, sub) = rt.split_key(p);
            // "urn:…:enterprise:2.0:User" alone names the whole extension.
            if sub.is_none()
                && let Some((i, _)) = rt.extension(p)
            {
                selection.extensions.insert(i, None);
                continue;
            }
            let Some((scope, attr)) = rt.resolve(urn, name) else {
                continue;
            };
            let sub = match sub.map(|s| attr.sub_attr(s)) {
                None => None,
                Some(Some(s)) => Some(s.name),
                Some(None) => continue,
            };
            selection.add(scope, attr.name, sub);
        }
        Ok(selection)
    }

    fn add(&mut self, scope: Scope, name: &'static str, sub: Option<&'static str>) {
        let parts = match scope {
            Scope::Core => &mut self.core,
            Scope::Extension(i) => {
                match self
                    .extensions
                    .entry(i)
                    .or_insert_with(|| Some(BTreeMap::new()))
                {
                    Some(parts) => parts,
                    None => return, // the whole extension is named already
                }
            }
        };
        let part = parts
            .entry(name)
            .or_insert_with(|| Part::Subs(BTreeSet::new()));
        match (part, sub) {
            (Part::Subs(subs), Some(s)) => {
                subs.insert(s);
            }
            (part, None) => *part = Part::Whole,
            (Part::Whole, Some(_)) => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.core.is_empty() && self.extensions.is_empty()
    }
}

impl Part {
    /// Keep only the selected sub-attributes of `v`; false when nothing is left.
    fn keep(&self, v: &mut Value) -> bool {
        let Part::Subs(subs) = self else {
            return true;
        };
        let keep = |o: &mut Map<String, Value>| o.retain(|k, _| subs.contains(k.as_str()));
        match v {
            Value::Object(o) => {
                keep(o);
                !o.is_empty()
            }
            Value::Array(items) => {
                for item in items.iter_mut() {
                    if let Some(o) = item.as_object_mut() {
                        keep(o);
                    }
                }
                items.retain(|i| !i.as_object().is_some_and(Map::is_empty));
                !items.is_empty()
            }
            _ => true,
        }
    }

    /// Remove the selected part of attribute `name` from `container`.
    fn remove(&self, container: &mut Map<String, Value>, name: &str) {
        let Part::Subs(subs) = self else {
            container.remove(name);
            return;
        };
        let remove = |o: &mut Map<String, Value>| {
            for s in subs {
                o.remove(*s);
            }
        };
        match container.get_mut(name) {
            Some(Value::Object(o)) => remove(o),
            Some(Value::Array(items)) => items
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(remove),
            _ => {}
        }
    }
}

impl Projection {
    /// Parse the comma-separated attributes/excludedAttributes parameters.
    pub fn parse(
        rt: &ResourceType,
        attributes: Option<&str>,
        excluded: Option<&str>,
        limits: &Limits,
    ) -> Result<Self, ScimError> {
        Ok(Projection {
            include: Selection::parse(rt, attributes, "attributes", limits)?,
            exclude: Selection::parse(rt, excluded, "excludedAttributes", limits)?,
        })
    }

    pub fn is_identity(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the (core) attribute `name` appears in the response at all, e.g. to skip reading members.
    pub fn wants(&self, name: &str) -> bool {
        if matches!(self.exclude.core.get(name), Some(Part::Whole)) {
            return false;
        }
        self.include.is_empty() || self.include.core.contains_key(name)
    }

    /// Apply to a full resource representation: one pass over its attributes.
    pub fn apply(&self, rt: &ResourceType, resource: &mut Map<String, Value>) {
        let always = |k: &str| {
            k == "id" || k == "schemas" || (rt.kind == ResourceKind::User && k == "userName")
        };
        if !self.include.is_empty() {
            resource.retain(|k, v| {
                if always(k) {
                    return true;
                }
                let Some((i, _)) = rt.extension(k) else {
                    return self.include.core.get(k.as_str()).is_some_and(|p| p.keep(v));
                };
                match (self.include.extensions.get(&i), v.as_object_mut()) {
                    (None, _) => false,
                    (Some(Some(parts)), Some(ext)) => {
                        ext.retain(|name, v| parts.get(name.as_str()).is_some_and(|p| p.keep(v)));
                        !ext.is_empty()
                    }
                    (Some(_), _) => true,
                }
            });
        }
        for (name, part) in &self.exclude.core {
            if !always(name) {
                part.remove(resource, name);
            }
        }
        for (i, parts) in &self.exclude.extensions {
            let Some(ext) = rt.extensions.get(*i) else {
                continue;
            };
            match parts {
                None => {
                    resource.remove(&ext.id);
                }
                Some(parts) => {
                    if let Some(obj) = resource.get_mut(&ext.id).and_then(Value::as_object_mut) {
                        for (name, part) in parts {
                            part.remove(obj, name);
                        }
                    }
                }
            }
        }
        // Keep "schemas" truthful: drop extension URNs whose object is gone.
        let present: Vec<String> = rt
            .extensions
            .iter()
            .filter(|e| resource.contains_key(&e.id))
            .map(|e| e.id.clone())
            .collect();
        if let Some(Value::Array(s)) = resource.get_mut("schemas") {
            s.retain(|u| {
                u.as_str()
                    .is_some_and(|u| u == rt.core.id || present.iter().any(|p| p == u))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::*;
    use serde_json::json;

    fn user_rt() -> ResourceType {
        ResourceType::user(DEFAULT_CUSTOM_SCHEMA)
    }

    fn group_rt() -> ResourceType {
        ResourceType::group()
    }

    fn normalize(rt: &ResourceType, input: &Value) -> Result<Normalized, ScimError> {
        super::normalize(rt, input, &Limits::default())
    }

    fn projection(
        rt: &ResourceType,
        attributes: Option<&str>,
        excluded: Option<&str>,
    ) -> Projection {
        Projection::parse(rt, attributes, excluded, &Limits::default()).unwrap()
    }

    #[test]
    fn canonicalises_names_and_drops_read_only_and_password() {
        let n = normalize(
            &user_rt(),
            &json!({
                "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
                "USERNAME": "ann", "id": "ignored", "password": "secret",
                "meta": {"resourceType": "User"},
                "Name": {"GivenName": "Ann"},
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user": {"Department": "FIN"},
                "active": "False"
            }),
        )
        .unwrap();
        assert_eq!(
            Value::Object(n.doc),
            json!({"userName": "ann", "name": {"givenName": "Ann"}, "active": false,
                   ENTERPRISE_SCHEMA: {"department": "FIN"}})
        );
    }

    #[test]
    fn rejects_unknown_attributes_and_bad_types() {
        let rt = user_rt();
        let e = normalize(&rt, &json!({"userName": "a", "shoeSize": 4})).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidValue));
        assert!(e.detail.contains("shoeSize"));
        assert!(normalize(&rt, &json!({"userName": "a", "active": "maybe"})).is_err());
        assert!(normalize(&rt, &json!({"userName": ""})).is_err());
        assert!(normalize(&rt, &json!({"displayName": "x"})).is_err());
        assert!(normalize(&rt, &json!(["not", "an", "object"])).is_err());
        assert!(normalize(&rt, &json!({"schemas": "urn:nope", "userName": "a"})).is_err());
        assert!(normalize(&rt, &json!({"schemas": [7], "userName": "a"})).is_err());
    }

    #[test]
    fn manager_and_roles_in_entra_shapes() {
        let rt = user_rt();
        let n = normalize(
            &rt,
            &json!({"userName": "a",
                ENTERPRISE_SCHEMA: {"manager": "m-1"},
                "roles": "[{\"value\":\"Admin\",\"primary\":\"True\"}]"}),
        )
        .unwrap();
        assert_eq!(n.doc[ENTERPRISE_SCHEMA]["manager"], json!({"value": "m-1"}));
        assert_eq!(n.doc["roles"], json!([{"value": "Admin", "primary": true}]));
        let n = normalize(
            &rt,
            &json!({"userName": "a", ENTERPRISE_SCHEMA: {"manager": ""}}),
        )
        .unwrap();
        assert!(
            !n.doc.contains_key(ENTERPRISE_SCHEMA)
                || n.doc[ENTERPRISE_SCHEMA].get("manager").is_none()
        );
    }

    #[test]
    fn at_most_one_primary() {
        let n = normalize(
            &user_rt(),
            &json!({"userName": "p", "emails": [
                {"value": "a@x", "primary": "True"}, {"value": "b@x", "primary": true}]}),
        )
        .unwrap();
        assert_eq!(
            n.doc["emails"],
            json!([{"value": "a@x", "primary": false}, {"value": "b@x", "primary": true}])
        );
    }

    #[test]
    fn group_members_are_split_off() {
        let n = normalize(
            &ResourceType::group(),
            &json!({"displayName": "G", "members": [{"value": "u1"}, {"value": "u2", "display": "x"}]}),
        )
        .unwrap();
        assert_eq!(n.members.unwrap().len(), 2);
        assert!(!n.doc.contains_key("members"));
    }

    #[test]
    fn folds_only_case_insensitive_strings() {
        let rt = user_rt();
        let n = normalize(
            &rt,
            &json!({"userName": "ÄNN", "externalId": "AbC", "emails": [{"value": "A@B.COM", "type": "Work"}]}),
        )
        .unwrap();
        let f = fold_case(&rt, &n.doc);
        assert_eq!(f["userName"], "änn");
        assert_eq!(f["externalId"], "AbC");
        assert_eq!(f["emails"][0]["value"], "a@b.com");
    }

    #[test]
    fn projection_include_and_exclude() {
        let rt = user_rt();
        let full = json!({"schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA], "id": "1", "userName": "a",
            "name": {"givenName": "A", "familyName": "B"}, "emails": [{"value": "x", "type": "work"}],
            ENTERPRISE_SCHEMA: {"department": "D", "costCenter": "C"}});
        let mut r = full.as_object().unwrap().clone();
        projection(&rt, Some("name.givenName,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"), None)
            .apply(&rt, &mut r);
        assert_eq!(
            Value::Object(r),
            json!({"schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA], "id": "1", "userName": "a",
            "name": {"givenName": "A"}, ENTERPRISE_SCHEMA: {"department": "D"}})
        );
        let mut r = full.as_object().unwrap().clone();
        projection(
            &rt,
            None,
            Some("emails,userName,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
        )
        .apply(&rt, &mut r);
        assert_eq!(
            Value::Object(r),
            json!({"schemas": [USER_SCHEMA], "id": "1", "userName": "a",
            "name": {"givenName": "A", "familyName": "B"}})
        );
        let g = ResourceType::group();
        assert!(!projection(&g, None, Some("members")).wants("members"));
        assert!(projection(&g, None, None).wants("members"));
        assert!(!projection(&g, Some("displayName"), None).wants("members"));
    }

    #[test]
    fn unknown_schema_urns_are_ignored() {
        let g = ResourceType::group();
        let adscim = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
        let n = normalize(
            &g,
            &json!({"schemas": [GROUP_SCHEMA, adscim], "displayName": "G",
                    "meta": {"resourceType": "Group"}}),
        )
        .unwrap();
        assert_eq!(Value::Object(n.doc), json!({"displayName": "G"}));
        let rt = user_rt();
        for schemas in [
            json!(["urn:nope"]),
            json!([]),
            json!([USER_SCHEMA, "urn:x:y"]),
        ] {
            assert!(
                normalize(&rt, &json!({"schemas": schemas, "userName": "a"})).is_ok(),
                "{schemas}"
            );
        }
        // The other resource type's core schema is not unknown: that body is not a user.
        let e = normalize(&rt, &json!({"schemas": [GROUP_SCHEMA], "userName": "a"})).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidValue));
        assert!(normalize(&g, &json!({"schemas": [USER_SCHEMA], "displayName": "G"})).is_err());
    }

    #[test]
    fn user_name_rule() {
        let rt = user_rt();
        let user = |name: &str| normalize(&rt, &json!({"userName": name}));
        for ok in [
            "ann",
            "ann lee",
            "Änne.Müller@例え.jp",
            "a\u{200d}b",
            &"ü".repeat(256),
        ] {
            assert!(user(ok).is_ok(), "{ok:?}");
        }
        for (bad, why) in [
            (" ann", "whitespace"),
            ("ann ", "whitespace"),
            ("ann\u{a0}", "whitespace"),
            ("\u{3000}ann", "whitespace"),
            ("an\u{0}n", "control"),
            ("ann\n", "control"),
            ("\tann", "control"),
            ("an\u{7f}n", "control"),
            ("an\u{85}n", "control"),
        ] {
            let e = user(bad).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidValue));
            assert!(e.detail.contains(why), "{bad:?}: {}", e.detail);
            assert!(
                !e.detail.contains("ann"),
                "the detail never echoes the value"
            );
        }
        // externalId and a group's displayName: the key columns' width, no control characters.
        assert!(
            normalize(
                &rt,
                &json!({"userName": "a", "externalId": "x".repeat(256)})
            )
            .is_ok()
        );
        for (doc, says) in [
            (
                json!({"userName": "a", "externalId": "x".repeat(257)}),
                "externalId: longer than 256",
            ),
            (
                json!({"userName": "a", "externalId": "x\u{0}"}),
                "externalId must not contain",
            ),
            (
                json!({"displayName": "g".repeat(257)}),
                "displayName: longer than 256",
            ),
            (
                json!({"displayName": "g\n"}),
                "displayName must not contain",
            ),
        ] {
            let rt = if doc.get("userName").is_some() {
                user_rt()
            } else {
                group_rt()
            };
            let e = normalize(&rt, &doc).unwrap_err();
            assert_eq!(
                (e.status, e.detail.starts_with(says)),
                (400, true),
                "{}",
                e.detail
            );
        }
        assert!(normalize(&group_rt(), &json!({"displayName": "g".repeat(256)})).is_ok());
        let e = user(&"ü".repeat(257)).unwrap_err();
        assert_eq!(
            e.detail,
            "userName: longer than 256 characters (limit max_user_name_chars)"
        );
        let short = Limits {
            max_user_name_chars: 3,
            ..Limits::default()
        };
        assert!(super::normalize(&rt, &json!({"userName": "abc"}), &short).is_ok());
        assert!(super::normalize(&rt, &json!({"userName": "abcd"}), &short).is_err());
    }

    #[test]
    fn values_per_multi_valued_attribute_are_bounded() {
        let rt = user_rt();
        let few = Limits {
            max_values_per_attribute: 3,
            ..Limits::default()
        };
        let emails = |n: usize| -> Vec<Value> {
            (0..n).map(|i| json!({"value": format!("{i}@x")})).collect()
        };
        let ok = super::normalize(&rt, &json!({"userName": "a", "emails": emails(3)}), &few);
        assert_eq!(ok.unwrap().doc["emails"].as_array().map(Vec::len), Some(3));
        let e = super::normalize(&rt, &json!({"userName": "a", "emails": emails(4)}), &few)
            .unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidValue));
        assert_eq!(
            e.detail,
            "emails: more than 3 values (limit max_values_per_attribute)"
        );
        // E5: a JSON array in a string counts the same.
        let roles = serde_json::to_string(&emails(4)).unwrap();
        assert!(super::normalize(&rt, &json!({"userName": "a", "roles": roles}), &few).is_err());
        // Members are rows, bounded per request instead.
        let g = ResourceType::group();
        let members = json!({"displayName": "G", "members": emails(4)});
        assert!(super::normalize(&g, &members, &few).is_ok());
        let one = Limits {
            max_members_per_request: 3,
            ..Limits::default()
        };
        let e = super::normalize(&g, &members, &one).unwrap_err();
        assert_eq!(
            e.detail,
            "more than 3 members added or removed in one request (limit max_members_per_request)"
        );
    }

    #[test]
    fn projection_paths_are_bounded_and_named_once() {
        let rt = user_rt();
        let two = Limits {
            max_attribute_paths: 2,
            ..Limits::default()
        };
        assert!(Projection::parse(&rt, Some("a, b"), Some("emails,name"), &two).is_ok());
        let e = Projection::parse(&rt, None, Some("emails,name,title"), &two).unwrap_err();
        assert_eq!(e.scim_type, Some(crate::scim::ScimType::InvalidValue));
        assert_eq!(
            e.detail,
            "excludedAttributes: more than 2 attribute paths (limit max_attribute_paths)"
        );
        let e = Projection::parse(&rt, Some(&"x,".repeat(60_000)), None, &two).unwrap_err();
        assert!(e.detail.starts_with("attributes: "), "{}", e.detail);

        // A path given many times, or also as part of a wider one, means it once.
        let full = json!({"schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA], "id": "1", "userName": "a",
            "name": {"givenName": "A", "familyName": "B"},
            "emails": [{"value": "x", "type": "work"}, {"value": "y"}],
            ENTERPRISE_SCHEMA: {"department": "D", "costCenter": "C"}});
        let apply = |attributes: Option<&str>, excluded: Option<&str>| {
            let mut r = full.as_object().unwrap().clone();
            projection(&rt, attributes, excluded).apply(&rt, &mut r);
            Value::Object(r)
        };
        let once = apply(None, Some("emails.value"));
        let emails = once["emails"].as_array().unwrap();
        assert!(emails.iter().all(|e| e.get("value").is_none()), "{once}");
        assert_eq!(
            apply(None, Some(&vec!["emails.value"; 100].join(","))),
            once
        );
        assert_eq!(
            apply(None, Some("emails.value,EMAILS,emails.type")),
            apply(None, Some("emails"))
        );
        assert_eq!(
            apply(Some("emails.type,emails,emails.value"), None),
            apply(Some("emails"), None)
        );
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        assert_eq!(
            apply(Some(&format!("{ent}:department,{ent}")), None),
            apply(Some(ent), None)
        );
        assert_eq!(
            apply(Some(&format!("{ent},{ent}:department")), None)[ENTERPRISE_SCHEMA],
            json!({"department": "D", "costCenter": "C"})
        );
    }
}
