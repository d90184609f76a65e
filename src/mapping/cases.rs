//! `[[test]]` cases: a user, its groups, and what the mapping should make of them.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::file::{RawTest, TestState};
use super::helpers::parse_date;
use super::{FieldValue, Mapping, StagedGroup, StagedUser, UserState, parse_bool};
use crate::scim::Limits;
use crate::scim::resource::normalize;
use crate::scim::schema::{ENTERPRISE_SCHEMA, ResourceType};

/// The result of one test case.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    /// Line of the `[[test]]` header in the mapping file.
    pub line: usize,
    /// One readable line per mismatch; empty when the case passed.
    pub failures: Vec<String>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, Clone)]
enum Expected {
    Value(toml::Value),
    Null,
    Absent,
}

#[derive(Debug, Clone)]
pub struct TestCase {
    name: String,
    line: usize,
    user: StagedUser,
    state: UserState,
    key: Option<String>,
    fields: Vec<(String, Expected)>,
    roles: Option<BTreeSet<String>>,
    error: Option<String>,
}

const ENTERPRISE_NAMES: [&str; 6] = [
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "manager",
];

impl TestCase {
    pub fn from_raw(
        raw: &RawTest,
        index: usize,
        line: usize,
        mapping: &Mapping,
    ) -> Result<TestCase, String> {
        let name = raw
            .name
            .clone()
            .unwrap_or_else(|| format!("test {}", index + 1));
        let ctx = format!("test `{name}`");
        let (id, input) = match (&raw.user, &raw.user_json) {
            (Some(t), None) => user_from_table(t, &mapping.custom_urn),
            (None, Some(j)) => {
                let v: Value = serde_json::from_str(j)
                    .map_err(|e| format!("{ctx}: user_json is not JSON: {e}"))?;
                let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
                (id, v)
            }
            _ => return Err(format!("{ctx}: give exactly one of `user` or `user_json`")),
        };
        let rt = ResourceType::user(&mapping.custom_urn);
        let normalized = normalize(&rt, &input, &Limits::default())
            .map_err(|e| format!("{ctx}: the user is not a valid SCIM user: {}", e.detail))?;
        let user = StagedUser {
            id: id.unwrap_or_else(|| format!("test-user-{}", index + 1)),
            doc: normalized.doc,
            groups: raw
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| StagedGroup {
                    id: format!("test-group-{}", i + 1),
                    display_name: g.display_name.clone(),
                    external_id: g.external_id.clone(),
                })
                .collect(),
        };
        let mut fields = Vec::new();
        for (col, v) in &raw.expect.fields.0 {
            let is_key = *col == mapping.target.key_column;
            if !is_key && !mapping.knows_column(col) {
                return Err(format!(
                    "{ctx}: expect.fields.{col}: the mapping writes no column `{col}`"
                ));
            }
            let e = match v {
                toml::Value::Table(t) if t.get("null") == Some(&toml::Value::Boolean(true)) => {
                    Expected::Null
                }
                toml::Value::Table(t) if t.get("absent") == Some(&toml::Value::Boolean(true)) => {
                    Expected::Absent
                }
                toml::Value::Table(_) | toml::Value::Array(_) | toml::Value::Float(_) => {
                    return Err(format!(
                        "{ctx}: expect.fields.{col}: give a string, integer, boolean, date-time, {{ null = true }} or {{ absent = true }}"
                    ));
                }
                other => Expected::Value(other.clone()),
            };
            fields.push((col.clone(), e));
        }
        if raw.expect.error.is_some()
            && (!fields.is_empty() || raw.expect.roles.is_some() || raw.expect.key.is_some())
        {
            return Err(format!(
                "{ctx}: expect.error cannot be combined with expected key, fields or roles"
            ));
        }
        Ok(TestCase {
            name,
            line,
            user,
            state: match raw.state {
                Some(TestState::Deactivated) => UserState::Deactivated,
                _ => UserState::Active,
            },
            key: raw.expect.key.clone(),
            fields,
            roles: raw
                .expect
                .roles
                .as_ref()
                .map(|r| r.iter().cloned().collect()),
            error: raw.expect.error.clone(),
        })
    }

    pub fn run(&self, mapping: &Mapping) -> TestOutcome {
        let mut failures = Vec::new();
        match (mapping.render(&self.user, self.state), &self.error) {
            (Err(e), Some(want)) if e.to_string().contains(want.as_str()) => {}
            (Err(e), Some(want)) => failures.push(format!(
                "error: expected one containing {want:?}, got {:?}",
                e.to_string()
            )),
            (Ok(_), Some(want)) => failures.push(format!(
                "error: expected one containing {want:?}, but the user rendered"
            )),
            (Err(e), None) => failures.push(format!("render failed: {e}")),
            (Ok(r), None) => {
                if let Some(k) = &self.key
                    && *k != r.key
                {
                    failures.push(format!("key: expected {k:?}, got {:?}", r.key));
                }
                for (col, want) in &self.fields {
                    let got = if *col == mapping.target.key_column {
                        Some(FieldValue::Text(r.key.clone()))
                    } else {
                        r.fields
                            .iter()
                            .find(|(c, _)| c == col)
                            .map(|(_, v)| v.clone())
                    };
                    if let Some(diff) = compare(want, got.as_ref()) {
                        failures.push(format!("{col}: {diff}"));
                    }
                }
                if let Some(want) = &self.roles
                    && *want != r.roles
                {
                    let missing: Vec<&String> = want.difference(&r.roles).collect();
                    let extra: Vec<&String> = r.roles.difference(want).collect();
                    failures.push(format!(
                        "roles: expected {:?}, got {:?} (missing {missing:?}, unexpected {extra:?})",
                        want, r.roles
                    ));
                }
            }
        }
        TestOutcome {
            name: self.name.clone(),
            line: self.line,
            failures,
        }
    }
}

