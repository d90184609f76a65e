//! The staging schema's migrations (sql/sqlite), each applied once, in its own transaction.
//!
//! Applied migrations are recorded in `_sqlx_migrations`, in the layout (and with the SHA-384
//! checksums) of the migrator earlier versions used, so a database they created upgrades in
//! place, and an applied migration whose text changed is refused rather than half-trusted.

use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha384};

use crate::db::MigrationReport;
use crate::store::{DbError, StoreError};

struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "staging",
        sql: include_str!("../../../sql/sqlite/0001_staging.sql"),
    },
    Migration {
        version: 2,
        description: "plan hints",
        sql: include_str!("../../../sql/sqlite/0002_plan_hints.sql"),
    },
    Migration {
        version: 3,
        description: "sync",
        sql: include_str!("../../../sql/sqlite/0003_sync.sql"),
    },
    Migration {
        version: 4,
        description: "provisioning log",
        sql: include_str!("../../../sql/sqlite/0004_provisioning_log.sql"),
    },
    Migration {
        version: 5,
        description: "sync recovery",
        sql: include_str!("../../../sql/sqlite/0005_sync_recovery.sql"),
    },
    Migration {
        version: 6,
        description: "owners",
        sql: include_str!("../../../sql/sqlite/0006_owners.sql"),
    },
    Migration {
        version: 7,
        description: "admin answers",
        sql: include_str!("../../../sql/sqlite/0007_admin_answers.sql"),
    },
    Migration {
        version: 8,
        description: "ledger",
        sql: include_str!("../../../sql/sqlite/0008_ledger.sql"),
    },
    Migration {
        version: 9,
        description: "plan hints for later indexes",
        sql: include_str!("../../../sql/sqlite/0009_plan_hints.sql"),
    },
    Migration {
        version: 10,
        description: "provisioning log inbox",
        sql: include_str!("../../../sql/sqlite/0010_provisioning_log_inbox.sql"),
    },
];

const TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

fn failed(message: String) -> StoreError {
    StoreError::Db(DbError::Failed(format!("migration failed: {message}")))
}

/// Apply the migrations `conn`'s database lacks.
pub fn run(conn: &mut Connection) -> Result<MigrationReport, StoreError> {
    conn.execute_batch(TABLE)?;
    let dirty: Option<i64> = conn
        .query_row(
            "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(v) = dirty {
        return Err(failed(format!(
            "migration {v} was left partly applied; restore the database from a backup"
        )));
    }
    let mut report = MigrationReport::default();
    for m in MIGRATIONS {
        let checksum = Sha384::digest(m.sql.as_bytes()).to_vec();
        let applied: Option<Vec<u8>> = conn
            .query_row(
                "SELECT checksum FROM _sqlx_migrations WHERE version = ?",
                [m.version],
                |r| r.get(0),
            )
            .optional()?;
        match applied {
            Some(c) if c == checksum => report.already_applied.push(m.version),
            Some(_) => {
                return Err(failed(format!(
                    "migration {} was applied with a different text than this version has",
                    m.version
                )));
            }
            None => {
                let started = Instant::now();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(m.sql)
                    .map_err(|e| failed(format!("{} ({}): {e}", m.version, m.description)))?;
                let elapsed = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
                tx.execute(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                     execution_time) VALUES (?, ?, TRUE, ?, ?)",
                    params![m.version, m.description, checksum, elapsed],
                )?;
                tx.commit()?;
                report.applied.push(m.version);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_changed_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut c = Connection::open(&path).unwrap();
        let first = run(&mut c).unwrap();
        assert_eq!(first.applied, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let again = run(&mut c).unwrap();
        assert!(again.applied.is_empty());
        assert_eq!(again.already_applied, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        c.execute(
            "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2",
            [],
        )
        .unwrap();
        let e = run(&mut c).unwrap_err().to_string();
        assert!(e.contains("migration 2"), "{e}");
    }

    /// The checksums are those the earlier migrator recorded (SHA-384 of the file), so its
    /// databases are recognised as migrated.
    #[test]
    fn checksums_are_sha384_of_the_files() {
        let want = hex::encode(Sha384::digest(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/sql/sqlite/0001_staging.sql"
            ))
            .unwrap(),
        ));
        assert_eq!(
            hex::encode(Sha384::digest(MIGRATIONS[0].sql.as_bytes())),
            want
        );
        assert_eq!(want.len(), 96);
    }
}
