//! The checks over every T-SQL statement the backend can issue, collected from the modules
//! that run them (each has a `statements()`), and over the migrations and the example
//! application schema: each parses with sqlparser's MsSqlDialect, and numbers its parameters
//! `@P1…@Pn` without a gap. The few constructs sqlparser cannot read are listed here, each
//! with its reason.

use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

use super::{admin, app, ledger, migrate, pool, scim, seq, sync};

/// Every statement the backend can issue, by name.
fn all_statements() -> Vec<(String, String)> {
    [
        pool::statements(),
        migrate::statements(),
        seq::statements(),
        super::statements(),
        scim::statements(),
        admin::statements(),
        sync::statements(),
        ledger::statements(),
        app::statements(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn sql_files() -> Vec<(String, String)> {
    let mut out = vec![];
    for dir in ["sql/mssql", "sql/app"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.to_string_lossy().ends_with(".sql")
                    && (dir == "sql/mssql" || p.to_string_lossy().ends_with(".mssql.sql"))
            })
            .collect();
        entries.sort();
        for p in entries {
            let text = std::fs::read_to_string(&p).unwrap();
            for (i, b) in migrate::batches(&text).into_iter().enumerate() {
                out.push((format!("{} batch {}", p.display(), i + 1), b));
            }
        }
    }
    out
}

pub(super) fn parse(sql: &str) -> Result<(), String> {
    Parser::parse_sql(&MsSqlDialect {}, &known_gaps(sql))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Valid T-SQL that sqlparser 0.64 cannot parse, rewritten to an equivalent it can, each
/// rewrite as narrow as the construct (the rest of the statement is still checked):
/// - `FETCH NEXT @Pn ROWS ONLY`: T-SQL takes a parameter there, sqlparser only a literal;
/// - `CREATE CLUSTERED INDEX`: sqlparser knows no CLUSTERED/NONCLUSTERED on CREATE INDEX;
/// - `NEXT VALUE FOR scim.change_seq`: sqlparser has no sequence expression; the one
///   sequence is replaced by a scalar subquery over it.
///
/// Statements it cannot parse at all are compared whole with [`UNPARSEABLE`].
fn known_gaps(sql: &str) -> String {
    let mut out = sql
        .replace("CREATE CLUSTERED INDEX ", "CREATE INDEX ")
        .replace(
            "NEXT VALUE FOR scim.change_seq",
            "(SELECT current_value FROM sys.sequences)",
        );
    while let Some(at) = out.find("FETCH NEXT @P") {
        let rest = &out[at + "FETCH NEXT @P".len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 || !rest[digits..].starts_with(" ROWS ONLY") {
            break;
        }
        out.replace_range(at..at + "FETCH NEXT @P".len() + digits, "FETCH NEXT 1");
    }
    out
}

/// Savepoint statements: sqlparser has no SAVE TRANSACTION and no ROLLBACK TRANSACTION
/// with a savepoint name. These exact texts are allowed to fail, nothing else.
pub(super) const UNPARSEABLE: &[&str] = &[
    "SAVE TRANSACTION scim_bridge_user",
    "ROLLBACK TRANSACTION scim_bridge_user",
];

/// The distinct @Pn numbers a statement uses, in ascending order.
pub(super) fn param_numbers(sql: &str) -> Vec<usize> {
    let mut out: Vec<usize> = sql
        .split("@P")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[test]
fn the_known_gaps_are_narrow() {
    assert_eq!(
        known_gaps("SELECT a FROM t ORDER BY a OFFSET @P3 ROWS FETCH NEXT @P4 ROWS ONLY"),
        "SELECT a FROM t ORDER BY a OFFSET @P3 ROWS FETCH NEXT 1 ROWS ONLY"
    );
    // Anything else that does not parse still fails.
    assert!(parse("SELECT a FROM t ORDER BY a OFFSET @P3 ROWS FETCH NEXT @P4 ROWS").is_err());
    assert!(parse("SELEC 1").is_err());
    assert!(parse("UPDATE t SET a = WHERE b = 1").is_err());
    for s in UNPARSEABLE {
        assert!(
            parse(s).is_err(),
            "{s} parses now: remove it from UNPARSEABLE"
        );
    }
    // They are the writer's savepoint statements, and nothing else is let through.
    let statements = all_statements();
    let skipped: Vec<&str> = statements
        .iter()
        .filter(|(_, sql)| UNPARSEABLE.contains(&sql.as_str()))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(skipped, ["SAVEPOINT", "ROLLBACK_TO_SAVEPOINT"]);
}

/// Parameters are bound by position: a statement that skipped a number would read a value
/// bound for another. Every statement uses @P1…@Pn without a gap (the provisioning log
/// page binds its optional bounds whether it uses them or not).
#[test]
fn every_statement_numbers_its_parameters_without_a_gap() {
    let mut failures = vec![];
    for (name, sql) in all_statements() {
        if name.starts_with("provisioning_log_page") {
            continue;
        }
        let n = param_numbers(&sql);
        if n != (1..=n.len()).collect::<Vec<_>>() {
            failures.push(format!("{name}: {n:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn statement_names_are_unique() {
    let mut names: Vec<String> = all_statements().into_iter().map(|(n, _)| n).collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all, "a module's statements() repeats a name");
}

#[test]
fn every_statement_and_filter_translation_parses_as_t_sql() {
    let (statements, files) = (all_statements(), sql_files());
    assert!(statements.len() > 200, "{}", statements.len());
    assert!(
        files.len() >= 12,
        "the migrations and the example schema: {}",
        files.len()
    );
    let mut failures = vec![];
    for (name, sql) in statements.into_iter().chain(files) {
        if UNPARSEABLE.contains(&sql.as_str()) {
            continue;
        }
        if let Err(e) = parse(&sql) {
            failures.push(format!("{name}: {e}\n    {sql}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
