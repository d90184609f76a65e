//! The template context: a flat, always-complete view of one staged user.
//!
//! Every known variable is present for every user (absent values are "" or empty lists), so a
//! template that passed the load-time check never meets a missing variable at render time.

use serde_json::{Map, Value, json};

use super::StagedUser;
use crate::scim::schema::ENTERPRISE_SCHEMA;

/// The shape of the context, used to check template variable paths when a mapping is loaded.
#[derive(Debug)]
pub enum Shape {
    Text,
    Bool,
    Object(&'static [(&'static str, Shape)]),
    List(&'static Shape),
}

impl Shape {
    pub fn field(&self, name: &str) -> Option<&'static Shape> {
        match self {
            Shape::Object(fields) => fields.iter().find(|(n, _)| *n == name).map(|(_, s)| s),
            _ => None,
        }
    }

    pub fn is_scalar(&self) -> bool {
        matches!(self, Shape::Text | Shape::Bool)
    }

    pub fn field_names(&self) -> Vec<&'static str> {
        match self {
            Shape::Object(fields) => fields.iter().map(|(n, _)| *n).collect(),
            _ => Vec::new(),
        }
    }
}

const NAME: Shape = Shape::Object(&[
    ("formatted", Shape::Text),
    ("familyName", Shape::Text),
    ("givenName", Shape::Text),
    ("middleName", Shape::Text),
    ("honorificPrefix", Shape::Text),
    ("honorificSuffix", Shape::Text),
]);

const MULTI: Shape = Shape::Object(&[
    ("value", Shape::Text),
    ("type", Shape::Text),
    ("display", Shape::Text),
    ("primary", Shape::Bool),
]);

const ADDRESS: Shape = Shape::Object(&[
    ("formatted", Shape::Text),
    ("streetAddress", Shape::Text),
    ("locality", Shape::Text),
    ("region", Shape::Text),
    ("postalCode", Shape::Text),
    ("country", Shape::Text),
    ("type", Shape::Text),
    ("primary", Shape::Bool),
]);

const ENTERPRISE: Shape = Shape::Object(&[
    ("employeeNumber", Shape::Text),
    ("costCenter", Shape::Text),
    ("organization", Shape::Text),
    ("division", Shape::Text),
    ("department", Shape::Text),
    ("manager", Shape::Text),
]);

const GROUP: Shape = Shape::Object(&[("displayName", Shape::Text), ("externalId", Shape::Text)]);

/// Core string attributes copied as they are.
const CORE_TEXT: [&str; 11] = [
    "userName",
    "displayName",
    "externalId",
    "nickName",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "profileUrl",
    "id",
];

pub const CUSTOM_ATTRS: [&str; 16] = crate::scim::schema::CUSTOM_ATTR_NAMES;

pub static ROOT: Shape = Shape::Object(&[
    ("id", Shape::Text),
    ("userName", Shape::Text),
    ("displayName", Shape::Text),
    ("externalId", Shape::Text),
    ("active", Shape::Bool),
    ("name", NAME),
    ("nickName", Shape::Text),
    ("title", Shape::Text),
    ("userType", Shape::Text),
    ("preferredLanguage", Shape::Text),
    ("locale", Shape::Text),
    ("timezone", Shape::Text),
    ("profileUrl", Shape::Text),
    ("email", Shape::Text),
    ("emails", Shape::List(&MULTI)),
    ("phone", Shape::Text),
    ("mobile", Shape::Text),
    ("phoneNumbers", Shape::List(&MULTI)),
    ("address", ADDRESS),
    ("addresses", Shape::List(&ADDRESS)),
    ("enterprise", ENTERPRISE),
    ("customAttribute01", Shape::Text),
    ("customAttribute02", Shape::Text),
    ("customAttribute03", Shape::Text),
    ("customAttribute04", Shape::Text),
    ("customAttribute05", Shape::Text),
    ("customAttribute06", Shape::Text),
    ("customAttribute07", Shape::Text),
    ("customAttribute08", Shape::Text),
    ("customAttribute09", Shape::Text),
    ("customAttribute10", Shape::Text),
    ("customAttribute11", Shape::Text),
    ("customAttribute12", Shape::Text),
    ("customAttribute13", Shape::Text),
    ("customAttribute14", Shape::Text),
    ("customAttribute15", Shape::Text),
    ("customAttribute16", Shape::Text),
    ("groups", Shape::List(&GROUP)),
]);

