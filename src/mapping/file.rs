//! The mapping file as written: TOML, deserialised with spans so that every validation error
//! can name the line it is about.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    pub target: RawTarget,
    #[serde(default)]
    pub fields: Ordered<Spanned<RawField>>,
    #[serde(default)]
    pub lookups: Ordered<RawLookup>,
    #[serde(default)]
    pub roles: Vec<Spanned<RawRoleRule>>,
    pub deactivation: Option<RawDeactivation>,
    pub offboarding: Option<RawOffboarding>,
    #[serde(default)]
    pub test: Vec<Spanned<RawTest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub database: Spanned<String>,
    pub user_table: Spanned<String>,
    pub key_column: Spanned<String>,
    pub key: Spanned<String>,
    /// `never` (the default) or `match-by-key`.
    pub adopt: Option<Spanned<String>>,
    /// A column holding the tenant's name: rows are matched by key and tenant.
    pub tenant_column: Option<Spanned<String>>,
    pub roles: Option<RawRoleTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleTable {
    pub table: Spanned<String>,
    pub user_column: Spanned<String>,
    pub role_column: Spanned<String>,
    pub tenant_column: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    #[default]
    Text,
    Integer,
    Boolean,
    Timestamp,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
        })
    }
}

/// A field: `Column = "template"` or a table with options.
#[derive(Debug)]
pub enum RawField {
    Template(String),
    Table(RawFieldTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldTable {
    pub template: Spanned<String>,
    #[serde(default)]
    pub ignore_if_empty: bool,
    #[serde(default)]
    pub empty_is_null: bool,
    #[serde(default, rename = "type")]
    pub ty: FieldType,
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a template string or a table with `template`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawField, E> {
                Ok(RawField::Template(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                RawFieldTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawField::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLookup {
    #[serde(default)]
    pub values: std::collections::BTreeMap<String, String>,
    pub default: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleRule {
    pub group: Option<String>,
    pub group_pattern: Option<String>,
    pub external_id: Option<String>,
    pub external_id_pattern: Option<String>,
    pub role: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeactivation {
    #[serde(default)]
    pub fields: Ordered<Spanned<RawField>>,
    #[serde(default)]
    pub remove_roles: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffboardingAction {
    None,
    Delete,
    Update,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffboarding {
    pub action: OffboardingAction,
    #[serde(default)]
    pub fields: Ordered<Spanned<RawField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: Option<String>,
    pub user: Option<toml::Table>,
    pub user_json: Option<String>,
    #[serde(default)]
    pub groups: Vec<RawTestGroup>,
    pub state: Option<TestState>,
    #[serde(default)]
    pub expect: RawExpect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestState {
    Active,
    Deactivated,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestGroup {
    pub display_name: String,
    pub external_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub key: Option<String>,
    #[serde(default)]
    pub fields: Ordered<toml::Value>,
    pub roles: Option<Vec<String>>,
    /// The render is expected to fail with an error containing this text.
    pub error: Option<String>,
}

/// A TOML table whose entry order matters (field order is the mapping order).
#[derive(Debug)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OV<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OV<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<V>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(OV(PhantomData))
    }
}

/// The line of a section header (`[name` or `[[name`), for errors about a whole section.
/// Some tables cannot carry spans (a table only implied by `[name.sub]` has none).
pub fn section_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('[').trim_start();
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(']') || r.starts_with('.'))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line where a TOML string's content starts (a newline right after `"""`/`'''` is trimmed).
pub fn content_line(text: &str, offset: usize) -> usize {
    let line = line_of(text, offset);
    let rest = text.get(offset..).unwrap_or("");
    let multi = rest.starts_with("\"\"\"") || rest.starts_with("'''");
    let after = rest.get(3..).unwrap_or("");
    if multi && (after.starts_with('\n') || after.starts_with("\r\n")) {
        line + 1
    } else {
        line
    }
}
