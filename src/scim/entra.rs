//! Microsoft Entra ID's SCIM dialect (ENTRA.md E1–E5), absorbed in one place.
//!
//! Each function takes what Entra really sends and returns what RFC 7644 means, and counts
//! the normalisation so operators can see how much of the dialect their tenant uses.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

/// The dialect behaviours this module absorbs, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// E1: "Add"/"Replace"/"Remove".
    CapitalisedOp,
    /// E2: remove of "members" with a value list.
    MemberRemoveByValue,
    /// E3: path-less value with dotted or URN-qualified keys.
    PathlessKeys,
    /// E4: booleans as strings.
    StringBoolean,
    /// E5: manager as a bare id or "", values as JSON strings.
    LooseComplexValue,
}

impl Quirk {
    pub const ALL: [Quirk; 5] = [
        Quirk::CapitalisedOp,
        Quirk::MemberRemoveByValue,
        Quirk::PathlessKeys,
        Quirk::StringBoolean,
        Quirk::LooseComplexValue,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Quirk::CapitalisedOp => "E1_capitalised_op",
            Quirk::MemberRemoveByValue => "E2_member_remove_by_value",
            Quirk::PathlessKeys => "E3_pathless_keys",
            Quirk::StringBoolean => "E4_string_boolean",
            Quirk::LooseComplexValue => "E5_loose_complex_value",
        }
    }
}

static COUNTS: [AtomicU64; 5] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

pub fn record(q: Quirk) {
    COUNTS[q as usize].fetch_add(1, Ordering::Relaxed);
}

/// How often each quirk was absorbed since start.
pub fn counts() -> [(Quirk, u64); 5] {
    Quirk::ALL.map(|q| (q, COUNTS[q as usize].load(Ordering::Relaxed)))
}

/// The three PATCH operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Replace,
    Remove,
}

/// E1: op names are matched case-insensitively.
pub fn op_kind(op: &str) -> Option<OpKind> {
    let kind = match op {
        "add" => return Some(OpKind::Add),
        "replace" => return Some(OpKind::Replace),
        "remove" => return Some(OpKind::Remove),
        _ if op.eq_ignore_ascii_case("add") => OpKind::Add,
        _ if op.eq_ignore_ascii_case("replace") => OpKind::Replace,
        _ if op.eq_ignore_ascii_case("remove") => OpKind::Remove,
        _ => return None,
    };
    record(Quirk::CapitalisedOp);
    Some(kind)
}

/// E4: a boolean, also when sent as "True"/"false".
pub fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => {
            let b = if s.eq_ignore_ascii_case("true") {
                true
            } else if s.eq_ignore_ascii_case("false") {
                false
            } else {
                return None;
            };
            record(Quirk::StringBoolean);
            Some(b)
        }
        _ => None,
    }
}

/// E5: a complex or multi-valued value that arrived as a JSON document inside a string.
pub fn json_string(s: &str) -> Option<Value> {
    let t = s.trim_start();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    let v = serde_json::from_str::<Value>(t).ok()?;
    record(Quirk::LooseComplexValue);
    Some(v)
}

/// E5: a bare string where a complex value ({"value": …}) is expected.
pub fn bare_value(s: &str) -> serde_json::Map<String, Value> {
    record(Quirk::LooseComplexValue);
    let mut o = serde_json::Map::new();
    o.insert("value".into(), Value::String(s.to_string()));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn e1_op_names_any_case() {
        assert_eq!(op_kind("Add"), Some(OpKind::Add));
        assert_eq!(op_kind("REPLACE"), Some(OpKind::Replace));
        assert_eq!(op_kind("remove"), Some(OpKind::Remove));
        assert_eq!(op_kind("delete"), None);
    }

    #[test]
    fn e4_string_booleans() {
        assert_eq!(boolean(&json!("False")), Some(false));
        assert_eq!(boolean(&json!("TRUE")), Some(true));
        assert_eq!(boolean(&json!(true)), Some(true));
        assert_eq!(boolean(&json!("yes")), None);
        assert_eq!(boolean(&json!(1)), None);
    }

    #[test]
    fn e5_json_strings() {
        assert_eq!(
            json_string("[{\"value\":\"a\"}]"),
            Some(json!([{"value": "a"}]))
        );
        assert_eq!(json_string("plain"), None);
        assert_eq!(json_string("[not json"), None);
    }
}
