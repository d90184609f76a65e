//! SCIM filter → T-SQL condition: one pure function, unit-tested on the SQL it emits.
//!
//! The same input as [`crate::store::sqlite::filter_sql::compile`], the same rules: values never
//! enter the SQL text (every value is a parameter `@P1…`); attributes that have a column use it
//! and its index; emails use `scim.user_emails`; members and groups use `scim.group_members`;
//! every other attribute is read from the case-folded JSON document with `JSON_VALUE` (singular)
//! or `OPENJSON` (multi-valued). A filter that cannot be translated faithfully is an
//! invalidFilter error, never a wider query.
//!
//! Case-insensitivity: SCIM says which attributes compare case-insensitively (`caseExact`
//! false). Those are lower-cased by the service on the way in — into the `*_ci` columns and
//! `doc_ci` — and the bound value is lower-cased the same way, so both sides are folded by one
//! function (Rust's Unicode lower case), as on SQLite. Every text comparison is then made under
//! the binary collation `Latin1_General_100_BIN2`: the `*_ci` columns and `doc_ci` are declared
//! with it, and values read from JSON carry an explicit `COLLATE`. The result does not depend on
//! the server's or database's default collation (a `_CI_AI` database would otherwise make
//! `rené` equal `rene`, a `_CS_` one would break folding done in SQL), the indexes on the
//! `*_ci` columns stay usable (no function around the column), and caseExact attributes such
//! as externalId compare exactly. `LOWER()` in SQL is avoided: it follows the collation's rules,
//! which differ from Unicode lower case for some characters.
//!
//! Two SQL Server rules are neutralised explicitly: `=` ignores trailing spaces (so equality
//! also compares `DATALENGTH`), and `LIKE` treats `%`, `_` and `[` as wildcards (so co/sw/ew
//! bind an escaped pattern with `ESCAPE N'\'`). Every term yields true or false, never
//! UNKNOWN, so `NOT` is exact.
//!
//! Parameter numbering: `@P1` is always the tenant (the first entry of [`Condition::params`]);
//! the enclosing statement compares `r.tenant = @P1` and binds the params in order.

use chrono::NaiveDateTime;

use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{Attr, AttrType, ResourceKind, ResourceType, Scope};

/// The collation every text comparison is made under.
pub const BIN2: &str = "Latin1_General_100_BIN2";

/// A bound parameter, in the SQL Server type it is sent as.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// NVARCHAR
    Text(String),
    /// BIGINT
    Int(i64),
    /// FLOAT
    Real(f64),
    /// BIT
    Bool(bool),
    /// DATETIME2, UTC
    Time(NaiveDateTime),
}

/// A WHERE-clause fragment over the resource table aliased `r`, with its parameters in order
/// (`params[0]` is the tenant, `@P1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Bound on the number of terms, like the SQLite translation: keeps the SQL bounded.
const MAX_TERMS: usize = 200;

pub fn compile(rt: &ResourceType, tenant: &str, f: &Filter) -> Result<Condition, ScimError> {
    let mut c = Compiler {
        rt,
        out: Condition {
            sql: String::new(),
            params: vec![Param::Text(tenant.to_string())],
        },
        terms: 0,
    };
    c.filter(f)?;
    Ok(c.out)
}

/// The ORDER BY expression for `sortBy`. Multi-valued attributes sort by their first value.
pub fn sort_expression(rt: &ResourceType, sort_by: &str) -> Result<String, ScimError> {
    let bad = || ScimError::invalid_value("sortBy names an attribute this resource does not have");
    let (urn, name, sub) = rt.split_key(sort_by);
    let (scope, attr) = rt.resolve(urn, name).ok_or_else(bad)?;
    let sub = match sub {
        Some(s) => Some(attr.sub_attr(s).ok_or_else(bad)?),
        None if attr.ty == AttrType::Complex => attr.sub_attr("value"),
        None => None,
    };
    if attr.multi {
        let mut p = String::from("$");
        if let Scope::Extension(i) = scope {
            json_key(&mut p, &rt.extensions[i].id);
        }
        json_key(&mut p, attr.name);
        p.push_str("[0]");
        json_key(&mut p, sub.map(|s| s.name).unwrap_or("value"));
        return Ok(json_value("r.doc_ci", &p));
    }
    Ok(match source(rt, scope, attr, sub).map_err(|_| bad())? {
        Source::Column { col, .. } => col.to_string(),
        Source::Json(p) => json_value("r.doc_ci", &p),
    })
}

