//! A mapping checked against the application's live tables: every column it writes exists with
//! a compatible type, the key column is unique, NOT NULL columns without a default are
//! written, the role table has its columns. Each problem names the mapping's file:line and the
//! column, with the nearest existing name when there is one.

use std::fmt;

use crate::mapping::{FieldType, Mapping};

/// A table as the application database describes it.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    pub columns: Vec<ColumnInfo>,
    /// The column sets of its primary key, unique constraints and (unfiltered) unique
    /// indexes.
    pub unique: Vec<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// The declared type, as the database spells it (`TEXT`, `nvarchar`, …; SQLite allows
    /// none).
    pub declared: String,
    pub not_null: bool,
    /// It has a default, or the database fills it in (an identity or rowid column).
    pub defaulted: bool,
}

/// What kind of values a column holds, from its declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Real,
    Boolean,
    Time,
    /// No type, or one that takes anything (SQLite's BLOB/none, sql_variant).
    Any,
}

impl Kind {
    /// The kind of a declared type: SQL Server's type names, then SQLite's affinity rules.
    pub fn of(declared: &str) -> Kind {
        let t = declared.to_ascii_lowercase();
        let t = t.trim();
        match t.split('(').next().unwrap_or("").trim() {
            "bit" | "bool" | "boolean" => return Kind::Boolean,
            "date" | "datetime" | "datetime2" | "datetimeoffset" | "smalldatetime" | "time"
            | "timestamp" | "timestamptz" => return Kind::Time,
            "sql_variant" | "" => return Kind::Any,
            "decimal" | "numeric" | "money" | "smallmoney" => return Kind::Real,
            _ => {}
        }
        if t.contains("int") {
            Kind::Integer
        } else if t.contains("char") || t.contains("clob") || t.contains("text") {
            Kind::Text
        } else if t.contains("real") || t.contains("floa") || t.contains("doub") {
            Kind::Real
        } else {
            // BLOB, binary, or a name SQLite gives NUMERIC affinity: anything goes.
            Kind::Any
        }
    }

    /// Whether values of `ty` belong in a column of this kind.
    fn takes(self, ty: FieldType) -> bool {
        match (ty, self) {
            (_, Kind::Any) => true,
            (FieldType::Text, k) => k == Kind::Text,
            (FieldType::Integer, k) => matches!(k, Kind::Integer | Kind::Real | Kind::Text),
            (FieldType::Boolean, k) => matches!(k, Kind::Boolean | Kind::Integer | Kind::Text),
            (FieldType::Timestamp, k) => matches!(k, Kind::Time | Kind::Text),
        }
    }
}

/// The problems found, one per line.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaProblems(pub Vec<String>);

impl fmt::Display for SchemaProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

