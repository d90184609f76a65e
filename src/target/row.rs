//! An application row as it is now, read back to compare with what the engine would write
//! (a full run) or last wrote (`sync --verify`). Values are compared the way the databases
//! store them: a boolean is 1/0 in SQLite, a timestamp is text there, an integer column may
//! hold a number given as text.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::mapping::FieldValue;
use crate::store::format_time;

/// A row of the application: the mapped columns' values (by column name as the mapping spells
/// it) and the user's role rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppRow {
    pub fields: BTreeMap<String, AppValue>,
    pub roles: BTreeSet<String>,
}

/// A column's value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum AppValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
    Time(DateTime<Utc>),
    /// A value of a type the engine never writes (binary, …).
    Other,
}

impl AppValue {
    /// Whether the row holds `v` (what the engine writes for it).
    pub fn holds(&self, v: &FieldValue) -> bool {
        match v {
            FieldValue::Null => *self == AppValue::Null,
            FieldValue::Text(s) => self.holds_text(s),
            FieldValue::Integer(i) => self.holds_int(*i),
            FieldValue::Boolean(b) => match self {
                AppValue::Bool(x) => x == b,
                AppValue::Int(x) => *x == i64::from(*b),
                AppValue::Text(t) => t == if *b { "1" } else { "0" } || t == &b.to_string(),
                _ => false,
            },
            FieldValue::Timestamp(t) => match self {
                AppValue::Time(x) => x == t,
                AppValue::Text(s) => {
                    *s == format_time(*t) || DateTime::parse_from_rfc3339(s).is_ok_and(|x| x == *t)
                }
                _ => false,
            },
        }
    }

    /// Whether the row holds `v`, a value as the engine records it (JSON: null, string,
    /// number, boolean; timestamps as RFC 3339 text).
    pub fn holds_json(&self, v: &Value) -> bool {
        match v {
            Value::Null => *self == AppValue::Null,
            Value::Bool(b) => self.holds(&FieldValue::Boolean(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => self.holds_int(i),
                None => matches!(self, AppValue::Real(x) if Some(*x) == n.as_f64()),
            },
            Value::String(s) => {
                self.holds_text(s)
                    || DateTime::parse_from_rfc3339(s)
                        .is_ok_and(|t| self.holds(&FieldValue::Timestamp(t.with_timezone(&Utc))))
            }
            _ => false,
        }
    }

    fn holds_text(&self, s: &str) -> bool {
        match self {
            AppValue::Text(t) => t == s,
            // A numeric column keeps text that looks like a number as a number.
            AppValue::Int(i) => s.trim() == i.to_string(),
            AppValue::Real(f) => s.trim().parse::<f64>().is_ok_and(|x| x == *f),
            _ => false,
        }
    }

    fn holds_int(&self, i: i64) -> bool {
        match self {
            AppValue::Int(x) => *x == i,
            AppValue::Real(f) => *f == i as f64,
            AppValue::Text(t) => t.trim() == i.to_string(),
            AppValue::Bool(b) => i64::from(*b) == i,
            _ => false,
        }
    }

    /// As JSON, for a ledger item's "before".
    pub fn to_json(&self) -> Value {
        match self {
            AppValue::Null => Value::Null,
            AppValue::Int(i) => Value::from(*i),
            AppValue::Real(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            AppValue::Text(s) => Value::String(s.clone()),
            AppValue::Bool(b) => Value::Bool(*b),
            AppValue::Time(t) => Value::String(format_time(*t)),
            AppValue::Other => Value::String("(binary)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn values_compare_as_the_databases_store_them() {
        let t = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        assert!(AppValue::Int(1).holds(&FieldValue::Boolean(true)));
        assert!(!AppValue::Int(0).holds(&FieldValue::Boolean(true)));
        assert!(AppValue::Bool(false).holds(&FieldValue::Boolean(false)));
        assert!(AppValue::Text("2030-01-02T03:04:05.000Z".into()).holds(&FieldValue::Timestamp(t)));
        assert!(AppValue::Time(t).holds(&FieldValue::Timestamp(t)));
        assert!(AppValue::Int(42).holds(&FieldValue::Text("42".into())));
        assert!(AppValue::Text("42".into()).holds(&FieldValue::Integer(42)));
        assert!(AppValue::Null.holds(&FieldValue::Null));
        assert!(!AppValue::Text(String::new()).holds(&FieldValue::Null));
        assert!(!AppValue::Text("Ann".into()).holds(&FieldValue::Text("ann".into())));
        assert!(AppValue::Int(1).holds_json(&json!(true)));
        assert!(AppValue::Time(t).holds_json(&json!("2030-01-02T03:04:05.000Z")));
        assert!(AppValue::Int(7).holds_json(&json!(7)));
        assert!(!AppValue::Int(7).holds_json(&json!(8)));
        assert_eq!(
            AppValue::Time(t).to_json(),
            json!("2030-01-02T03:04:05.000Z")
        );
    }
}
