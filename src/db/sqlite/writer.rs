//! Group commit: one thread owns the write connection and runs queued write jobs in shared
//! transactions, each job inside its own savepoint.
//!
//! With `synchronous=FULL` a commit costs an fsync; committing the jobs that queued up while
//! the previous commit was on disk makes that cost per batch, not per request. A job that
//! fails rolls back to its savepoint and leaves the others alone; a job's caller hears back
//! only after the commit, so nothing is acknowledged that is not durable. Jobs run
//! synchronously on the writer thread: a request costs one hand-over to it and one back,
//! however many statements it runs.

use std::any::Any;
use std::sync::{Arc, Mutex, Weak};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::store::{DbError, StoreError};
use crate::sync::SyncError;

/// Jobs in one transaction at most; bounds the latency a batch adds.
const MAX_BATCH: usize = 128;

type Erased = Box<dyn Any + Send>;
/// A job's own outcome (its value or its error, type-erased), or why the batch failed.
type Outcome = Result<Result<Erased, Erased>, DbError>;
/// A job's own error comes with the storage failure it was, if it was one.
type RunFn = Box<dyn FnOnce(&Connection) -> Result<Erased, (Erased, Option<DbError>)> + Send>;
type ReplyFn = Box<dyn FnOnce(Outcome) + Send>;

struct Job {
    run: RunFn,
    reply: ReplyFn,
    /// Alive while the caller waits for the outcome. A caller that went away before its job's
    /// turn (a request past its deadline, whose future was dropped) has its job skipped: the
    /// work ends with the request, and nothing it would have written is left unanswered.
    caller: Weak<()>,
}

/// The error of a write job: anything the writer can report a failure of its own as, and
/// which says whether it was the database's.
pub trait JobError: From<DbError> + Send + 'static {
    fn db_error(&self) -> Option<&DbError>;
}

impl JobError for DbError {
    fn db_error(&self) -> Option<&DbError> {
        Some(self)
    }
}