/// Check `mapping` against its user table (`users`) and role table (`roles`; None when the
/// table does not exist, like `users`).
pub fn check(
    mapping: &Mapping,
    users: Option<&TableInfo>,
    roles: Option<&TableInfo>,
) -> Result<(), SchemaProblems> {
    let origin = mapping.origin();
    let target = mapping.target();
    let lines = mapping.target_lines();
    let mut problems = Vec::new();
    let mut say =
        |line: usize, message: String| problems.push(format!("{origin}:{line}: {message}"));
    match users {
        None => say(
            lines.user_table,
            format!(
                "target.user_table: the application database has no table `{}`",
                target.user_table
            ),
        ),
        Some(table) => {
            let written = mapping.columns();
            for w in &written {
                match table
                    .columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(&w.column))
                {
                    None => say(
                        w.line,
                        format!(
                            "`{}` is not a column of `{}`{}",
                            w.column,
                            target.user_table,
                            did_you_mean(&w.column, table.columns.iter().map(|c| c.name.as_str()))
                        ),
                    ),
                    Some(c) if !Kind::of(&c.declared).takes(w.ty) => say(
                        w.line,
                        format!(
                            "`{}` is {} in the mapping but `{}.{}` is {}",
                            w.column,
                            w.ty,
                            target.user_table,
                            c.name,
                            if c.declared.is_empty() {
                                "untyped"
                            } else {
                                c.declared.as_str()
                            }
                        ),
                    ),
                    Some(_) => {}
                }
            }
            // Unique on the key, or on the key and the tenant column: rows of one tenant never
            // share a key then.
            let key_unique = table.unique.iter().any(|cols| {
                let has = |c: &str| cols.iter().any(|u| u.eq_ignore_ascii_case(c));
                has(&target.key_column)
                    && match &target.tenant_column {
                        None => cols.len() == 1,
                        Some(tc) => cols.len() == 1 || (cols.len() == 2 && has(tc)),
                    }
            });
            if table
                .columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(&target.key_column))
                && !key_unique
            {
                say(
                    lines.key_column,
                    format!(
                        "target.key_column `{}` is not unique in `{}`: add a unique index or \
                         constraint on it, so two rows can never share a key",
                        target.key_column, target.user_table
                    ),
                );
            }
            for c in &table.columns {
                if c.not_null
                    && !c.defaulted
                    && !written
                        .iter()
                        .any(|w| w.column.eq_ignore_ascii_case(&c.name))
                {
                    say(
                        lines.user_table,
                        format!(
                            "`{}.{}` is NOT NULL without a default and the mapping does not \
                             write it: every insert would fail",
                            target.user_table, c.name
                        ),
                    );
                }
            }
        }
    }
    if let (Some(r), Some((table_line, user_line, role_line))) = (&target.roles, lines.roles) {
        match roles {
            None => say(
                table_line,
                format!(
                    "target.roles.table: the application database has no table `{}`",
                    r.table
                ),
            ),
            Some(info) => {
                for (col, line, what) in [
                    (&r.user_column, user_line, "user_column"),
                    (&r.role_column, role_line, "role_column"),
                ] {
                    if !info
                        .columns
                        .iter()
                        .any(|c| c.name.eq_ignore_ascii_case(col))
                    {
                        say(
                            line,
                            format!(
                                "target.roles.{what}: `{col}` is not a column of `{}`{}",
                                r.table,
                                did_you_mean(col, info.columns.iter().map(|c| c.name.as_str()))
                            ),
                        );
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaProblems(problems))
    }
}

/// " (did you mean `x`?)" for the nearest of `names` within two edits, or nothing.
fn did_you_mean<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> String {
    let wanted_l = wanted.to_ascii_lowercase();
    names
        .map(|n| (edit_distance(&wanted_l, &n.to_ascii_lowercase()), n))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over characters (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        Mapping::parse(
            "[target]\ndatabase = \"app\"\nuser_table = \"users\"\nkey_column = \"ext\"\n\
             key = \"externalId\"\n\
             [target.roles]\ntable = \"roles\"\nuser_column = \"ext\"\nrole_column = \"role\"\n\
             [fields]\nuser_name = \"{{userName}}\"\nactive = { template = \"true\", type = \"boolean\" }\n\
             hired = { template = \"2020-01-01\", type = \"timestamp\" }\n",
            "m.toml",
            crate::scim::schema::DEFAULT_CUSTOM_SCHEMA,
        )
        .unwrap()
    }

    fn col(name: &str, declared: &str) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            declared: declared.into(),
            not_null: false,
            defaulted: false,
        }
    }

    fn users(cols: Vec<ColumnInfo>, unique: &[&str]) -> TableInfo {
        TableInfo {
            columns: cols,
            unique: unique.iter().map(|c| vec![c.to_string()]).collect(),
        }
    }

    fn roles() -> TableInfo {
        users(vec![col("ext", "TEXT"), col("role", "TEXT")], &[])
    }

    #[test]
    fn a_mapping_that_fits_its_tables_passes() {
        let u = users(
            vec![
                col("id", "INTEGER"),
                col("ext", "TEXT"),
                col("user_name", "VARCHAR(200)"),
                col("active", "BOOLEAN"),
                col("hired", "datetime2"),
            ],
            &["ext"],
        );
        assert_eq!(check(&mapping(), Some(&u), Some(&roles())), Ok(()));
    }

    #[test]
    fn each_problem_names_the_line_and_the_column() {
        let mut required = col("tenant", "TEXT");
        required.not_null = true;
        let u = users(
            vec![
                col("ext", "TEXT"),
                col("username", "TEXT"),
                col("active", "TEXT"),
                col("hired", "INTEGER"),
                required,
            ],
            &[],
        );
        let problems = check(&mapping(), Some(&u), None).unwrap_err().0;
        let text = problems.join("\n");
        assert!(
            text.contains(
                "m.toml:11: `user_name` is not a column of `users` (did you mean `username`?)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "m.toml:13: `hired` is timestamp in the mapping but `users.hired` is INTEGER"
            ),
            "{text}"
        );
        assert!(
            text.contains("m.toml:4: target.key_column `ext` is not unique"),
            "{text}"
        );
        assert!(
            text.contains("`users.tenant` is NOT NULL without a default"),
            "{text}"
        );
        assert!(
            text.contains(
                "m.toml:7: target.roles.table: the application database has no table `roles`"
            ),
            "{text}"
        );
        assert!(
            !text.contains("`active`"),
            "boolean into text is fine: {text}"
        );
        assert!(
            check(&mapping(), None, Some(&roles())).unwrap_err().0[0].contains("no table `users`")
        );
    }

    #[test]
    fn declared_types_map_to_kinds() {
        for (t, k) in [
            ("INTEGER", Kind::Integer),
            ("bigint", Kind::Integer),
            ("NVARCHAR(255)", Kind::Text),
            ("TEXT", Kind::Text),
            ("bit", Kind::Boolean),
            ("DATETIME2(3)", Kind::Time),
            ("REAL", Kind::Real),
            ("decimal(10,2)", Kind::Real),
            ("", Kind::Any),
            ("BLOB", Kind::Any),
        ] {
            assert_eq!(Kind::of(t), k, "{t}");
        }
        assert_eq!(edit_distance("username", "user_name"), 1);
    }
}
