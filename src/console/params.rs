//! Query strings and form bodies, bounded: every parameter a page does not take is refused
//! (400), each appears at most once, and values are short.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// The longest value a parameter may have.
pub const MAX_VALUE: usize = 256;
/// The most parameters one request may carry.
pub const MAX_PARAMS: usize = 16;

/// A request's parameters, checked against the names a page takes.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

/// Why a parameter was refused (the page says it; values are not repeated back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParam(pub String);

impl Params {
    /// `text` (a query string or a form body) with only the names in `allowed`; an empty
    /// value counts as absent (an empty filter field).
    pub fn parse(text: &str, allowed: &[&str]) -> Result<Params, BadParam> {
        let mut map = BTreeMap::new();
        for (n, (name, value)) in form_urlencoded::parse(text.as_bytes()).enumerate() {
            if n >= MAX_PARAMS {
                return Err(BadParam(format!("at most {MAX_PARAMS} parameters")));
            }
            if !allowed.contains(&name.as_ref()) {
                return Err(BadParam(format!(
                    "unknown parameter {:?} (this page takes: {})",
                    truncate(&name),
                    allowed.join(", ")
                )));
            }
            if value.chars().count() > MAX_VALUE {
                return Err(BadParam(format!("{name}: at most {MAX_VALUE} characters")));
            }
            if map.contains_key(name.as_ref()) {
                return Err(BadParam(format!("{name}: given twice")));
            }
            let value = value.trim().to_string();
            if !value.is_empty() {
                map.insert(name.into_owned(), value);
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// One of `choices`, when given.
    pub fn choice(&self, name: &str, choices: &[&str]) -> Result<Option<String>, BadParam> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if choices.contains(&v) => Ok(Some(v.to_string())),
            Some(_) => Err(BadParam(format!("{name}: one of {}", choices.join(", ")))),
        }
    }

    /// An integer in `min..=max`, when given.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, BadParam> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(BadParam(format!(
                    "{name}: a whole number from {min} to {max}"
                ))),
            },
        }
    }

    /// A time: RFC 3339, or a date or date and time without a zone, read as UTC (what
    /// `<input type="date">` and `type="datetime-local"` send).
    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, BadParam> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        parse_time(v).map(Some).ok_or_else(|| {
            BadParam(format!(
                "{name}: a time like 2026-01-15, 2026-01-15T09:00 (UTC) or 2026-01-15T09:00:00Z"
            ))
        })
    }

    /// Whether a checkbox-like parameter is `yes`.
    pub fn yes(&self, name: &str) -> Result<bool, BadParam> {
        Ok(self.choice(name, &["yes", "no"])?.as_deref() == Some("yes"))
    }

    /// The parameters, for links that keep the filters.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

pub fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A query string of `pairs` (for links).
pub fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_repeated_and_long_parameters_are_refused() {
        let allowed = ["tenant", "offset"];
        assert!(Params::parse("tenant=acme&offset=20", &allowed).is_ok());
        assert!(
            Params::parse("tenat=acme", &allowed)
                .unwrap_err()
                .0
                .contains("unknown")
        );
        assert!(
            Params::parse("tenant=a&tenant=b", &allowed)
                .unwrap_err()
                .0
                .contains("twice")
        );
        let long = format!("tenant={}", "x".repeat(MAX_VALUE + 1));
        assert!(Params::parse(&long, &allowed).is_err());
        let many = vec!["tenant="; MAX_PARAMS + 1].join("&");
        assert!(Params::parse(&many, &allowed).is_err());
        // An empty field is no filter.
        assert_eq!(
            Params::parse("tenant=&offset=", &allowed)
                .unwrap()
                .get("tenant"),
            None
        );
    }

    #[test]
    fn values_are_checked() {
        let p = Params::parse("offset=5&status=failed&q=x", &["offset", "status", "q"]).unwrap();
        assert_eq!(p.int("offset", 0, 10), Ok(Some(5)));
        assert!(p.int("offset", 0, 4).is_err());
        assert!(p.int("q", 0, 4).is_err());
        assert_eq!(p.choice("status", &["failed"]), Ok(Some("failed".into())));
        assert!(p.choice("status", &["running"]).is_err());
    }

    #[test]
    fn times_read_as_utc() {
        let want = parse_time("2026-01-15T09:00:00Z").unwrap();
        assert_eq!(parse_time("2026-01-15T09:00"), Some(want));
        assert_eq!(parse_time("2026-01-15T10:00:00+01:00"), Some(want));
        assert_eq!(
            parse_time("2026-01-15"),
            Some(want - chrono::Duration::hours(9))
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
