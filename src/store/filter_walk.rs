//! The walk over a SCIM filter shared by the SQL translations of both stores.
//!
//! [`compile`] resolves attributes, expands multi-valued attributes into conditions on their
//! elements (the email and membership tables, or the JSON array), bounds the number of terms
//! and writes the `AND`/`OR`/`NOT` structure. What differs between SQL dialects — parameter
//! syntax, JSON access, how a comparison is spelled, the types values are bound as — is asked
//! of a [`Dialect`]. A filter that cannot be translated faithfully is an invalidFilter error,
//! never a wider query.

use chrono::{DateTime, FixedOffset};
use serde_json::Number;

use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{Attr, AttrType, ResourceKind, ResourceType, Scope};

/// Bound on the number of terms: keeps the SQL bounded.
const MAX_TERMS: usize = 200;

/// The parts of a translation that depend on the SQL dialect. The implementor holds the SQL
/// written so far and the bound parameters.
pub(crate) trait Dialect {
    /// How an expression holds its value, as far as the dialect's comparisons care.
    type Holder: Copy;
    /// Prefix of the SCIM table names (a schema, or nothing).
    const TABLES: &'static str;
    /// A user's group membership type (always direct), as lower-case text.
    const DIRECT: &'static str;
    /// A membership row's member type, lower-cased.
    const MEMBER_TYPE: &'static str;

    /// Append SQL text.
    fn push(&mut self, s: &str);
    /// The SQL naming the tenant parameter (binding it if the dialect needs to).
    fn tenant(&mut self) -> String;
    /// The singular value at `path` of the JSON document `doc`, as text.
    fn json_value(doc: &str, path: &str) -> String;
    /// The rows of the JSON array at `path` of `doc`, each with a `value` column.
    fn json_each(doc: &str, path: &str) -> String;
    /// The holder of a column; `ci` when it holds lower-cased text.
    fn column(ci: bool) -> Self::Holder;
    /// The holder of a value read from JSON.
    fn json() -> Self::Holder;
    /// `attr pr` on `expr`.
    fn present(&mut self, expr: &str, holder: Self::Holder, attr: &Attr);
    /// `attr op value` on `expr`, the value not null.
    fn compare(
        &mut self,
        expr: &str,
        holder: Self::Holder,
        attr: &Attr,
        op: CompareOp,
        value: &CompValue,
    ) -> Result<(), ScimError>;
}

/// Translate `f` over resources of `rt`, writing into `d`.
pub(crate) fn compile<D: Dialect>(rt: &ResourceType, d: D, f: &Filter) -> Result<D, ScimError> {
    let mut w = Walk { rt, d, terms: 0 };
    w.filter(f)?;
    Ok(w.d)
}

/// The ORDER BY expression for `sortBy`. Multi-valued attributes sort by their first value.
pub(crate) fn sort_expression<D: Dialect>(
    rt: &ResourceType,
    sort_by: &str,
) -> Result<String, ScimError> {
    let bad = || ScimError::invalid_value("sortBy names an attribute this resource does not have");
    let (urn, name, sub) = rt.split_key(sort_by);
    let (scope, attr) = rt.resolve(urn, name).ok_or_else(bad)?;
    let sub = match sub {
        Some(s) => Some(attr.sub_attr(s).ok_or_else(bad)?),
        None if attr.ty == AttrType::Complex => attr.sub_attr("value"),
        None => None,
    };
    if attr.multi {
        let mut p = attr_path(rt, scope, attr);
        p.push_str("[0]");
        json_key(&mut p, sub.map(|s| s.name).unwrap_or("value"));
        return Ok(D::json_value("r.doc_ci", &p));
    }
    Ok(match source(rt, scope, attr, sub).map_err(|_| bad())? {
        Source::Column { col, .. } => col.to_string(),
        Source::Json(p) => D::json_value("r.doc_ci", &p),
    })
}

/// A comparison value checked against the attribute's type, before the dialect binds it.
pub(crate) enum Value {
    /// For strings, references and binaries; not yet case-folded.
    Text(String),
    Bool(bool),
    Num(Number),
    DateTime(DateTime<FixedOffset>),
}