/// `JSON_VALUE(doc, N'path') COLLATE Latin1_General_100_BIN2`: text, compared binary.
fn json_value(doc: &str, path: &str) -> String {
    format!("JSON_VALUE({doc}, N'{path}') COLLATE {BIN2}")
}

/// Where an attribute's value lives.
enum Source {
    /// A column of its own SQL type; text columns are binary-collated.
    Column { col: &'static str },
    /// A JSON path into r.doc_ci, e.g. `$."name"."givenName"`.
    Json(String),
}

/// How the SQL expression holds the value: a typed column, or JSON text.
#[derive(Clone, Copy, PartialEq)]
enum Holder {
    Column,
    Json,
}

/// The column or JSON path of a singular attribute (or sub-attribute).
fn source(
    rt: &ResourceType,
    scope: Scope,
    attr: &Attr,
    sub: Option<&Attr>,
) -> Result<Source, ScimError> {
    let col = |col| Ok(Source::Column { col });
    if scope == Scope::Core {
        match (rt.kind, attr.name, sub.map(|s| s.name)) {
            (_, "id", None) => return col("r.id"),
            (_, "externalId", None) => return col("r.external_id"),
            (ResourceKind::User, "userName", None) => return col("r.user_name_ci"),
            (ResourceKind::User, "active", None) => return col("r.active"),
            (ResourceKind::Group, "displayName", None) => return col("r.display_name_ci"),
            (_, "meta", Some("created")) => return col("r.created"),
            (_, "meta", Some("lastModified")) => return col("r.last_modified"),
            (_, "meta", _) => {
                return Err(ScimError::invalid_filter(
                    "only meta.created and meta.lastModified can be filtered",
                ));
            }
            _ => {}
        }
    }
    let mut p = String::from("$");
    if let Scope::Extension(i) = scope {
        json_key(&mut p, &rt.extensions[i].id);
    }
    json_key(&mut p, attr.name);
    if let Some(s) = sub {
        json_key(&mut p, s.name);
    }
    Ok(Source::Json(p))
}

struct Compiler<'a> {
    rt: &'a ResourceType,
    out: Condition,
    terms: usize,
}

