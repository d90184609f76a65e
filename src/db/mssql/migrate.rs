//! Applying sql/mssql/ to a SQL Server database: the files are compiled in, applied in order
//! in one transaction under an exclusive application lock (two processes starting together
//! do not both migrate), and recorded with their SHA-256 in dbo.scim_bridge_migrations. A
//! recorded migration whose file changed since is an error, never silently skipped.

use sha2::{Digest, Sha256};
use tiberius::Query;

use super::pool::{Client, MssqlError};
use super::statements as st;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_staging",
        sql: include_str!("../../../sql/mssql/0001_staging.sql"),
    },
    Migration {
        version: 2,
        name: "0002_sync",
        sql: include_str!("../../../sql/mssql/0002_sync.sql"),
    },
    Migration {
        version: 3,
        name: "0003_provisioning_log",
        sql: include_str!("../../../sql/mssql/0003_provisioning_log.sql"),
    },
];

/// The batches of a script: `GO` on a line of its own separates them, as in sqlcmd and SSMS.
pub fn batches(script: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in script.lines() {
        if line.trim().eq_ignore_ascii_case("go") {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    out.into_iter()
        .filter(|b| {
            b.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        })
        .collect()
}

pub fn checksum(script: &str) -> String {
    hex::encode(Sha256::digest(script.as_bytes()))
}

/// What a migration run found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub already_applied: Vec<i32>,
    pub applied: Vec<i32>,
}

async fn simple(c: &mut Client, sql: &str) -> Result<(), MssqlError> {
    c.simple_query(sql).await?.into_results().await?;
    Ok(())
}

/// Apply the pending migrations.
pub async fn run(c: &mut Client) -> Result<Report, MssqlError> {
    simple(c, st::MIGRATIONS_TABLE).await?;
    simple(c, "BEGIN TRANSACTION").await?;
    let r = apply(c).await;
    match r {
        Ok(report) => {
            simple(c, "COMMIT TRANSACTION").await?;
            Ok(report)
        }
        Err(e) => {
            let _ = simple(c, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
            Err(e)
        }
    }
}

async fn apply(c: &mut Client) -> Result<Report, MssqlError> {
    simple(c, st::MIGRATION_LOCK).await?;
    let rows = c
        .simple_query(st::APPLIED_MIGRATIONS)
        .await?
        .into_first_result()
        .await?;
    let mut report = Report::default();
    for r in &rows {
        let version: i32 = r.try_get(0)?.unwrap_or_default();
        let sum: &str = r.try_get(2)?.unwrap_or_default();
        let known = MIGRATIONS.iter().find(|m| m.version == version);
        match known {
            Some(m) if checksum(m.sql) == sum.trim() => report.already_applied.push(version),
            Some(m) => {
                return Err(MssqlError::Migration(format!(
                    "migration {} was applied from a different file than this build's",
                    m.name
                )));
            }
            None => {
                return Err(MssqlError::Migration(format!(
                    "the database has migration {version}, which this build does not know: \
                     it was migrated by a newer version"
                )));
            }
        }
    }
    for m in MIGRATIONS {
        if report.already_applied.contains(&m.version) {
            continue;
        }
        for b in batches(m.sql) {
            simple(c, &b)
                .await
                .map_err(|e| MssqlError::Migration(format!("{}: {e}", m.name)))?;
        }
        let mut q = Query::new(st::RECORD_MIGRATION);
        q.bind(m.version);
        q.bind(m.name);
        q.bind(checksum(m.sql));
        q.execute(c).await?;
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_separates_batches() {
        let b = batches(
            "-- head\nCREATE SCHEMA a;\n  go  \n\nCREATE TABLE a.t (x INT);\nGO\n-- only a comment\nGO\n",
        );
        assert_eq!(
            b,
            vec![
                "-- head\nCREATE SCHEMA a;\n",
                "\nCREATE TABLE a.t (x INT);\n"
            ]
        );
        // GO inside a line is not a separator.
        assert_eq!(batches("SELECT 'GO';\nSELECT 1 AS go\n").len(), 1);
    }

    #[test]
    fn migrations_are_ordered_and_schemas_are_created_alone() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
            let b = batches(m.sql);
            // CREATE SCHEMA must be the only statement of its batch in T-SQL; a migration
            // creates at most one schema (later ones may add to an existing schema).
            let schema_batches: Vec<_> = b.iter().filter(|b| b.contains("CREATE SCHEMA")).collect();
            assert!(schema_batches.len() <= 1, "{}", m.name);
            for batch in schema_batches {
                let code: Vec<&str> = batch
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
                    .collect();
                assert_eq!(code.len(), 1, "{}: {code:?}", m.name);
            }
        }
        let dir: Vec<_> = std::fs::read_dir("sql/mssql")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            dir.len(),
            MIGRATIONS.len(),
            "every file in sql/mssql is a migration"
        );
        assert_ne!(checksum(MIGRATIONS[0].sql), checksum(MIGRATIONS[1].sql));
    }
}
