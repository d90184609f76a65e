//! Applying sql/mssql/ to a SQL Server database: the files are compiled in, applied in order
//! in one transaction under an exclusive application lock (two processes starting together
//! do not both migrate), and recorded with their SHA-256 in dbo.scim_bridge_migrations. A
//! recorded migration whose file changed since is an error, never silently skipped.

use sha2::{Digest, Sha256};
use tiberius::Query;

use super::pool::{BEGIN, COMMIT, Client, ROLLBACK};
use super::rows::{SqlError, execute, int32, rows, simple, text};
use crate::db::MigrationReport;
use crate::store::DbError;

/// The migrations ledger, created when missing (idempotent).
const MIGRATIONS_TABLE: &str = "IF OBJECT_ID(N'dbo.scim_bridge_migrations', N'U') IS NULL \
     CREATE TABLE dbo.scim_bridge_migrations (\
     version INT NOT NULL CONSTRAINT scim_bridge_migrations_pk PRIMARY KEY, \
     name NVARCHAR(200) NOT NULL, \
     checksum CHAR(64) NOT NULL, \
     applied_at DATETIME2(3) NOT NULL CONSTRAINT scim_bridge_migrations_applied_default DEFAULT SYSUTCDATETIME())";

/// One migrator at a time, across processes: an exclusive lock owned by the migration
/// transaction; an error when not granted within a minute. (sp_getapplock's return code is
/// not captured: APPLOCK_MODE says whether the lock is held, in a form every tool parses.)
const MIGRATION_LOCK: &str = "EXEC sp_getapplock @Resource = N'scim-bridge.migrate', \
     @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 60000; \
     IF APPLOCK_MODE(N'public', N'scim-bridge.migrate', N'Transaction') = N'NoLock' \
     THROW 51000, N'another process is migrating this database', 1";

/// version, name, checksum of the applied migrations.
const APPLIED_MIGRATIONS: &str =
    "SELECT version, name, checksum FROM dbo.scim_bridge_migrations ORDER BY version";

/// @P1 version, @P2 name, @P3 checksum (hex SHA-256 of the file).
const RECORD_MIGRATION: &str =
    "INSERT INTO dbo.scim_bridge_migrations (version, name, checksum) VALUES (@P1, @P2, @P3)";

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
    Migration {
        version: 4,
        name: "0004_sync_recovery",
        sql: include_str!("../../../sql/mssql/0004_sync_recovery.sql"),
    },
    Migration {
        version: 5,
        name: "0005_owners",
        sql: include_str!("../../../sql/mssql/0005_owners.sql"),
    },
    Migration {
        version: 6,
        name: "0006_admin_answers",
        sql: include_str!("../../../sql/mssql/0006_admin_answers.sql"),
    },
    Migration {
        version: 7,
        name: "0007_ledger",
        sql: include_str!("../../../sql/mssql/0007_ledger.sql"),
    },
    Migration {
        version: 8,
        name: "0008_health",
        sql: include_str!("../../../sql/mssql/0008_health.sql"),
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

fn failed(message: String) -> DbError {
    DbError::Failed(format!("SQL Server migration failed: {message}"))
}

/// Apply the pending migrations.
pub async fn run(c: &mut Client) -> Result<MigrationReport, DbError> {
    simple(c, MIGRATIONS_TABLE).await?;
    simple(c, BEGIN).await?;
    match apply(c).await {
        Ok(report) => {
            simple(c, COMMIT).await?;
            Ok(report)
        }
        Err(e) => {
            let _ = simple(c, ROLLBACK).await;
            Err(e)
        }
    }
}

async fn apply(c: &mut Client) -> Result<MigrationReport, DbError> {
    simple(c, MIGRATION_LOCK).await?;
    let applied = rows(c, Query::new(APPLIED_MIGRATIONS)).await?;
    let mut report = MigrationReport::default();
    for r in &applied {
        let version = int32(r, 0)?;
        let sum = text(r, 2)?;
        let known = MIGRATIONS.iter().find(|m| m.version == version);
        match known {
            Some(m) if checksum(m.sql) == sum.trim() => {
                report.already_applied.push(i64::from(version))
            }
            Some(m) => {
                return Err(failed(format!(
                    "migration {} was applied from a different file than this build's",
                    m.name
                )));
            }
            None => {
                return Err(failed(format!(
                    "the database has migration {version}, which this build does not know: \
                     it was migrated by a newer version"
                )));
            }
        }
    }
    for m in MIGRATIONS {
        if report.already_applied.contains(&i64::from(m.version)) {
            continue;
        }
        for b in batches(m.sql) {
            simple(c, &b)
                .await
                .map_err(|e: SqlError| failed(format!("{}: {e}", m.name)))?;
        }
        let mut q = Query::new(RECORD_MIGRATION);
        q.bind(m.version);
        q.bind(m.name);
        q.bind(checksum(m.sql));
        execute(c, q).await?;
        report.applied.push(i64::from(m.version));
    }
    Ok(report)
}

#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    [
        ("MIGRATIONS_TABLE", MIGRATIONS_TABLE),
        ("MIGRATION_LOCK", MIGRATION_LOCK),
        ("APPLIED_MIGRATIONS", APPLIED_MIGRATIONS),
        ("RECORD_MIGRATION", RECORD_MIGRATION),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect()
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