impl JobError for StoreError {
    fn db_error(&self) -> Option<&DbError> {
        match self {
            StoreError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl JobError for SyncError {
    fn db_error(&self) -> Option<&DbError> {
        match self {
            SyncError::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// A failure for want of storage (full, read-only, gone), which readiness reports.
fn storage_failure(e: &DbError) -> bool {
    matches!(e, DbError::Full | DbError::Unavailable(_))
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Why the last batch, or a job in it, failed for want of storage (full, read-only):
    /// a statement that finds the disk full fails its job, not always the batch. Cleared by a
    /// batch without one.
    storage: Arc<Mutex<Option<DbError>>>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub fn start(conn: Connection) -> Result<Writer, DbError> {
        let (tx, rx) = mpsc::channel(1024);
        let storage = Arc::new(Mutex::new(None));
        let health = storage.clone();
        std::thread::Builder::new()
            .name("staging-writer".into())
            .spawn(move || writer_thread(conn, rx, &health))
            .map_err(|e| DbError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Writer { jobs: tx, storage })
    }

    /// The storage failure of the last batch, if it failed for one.
    pub fn storage_failure(&self) -> Option<DbError> {
        match self.storage.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Run `f` in a write transaction (shared with other jobs) and return its result once
    /// committed. An error from `f` undoes what `f` wrote (its savepoint) and nothing else.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: JobError,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let caller = Arc::new(());
        let job = Job {
            caller: Arc::downgrade(&caller),
            run: Box::new(move |conn| {
                f(conn).map(|t| Box::new(t) as Erased).map_err(|e| {
                    let storage = e.db_error().filter(|d| storage_failure(d)).cloned();
                    (Box::new(e) as Erased, storage)
                })
            }),
            reply: Box::new(move |r| {
                let r = match r {
                    Ok(Ok(t)) => t.downcast::<T>().map(|t| *t).map_err(|_| gone().into()),
                    Ok(Err(e)) => Err(e
                        .downcast::<E>()
                        .map(|e| *e)
                        .unwrap_or_else(|_| gone().into())),
                    Err(e) => Err(E::from(e)),
                };
                let _ = tx.send(r);
            }),
        };
        self.jobs.send(job).await.map_err(|_| E::from(gone()))?;
        let outcome = rx.await.map_err(|_| E::from(gone()));
        drop(caller);
        outcome?
    }
}

fn writer_thread(conn: Connection, mut rx: mpsc::Receiver<Job>, health: &Mutex<Option<DbError>>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        run_batch(&conn, jobs, health);
    }
}

/// Record a batch's storage failure (or its absence), before its callers hear back: an
/// answered 503 is already in readiness.
fn record(health: &Mutex<Option<DbError>>, failure: Option<&DbError>) {
    let mut h = match health.lock() {
        Ok(h) => h,
        Err(poisoned) => poisoned.into_inner(),
    };
    *h = failure.filter(|e| storage_failure(e)).cloned();
}

/// A statement without results, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn gone() -> DbError {
    DbError::Unavailable("the staging writer has stopped".into())
}

/// Run the jobs in one transaction and record in `health` the batch's own failure if it
/// failed, else the storage failure of a job that failed alone.
fn run_batch(conn: &Connection, jobs: Vec<Job>, health: &Mutex<Option<DbError>>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let e = DbError::from(e);
        record(health, Some(&e));
        for j in jobs {
            (j.reply)(Err(e.clone()));
        }
        return;
    }
    let mut done: Vec<(ReplyFn, Outcome)> = Vec::with_capacity(jobs.len());
    let mut broken: Option<DbError> = None;
    let mut job_storage: Option<DbError> = None;
    for j in jobs {
        if broken.is_some() {
            done.push((j.reply, Err(DbError::Failed("batch aborted".into()))));
            continue;
        }
        if j.caller.strong_count() == 0 {
            done.push((j.reply, Err(DbError::Failed("its caller went away".into()))));
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            let e = DbError::from(e);
            broken = Some(e.clone());
            done.push((j.reply, Err(e)));
            continue;
        }
        // A job that panics fails alone, like one that returns an error; the thread, and with
        // it every later write, goes on.
        let run = j.run;
        let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(conn))) {
            Ok(r) => r.map_err(|(own, storage)| {
                if storage.is_some() {
                    job_storage = storage;
                }
                Ok(own)
            }),
            Err(_) => {
                tracing::error!("a staging write job panicked; rolled back");
                Err(Err(DbError::Failed("the write failed".into())))
            }
        };
        let end = if r.is_ok() {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        if let Err(e) = end {
            broken = Some(DbError::from(e));
        }
        done.push((
            j.reply,
            match r {
                Ok(v) => Ok(Ok(v)),
                Err(Ok(own)) => Ok(Err(own)),
                Err(Err(e)) => Err(e),
            },
        ));
    }
    let commit = match broken {
        None => exec(conn, "COMMIT").map_err(DbError::from),
        Some(e) => Err(e),
    };
    match commit {
        Ok(()) => {
            record(health, job_storage.as_ref());
            for (reply, r) in done {
                reply(r);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "staging write batch failed; rolled back");
            let _ = exec(conn, "ROLLBACK");
            record(health, Some(&e));
            for (reply, r) in done {
                // A job that failed on its own keeps its own error; the others learn the commit failed.
                reply(match r {
                    Ok(Err(own)) => Ok(Err(own)),
                    _ => Err(e.clone()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement that finds the storage full fails its job, not the batch: the writer
    /// still records it for readiness, and a later batch without one clears it.
    #[tokio::test]
    async fn a_job_failing_for_want_of_storage_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(Connection::open(dir.path().join("w.db")).unwrap()).unwrap();
        let full: Result<(), StoreError> = w
            .run(|_: &Connection| Err(StoreError::Db(DbError::Full)))
            .await;
        assert!(matches!(full, Err(StoreError::Db(DbError::Full))));
        assert!(matches!(w.storage_failure(), Some(DbError::Full)));
        let refused: Result<(), StoreError> =
            w.run(|_: &Connection| Err(StoreError::NotFound)).await;
        assert!(refused.is_err());
        assert!(w.storage_failure().is_none(), "not a storage failure");
    }

    /// A job whose caller went away before its turn is not run.
    #[tokio::test]
    async fn a_job_whose_caller_left_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let w = Writer::start(conn).unwrap();
        // Hold the writer busy until released.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = {
            let w = w.clone();
            tokio::spawn(async move {
                w.run(move |_: &Connection| -> Result<(), DbError> {
                    let _ = wait.recv();
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Handed over, then given up on while the writer is busy.
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            w.run(|c: &Connection| -> Result<(), DbError> {
                c.execute("INSERT INTO t (v) VALUES (1)", [])?;
                Ok(())
            }),
        )
        .await;
        assert!(gave_up.is_err(), "still waiting for its turn");
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        let waited: Result<(), DbError> = w
            .run(|c: &Connection| {
                c.execute("INSERT INTO t (v) VALUES (2)", [])?;
                Ok(())
            })
            .await;
        waited.unwrap();
        let rows: Vec<i64> = w
            .run(|c: &Connection| -> Result<Vec<i64>, DbError> {
                let mut s = c.prepare("SELECT v FROM t")?;
                let v = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(v)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![2], "the abandoned insert never ran");
    }

    /// A job that fails or panics leaves nothing behind and fails alone; the thread goes on.
    #[tokio::test]
    async fn a_failing_or_panicking_job_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let w = Writer::start(conn).unwrap();
        let insert = |v: i64| {
            move |c: &Connection| -> Result<(), DbError> {
                c.execute("INSERT INTO t (v) VALUES (?)", [v])?;
                Ok(())
            }
        };
        w.run(insert(1)).await.unwrap();
        let failed: Result<(), DbError> = w
            .run(|c: &Connection| {
                c.execute("INSERT INTO t (v) VALUES (2)", [])?;
                Err(DbError::Failed("refused".into()))
            })
            .await;
        assert!(matches!(failed, Err(DbError::Failed(m)) if m == "refused"));
        #[allow(clippy::panic)]
        let panicked: Result<(), DbError> = w
            .run(|c: &Connection| {
                c.execute("INSERT INTO t (v) VALUES (3)", []).unwrap();
                panic!("a bug")
            })
            .await;
        assert!(panicked.is_err());
        w.run(insert(4)).await.unwrap();
        let values: Vec<i64> = w
            .run(|c: &Connection| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY v")?;
                let rows = s.query_map([], |r| r.get(0))?;
                Ok::<_, DbError>(rows.collect::<Result<Vec<i64>, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(values, [1, 4]);
    }
}