fn show_expected(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// None when `got` matches, else a readable description of the difference.
fn compare(want: &Expected, got: Option<&FieldValue>) -> Option<String> {
    let ok = match (want, got) {
        (Expected::Absent, None) => true,
        (Expected::Absent, Some(g)) => return Some(format!("expected no value, got {g}")),
        (_, None) => {
            let w = match want {
                Expected::Value(v) => show_expected(v),
                _ => "NULL".into(),
            };
            return Some(format!("expected {w}, but the field is absent"));
        }
        (Expected::Null, Some(g)) => *g == FieldValue::Null,
        (Expected::Value(v), Some(g)) => value_matches(v, g),
    };
    if ok {
        return None;
    }
    let w = match want {
        Expected::Value(v) => show_expected(v),
        _ => "NULL".into(),
    };
    Some(format!(
        "expected {w}, got {}",
        got.map(ToString::to_string).unwrap_or_default()
    ))
}

fn value_matches(want: &toml::Value, got: &FieldValue) -> bool {
    match (want, got) {
        (toml::Value::String(w), FieldValue::Text(g)) => w == g,
        (toml::Value::String(w), FieldValue::Integer(g)) => {
            w.trim().parse::<i64>().ok() == Some(*g)
        }
        (toml::Value::String(w), FieldValue::Boolean(g)) => parse_bool(w) == Some(*g),
        (toml::Value::String(w), FieldValue::Timestamp(g)) => parse_date(w) == Some(*g),
        (toml::Value::Integer(w), FieldValue::Integer(g)) => w == g,
        (toml::Value::Integer(w), FieldValue::Text(g)) => w.to_string() == *g,
        (toml::Value::Boolean(w), FieldValue::Boolean(g)) => w == g,
        (toml::Value::Datetime(w), FieldValue::Timestamp(g)) => {
            parse_date(&w.to_string()) == Some(*g)
        }
        _ => false,
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// A test user written for convenience → a SCIM request body. Enterprise and custom
/// attributes may be given by their plain names; `email`, `phone` and `mobile` are shorthands
/// for a work email, a work phone and a mobile phone; `id` is the staged id.
fn user_from_table(t: &toml::Table, custom_urn: &str) -> (Option<String>, Value) {
    let mut body = Map::new();
    let mut enterprise = Map::new();
    let mut custom = Map::new();
    let mut id = None;
    let mut emails = Vec::new();
    let mut phones = Vec::new();
    for (k, v) in t {
        let j = toml_to_json(v);
        match k.as_str() {
            "id" => id = v.as_str().map(str::to_owned),
            "email" => {
                emails.push(serde_json::json!({"value": j, "type": "work", "primary": true}))
            }
            "phone" => phones.push(serde_json::json!({"value": j, "type": "work"})),
            "mobile" => phones.push(serde_json::json!({"value": j, "type": "mobile"})),
            "manager" => {
                let m = match j {
                    Value::String(s) => serde_json::json!({"value": s}),
                    other => other,
                };
                enterprise.insert("manager".into(), m);
            }
            n if ENTERPRISE_NAMES.contains(&n) => {
                enterprise.insert(n.into(), j);
            }
            n if super::context::CUSTOM_ATTRS.contains(&n) => {
                custom.insert(n.into(), j);
            }
            _ => {
                body.insert(k.clone(), j);
            }
        }
    }
    if !emails.is_empty() {
        let mut all = emails;
        if let Some(Value::Array(more)) = body.remove("emails") {
            all.extend(more);
        }
        body.insert("emails".into(), Value::Array(all));
    }
    if !phones.is_empty() {
        let mut all = phones;
        if let Some(Value::Array(more)) = body.remove("phoneNumbers") {
            all.extend(more);
        }
        body.insert("phoneNumbers".into(), Value::Array(all));
    }
    merge_ext(&mut body, ENTERPRISE_SCHEMA, enterprise);
    merge_ext(&mut body, custom_urn, custom);
    (id, Value::Object(body))
}

fn merge_ext(body: &mut Map<String, Value>, urn: &str, attrs: Map<String, Value>) {
    if attrs.is_empty() {
        return;
    }
    let slot = body
        .entry(urn.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(o) = slot {
        o.extend(attrs);
    }
}
