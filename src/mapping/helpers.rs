//! Template helpers. Each returns a value, so it works both as `{{helper …}}` and as a
//! sub-expression `(helper …)`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, NaiveDate, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use regex::Regex;
use serde_json::Value;

/// A value table: `[lookups.NAME]`.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub values: BTreeMap<String, String>,
    pub default: Option<String>,
    pub ignore_case: bool,
}

impl Lookup {
    pub fn get(&self, key: &str) -> Option<&str> {
        let hit = if self.ignore_case {
            self.values
                .iter()
                .find(|(k, _)| k.to_lowercase() == key.to_lowercase())
                .map(|(_, v)| v)
        } else {
            self.values.get(key)
        };
        hit.or(self.default.as_ref()).map(String::as_str)
    }
}

/// Helper names with their parameter counts (min, max) and allowed hash keys.
pub const HELPERS: &[(&str, usize, usize, &[&str])] = &[
    ("lower", 1, 1, &[]),
    ("upper", 1, 1, &[]),
    ("trim", 1, 1, &[]),
    ("default", 2, usize::MAX, &[]),
    ("concat", 1, usize::MAX, &["sep"]),
    ("replace", 3, 3, &[]),
    ("substring", 2, 3, &[]),
    ("split", 3, 3, &[]),
    ("regex_match", 2, 2, &[]),
    ("regex_replace", 3, 3, &[]),
    ("format_date", 2, 2, &[]),
    ("lookup_table", 2, 2, &[]),
    // handlebars' own
    ("if", 1, 1, &["includeZero"]),
    ("unless", 1, 1, &["includeZero"]),
    ("each", 1, 1, &[]),
    ("with", 1, 1, &[]),
    ("eq", 2, 2, &[]),
    ("ne", 2, 2, &[]),
    ("gt", 2, 2, &[]),
    ("gte", 2, 2, &[]),
    ("lt", 2, 2, &[]),
    ("lte", 2, 2, &[]),
    ("and", 1, usize::MAX, &[]),
    ("or", 1, usize::MAX, &[]),
    ("not", 1, 1, &[]),
    ("len", 1, 1, &[]),
];

pub fn helper_spec(name: &str) -> Option<(usize, usize, &'static [&'static str])> {
    HELPERS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, min, max, hash)| (*min, *max, *hash))
}

/// Compiled regular expressions: literal patterns are compiled at load, others on first use.
#[derive(Debug, Default)]
pub struct RegexCache {
    map: Mutex<HashMap<String, Regex>>,
}

const REGEX_CACHE_LIMIT: usize = 512;

impl RegexCache {
    pub fn get(&self, pattern: &str) -> Result<Regex, regex::Error> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = map.get(pattern) {
            return Ok(r.clone());
        }
        let r = Regex::new(pattern)?;
        if map.len() >= REGEX_CACHE_LIMIT {
            map.clear();
        }
        map.insert(pattern.to_owned(), r.clone());
        Ok(r)
    }
}

fn fail(helper: &str, msg: impl std::fmt::Display) -> RenderError {
    RenderErrorReason::Other(format!("{helper}: {msg}")).into()
}

/// A parameter as text: strings as they are, null as "", numbers and booleans spelled out.
fn text_param(h: &Helper, i: usize) -> Result<String, RenderError> {
    let name = h.name().to_owned();
    let v = h
        .param(i)
        .ok_or_else(|| fail(&name, format!("missing parameter {}", i + 1)))?;
    value_text(v.value()).ok_or_else(|| {
        fail(
            &name,
            format!(
                "parameter {} must be a text value, not a list or object",
                i + 1
            ),
        )
    })
}

pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn int_param(h: &Helper, i: usize) -> Result<i64, RenderError> {
    let name = h.name().to_owned();
    let v = h
        .param(i)
        .ok_or_else(|| fail(&name, format!("missing parameter {}", i + 1)))?;
    match v.value() {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| fail(&name, format!("parameter {} must be an integer", i + 1)))
}

type Out<'rc> = Result<ScopedJson<'rc>, RenderError>;

fn done<'rc>(v: impl Into<Value>) -> Out<'rc> {
    Ok(ScopedJson::Derived(v.into()))
}

type SimpleFn = fn(&Helper) -> Result<Value, RenderError>;

/// One of the text helpers, as a plain function over the helper's parameters.
struct Simple(SimpleFn);

impl HelperDef for Simple {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Out<'rc> {
        done((self.0)(h)?)
    }
}

fn lower(h: &Helper) -> Result<Value, RenderError> {
    Ok(text_param(h, 0)?.to_lowercase().into())
}

fn upper(h: &Helper) -> Result<Value, RenderError> {
    Ok(text_param(h, 0)?.to_uppercase().into())
}

fn trim(h: &Helper) -> Result<Value, RenderError> {
    Ok(text_param(h, 0)?.trim().to_owned().into())
}

/// The first parameter that is not empty (after trimming), else "".
fn default(h: &Helper) -> Result<Value, RenderError> {
    for i in 0..h.params().len() {
        let s = text_param(h, i)?;
        if !s.trim().is_empty() {
            return Ok(s.into());
        }
    }
    Ok("".into())
}