impl Compiler<'_> {
    fn push(&mut self, s: &str) {
        self.out.sql.push_str(s);
    }

    /// Add a parameter and return its name.
    fn bind(&mut self, p: Param) -> String {
        self.out.params.push(p);
        format!("@P{}", self.out.params.len())
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
                let op = if matches!(f, Filter::And(..)) {
                    " AND "
                } else {
                    " OR "
                };
                self.push("(");
                self.filter(a)?;
                self.push(op);
                self.filter(b)?;
                self.push(")");
            }
            Filter::Not(inner) => {
                // Every term below is true or false (never UNKNOWN), so NOT is exact.
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
            let elem_attr = sub.map(|s| s.name).unwrap_or("value");
            let inner = AttrPath {
                urn: None,
                name: elem_attr.to_string(),
                sub: None,
            };
            if cmp.is_some_and(|(op, _)| op == CompareOp::Ne) {
                return Err(ScimError::invalid_filter(format!(
                    "ne on the multi-valued attribute {} is ambiguous; use not({}[…])",
                    attr.name, attr.name
                )));
            }
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
            Source::Column { col } => (col.to_string(), Holder::Column),
            Source::Json(p) => (json_value("r.doc_ci", &p), Holder::Json),
        };
        self.compare_expr(&expr, holder, target, cmp)
    }

    /// Emit a true/false condition comparing `expr` (holding `attr`) with the value.
    fn compare_expr(
        &mut self,
        expr: &str,
        holder: Holder,
        attr: &Attr,
        cmp: Option<(CompareOp, &CompValue)>,
    ) -> Result<(), ScimError> {
        let text = matches!(
            attr.ty,
            AttrType::String | AttrType::Reference | AttrType::Binary
        ) || holder == Holder::Json && attr.ty == AttrType::Boolean;
        let Some((op, value)) = cmp else {
            // pr: present and, for text, not empty (DATALENGTH: '  ' is not empty).
            if text || holder == Holder::Json {
                self.push(&format!("({expr} IS NOT NULL AND DATALENGTH({expr}) > 0)"));
            } else {
                self.push(&format!("({expr} IS NOT NULL)"));
            }
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
        let param = self.param(attr, holder, op, value)?;
        // JSON holds numbers and date-times as text: compare them as their type.
        let typed = match (holder, attr.ty) {
            (Holder::Json, AttrType::Integer | AttrType::Decimal) => {
                format!("TRY_CAST({expr} AS FLOAT)")
            }
            (Holder::Json, AttrType::DateTime) => format!(
                "CAST(SWITCHOFFSET(TRY_CAST({expr} AS DATETIMEOFFSET(3)), '+00:00') AS DATETIME2(3))"
            ),
            _ => expr.to_string(),
        };
        let p = match op {
            CompareOp::Co | CompareOp::Sw | CompareOp::Ew => {
                let Param::Text(s) = param else {
                    return Err(ScimError::invalid_filter(format!(
                        "{}: co, sw and ew apply to strings",
                        attr.name
                    )));
                };
                let escaped = like_escape(&s);
                let pattern = match op {
                    CompareOp::Co => format!("%{escaped}%"),
                    CompareOp::Sw => format!("{escaped}%"),
                    _ => format!("%{escaped}"),
                };
                let p = self.bind(Param::Text(pattern));
                self.push(&format!(
                    "({typed} IS NOT NULL AND {typed} LIKE {p} ESCAPE N'\\')"
                ));
                return Ok(());
            }
            _ => self.bind(param),
        };
        match op {
            CompareOp::Eq if text => self.push(&format!(
                "({typed} IS NOT NULL AND {typed} = {p} AND DATALENGTH({typed}) = DATALENGTH({p}))"
            )),
            // An absent attribute is "not equal".
            CompareOp::Ne if text => self.push(&format!(
                "({typed} IS NULL OR {typed} <> {p} OR DATALENGTH({typed}) <> DATALENGTH({p}))"
            )),
            CompareOp::Ne => self.push(&format!("({typed} IS NULL OR {typed} <> {p})")),
            _ => {
                let sql_op = match op {
                    CompareOp::Gt => ">",
                    CompareOp::Ge => ">=",
                    CompareOp::Lt => "<",
                    CompareOp::Le => "<=",
                    _ => "=",
                };
                self.push(&format!("({typed} IS NOT NULL AND {typed} {sql_op} {p})"));
            }
        }
        Ok(())
    }

    /// The bound value for a comparison, checked against the attribute's type.
    fn param(
        &self,
        attr: &Attr,
        holder: Holder,
        op: CompareOp,
        value: &CompValue,
    ) -> Result<Param, ScimError> {
        let bad = |what: &str| ScimError::invalid_filter(format!("{} {what}", attr.name));
        let text_only = matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew);
        match attr.ty {
            AttrType::String | AttrType::Reference | AttrType::Binary => {
                let s = match value {
                    CompValue::Str(s) => s.clone(),
                    // Entra sends unquoted ids; a bare number is still a string here.
                    CompValue::Num(n) => n.to_string(),
                    CompValue::Bool(b) => b.to_string(),
                    CompValue::Null => return Err(bad("cannot be compared with null here")),
                };
                Ok(Param::Text(if attr.case_exact {
                    s
                } else {
                    s.to_lowercase()
                }))
            }
            AttrType::Boolean => {
                if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                    return Err(bad("is a boolean: only eq, ne and pr apply"));
                }
                let b = match value {
                    CompValue::Bool(b) => *b,
                    CompValue::Str(s) if s.eq_ignore_ascii_case("true") => true,
                    CompValue::Str(s) if s.eq_ignore_ascii_case("false") => false,
                    _ => return Err(bad("is a boolean: compare it with true or false")),
                };
                // A BIT column takes a BIT; JSON_VALUE returns the text true/false.
                Ok(match holder {
                    Holder::Column => Param::Bool(b),
                    Holder::Json => Param::Text(b.to_string()),
                })
            }
            AttrType::Integer | AttrType::Decimal => {
                if text_only {
                    return Err(bad("is a number: co, sw and ew do not apply"));
                }
                match value {
                    CompValue::Num(n) => Ok(match n.as_i64() {
                        Some(i) if holder == Holder::Column => Param::Int(i),
                        _ => Param::Real(n.as_f64().unwrap_or(0.0)),
                    }),
                    _ => Err(bad("is a number: compare it with a number")),
                }
            }
            AttrType::DateTime => {
                if text_only {
                    return Err(bad("is a date-time: co, sw and ew do not apply"));
                }
                match value {
                    CompValue::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
                        .map(|d| Param::Time(d.naive_utc()))
                        .map_err(|_| bad("is a date-time: compare it with an RFC 3339 date-time")),
                    _ => Err(bad("is a date-time: compare it with an RFC 3339 date-time")),
                }
            }
            AttrType::Complex => Err(bad("is complex: name one of its sub-attributes")),
        }
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
        match (self.rt.kind, scope, attr.name) {
            (ResourceKind::User, Scope::Core, "emails")
                if only_subs(inner, &["value", "type", "primary"]) =>
            {
                self.push(
                    "r.pk IN (SELECT e.user_pk FROM scim.user_emails e WHERE e.tenant = @P1 AND ",
                );
                self.element(attr, inner, &|name| match name {
                    "value" => ("e.value_ci".into(), Holder::Column),
                    "type" => ("e.type_ci".into(), Holder::Column),
                    _ => ("e.is_primary".into(), Holder::Column),
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
                self.push(&format!(
                    "r.id IN (SELECT {select} FROM scim.group_members m WHERE m.tenant = @P1 AND "
                ));
                let by = by.to_string();
                // `type` is not caseExact: rows hold 'User'/'Group' (ASCII, so LOWER is exact),
                // the bound value is folded. A user's groups are all direct memberships.
                let ty = if attr.name == "groups" {
                    "N'direct'"
                } else {
                    "LOWER(m.member_type)"
                };
                self.element(attr, inner, &move |name| match name {
                    "value" => (by.clone(), Holder::Column),
                    _ => (ty.into(), Holder::Column),
                })?;
                self.push(")");
                Ok(())
            }
            _ => {
                let mut p = String::from("$");
                if let Scope::Extension(i) = scope {
                    json_key(&mut p, &self.rt.extensions[i].id);
                }
                json_key(&mut p, attr.name);
                self.push(&format!(
                    "EXISTS (SELECT 1 FROM OPENJSON(r.doc_ci, N'{p}') j WHERE "
                ));
                self.element(attr, inner, &|name| {
                    let mut k = String::from("$");
                    json_key(&mut k, name);
                    (json_value("j.value", &k), Holder::Json)
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
        expr: &dyn Fn(&str) -> (String, Holder),
    ) -> Result<(), ScimError> {
        self.count_term()?;
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                let op = if matches!(f, Filter::And(..)) {
                    " AND "
                } else {
                    " OR "
                };
                self.push("(");
                self.element(attr, a, expr)?;
                self.push(op);
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
                self.compare_expr(&e, holder, sub, cmp)
            }
            Filter::ValuePath { .. } => {
                Err(ScimError::invalid_filter("value filters cannot be nested"))
            }
        }
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

/// Escape LIKE's wildcards (`%`, `_`, `[`) and the escape character itself with `\`.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_' | '[') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Append `."key"` to a JSON path; keys are schema names or URNs, never client text, but
/// quote characters are dropped anyway so the path stays one N'…' literal.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scim::filter::parse_filter;
    use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;

    fn users(f: &str) -> Condition {
        compile(
            &ResourceType::user(DEFAULT_CUSTOM_SCHEMA),
            "t1",
            &parse_filter(f).unwrap(),
        )
        .unwrap()
    }
    fn users_err(f: &str) -> ScimError {
        compile(
            &ResourceType::user(DEFAULT_CUSTOM_SCHEMA),
            "t1",
            &parse_filter(f).unwrap(),
        )
        .unwrap_err()
    }
    fn groups(f: &str) -> Condition {
        compile(&ResourceType::group(), "t1", &parse_filter(f).unwrap()).unwrap()
    }
    fn text(s: &str) -> Param {
        Param::Text(s.into())
    }

    /// Filters covering every translation path, for the snapshot tests here and the T-SQL
    /// parse test in `statements`: (resource, filter).
    pub(crate) const SAMPLES: &[(ResourceKind, &str)] = &[
        (ResourceKind::User, "userName eq \"Ann@Example.COM\""),
        (ResourceKind::User, "externalId eq AbC-1"),
        (ResourceKind::User, "id eq \"x\""),
        (
            ResourceKind::User,
            "emails[type eq \"work\"].value eq \"A@B.com\"",
        ),
        (
            ResourceKind::User,
            "emails[type eq \"work\" and primary eq true]",
        ),
        (ResourceKind::User, "emails.value sw \"a_%\""),
        (ResourceKind::User, "emails pr"),
        (
            ResourceKind::User,
            "name.familyName co \"ENS\" and not (title pr) or active eq false",
        ),
        (
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department ew \"IN\"",
        ),
        (
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:extension:primedocs:2.0:User:customAttribute01 ne \"x\"",
        ),
        (
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager eq \"m1\"",
        ),
        (
            ResourceKind::User,
            "phoneNumbers[type eq \"mobile\" and primary eq true]",
        ),
        (ResourceKind::User, "phoneNumbers[not (value pr)]"),
        (
            ResourceKind::User,
            "meta.lastModified gt \"2011-05-13T04:42:34+02:00\"",
        ),
        (
            ResourceKind::User,
            "meta.created le \"2011-05-13T04:42:34Z\" and active pr",
        ),
        (ResourceKind::User, "title eq null"),
        (
            ResourceKind::User,
            "displayName ne \"Ann\" and userName gt \"a\"",
        ),
        (ResourceKind::User, "groups[type eq \"Direct\"]"),
        (ResourceKind::User, "groups.value eq \"g1\""),
        (ResourceKind::Group, "displayName eq \"Sales\""),
        (ResourceKind::Group, "members[value eq \"u1\"]"),
        (
            ResourceKind::Group,
            "members[type eq \"Group\"] or externalId sw \"x\"",
        ),
        (
            ResourceKind::Group,
            "meta.lastModified ge \"2024-01-01T00:00:00Z\"",
        ),
    ];

    pub(crate) fn sample_translations() -> Vec<Condition> {
        SAMPLES
            .iter()
            .map(|(kind, f)| match kind {
                ResourceKind::User => users(f),
                ResourceKind::Group => groups(f),
            })
            .collect()
    }

    #[test]
    fn every_sample_translates() {
        for (c, (_, f)) in sample_translations().iter().zip(SAMPLES) {
            assert!(!c.sql.is_empty(), "{f}");
            assert_eq!(c.params[0], text("t1"), "{f}: @P1 is the tenant");
            // Every parameter the SQL names is bound, and every bound one is used.
            for i in 1..=c.params.len() {
                assert!(c.sql.contains(&format!("@P{i}")) || i == 1, "{f}: @P{i}");
            }
            assert!(!c.sql.contains(&format!("@P{}", c.params.len() + 1)), "{f}");
        }
    }

    #[test]
    fn entra_lookups_use_binary_collated_columns() {
        let c = users("userName eq \"Ann@Example.COM\"");
        assert_eq!(
            c.sql,
            "(r.user_name_ci IS NOT NULL AND r.user_name_ci = @P2 AND DATALENGTH(r.user_name_ci) = DATALENGTH(@P2))"
        );
        assert_eq!(c.params, vec![text("t1"), text("ann@example.com")]);
        let c = users("externalId eq AbC-1");
        assert_eq!(
            c.sql,
            "(r.external_id IS NOT NULL AND r.external_id = @P2 AND DATALENGTH(r.external_id) = DATALENGTH(@P2))"
        );
        assert_eq!(c.params[1], text("AbC-1"), "externalId is case-exact");
        let c = groups("displayName eq \"Sales\"");
        assert!(
            c.sql
                .starts_with("(r.display_name_ci IS NOT NULL AND r.display_name_ci = @P2")
        );
        assert_eq!(c.params[1], text("sales"));
    }

    #[test]
    fn entra_email_lookup_uses_the_email_index() {
        let c = users("emails[type eq \"work\"].value eq \"A@B.com\"");
        assert_eq!(
            c.sql,
            "r.pk IN (SELECT e.user_pk FROM scim.user_emails e WHERE e.tenant = @P1 AND \
             ((e.type_ci IS NOT NULL AND e.type_ci = @P2 AND DATALENGTH(e.type_ci) = DATALENGTH(@P2)) AND \
             (e.value_ci IS NOT NULL AND e.value_ci = @P3 AND DATALENGTH(e.value_ci) = DATALENGTH(@P3))))"
        );
        assert_eq!(c.params, vec![text("t1"), text("work"), text("a@b.com")]);
        let c = users("emails[type eq \"work\" and primary eq true]");
        assert_eq!(c.params, vec![text("t1"), text("work"), Param::Bool(true)]);
        assert!(
            c.sql
                .contains("(e.is_primary IS NOT NULL AND e.is_primary = @P3)")
        );
    }

    #[test]
    fn like_patterns_are_escaped_and_bound() {
        let c = users("emails.value sw \"A_%\"");
        assert!(
            c.sql
                .contains("(e.value_ci IS NOT NULL AND e.value_ci LIKE @P2 ESCAPE N'\\')"),
            "{}",
            c.sql
        );
        assert_eq!(c.params[1], text("a\\_\\%%"));
        assert_eq!(like_escape("a[b]\\c"), "a\\[b]\\\\c");
        let c = users("title co \"X\"");
        assert_eq!(c.params[1], text("%x%"));
        let c = users("title ew \"X\"");
        assert_eq!(c.params[1], text("%x"));
    }

    #[test]
    fn json_attributes_operators_and_logic() {
        let c = users("name.familyName co \"ENS\" and not (title pr) or active eq false");
        assert_eq!(
            c.sql,
            "(((JSON_VALUE(r.doc_ci, N'$.\"name\".\"familyName\"') COLLATE Latin1_General_100_BIN2 IS NOT NULL AND \
             JSON_VALUE(r.doc_ci, N'$.\"name\".\"familyName\"') COLLATE Latin1_General_100_BIN2 LIKE @P2 ESCAPE N'\\') AND \
             NOT ((JSON_VALUE(r.doc_ci, N'$.\"title\"') COLLATE Latin1_General_100_BIN2 IS NOT NULL AND \
             DATALENGTH(JSON_VALUE(r.doc_ci, N'$.\"title\"') COLLATE Latin1_General_100_BIN2) > 0))) OR \
             (r.active IS NOT NULL AND r.active = @P3))"
        );
        assert_eq!(
            c.params,
            vec![text("t1"), text("%ens%"), Param::Bool(false)]
        );
        let c = users(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department ew \"IN\"",
        );
        assert!(c.sql.contains(
            "N'$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"department\"'"
        ));
        let c = users(
            "urn:ietf:params:scim:schemas:extension:primedocs:2.0:User:customAttribute01 ne \"x\"",
        );
        assert!(c.sql.starts_with("(JSON_VALUE(r.doc_ci, N'$.\"urn:ietf:params:scim:schemas:extension:primedocs:2.0:User\".\"customAttribute01\"') COLLATE Latin1_General_100_BIN2 IS NULL OR"));
        let c = users("phoneNumbers[type eq \"mobile\" and primary eq true]");
        assert_eq!(
            c.sql,
            "EXISTS (SELECT 1 FROM OPENJSON(r.doc_ci, N'$.\"phoneNumbers\"') j WHERE \
             ((JSON_VALUE(j.value, N'$.\"type\"') COLLATE Latin1_General_100_BIN2 IS NOT NULL AND \
             JSON_VALUE(j.value, N'$.\"type\"') COLLATE Latin1_General_100_BIN2 = @P2 AND \
             DATALENGTH(JSON_VALUE(j.value, N'$.\"type\"') COLLATE Latin1_General_100_BIN2) = DATALENGTH(@P2)) AND \
             (JSON_VALUE(j.value, N'$.\"primary\"') COLLATE Latin1_General_100_BIN2 IS NOT NULL AND \
             JSON_VALUE(j.value, N'$.\"primary\"') COLLATE Latin1_General_100_BIN2 = @P3 AND \
             DATALENGTH(JSON_VALUE(j.value, N'$.\"primary\"') COLLATE Latin1_General_100_BIN2) = DATALENGTH(@P3))))"
        );
        assert_eq!(
            c.params,
            vec![text("t1"), text("mobile"), text("true")],
            "JSON booleans are the text true/false"
        );
        let c = users("meta.lastModified gt \"2011-05-13T04:42:34+02:00\"");
        assert_eq!(
            c.sql,
            "(r.last_modified IS NOT NULL AND r.last_modified > @P2)"
        );
        let expected = chrono::NaiveDate::from_ymd_opt(2011, 5, 13)
            .unwrap()
            .and_hms_opt(2, 42, 34)
            .unwrap();
        assert_eq!(c.params[1], Param::Time(expected), "compared in UTC");
        let c = users("title eq null");
        assert_eq!(
            c.sql,
            "(JSON_VALUE(r.doc_ci, N'$.\"title\"') COLLATE Latin1_General_100_BIN2 IS NULL)"
        );
        let c = users("active pr");
        assert_eq!(
            c.sql, "(r.active IS NOT NULL)",
            "a BIT is never compared with ''"
        );
    }

    #[test]
    fn members_and_groups() {
        let c = groups("members[value eq \"u1\"]");
        assert_eq!(
            c.sql,
            "r.id IN (SELECT m.group_id FROM scim.group_members m WHERE m.tenant = @P1 AND \
             (m.member_id IS NOT NULL AND m.member_id = @P2 AND DATALENGTH(m.member_id) = DATALENGTH(@P2)))"
        );
        let c = groups("members[type eq \"Group\"]");
        assert!(c.sql.contains("LOWER(m.member_type) = @P2"), "{}", c.sql);
        assert_eq!(c.params[1], text("group"));
        let c = users("groups[type eq \"Direct\"]");
        assert!(c.sql.contains("N'direct' = @P2"), "{}", c.sql);
        assert_eq!(c.params[1], text("direct"));
        let c = users("groups.value eq \"g1\"");
        assert!(c.sql.starts_with(
            "r.id IN (SELECT m.member_id FROM scim.group_members m WHERE m.tenant = @P1 AND (m.group_id"
        ));
    }

    #[test]
    fn sort_expressions() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        assert_eq!(sort_expression(&rt, "userName").unwrap(), "r.user_name_ci");
        assert_eq!(sort_expression(&rt, "meta.created").unwrap(), "r.created");
        assert_eq!(
            sort_expression(&rt, "name.familyName").unwrap(),
            "JSON_VALUE(r.doc_ci, N'$.\"name\".\"familyName\"') COLLATE Latin1_General_100_BIN2"
        );
        assert_eq!(
            sort_expression(&rt, "emails").unwrap(),
            "JSON_VALUE(r.doc_ci, N'$.\"emails\"[0].\"value\"') COLLATE Latin1_General_100_BIN2"
        );
        assert!(sort_expression(&rt, "nosuch").is_err());
    }

    #[test]
    fn unanswerable_filters_are_errors() {
        for f in [
            "nosuch eq \"x\"",
            "active gt true",
            "name eq \"x\"",
            "meta.version eq \"x\"",
            "emails ne \"x\"",
            "meta.created gt \"yesterday\"",
            "meta.created co \"2020\"",
            "urn:example:unknown:attr eq \"x\"",
            "name.nosuch eq \"x\"",
            "title eq null or title gt null",
        ] {
            assert_eq!(
                users_err(f).scim_type,
                Some(crate::scim::ScimType::InvalidFilter),
                "{f}"
            );
        }
    }

    #[test]
    fn values_are_never_in_the_sql() {
        let c = users("userName eq \"x' OR 1=1 --\" or displayName co \"\\\"); DROP TABLE users\"");
        assert!(!c.sql.contains("OR 1=1"));
        assert!(!c.sql.contains("DROP"));
        assert_eq!(c.params.len(), 3);
    }

    #[test]
    fn same_answers_as_sqlite_on_what_is_translatable() {
        // Both dialects accept and refuse the same filters.
        use crate::store::sqlite::filter_sql as lite;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        for f in [
            "userName eq \"a\"",
            "emails[type eq \"work\"]",
            "emails ne \"x\"",
            "name eq \"x\"",
            "active gt true",
            "x.y.z eq 1",
        ] {
            let Ok(parsed) = parse_filter(f) else {
                continue;
            };
            assert_eq!(
                compile(&rt, "t", &parsed).is_ok(),
                lite::compile(&rt, "t", &parsed).is_ok(),
                "{f}"
            );
        }
    }
}