/// Check `value` against the type of `attr` and the operator.
pub(crate) fn value(attr: &Attr, op: CompareOp, value: &CompValue) -> Result<Value, ScimError> {
    let bad = |what: &str| ScimError::invalid_filter(format!("{} {what}", attr.name));
    let text_only = matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew);
    match attr.ty {
        AttrType::String | AttrType::Reference | AttrType::Binary => Ok(Value::Text(match value {
            CompValue::Str(s) => s.clone(),
            // Entra sends unquoted ids; a bare number is still a string here.
            CompValue::Num(n) => n.to_string(),
            CompValue::Bool(b) => b.to_string(),
            CompValue::Null => return Err(bad("cannot be compared with null here")),
        })),
        AttrType::Boolean => {
            if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return Err(bad("is a boolean: only eq, ne and pr apply"));
            }
            match value {
                CompValue::Bool(b) => Ok(Value::Bool(*b)),
                CompValue::Str(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
                CompValue::Str(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
                _ => Err(bad("is a boolean: compare it with true or false")),
            }
        }
        AttrType::Integer | AttrType::Decimal => {
            if text_only {
                return Err(bad("is a number: co, sw and ew do not apply"));
            }
            match value {
                CompValue::Num(n) => Ok(Value::Num(n.clone())),
                _ => Err(bad("is a number: compare it with a number")),
            }
        }
        AttrType::DateTime => {
            if text_only {
                return Err(bad("is a date-time: co, sw and ew do not apply"));
            }
            match value {
                CompValue::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .map(Value::DateTime)
                    .map_err(|_| bad("is a date-time: compare it with an RFC 3339 date-time")),
                _ => Err(bad("is a date-time: compare it with an RFC 3339 date-time")),
            }
        }
        AttrType::Complex => Err(bad("is complex: name one of its sub-attributes")),
    }
}

/// Where an attribute's value lives.
enum Source {
    /// A column; `ci` when it holds lower-cased text.
    Column { col: &'static str, ci: bool },
    /// A JSON path into r.doc_ci, e.g. `$."name"."givenName"`.
    Json(String),
}

/// The column or JSON path of a singular attribute (or sub-attribute).
fn source(
    rt: &ResourceType,
    scope: Scope,
    attr: &Attr,
    sub: Option<&Attr>,
) -> Result<Source, ScimError> {
    let col = |col, ci| Ok(Source::Column { col, ci });
    if scope == Scope::Core {
        match (rt.kind, attr.name, sub.map(|s| s.name)) {
            (_, "id", None) => return col("r.id", false),
            (_, "externalId", None) => return col("r.external_id", false),
            (ResourceKind::User, "userName", None) => return col("r.user_name_ci", true),
            (ResourceKind::User, "active", None) => return col("r.active", false),
            (ResourceKind::Group, "displayName", None) => return col("r.display_name_ci", true),
            (_, "meta", Some("created")) => return col("r.created", false),
            (_, "meta", Some("lastModified")) => return col("r.last_modified", false),
            (_, "meta", _) => {
                return Err(ScimError::invalid_filter(
                    "only meta.created and meta.lastModified can be filtered",
                ));
            }
            _ => {}
        }
    }
    let mut p = attr_path(rt, scope, attr);
    if let Some(s) = sub {
        json_key(&mut p, s.name);
    }
    Ok(Source::Json(p))
}

/// The JSON path of an attribute: `$."name"`, or `$."urn"."name"` in an extension.
fn attr_path(rt: &ResourceType, scope: Scope, attr: &Attr) -> String {
    let mut p = String::from("$");
    if let Scope::Extension(i) = scope {
        json_key(&mut p, &rt.extensions[i].id);
    }
    json_key(&mut p, attr.name);
    p
}

struct Walk<'a, D> {
    rt: &'a ResourceType,
    d: D,
    terms: usize,
}

