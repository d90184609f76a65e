//! SCIM filter → T-SQL condition: one pure function, unit-tested on the SQL it emits.
//!
//! The same input as SQLite's, the same rules: values never
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
//! The walk over the filter is [`crate::store::filter_walk`]; this file holds the T-SQL spelling.
//!
//! Parameter numbering: `@P1` is always the tenant (the first entry of [`Condition::params`]);
//! the enclosing statement compares `r.tenant = @P1` and binds the params in order.

use super::rows::Param;
use crate::scim::ScimError;
use crate::scim::filter::{CompValue, CompareOp, Filter};
use crate::scim::schema::{Attr, AttrType, ResourceType};
use crate::store::filter_walk::{self, Dialect, Value};

/// The collation every text comparison is made under.
pub const BIN2: &str = "Latin1_General_100_BIN2";

/// A WHERE-clause fragment over the resource table aliased `r`, with its parameters in order
/// (`params[0]` is the tenant, `@P1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub sql: String,
    pub params: Vec<Param>,
}

pub fn compile(rt: &ResourceType, tenant: &str, f: &Filter) -> Result<Condition, ScimError> {
    let d = Mssql {
        out: Condition {
            sql: String::new(),
            params: vec![Param::Text(tenant.to_string())],
        },
    };
    Ok(filter_walk::compile(rt, d, f)?.out)
}

/// The ORDER BY expression for `sortBy`. Multi-valued attributes sort by their first value.
pub fn sort_expression(rt: &ResourceType, sort_by: &str) -> Result<String, ScimError> {
    filter_walk::sort_expression::<Mssql>(rt, sort_by)
}

/// How the SQL expression holds the value: a typed column, or JSON text.
#[derive(Clone, Copy, PartialEq)]
enum Holder {
    Column,
    Json,
}

/// The T-SQL dialect.
struct Mssql {
    out: Condition,
}

impl Mssql {
    /// Add a parameter and return its name.
    fn bind(&mut self, p: Param) -> String {
        self.out.params.push(p);
        format!("@P{}", self.out.params.len())
    }
}

impl Dialect for Mssql {
    type Holder = Holder;
    const TABLES: &'static str = "scim.";
    const DIRECT: &'static str = "N'direct'";
    const MEMBER_TYPE: &'static str = "LOWER(m.member_type)";

    fn push(&mut self, s: &str) {
        self.out.sql.push_str(s);
    }

    /// Always `@P1`, bound first by [`compile`].
    fn tenant(&mut self) -> String {
        "@P1".to_string()
    }

    /// `JSON_VALUE(doc, N'path') COLLATE Latin1_General_100_BIN2`: text, compared binary.
    fn json_value(doc: &str, path: &str) -> String {
        format!("JSON_VALUE({doc}, N'{path}') COLLATE {BIN2}")
    }

    fn json_each(doc: &str, path: &str) -> String {
        format!("OPENJSON({doc}, N'{path}')")
    }

    fn column(_ci: bool) -> Holder {
        Holder::Column
    }

    fn json() -> Holder {
        Holder::Json
    }

    fn present(&mut self, expr: &str, holder: Holder, attr: &Attr) {
        // Present and, for text, not empty (DATALENGTH: '  ' is not empty).
        if is_text(holder, attr) || holder == Holder::Json {
            self.push(&format!("({expr} IS NOT NULL AND DATALENGTH({expr}) > 0)"));
        } else {
            self.push(&format!("({expr} IS NOT NULL)"));
        }
    }

    fn compare(
        &mut self,
        expr: &str,
        holder: Holder,
        attr: &Attr,
        op: CompareOp,
        value: &CompValue,
    ) -> Result<(), ScimError> {
        let text = is_text(holder, attr);
        let param = match filter_walk::value(attr, op, value)? {
            Value::Text(s) => Param::Text(if attr.case_exact { s } else { s.to_lowercase() }),
            // A BIT column takes a BIT; JSON_VALUE returns the text true/false.
            Value::Bool(b) => match holder {
                Holder::Column => Param::Bool(b),
                Holder::Json => Param::Text(b.to_string()),
            },
            Value::Num(n) => match n.as_i64() {
                Some(i) if holder == Holder::Column => Param::Int(i),
                _ => Param::Real(n.as_f64().unwrap_or(0.0)),
            },
            Value::DateTime(d) => Param::Time(d.naive_utc()),
        };
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
}

/// Whether `expr` holds text: a string-like attribute, or a boolean read from JSON.
fn is_text(holder: Holder, attr: &Attr) -> bool {
    matches!(
        attr.ty,
        AttrType::String | AttrType::Reference | AttrType::Binary
    ) || holder == Holder::Json && attr.ty == AttrType::Boolean
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scim::Limits;
    use crate::scim::filter::parse_filter;
    use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ResourceKind};

    fn users(f: &str) -> Condition {
        compile(
            &ResourceType::user(DEFAULT_CUSTOM_SCHEMA),
            "t1",
            &parse_filter(f, &Limits::default()).unwrap(),
        )
        .unwrap()
    }
    fn users_err(f: &str) -> ScimError {
        compile(
            &ResourceType::user(DEFAULT_CUSTOM_SCHEMA),
            "t1",
            &parse_filter(f, &Limits::default()).unwrap(),
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
}
