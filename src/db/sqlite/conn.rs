//! SQLite connections: how each is configured, the write connection, and the pool of read
//! connections.
//!
//! Statements run synchronously on connections the backend owns, never through a driver that
//! hops to a worker thread per statement (on a small VM those context switches cost more than
//! the query): a point look-up in a warm page cache takes microseconds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, InterruptHandle, OpenFlags};

use crate::config::Durability;
use crate::store::DbError;

/// Idle read connections kept for reuse.
const MAX_IDLE: usize = 8;

/// A read connection's page cache, in KiB: the indexes of a large tenant stay hot.
const READER_CACHE_KIB: i64 = 4 * 1024;

/// The write connection's page cache, in KiB. The writer alone updates every index, the
/// provisioning log's random-keyed ones included: a larger cache keeps their pages from one
/// batch to the next instead of reading them back.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// Statements kept prepared per connection.
const STATEMENT_CACHE: usize = 64;

fn configure(
    conn: &Connection,
    durability: Durability,
    cache_kib: i64,
) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        },
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// The write connection, creating the file if it is missing and switching it to WAL (which
/// the file keeps).
pub fn open_create(path: &Path, durability: Durability) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    configure(&conn, durability, WRITER_CACHE_KIB)?;
    // Each write job runs in its own savepoint inside a shared transaction, so a page a
    // later job changes is first copied to the statement journal, which SQLite otherwise
    // spills to a temporary file past 64 KiB: a write per page on the writer's hot path.
    // In memory it is bounded by one transaction's pages.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Cap the file `conn` writes at `max_size_mb` MiB (SQLite's `max_page_count`, which holds for
/// this connection only: every connection that writes the staging file must be capped here).
/// A write that would grow the file past it fails with SQLITE_FULL, as on a full disk. The
/// cap in pages, as SQLite took it: never below the file's current size.
pub fn cap_size(conn: &Connection, max_size_mb: u32) -> Result<u64, DbError> {
    let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let wanted = u64::from(max_size_mb) * 1024 * 1024 / page_size.max(512);
    let took: u64 = conn.query_row(&format!("PRAGMA max_page_count = {wanted}"), [], |r| {
        r.get(0)
    })?;
    if took > wanted {
        tracing::warn!(
            max_size_mb,
            size_mb = took * page_size / (1024 * 1024),
            "the staging database is already larger than staging.max_size_mb: \
             it cannot grow, and writes that need more room fail until space is freed"
        );
    }
    Ok(took)
}

/// Pages the capped file can still take without growing past `max_pages`: the pages below
/// the cap plus the free pages inside the file.
pub fn pages_left(conn: &Connection, max_pages: u64) -> Result<u64, DbError> {
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(max_pages.saturating_sub(pages) + free)
}

/// Run `f` in one read transaction on `c`, so every statement in it sees the same snapshot
/// (a count and its page, a batch's users and their links).
pub fn snapshot<T, E: From<DbError>>(
    c: &Connection,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    c.execute_batch("BEGIN").map_err(DbError::from)?;
    let r = f();
    c.execute_batch("COMMIT").map_err(DbError::from)?;
    r
}

/// A read its caller can stop: one that has not started does not start, one that runs is
/// interrupted (SQLite's `sqlite3_interrupt`). A request whose deadline passed drops its
/// future, which stops its read, so a long scan ends with the request instead of running on.
#[derive(Default)]
pub struct Stop(Mutex<StopState>);

#[derive(Default)]
enum StopState {
    #[default]
    Waiting,
    Running(InterruptHandle),
    Done,
    Stopped,
}

impl Stop {
    pub fn stop(&self) {
        let mut s = match self.0.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let StopState::Running(h) = &*s {
            h.interrupt();
        }
        *s = StopState::Stopped;
    }

    /// Move to `next`, unless stopped already.
    fn set(&self, next: StopState) -> Result<(), DbError> {
        let mut s = match self.0.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if matches!(*s, StopState::Stopped) {
            return Err(DbError::Failed("the read was stopped".into()));
        }
        *s = next;
        Ok(())
    }
}

/// Read connections, taken for one call and given back.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub fn new(path: &Path) -> Result<Self, DbError> {
        let pool = ReadPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        // Fail at start, not on the first request, when the file cannot be read.
        let first = pool.open()?;
        pool.give_back(first);
        Ok(pool)
    }

    fn open(&self) -> Result<Connection, DbError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, Durability::Normal, READER_CACHE_KIB)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, DbError> {
        let idle = match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(_) => None,
        };
        match idle {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn);
        }
    }

    /// Run `f` on a read connection, on this thread, unless `stop` was stopped first; stopping
    /// it while `f` runs interrupts the statement in progress (which then fails).
    pub fn with_stop<T, E: From<DbError>>(
        &self,
        stop: &Stop,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.with(|c| {
            stop.set(StopState::Running(c.get_interrupt_handle()))?;
            let r = f(c);
            // Under the lock: a stop from now on cannot reach this connection's next user.
            stop.set(StopState::Done)?;
            r
        })
    }

    /// Run `f` on a read connection, on this thread. Keep `f` short: it blocks the caller.
    pub fn with<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = self.take()?;
        let r = f(&conn);
        // A connection left inside a transaction by an error is not reused.
        if conn.is_autocommit() {
            self.give_back(conn);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_connection_keeps_statement_journals_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_create(&dir.path().join("w.db"), Durability::Full).unwrap();
        let temp_store: i64 = c.query_row("PRAGMA temp_store", [], |r| r.get(0)).unwrap();
        assert_eq!(temp_store, 2, "MEMORY");
        let cache: i64 = c.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap();
        assert_eq!(cache, -WRITER_CACHE_KIB);
    }
}