impl<D: Dialect> Walk<'_, D> {
    fn push(&mut self, s: &str) {
        self.d.push(s);
    }

    fn count_term(&mut self) -> Result<(), ScimError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(ScimError::invalid_filter("the filter has too many terms"));
        }
        Ok(())
    }

    fn filter(&mut self, f: &Filter) -> Result<(), ScimError> {
        self.count_term()?;
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                self.push("(");
                self.filter(a)?;
                self.push(and_or(f));
                self.filter(b)?;
                self.push(")");
            }
            Filter::Not(inner) => {
                // Every term below is true or false (never NULL/UNKNOWN), so NOT is exact.
                self.push("NOT (");
                self.filter(inner)?;
                self.push(")");
            }
            Filter::Present(path) => self.term(path, None)?,
            Filter::Compare { path, op, value } => self.term(path, Some((*op, value)))?,
            Filter::ValuePath { attr, filter } => self.value_path(attr, filter)?,
        }
        Ok(())
    }

    fn resolve(&self, path: &AttrPath) -> Result<(Scope, &'static Attr), ScimError> {
        self.rt
            .resolve(path.urn.as_deref(), &path.name)
            .ok_or_else(|| ScimError::invalid_filter(format!("unknown attribute {}", path.name)))
    }

    /// `attr op value` or `attr pr` (op None).
    fn term(
        &mut self,
        path: &AttrPath,
        cmp: Option<(CompareOp, &CompValue)>,
    ) -> Result<(), ScimError> {
        let (scope, attr) = self.resolve(path)?;
        let sub = match &path.sub {
            Some(s) => Some(attr.sub_attr(s).ok_or_else(|| {
                ScimError::invalid_filter(format!("unknown attribute {}.{s}", attr.name))
            })?),
            None => None,
        };
        if attr.multi {
            // emails.value eq "x" is emails[value eq "x"].
            if cmp.is_some_and(|(op, _)| op == CompareOp::Ne) {
                return Err(ScimError::invalid_filter(format!(
                    "ne on the multi-valued attribute {} is ambiguous; use not({}[…])",
                    attr.name, attr.name
                )));
            }
            let inner = AttrPath {
                urn: None,
                name: sub.map(|s| s.name).unwrap_or("value").to_string(),
                sub: None,
            };
            let f = match cmp {
                None => Filter::Present(inner),
                Some((op, v)) => Filter::Compare {
                    path: inner,
                    op,
                    value: v.clone(),
                },
            };
            return self.multi(scope, attr, &f);
        }
        // A singular complex attribute compares through its "value" (manager eq "id").
        let (target, sub) = match (attr.ty, sub) {
            (AttrType::Complex, None) => match attr.sub_attr("value") {
                Some(v) => (v, Some(v)),
                None => {
                    return Err(ScimError::invalid_filter(format!(
                        "{} is complex: name one of its sub-attributes",
                        attr.name
                    )));
                }
            },
            (_, Some(s)) => (s, Some(s)),
            (_, None) => (attr, None),
        };
        let (expr, holder) = match source(self.rt, scope, attr, sub)? {
            Source::Column { col, ci } => (col.to_string(), D::column(ci)),
            Source::Json(p) => (D::json_value("r.doc_ci", &p), D::json()),
        };
        self.compare(&expr, holder, target, cmp)
    }

    /// Emit a condition comparing `expr` (holding `attr`) with the value.
    fn compare(
        &mut self,
        expr: &str,
        holder: D::Holder,
        attr: &Attr,
        cmp: Option<(CompareOp, &CompValue)>,
    ) -> Result<(), ScimError> {
        let Some((op, value)) = cmp else {
            self.d.present(expr, holder, attr);
            return Ok(());
        };
        if matches!(value, CompValue::Null) {
            return match op {
                CompareOp::Eq => {
                    self.push(&format!("({expr} IS NULL)"));
                    Ok(())
                }
                CompareOp::Ne => {
                    self.push(&format!("({expr} IS NOT NULL)"));
                    Ok(())
                }
                _ => Err(ScimError::invalid_filter(
                    "null can only be compared with eq or ne",
                )),
            };
        }
        self.d.compare(expr, holder, attr, op, value)
    }

    /// `attr[filter]`.
    fn value_path(&mut self, path: &AttrPath, inner: &Filter) -> Result<(), ScimError> {
        let (scope, attr) = self.resolve(path)?;
        if !attr.multi || attr.ty != AttrType::Complex {
            return Err(ScimError::invalid_filter(format!(
                "{} is not a multi-valued complex attribute",
                attr.name
            )));
        }
        self.multi(scope, attr, inner)
    }

    /// A condition on the elements of a multi-valued attribute: true when one element matches.
    fn multi(
        &mut self,
        scope: Scope,
        attr: &'static Attr,
        inner: &Filter,
    ) -> Result<(), ScimError> {
        let tables = D::TABLES;
        match (self.rt.kind, scope, attr.name) {
            (ResourceKind::User, Scope::Core, "emails")
                if only_subs(inner, &["value", "type", "primary"]) =>
            {
                let t = self.d.tenant();
                self.push(&format!(
                    "r.pk IN (SELECT e.user_pk FROM {tables}user_emails e WHERE e.tenant = {t} AND "
                ));
                self.element(attr, inner, &|name| {
                    let col = match name {
                        "value" => "e.value_ci",
                        "type" => "e.type_ci",
                        _ => "e.is_primary",
                    };
                    (col.to_string(), D::column(false))
                })?;
                self.push(")");
                Ok(())
            }
            (ResourceKind::User, Scope::Core, "groups")
            | (ResourceKind::Group, Scope::Core, "members") => {
                let (select, by) = if attr.name == "groups" {
                    ("m.member_id", "m.group_id")
                } else {
                    ("m.group_id", "m.member_id")
                };
                if !only_subs(inner, &["value", "type"]) {
                    return Err(ScimError::invalid_filter(format!(
                        "{} can be filtered by value and type",
                        attr.name
                    )));
                }
                let t = self.d.tenant();
                self.push(&format!(
                    "r.id IN (SELECT {select} FROM {tables}group_members m WHERE m.tenant = {t} AND "
                ));
                // `type` is not caseExact: rows hold 'User'/'Group' (ASCII, so lower-casing in
                // SQL is exact), the bound value is folded. A user's groups are all direct
                // memberships.
                let ty = if attr.name == "groups" {
                    D::DIRECT
                } else {
                    D::MEMBER_TYPE
                };
                self.element(attr, inner, &|name| {
                    let col = if name == "value" { by } else { ty };
                    (col.to_string(), D::column(false))
                })?;
                self.push(")");
                Ok(())
            }
            _ => {
                let p = attr_path(self.rt, scope, attr);
                self.push(&format!(
                    "EXISTS (SELECT 1 FROM {} j WHERE ",
                    D::json_each("r.doc_ci", &p)
                ));
                self.element(attr, inner, &|name| {
                    let mut k = String::from("$");
                    json_key(&mut k, name);
                    (D::json_value("j.value", &k), D::json())
                })?;
                self.push(")");
                Ok(())
            }
        }
    }

    /// A filter over one element, with `expr(sub)` giving the SQL of a sub-attribute.
    fn element(
        &mut self,
        attr: &'static Attr,
        f: &Filter,
        expr: &dyn Fn(&str) -> (String, D::Holder),
    ) -> Result<(), ScimError> {
        self.count_term()?;
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                self.push("(");
                self.element(attr, a, expr)?;
                self.push(and_or(f));
                self.element(attr, b, expr)?;
                self.push(")");
                Ok(())
            }
            Filter::Not(inner) => {
                self.push("NOT (");
                self.element(attr, inner, expr)?;
                self.push(")");
                Ok(())
            }
            Filter::Present(p) | Filter::Compare { path: p, .. } => {
                let sub = attr.sub_attr(&p.name).ok_or_else(|| {
                    ScimError::invalid_filter(format!("unknown attribute {}.{}", attr.name, p.name))
                })?;
                let cmp = match f {
                    Filter::Compare { op, value, .. } => Some((*op, value)),
                    _ => None,
                };
                let (e, holder) = expr(sub.name);
                self.compare(&e, holder, sub, cmp)
            }
            Filter::ValuePath { .. } => {
                Err(ScimError::invalid_filter("value filters cannot be nested"))
            }
        }
    }
}

/// The SQL joining the two sides of an `and` or `or`.
fn and_or(f: &Filter) -> &'static str {
    if matches!(f, Filter::And(..)) {
        " AND "
    } else {
        " OR "
    }
}

/// Whether every attribute a filter names is one of `subs`.
fn only_subs(f: &Filter, subs: &[&str]) -> bool {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => only_subs(a, subs) && only_subs(b, subs),
        Filter::Not(a) => only_subs(a, subs),
        Filter::Present(p) | Filter::Compare { path: p, .. } => {
            p.sub.is_none() && subs.iter().any(|s| s.eq_ignore_ascii_case(&p.name))
        }
        Filter::ValuePath { .. } => false,
    }
}

/// Append `."key"` to a JSON path; keys are schema names or URNs, never client text, but
/// quote characters are dropped anyway so the path stays one SQL string literal.
fn json_key(path: &mut String, key: &str) {
    path.push_str(".\"");
    for c in key.chars() {
        if c == '"' || c == '\'' || c == '\\' {
            continue;
        }
        path.push(c);
    }
    path.push('"');
}