/// All parameters joined; `sep="…"` puts a separator between the non-empty ones.
fn concat(h: &Helper) -> Result<Value, RenderError> {
    let mut parts = Vec::new();
    for i in 0..h.params().len() {
        parts.push(text_param(h, i)?);
    }
    match h.hash_get("sep") {
        Some(sep) => {
            let sep = value_text(sep.value()).unwrap_or_default();
            let parts: Vec<String> = parts.into_iter().filter(|p| !p.is_empty()).collect();
            Ok(parts.join(&sep).into())
        }
        None => Ok(parts.concat().into()),
    }
}

fn replace(h: &Helper) -> Result<Value, RenderError> {
    let s = text_param(h, 0)?;
    let from = text_param(h, 1)?;
    let to = text_param(h, 2)?;
    if from.is_empty() {
        return Ok(s.into());
    }
    Ok(s.replace(&from, &to).into())
}

/// Characters from `start` (negative: from the end), at most `len` of them.
fn substring(h: &Helper) -> Result<Value, RenderError> {
    let s: Vec<char> = text_param(h, 0)?.chars().collect();
    let n = s.len() as i64;
    let start = int_param(h, 1)?;
    let start = if start < 0 {
        (n + start).max(0)
    } else {
        start.min(n)
    };
    let end = match h.param(2) {
        Some(_) => {
            let len = int_param(h, 2)?;
            if len < 0 {
                return Err(fail("substring", "length must not be negative"));
            }
            (start + len).min(n)
        }
        None => n,
    };
    let (start, end) = (start as usize, end as usize);
    Ok(s[start..end].iter().collect::<String>().into())
}

/// The nth piece (0-based; negative counts from the end) of the text split at a separator.
fn split(h: &Helper) -> Result<Value, RenderError> {
    let s = text_param(h, 0)?;
    let sep = text_param(h, 1)?;
    let nth = int_param(h, 2)?;
    if sep.is_empty() {
        return Err(fail("split", "the separator must not be empty"));
    }
    let parts: Vec<&str> = s.split(sep.as_str()).collect();
    let idx = if nth < 0 {
        parts.len() as i64 + nth
    } else {
        nth
    };
    Ok(usize::try_from(idx)
        .ok()
        .and_then(|i| parts.get(i))
        .map(|p| (*p).to_owned())
        .unwrap_or_default()
        .into())
}

/// Parse a date value: RFC 3339, or a plain YYYY-MM-DD (midnight UTC).
pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

/// Whether a strftime format is valid (chrono reports bad ones only when formatting).
pub fn valid_date_format(fmt: &str) -> bool {
    !chrono::format::StrftimeItems::new(fmt).any(|i| matches!(i, chrono::format::Item::Error))
}

fn format_date(h: &Helper) -> Result<Value, RenderError> {
    let s = text_param(h, 0)?;
    let fmt = text_param(h, 1)?;
    if s.trim().is_empty() {
        return Ok("".into());
    }
    if !valid_date_format(&fmt) {
        return Err(fail("format_date", format!("invalid format `{fmt}`")));
    }
    let t = parse_date(&s).ok_or_else(|| {
        fail(
            "format_date",
            format!("`{s}` is not a date (expected RFC 3339 or YYYY-MM-DD)"),
        )
    })?;
    Ok(t.format(&fmt).to_string().into())
}

struct RegexHelper {
    cache: Arc<RegexCache>,
    replace: bool,
}

impl HelperDef for RegexHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Out<'rc> {
        let s = text_param(h, 0)?;
        let pattern = text_param(h, 1)?;
        let re = self
            .cache
            .get(&pattern)
            .map_err(|e| fail(h.name(), format!("bad pattern: {e}")))?;
        if self.replace {
            let with = text_param(h, 2)?;
            done(re.replace_all(&s, with.as_str()).into_owned())
        } else {
            done(re.is_match(&s))
        }
    }
}

struct LookupHelper {
    tables: Arc<BTreeMap<String, Lookup>>,
}

impl HelperDef for LookupHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Out<'rc> {
        let table = text_param(h, 0)?;
        let key = text_param(h, 1)?;
        let t = self
            .tables
            .get(&table)
            .ok_or_else(|| fail("lookup_table", format!("no lookup table `{table}`")))?;
        match t.get(&key) {
            Some(v) => done(v.to_owned()),
            None => Err(fail(
                "lookup_table",
                format!("`{key}` is not in lookups.{table}, which has no default"),
            )),
        }
    }
}

/// A registry with strict checks done at load, no HTML escaping, and the mapping's helpers.
pub fn registry(
    tables: Arc<BTreeMap<String, Lookup>>,
    regexes: Arc<RegexCache>,
) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.unregister_helper("log");
    hb.unregister_helper("raw");
    // A dynamic look-up cannot be checked at load; lookup_table covers value tables.
    hb.unregister_helper("lookup");
    let simple: [(&str, SimpleFn); 9] = [
        ("lower", lower),
        ("upper", upper),
        ("trim", trim),
        ("default", default),
        ("concat", concat),
        ("replace", replace),
        ("substring", substring),
        ("split", split),
        ("format_date", format_date),
    ];
    for (name, f) in simple {
        hb.register_helper(name, Box::new(Simple(f)));
    }
    hb.register_helper(
        "regex_match",
        Box::new(RegexHelper {
            cache: regexes.clone(),
            replace: false,
        }),
    );
    hb.register_helper(
        "regex_replace",
        Box::new(RegexHelper {
            cache: regexes,
            replace: true,
        }),
    );
    hb.register_helper("lookup_table", Box::new(LookupHelper { tables }));
    hb
}
