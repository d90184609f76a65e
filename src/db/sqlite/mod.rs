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

use crate::config::SqliteSettings;
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
    /// `[staging] max_size_mb` in pages, as the write connection took it; None: no cap.
    max_pages: Option<u64>,
}

/// Pages a capped file must have left for readiness to pass: a write touches about a dozen
/// b-trees (a table, its indexes, the log), each of which may split. A write that failed at
/// the cap rolls back, so the file may stop a few pages short of it; that is not room.
const HEADROOM_PAGES: u64 = 16;

impl SqliteStaging {
    /// Open (creating if missing) and migrate the database at `path`.
    pub async fn open(
        path: &Path,
        settings: impl Into<SqliteSettings>,
    ) -> Result<Self, StoreError> {
        let (path, settings) = (path.to_path_buf(), settings.into());
        tokio::task::spawn_blocking(move || {
            let (conn, _, max_pages) = open_migrated(&path, settings)?;
            Ok(SqliteStaging {
                writes: writer::Writer::start(conn)?,
                reads: Arc::new(conn::ReadPool::new(&path)?),
                path,
                max_pages,
            })
        })
        .await
        .map_err(task_failed)?
    }

    /// Run `f` on a read connection on a blocking thread. Dropping the future stops the read
    /// (before it starts, or by interrupting its statement).
    async fn read<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        /// Stops the read when the future that waits for it goes away.
        struct StopOnDrop(Arc<conn::Stop>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        let reads = self.reads.clone();
        let stop = StopOnDrop(Arc::default());
        let theirs = stop.0.clone();
        tokio::task::spawn_blocking(move || reads.with_stop(&theirs, f))
            .await
            .map_err(|e| E::from(task_failed(e)))?
    }
}

/// Create the file (and its folder) if missing, switch it to WAL, cap its size when asked and
/// migrate it: the write connection, what the migrations did, and the cap in pages.
fn open_migrated(
    path: &Path,
    settings: SqliteSettings,
) -> Result<(Connection, MigrationReport, Option<u64>), StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut conn = conn::open_create(path, settings.durability)?;
    let max_pages = settings
        .max_size_mb
        .map(|mb| conn::cap_size(&conn, mb))
        .transpose()?;
    let report = migrate::run(&mut conn)?;
    Ok((conn, report, max_pages))
}

/// `scim-bridge migrate` on an SQLite file.
pub async fn migrate_file(
    path: &Path,
    settings: SqliteSettings,
) -> Result<MigrationReport, StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || open_migrated(&path, settings).map(|(_, r, _)| r))
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

    /// A file can be written and synced beside the database (a read-only or full folder, or
    /// one that is gone, cannot); a capped file has room below its cap; and when a write
    /// failed for want of storage, the database file itself can be written. All probed on
    /// each call, never waited for: while readiness fails a load balancer may route no write
    /// here, so no write would come to succeed and say the storage is back.
    async fn writable(&self) -> Result<(), StoreError> {
        let recorded = self.writes.storage_failure();
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let (path, reads, max_pages) = (self.path.clone(), self.reads.clone(), self.max_pages);
        tokio::task::spawn_blocking(move || {
            probe_write(&dir)?;
            if let Some(max) = max_pages
                && reads.with(|c| conn::pages_left(c, max))? < HEADROOM_PAGES
            {
                return Err(DbError::Full);
            }
            // A recorded full disk is over once the folder takes a file again (above); a
            // file made read-only in a writable folder shows only here.
            if let Some(DbError::Unavailable(_)) = recorded {
                probe_file(&path)?;
            }
            Ok(())
        })
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

/// Open the database file itself for writing (without changing it): a file made read-only
/// in a writable folder fails here.
fn probe_file(path: &Path) -> Result<(), DbError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| {
            DbError::Unavailable(format!("the database file cannot be written: {}", e.kind()))
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

    /// The cap is in pages, hits as a full disk, and never lies below the file's size.
    #[test]
    fn a_capped_file_is_full_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = conn::open_create(&path, crate::config::Durability::Normal).unwrap();
        c.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let page: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(conn::cap_size(&c, 1).unwrap(), 1024 * 1024 / page);
        let big = c.execute("INSERT INTO t (v) VALUES (zeroblob(2 * 1024 * 1024))", []);
        assert!(matches!(big.map_err(|e| db_error(&e)), Err(DbError::Full)));
        let left = conn::pages_left(&c, 1024 * 1024 / page).unwrap();
        assert!(left > HEADROOM_PAGES, "{left}");
        c.execute("INSERT INTO t (v) VALUES (zeroblob(980 * 1024))", [])
            .unwrap();
        assert!(conn::pages_left(&c, 1024 * 1024 / page).unwrap() < HEADROOM_PAGES);
        // Deleted rows' pages count as room.
        c.execute("DELETE FROM t", []).unwrap();
        assert!(conn::pages_left(&c, 1024 * 1024 / page).unwrap() > HEADROOM_PAGES);
        drop(c);

        // A file already larger than its cap keeps its size as the cap.
        let c = conn::open_create(&path, crate::config::Durability::Normal).unwrap();
        c.execute("INSERT INTO t (v) VALUES (zeroblob(2 * 1024 * 1024))", [])
            .unwrap();
        drop(c);
        let c = conn::open_create(&path, crate::config::Durability::Normal).unwrap();
        let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(conn::cap_size(&c, 1).unwrap(), pages);
    }

    /// A read whose caller gives up is interrupted, not run to its end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_caller_left_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStaging::open(&dir.path().join("s.db"), crate::config::Durability::Normal)
            .await
            .unwrap();
        let (ended, ends) = std::sync::mpsc::channel();
        // Counts for half a minute or more when left alone.
        let long = s.read(move |c| {
            let r = c.query_row(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 500000000) \
                 SELECT count(*) FROM n",
                [],
                |r| r.get::<_, i64>(0),
            );
            let _ = ended.send(r.is_err());
            r.map_err(StoreError::from)
        });
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(200), long).await;
        assert!(gave_up.is_err(), "still counting");
        let failed = tokio::task::spawn_blocking(move || {
            ends.recv_timeout(std::time::Duration::from_secs(10))
        })
        .await
        .unwrap();
        assert_eq!(failed, Ok(true), "interrupted soon after its caller left");
        // The pool goes on serving.
        s.ping().await.unwrap();
        let n: i64 = s
            .read(|c| Ok::<_, StoreError>(c.query_row("SELECT 41 + 1", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 42);
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
