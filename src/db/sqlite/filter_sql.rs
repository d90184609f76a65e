//! SCIM filter → SQLite condition: one pure function, unit-tested on the SQL it emits.
//!
//! Values never enter the SQL text: every value is a bound parameter. Attributes that have
//! a column (id, userName, externalId, displayName of groups, active, meta dates) use it and
//! its index; emails use the user_emails table; members and groups use group_members; every
//! other attribute is read from the case-folded JSON document. A filter this function cannot
//! translate faithfully is an invalidFilter error, never a wider query. The walk over the
//! filter is [`crate::store::filter_walk`]; this file holds the SQLite spelling.

use crate::scim::ScimError;
use crate::scim::filter::{CompValue, CompareOp, Filter};
use crate::scim::schema::{Attr, ResourceType};
use crate::store::filter_walk::{self, Dialect, Value};

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

pub fn compile(rt: &ResourceType, tenant: &str, f: &Filter) -> Result<Condition, ScimError> {
    let d = Sqlite {
        tenant,
        out: Condition::default(),
    };
    Ok(filter_walk::compile(rt, d, f)?.out)
}

/// The ORDER BY expression for `sortBy`. Multi-valued attributes sort by their first value.
pub fn sort_expression(rt: &ResourceType, sort_by: &str) -> Result<String, ScimError> {
    filter_walk::sort_expression::<Sqlite>(rt, sort_by)
}

/// The SQLite dialect. Its holder is whether a column holds lower-cased text.
struct Sqlite<'a> {
    tenant: &'a str,
    out: Condition,
}

impl Sqlite<'_> {
    /// Add a parameter and return its placeholder.
    fn bind(&mut self, p: Param) -> &'static str {
        self.out.params.push(p);
        "?"
    }
}

impl Dialect for Sqlite<'_> {
    type Holder = bool;
    const TABLES: &'static str = "";
    const DIRECT: &'static str = "'direct'";
    const MEMBER_TYPE: &'static str = "lower(m.member_type)";

    fn push(&mut self, s: &str) {
        self.out.sql.push_str(s);
    }

    fn tenant(&mut self) -> String {
        self.bind(Param::Text(self.tenant.to_string())).to_string()
    }

    fn json_value(doc: &str, path: &str) -> String {
        format!("json_extract({doc}, '{path}')")
    }

    fn json_each(doc: &str, path: &str) -> String {
        format!("json_each({doc}, '{path}')")
    }

    fn column(ci: bool) -> bool {
        ci
    }

    fn json() -> bool {
        false
    }

    fn present(&mut self, expr: &str, _: bool, _: &Attr) {
        // Present and not empty.
        self.push(&format!("({expr} IS NOT NULL AND {expr} <> '')"));
    }

    fn compare(
        &mut self,
        expr: &str,
        ci_column: bool,
        attr: &Attr,
        op: CompareOp,
        value: &CompValue,
    ) -> Result<(), ScimError> {
        let fold = ci_column || !attr.case_exact;
        let param = match filter_walk::value(attr, op, value)? {
            Value::Text(s) => Param::Text(if fold { s.to_lowercase() } else { s }),
            Value::Bool(b) => Param::Int(i64::from(b)),
            Value::Num(n) => match n.as_i64() {
                Some(i) => Param::Int(i),
                None => Param::Real(n.as_f64().unwrap_or(0.0)),
            },
            Value::DateTime(d) => {
                Param::Text(crate::store::format_time(d.with_timezone(&chrono::Utc)))
            }
        };
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
            let p = self.bind(param);
            self.push(&format!("({expr} IS NULL OR {expr} <> {p})"));
            return Ok(());
        }
        self.push(&format!("({expr} IS NOT NULL AND "));
        match op {
            CompareOp::Co => {
                let p = self.bind(param);
                self.push(&format!("instr({expr}, {p}) > 0"));
            }
            CompareOp::Sw | CompareOp::Ew => {
                let n = match &param {
                    Param::Text(s) => s.chars().count() as i64,
                    _ => 0,
                };
                let start = if op == CompareOp::Sw { 1 } else { -n };
                let p = self.bind(param);
                self.push(&format!("substr({expr}, {start}, {n}) = {p}"));
                if op == CompareOp::Ew {
                    self.push(&format!(" AND length({expr}) >= {n}"));
                }
            }
            _ => {
                let p = self.bind(param);
                self.push(&format!("{expr} {sql_op} {p}"));
            }
        }
        self.push(")");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::Limits;
    use crate::scim::filter::parse_filter;
    use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;

    fn users(f: &str) -> Condition {
        compile(
            &ResourceType::user(DEFAULT_CUSTOM_SCHEMA),
            "t1",
            &parse_filter(f, &Limits::default()).unwrap(),
        )
        .unwrap()
    }
    /// The translation's own errors: the filter is parsed without the protocol's term bound.
    fn users_err(f: &str) -> ScimError {
        let unbounded = Limits {
            max_filter_terms: usize::MAX,
            ..Limits::default()
        };
        compile(
            &ResourceType::user(DEFAULT_CUSTOM_SCHEMA),
            "t1",
            &parse_filter(f, &unbounded).unwrap(),
        )
        .unwrap_err()
    }
    fn groups(f: &str) -> Condition {
        compile(
            &ResourceType::group(),
            "t1",
            &parse_filter(f, &Limits::default()).unwrap(),
        )
        .unwrap()
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
    fn sort_expressions() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        assert_eq!(sort_expression(&rt, "userName").unwrap(), "r.user_name_ci");
        assert_eq!(sort_expression(&rt, "meta.created").unwrap(), "r.created");
        assert_eq!(
            sort_expression(&rt, "name.familyName").unwrap(),
            "json_extract(r.doc_ci, '$.\"name\".\"familyName\"')"
        );
        assert_eq!(
            sort_expression(&rt, "emails").unwrap(),
            "json_extract(r.doc_ci, '$.\"emails\"[0].\"value\"')"
        );
        assert_eq!(
            sort_expression(
                &rt,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
            )
            .unwrap(),
            "json_extract(r.doc_ci, '$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"manager\".\"value\"')"
        );
        assert!(sort_expression(&rt, "nosuch").is_err());
        assert!(sort_expression(&rt, "meta.version").is_err());
    }

    #[test]
    fn the_number_of_terms_is_bounded() {
        let chain = |n: usize| vec!["title pr"; n].join(" or ");
        // n comparisons joined by n - 1 ors: 2n - 1 terms.
        assert!(users(&chain(100)).sql.starts_with("(((("));
        assert_eq!(
            users_err(&chain(101)).scim_type,
            Some(crate::scim::ScimType::InvalidFilter)
        );
        // The value path is one term, its element filter 2n - 1 more.
        let elements = |n: usize| format!("emails[{}]", vec!["value pr"; n].join(" or "));
        assert!(users(&elements(100)).sql.starts_with("r.pk IN"));
        assert_eq!(
            users_err(&elements(101)).scim_type,
            Some(crate::scim::ScimType::InvalidFilter)
        );
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
