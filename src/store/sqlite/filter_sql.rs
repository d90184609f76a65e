//! SCIM filter → SQLite condition: one pure function, unit-tested on the SQL it emits.
//!
//! Values never enter the SQL text: every value is a bound parameter. Attributes that have
//! a column (id, userName, externalId, displayName of groups, active, meta dates) use it and
//! its index; emails use the user_emails table; members and groups use group_members; every
//! other attribute is read from the case-folded JSON document. A filter this function cannot
//! translate faithfully is an invalidFilter error, never a wider query.

use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{Attr, AttrType, ResourceKind, ResourceType, Scope};

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    Real(f64),
}

/// A WHERE-clause fragment over the resource table aliased `r`, with its parameters in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Condition {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Deepest nesting accepted; the parser caps depth too, this keeps the SQL bounded.
const MAX_TERMS: usize = 200;

pub fn compile(rt: &ResourceType, tenant: &str, f: &Filter) -> Result<Condition, ScimError> {
    let mut c = Compiler {
        rt,
        tenant,
        out: Condition::default(),
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
    let c = Compiler {
        rt,
        tenant: "",
        out: Condition::default(),
        terms: 0,
    };
    if attr.multi {
        let mut p = String::from("$");
        if let Scope::Extension(i) = scope {
            json_key(&mut p, &rt.extensions[i].id);
        }
        json_key(&mut p, attr.name);
        p.push_str("[0]");
        json_key(&mut p, sub.map(|s| s.name).unwrap_or("value"));
        return Ok(format!("json_extract(r.doc_ci, '{p}')"));
    }
    Ok(match c.source(scope, attr, sub).map_err(|_| bad())? {
        Source::Column { col, .. } => col.to_string(),
        Source::Json(p) => format!("json_extract(r.doc_ci, '{p}')"),
    })
}

/// Where an attribute's value lives.
enum Source {
    /// A column; `ci` when it holds lower-cased text.
    Column { col: &'static str, ci: bool },
    /// A JSON path into r.doc_ci, e.g. `$."name"."givenName"`.
    Json(String),
}

struct Compiler<'a> {
    rt: &'a ResourceType,
    tenant: &'a str,
    out: Condition,
    terms: usize,
}

impl Compiler<'_> {
    fn push(&mut self, s: &str) {
        self.out.sql.push_str(s);
    }
    fn bind(&mut self, p: Param) {
        self.out.sql.push('?');
        self.out.params.push(p);
    }

    fn filter(&mut self, f: &Filter) -> Result<(), ScimError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(ScimError::invalid_filter("the filter has too many terms"));
        }
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
                // Every term below yields 0 or 1 (never NULL), so NOT is exact.
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
            let f = match cmp {
                None => Filter::Present(inner),
                Some((op, v)) => Filter::Compare {
                    path: inner,
                    op,
                    value: v.clone(),
                },
            };
            if cmp.is_some_and(|(op, _)| op == CompareOp::Ne) {
                return Err(ScimError::invalid_filter(format!(
                    "ne on the multi-valued attribute {} is ambiguous; use not({}[…])",
                    attr.name, attr.name
                )));
            }
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
        let source = self.source(scope, attr, sub)?;
        self.compare(&source, target, cmp)
    }

    /// The column or JSON path of a singular attribute (or sub-attribute).
    fn source(&self, scope: Scope, attr: &Attr, sub: Option<&Attr>) -> Result<Source, ScimError> {
        let col = |col, ci| Ok(Source::Column { col, ci });
        if scope == Scope::Core {
            match (self.rt.kind, attr.name, sub.map(|s| s.name)) {
                (_, "id", None) => return col("r.id", false),
                (_, "externalId", None) => return col("r.external_id", false),
                (ResourceKind::User, "userName", None) => return col("r.user_name_ci", true),
                (ResourceKind::User, "active", None) => return col("r.active", false),
                (ResourceKind::Group, "displayName", None) => {
                    return col("r.display_name_ci", true);
                }
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
        let mut p = String::from("$");
        if let Scope::Extension(i) = scope {
            json_key(&mut p, &self.rt.extensions[i].id);
        }
        json_key(&mut p, attr.name);
        if let Some(s) = sub {
            json_key(&mut p, s.name);
        }
        Ok(Source::Json(p))
    }

    /// Emit a 0/1 condition comparing `source` with the value.
    fn compare(
        &mut self,
        source: &Source,
        attr: &Attr,
        cmp: Option<(CompareOp, &CompValue)>,
    ) -> Result<(), ScimError> {
        let (expr, ci_column) = match source {
            Source::Column { col, ci } => (col.to_string(), *ci),
            Source::Json(p) => {
                let e = format!("json_extract(r.doc_ci, '{p}')");
                (e, false)
            }
        };
        self.compare_expr(&expr, attr, ci_column || !attr.case_exact, cmp)
    }

    fn compare_expr(
        &mut self,
        expr: &str,
        attr: &Attr,
        fold: bool,
        cmp: Option<(CompareOp, &CompValue)>,
    ) -> Result<(), ScimError> {
        let Some((op, value)) = cmp else {
            // pr: present and not empty.
            self.push(&format!("({expr} IS NOT NULL AND {expr} <> '')"));
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
        let param = self.param(attr, fold, op, value)?;
        let sql_op = match op {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Co | CompareOp::Sw | CompareOp::Ew => "",
        };
        if op == CompareOp::Ne {
            // An absent attribute is "not equal".
            self.push(&format!("({expr} IS NULL OR {expr} <> "));
            self.bind(param);
            self.push(")");
            return Ok(());
        }
        self.push(&format!("({expr} IS NOT NULL AND "));
        match op {
            CompareOp::Co => {
                self.push(&format!("instr({expr}, "));
                self.bind(param);
                self.push(") > 0");
            }
            CompareOp::Sw | CompareOp::Ew => {
                let n = match &param {
                    Param::Text(s) => s.chars().count() as i64,
                    _ => 0,
                };
                let start = if op == CompareOp::Sw { 1 } else { -n };
                self.push(&format!("substr({expr}, {start}, {n}) = "));
                self.bind(param);
                if op == CompareOp::Ew {
                    self.push(&format!(" AND length({expr}) >= {n}"));
                }
            }
            _ => {
                self.push(&format!("{expr} {sql_op} "));
                self.bind(param);
            }
        }
        self.push(")");
        Ok(())
    }

    /// The bound value for a comparison, checked against the attribute's type.
    fn param(
        &self,
        attr: &Attr,
        fold: bool,
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
                Ok(Param::Text(if fold { s.to_lowercase() } else { s }))
            }
            AttrType::Boolean => {
                if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                    return Err(bad("is a boolean: only eq, ne and pr apply"));
                }
                match value {
                    CompValue::Bool(b) => Ok(Param::Int(i64::from(*b))),
                    CompValue::Str(s) if s.eq_ignore_ascii_case("true") => Ok(Param::Int(1)),
                    CompValue::Str(s) if s.eq_ignore_ascii_case("false") => Ok(Param::Int(0)),
                    _ => Err(bad("is a boolean: compare it with true or false")),
                }
            }
            AttrType::Integer | AttrType::Decimal => {
                if text_only {
                    return Err(bad("is a number: co, sw and ew do not apply"));
                }
                match value {
                    CompValue::Num(n) => Ok(match n.as_i64() {
                        Some(i) => Param::Int(i),
                        None => Param::Real(n.as_f64().unwrap_or(0.0)),
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
                        .map(|d| {
                            Param::Text(crate::store::format_time(d.with_timezone(&chrono::Utc)))
                        })
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
                self.push("r.pk IN (SELECT e.user_pk FROM user_emails e WHERE e.tenant = ");
                self.bind(Param::Text(self.tenant.to_string()));
                self.push(" AND ");
                self.element(attr, inner, &|name| match name {
                    "value" => "e.value_ci".into(),
                    "type" => "e.type_ci".into(),
                    _ => "e.is_primary".into(),
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
                    "r.id IN (SELECT {select} FROM group_members m WHERE m.tenant = "
                ));
                self.bind(Param::Text(self.tenant.to_string()));
                self.push(" AND ");
                let by = by.to_string();
                // `type` is not caseExact: rows hold 'User'/'Group', the bound value is folded.
                // A user's groups are all direct memberships.
                let ty = if attr.name == "groups" {
                    "'direct'"
                } else {
                    "lower(m.member_type)"
                };
                self.element(attr, inner, &move |name| match name {
                    "value" => by.clone(),
                    _ => ty.into(),
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
                    "EXISTS (SELECT 1 FROM json_each(r.doc_ci, '{p}') j WHERE "
                ));
                self.element(attr, inner, &|name| {
                    let mut k = String::from("$");
                    json_key(&mut k, name);
                    format!("json_extract(j.value, '{k}')")
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
        expr: &dyn Fn(&str) -> String,
    ) -> Result<(), ScimError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(ScimError::invalid_filter("the filter has too many terms"));
        }
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
                let e = expr(sub.name);
                self.compare_expr(&e, sub, !sub.case_exact, cmp)
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

/// Append `."key"` to a JSON path; keys are schema names or URNs, never client text,
/// but quote characters are escaped anyway.
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
mod tests {
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

    #[test]
    fn entra_lookups_use_columns() {
        let c = users("userName eq \"Ann@Example.COM\"");
        assert_eq!(c.sql, "(r.user_name_ci IS NOT NULL AND r.user_name_ci = ?)");
        assert_eq!(c.params, vec![text("ann@example.com")]);
        let c = users("externalId eq AbC-1");
        assert_eq!(c.sql, "(r.external_id IS NOT NULL AND r.external_id = ?)");
        assert_eq!(c.params, vec![text("AbC-1")], "externalId is case-exact");
        let c = users("id eq \"x\"");
        assert_eq!(c.sql, "(r.id IS NOT NULL AND r.id = ?)");
        let c = groups("displayName eq \"Sales\"");
        assert_eq!(
            c.sql,
            "(r.display_name_ci IS NOT NULL AND r.display_name_ci = ?)"
        );
        assert_eq!(c.params, vec![text("sales")]);
    }

    #[test]
    fn entra_email_lookup_uses_the_email_index() {
        let c = users("emails[type eq \"work\"].value eq \"A@B.com\"");
        assert_eq!(
            c.sql,
            "r.pk IN (SELECT e.user_pk FROM user_emails e WHERE e.tenant = ? AND ((e.type_ci IS NOT NULL AND e.type_ci = ?) AND (e.value_ci IS NOT NULL AND e.value_ci = ?)))"
        );
        assert_eq!(c.params, vec![text("t1"), text("work"), text("a@b.com")]);
        let c = users("emails[type eq \"work\" and primary eq true]");
        assert_eq!(c.params, vec![text("t1"), text("work"), Param::Int(1)]);
        let c = users("emails.value sw \"a\"");
        assert!(c.sql.contains("substr(e.value_ci, 1, 1) = ?"));
    }

    #[test]
    fn json_attributes_operators_and_logic() {
        let c = users("name.familyName co \"ENS\" and not (title pr) or active eq false");
        assert_eq!(
            c.sql,
            "(((json_extract(r.doc_ci, '$.\"name\".\"familyName\"') IS NOT NULL AND instr(json_extract(r.doc_ci, '$.\"name\".\"familyName\"'), ?) > 0) AND NOT ((json_extract(r.doc_ci, '$.\"title\"') IS NOT NULL AND json_extract(r.doc_ci, '$.\"title\"') <> ''))) OR (r.active IS NOT NULL AND r.active = ?))"
        );
        assert_eq!(c.params, vec![text("ens"), Param::Int(0)]);
        let c = users(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department ew \"IN\"",
        );
        assert!(c.sql.contains(
            "'$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"department\"'"
        ));
        assert!(c.sql.contains("substr(") && c.sql.contains(", -2, 2) = ?"));
        let c = users(
            "urn:ietf:params:scim:schemas:extension:primedocs:2.0:User:customAttribute01 ne \"x\"",
        );
        assert!(c.sql.starts_with("(json_extract(r.doc_ci, '$.\"urn:ietf:params:scim:schemas:extension:primedocs:2.0:User\".\"customAttribute01\"') IS NULL OR"));
        let c = users("phoneNumbers[type eq \"mobile\"]");
        assert!(c.sql.starts_with(
            "EXISTS (SELECT 1 FROM json_each(r.doc_ci, '$.\"phoneNumbers\"') j WHERE"
        ));
        let c = users("meta.lastModified gt \"2011-05-13T04:42:34+02:00\"");
        assert_eq!(
            c.sql,
            "(r.last_modified IS NOT NULL AND r.last_modified > ?)"
        );
        assert_eq!(c.params, vec![text("2011-05-13T02:42:34.000Z")]);
        let c = users("title eq null");
        assert_eq!(c.sql, "(json_extract(r.doc_ci, '$.\"title\"') IS NULL)");
    }

    #[test]
    fn members_and_groups() {
        let c = groups("members[value eq \"u1\"]");
        assert_eq!(
            c.sql,
            "r.id IN (SELECT m.group_id FROM group_members m WHERE m.tenant = ? AND (m.member_id IS NOT NULL AND m.member_id = ?))"
        );
        let c = groups("members[type eq \"Group\"]");
        assert!(
            c.sql
                .ends_with("(lower(m.member_type) IS NOT NULL AND lower(m.member_type) = ?))"),
            "{}",
            c.sql
        );
        assert_eq!(c.params[1], text("group"));
        let c = users("groups[type eq \"Direct\"]");
        assert!(
            c.sql.contains("('direct' IS NOT NULL AND 'direct' = ?)"),
            "{}",
            c.sql
        );
        assert_eq!(c.params[1], text("direct"));
        let c = users("groups.value eq \"g1\"");
        assert!(c.sql.starts_with(
            "r.id IN (SELECT m.member_id FROM group_members m WHERE m.tenant = ? AND (m.group_id"
        ));
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
            "urn:example:unknown:attr eq \"x\"",
            "name.nosuch eq \"x\"",
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
        assert_eq!(c.params.len(), 2);
    }
}