/// Build the template context for one user.
pub fn build(user: &StagedUser, custom_urn: &str) -> Value {
    let doc = &user.doc;
    let mut out = Map::new();
    for key in CORE_TEXT {
        out.insert(key.into(), Value::String(text(doc.get(key))));
    }
    out.insert("id".into(), Value::String(user.id.clone()));
    let active = match doc.get("active") {
        Some(Value::Bool(b)) => *b,
        _ => true,
    };
    out.insert("active".into(), Value::Bool(active));

    let name = doc.get("name").and_then(Value::as_object);
    out.insert("name".into(), object_of(&NAME, name));

    let emails = multi(doc.get("emails"));
    out.insert(
        "email".into(),
        Value::String(pick(&emails, &["work"], true).unwrap_or_default()),
    );
    out.insert("emails".into(), Value::Array(emails));

    let phones = multi(doc.get("phoneNumbers"));
    out.insert(
        "phone".into(),
        Value::String(pick(&phones, &["work"], false).unwrap_or_default()),
    );
    out.insert(
        "mobile".into(),
        Value::String(typed(&phones, "mobile").unwrap_or_default()),
    );
    out.insert("phoneNumbers".into(), Value::Array(phones));

    let addresses: Vec<Value> = list(doc.get("addresses"))
        .iter()
        .map(|a| object_of(&ADDRESS, a.as_object()))
        .collect();
    let address = addresses
        .iter()
        .find(|a| a.get("primary") == Some(&Value::Bool(true)))
        .or_else(|| addresses.iter().find(|a| type_is(a, "work")))
        .or_else(|| addresses.first())
        .cloned()
        .unwrap_or_else(|| object_of(&ADDRESS, None));
    out.insert("address".into(), address);
    out.insert("addresses".into(), Value::Array(addresses));

    let enterprise = extension(doc, ENTERPRISE_SCHEMA);
    let mut ent = Map::new();
    for key in ENTERPRISE.field_names() {
        let v = match (key, enterprise.and_then(|e| e.get(key))) {
            ("manager", Some(Value::Object(m))) => text(m.get("value")),
            (_, v) => text(v),
        };
        ent.insert(key.into(), Value::String(v));
    }
    out.insert("enterprise".into(), Value::Object(ent));

    let custom = extension(doc, custom_urn);
    for key in CUSTOM_ATTRS {
        out.insert(
            key.into(),
            Value::String(text(custom.and_then(|c| c.get(key)))),
        );
    }

    let groups = user
        .groups
        .iter()
        .map(|g| {
            json!({
                "displayName": g.display_name,
                "externalId": g.external_id.clone().unwrap_or_default(),
            })
        })
        .collect();
    out.insert("groups".into(), Value::Array(groups));
    Value::Object(out)
}

fn extension<'a>(doc: &'a Map<String, Value>, urn: &str) -> Option<&'a Map<String, Value>> {
    doc.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(urn))
        .and_then(|(_, v)| v.as_object())
}

/// A scalar as text: strings as they are, numbers and booleans spelled out, anything else "".
pub fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

fn object_of(shape: &Shape, src: Option<&Map<String, Value>>) -> Value {
    let mut out = Map::new();
    if let Shape::Object(fields) = shape {
        for (name, s) in fields.iter() {
            let v = src.and_then(|m| m.get(*name));
            let value = match s {
                Shape::Bool => Value::Bool(matches!(v, Some(Value::Bool(true)))),
                _ => Value::String(text(v)),
            };
            out.insert((*name).into(), value);
        }
    }
    Value::Object(out)
}

fn multi(v: Option<&Value>) -> Vec<Value> {
    list(v)
        .iter()
        .map(|e| object_of(&MULTI, e.as_object()))
        .collect()
}

fn type_is(v: &Value, ty: &str) -> bool {
    v.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case(ty))
}

fn value_of(v: &Value) -> Option<String> {
    v.get("value").and_then(Value::as_str).map(str::to_owned)
}

fn typed(values: &[Value], ty: &str) -> Option<String> {
    values.iter().find(|v| type_is(v, ty)).and_then(value_of)
}

/// The primary value (when `primary_first`), else the first of the preferred types, else the first.
fn pick(values: &[Value], types: &[&str], primary_first: bool) -> Option<String> {
    if primary_first
        && let Some(v) = values
            .iter()
            .find(|v| v.get("primary") == Some(&Value::Bool(true)))
    {
        return value_of(v);
    }
    for ty in types {
        if let Some(v) = typed(values, ty) {
            return Some(v);
        }
    }
    values.first().and_then(value_of)
}

/// Where a target key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A scalar path in the context ("userName", "enterprise.employeeNumber", …).
    Path(Vec<String>),
    /// The email of one type ("emails.work").
    EmailType(String),
}

