//! SQLite, the embedded default: the staging database in one file in WAL mode, and application
//! databases, all on one driver (rusqlite).
//!
//! ## One writer per file
//!
//! Every write this process makes to the staging file — SCIM writes, the sync engine's batch
//! records, run bookkeeping, lease and lifecycle, the provisioning log — is a job for the
//! file's writer thread ([`writer`]), which owns the only write connection and commits the
//! jobs queued meanwhile together. So writers of one process never wait on each other's locks;
//! another process on the same file (a `sync` from the command line beside `serve`) waits for
//! the lock with a busy timeout. An application database file has its own single writer: the
//! one connection of its [`app::SqliteApp`].
//!
//! Reads use a pool of read-only connections ([`conn`]) and see committed data only: SCIM
//! point look-ups on the calling thread (microseconds, less than a hand-over), everything
//! else (the engine's batches, the ledger, counts, the provisioning log) on blocking threads.

mod admin;
pub mod app;
mod conn;
pub(super) mod filter_sql;
mod ledger;
mod migrate;
pub mod scim;
mod sync;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode};

use crate::config::Durability;
use crate::db::{MigrationReport, Staging, task_failed};
use crate::store::{DbError, StoreError};
use crate::sync::SyncError;
use crate::target::TargetError;
pub use scim::{
    NewGroupRow, NewUserRow, insert_group_row, insert_member_row, insert_user_row, raise_seq,
};

/// The staging database on SQLite.
#[derive(Clone)]
pub struct SqliteStaging {
    /// Every write of this process: group commit on a dedicated connection and thread.
    writes: writer::Writer,
    /// Reads: read-only connections.
    reads: Arc<conn::ReadPool>,
    /// The database file, for the readiness probe.
    path: PathBuf,
}

impl SqliteStaging {
    /// Open (creating if missing) and migrate the database at `path`.
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let conn = open_migrated(&path, durability)?.0;
            Ok(SqliteStaging {
                writes: writer::Writer::start(conn)?,
                reads: Arc::new(conn::ReadPool::new(&path)?),
                path,
            })
        })
        .await
        .map_err(task_failed)?
    }

    /// Run `f` on a read connection on a blocking thread.
    async fn read<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let reads = self.reads.clone();
        tokio::task::spawn_blocking(move || reads.with(f))
            .await
            .map_err(|e| E::from(task_failed(e)))?
    }
}

/// Create the file (and its folder) if missing, switch it to WAL and migrate it: the write
/// connection, and what the migrations did.
fn open_migrated(
    path: &Path,
    durability: Durability,
) -> Result<(Connection, MigrationReport), StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut conn = conn::open_create(path, durability)?;
    let report = migrate::run(&mut conn)?;
    Ok((conn, report))
}

/// `scim-bridge migrate` on an SQLite file.
pub async fn migrate_file(
    path: &Path,
    durability: Durability,
) -> Result<MigrationReport, StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || open_migrated(&path, durability).map(|(_, r)| r))
        .await
        .map_err(task_failed)?
}

#[async_trait]
impl Staging for SqliteStaging {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.reads.with(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(StoreError::from)
        })
    }

    /// The last write batch did not fail for want of storage, and a file can be written and
    /// synced beside the database (a read-only or full folder, or one that is gone, cannot).
    async fn writable(&self) -> Result<(), StoreError> {
        if let Some(e) = self.writes.storage_failure() {
            return Err(StoreError::Db(e));
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        tokio::task::spawn_blocking(move || probe_write(&dir))
            .await
            .map_err(task_failed)?
            .map_err(StoreError::Db)
    }
}

/// Write, sync and remove a small file in `dir`.
fn probe_write(dir: &Path) -> Result<(), DbError> {
    use std::io::Write;
    let file = dir.join(format!(".scim-bridge-probe-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&file)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&file);
    written.map_err(|e| match e.raw_os_error() {
        Some(libc_enospc) if libc_enospc == ENOSPC => DbError::Full,
        _ => DbError::Unavailable(format!(
            "the database folder cannot be written: {}",
            e.kind()
        )),
    })
}

/// "No space left on device" (Linux, macOS and the BSDs agree).
const ENOSPC: i32 = 28;

/// A driver error in the domain's terms.
pub(crate) fn db_error(e: &rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DbError::Busy,
        Some(ErrorCode::DiskFull) => DbError::Full,
        Some(
            ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::SystemIoFailure,
        ) => DbError::Unavailable(e.to_string()),
        _ => DbError::Failed(e.to_string()),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(db_error(&e))
    }
}

impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        SyncError::Db(db_error(&e))
    }
}

impl From<rusqlite::Error> for TargetError {
    fn from(e: rusqlite::Error) -> Self {
        TargetError::Db(db_error(&e))
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        db_error(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(c), None)
    }

    #[test]
    fn driver_errors_are_classified() {
        assert!(matches!(
            db_error(&code(rusqlite::ffi::SQLITE_FULL)),
            DbError::Full
        ));
        assert!(matches!(
            db_error(&code(rusqlite::ffi::SQLITE_BUSY)),
            DbError::Busy
        ));
        assert!(matches!(
            db_error(&code(rusqlite::ffi::SQLITE_READONLY)),
            DbError::Unavailable(_)
        ));
        assert!(matches!(
            db_error(&code(rusqlite::ffi::SQLITE_CONSTRAINT)),
            DbError::Failed(_)
        ));
    }

    #[test]
    fn the_write_probe_fails_on_a_folder_that_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        assert!(probe_write(dir.path()).is_ok());
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "it cleans up"
        );
        let gone = dir.path().join("gone");
        assert!(matches!(probe_write(&gone), Err(DbError::Unavailable(_))));
    }
}
