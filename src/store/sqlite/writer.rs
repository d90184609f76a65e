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

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Jobs in one transaction at most; bounds the latency a batch adds.
const MAX_BATCH: usize = 128;

type Erased = Box<dyn Any + Send>;
type RunFn = Box<dyn FnOnce(&Connection) -> Result<Erased, StoreError> + Send>;
type ReplyFn = Box<dyn FnOnce(Result<Erased, StoreError>) + Send>;

struct Job {
    run: RunFn,
    reply: ReplyFn,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub fn start(conn: Connection) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel(1024);
        std::thread::Builder::new()
            .name("staging-writer".into())
            .spawn(move || writer_thread(conn, rx))
            .map_err(|e| StoreError::CommitFailed(format!("cannot start the writer: {e}")))?;
        Ok(Writer { jobs: tx })
    }

    /// Run `f` in a write transaction (shared with other jobs) and return its result once committed.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job = Job {
            run: Box::new(move |conn| f(conn).map(|t| Box::new(t) as Erased)),
            reply: Box::new(move |r| {
                let r = r.and_then(|b| {
                    b.downcast::<T>()
                        .map(|b| *b)
                        .map_err(|_| StoreError::WriterGone)
                });
                let _ = tx.send(r);
            }),
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }
}

fn writer_thread(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        run_batch(&conn, jobs);
    }
}

/// A statement without results, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run_batch(conn: &Connection, jobs: Vec<Job>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let msg = e.to_string();
        for j in jobs {
            (j.reply)(Err(StoreError::CommitFailed(msg.clone())));
        }
        return;
    }
    let mut done: Vec<(ReplyFn, Result<Erased, StoreError>)> = Vec::with_capacity(jobs.len());
    let mut broken: Option<String> = None;
    for j in jobs {
        if broken.is_some() {
            done.push((
                j.reply,
                Err(StoreError::CommitFailed("batch aborted".into())),
            ));
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            broken = Some(e.to_string());
            done.push((j.reply, Err(StoreError::CommitFailed(e.to_string()))));
            continue;
        }
        let r = (j.run)(conn);
        let end = if r.is_ok() {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        if let Err(e) = end {
            broken = Some(e.to_string());
        }
        done.push((j.reply, r));
    }
    let commit = match &broken {
        None => exec(conn, "COMMIT").map_err(|e| e.to_string()),
        Some(msg) => Err(msg.clone()),
    };
    match commit {
        Ok(()) => {
            for (reply, r) in done {
                reply(r);
            }
        }
        Err(msg) => {
            tracing::error!(error = %msg, "staging write batch failed; rolled back");
            let _ = exec(conn, "ROLLBACK");
            for (reply, r) in done {
                // A job that failed on its own keeps its own error; the others learn the commit failed.
                reply(match r {
                    Err(e) => Err(e),
                    Ok(_) => Err(StoreError::CommitFailed(msg.clone())),
                });
            }
        }
    }
}