impl KeySource {
    /// Resolve `target.key`. Enterprise attributes may be named without the `enterprise.` prefix.
    pub fn parse(s: &str) -> Result<KeySource, String> {
        if let Some(ty) = s.strip_prefix("emails.")
            && !ty.is_empty()
            && ty.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Ok(KeySource::EmailType(ty.to_owned()));
        }
        let mut segs: Vec<String> = s.split('.').map(str::to_owned).collect();
        if segs.len() == 1 && ENTERPRISE.field(&segs[0]).is_some() {
            segs.insert(0, "enterprise".into());
        }
        let mut shape = &ROOT;
        for seg in &segs {
            match shape.field(seg) {
                Some(next) => shape = next,
                None => return Err(format!("unknown key attribute `{s}`")),
            }
        }
        if !matches!(shape, Shape::Text) {
            return Err(format!("key attribute `{s}` is not a text value"));
        }
        Ok(KeySource::Path(segs))
    }

    pub fn resolve(&self, ctx: &Value) -> String {
        match self {
            KeySource::Path(segs) => {
                let mut v = ctx;
                for s in segs {
                    match v.get(s) {
                        Some(next) => v = next,
                        None => return String::new(),
                    }
                }
                text(Some(v))
            }
            KeySource::EmailType(ty) => match ctx.get("emails") {
                Some(Value::Array(emails)) => typed(emails, ty).unwrap_or_default(),
                _ => String::new(),
            },
        }
    }

    /// The context variable the key reads, for `mapping check`.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Path(segs) => segs.join("."),
            KeySource::EmailType(ty) => format!("emails.{ty}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::StagedGroup;
    use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;

    /// Every value in the context matches the declared shape, and every declared name is present.
    fn conforms(shape: &Shape, v: &Value, path: &str) {
        match (shape, v) {
            (Shape::Text, Value::String(_)) | (Shape::Bool, Value::Bool(_)) => {}
            (Shape::List(elem), Value::Array(items)) => {
                for i in items {
                    conforms(elem, i, path);
                }
            }
            (Shape::Object(fields), Value::Object(m)) => {
                assert_eq!(m.len(), fields.len(), "{path}: {m:?}");
                for (n, s) in fields.iter() {
                    conforms(s, &m[*n], &format!("{path}.{n}"));
                }
            }
            _ => panic!("{path}: {v:?} does not match {shape:?}"),
        }
    }

    fn full_user() -> StagedUser {
        let doc = json!({
            "userName": "ann@example.com",
            "displayName": "Ann Lee",
            "externalId": "e-1",
            "active": false,
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [
                {"value": "home@example.com", "type": "home"},
                {"value": "ann@example.com", "type": "work"},
            ],
            "phoneNumbers": [
                {"value": "+1 555", "type": "mobile"},
                {"value": "+1 444", "type": "work"},
            ],
            "addresses": [{"locality": "Bern", "type": "work", "country": "CH"}],
            ENTERPRISE_SCHEMA: {"department": "R&D", "manager": {"value": "m-1"}, "employeeNumber": "42"},
            DEFAULT_CUSTOM_SCHEMA: {"customAttribute03": "x3"},
        });
        StagedUser {
            id: "u-1".into(),
            doc: doc.as_object().cloned().unwrap_or_default(),
            groups: vec![StagedGroup {
                id: "g-1".into(),
                display_name: "Staff".into(),
                external_id: None,
            }],
        }
    }

    #[test]
    fn context_matches_its_shape_for_full_and_empty_users() {
        conforms(&ROOT, &build(&full_user(), DEFAULT_CUSTOM_SCHEMA), "");
        conforms(
            &ROOT,
            &build(&StagedUser::default(), DEFAULT_CUSTOM_SCHEMA),
            "",
        );
    }

    #[test]
    fn convenience_values_pick_the_right_entries() {
        let ctx = build(&full_user(), DEFAULT_CUSTOM_SCHEMA);
        assert_eq!(ctx["email"], "ann@example.com");
        assert_eq!(ctx["phone"], "+1 444");
        assert_eq!(ctx["mobile"], "+1 555");
        assert_eq!(ctx["address"]["locality"], "Bern");
        assert_eq!(ctx["enterprise"]["manager"], "m-1");
        assert_eq!(ctx["enterprise"]["department"], "R&D");
        assert_eq!(ctx["customAttribute03"], "x3");
        assert_eq!(ctx["customAttribute04"], "");
        assert_eq!(ctx["active"], false);
        assert_eq!(ctx["id"], "u-1");
        assert_eq!(ctx["groups"][0]["externalId"], "");
    }

    #[test]
    fn primary_email_wins_over_work() {
        let mut u = full_user();
        u.doc.insert(
            "emails".into(),
            json!([{"value": "w@x", "type": "work"}, {"value": "p@x", "type": "other", "primary": true}]),
        );
        assert_eq!(build(&u, DEFAULT_CUSTOM_SCHEMA)["email"], "p@x");
    }

    #[test]
    fn custom_attributes_follow_the_tenant_urn() {
        let mut u = full_user();
        u.doc.insert(
            "urn:example:custom".into(),
            json!({"customAttribute01": "mine"}),
        );
        let ctx = build(&u, "urn:example:custom");
        assert_eq!(ctx["customAttribute01"], "mine");
        assert_eq!(ctx["customAttribute03"], "");
    }

    #[test]
    fn key_sources() {
        let ctx = build(&full_user(), DEFAULT_CUSTOM_SCHEMA);
        let r = |s: &str| KeySource::parse(s).unwrap().resolve(&ctx);
        assert_eq!(r("externalId"), "e-1");
        assert_eq!(r("userName"), "ann@example.com");
        assert_eq!(r("id"), "u-1");
        assert_eq!(r("employeeNumber"), "42");
        assert_eq!(r("enterprise.employeeNumber"), "42");
        assert_eq!(r("customAttribute03"), "x3");
        assert_eq!(r("emails.home"), "home@example.com");
        assert_eq!(r("emails.other"), "");
        assert!(KeySource::parse("userNmae").is_err());
        assert!(KeySource::parse("name").is_err());
        assert!(KeySource::parse("groups").is_err());
    }
}
