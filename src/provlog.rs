//! The provisioning log writer. A SCIM write that changes something has its entry written by
//! the store in the write's own transaction ([`crate::store::RequestLog`]), so an answered
//! write never loses its entry to a crash; every half second (and at start) this task has the
//! store settle such entries into the log's look-ups. Every other request (reads, refusals, writes that
//! changed nothing) is recorded off the request path: the request hands its entry to a bounded
//! channel (never waiting); a background task collects entries for up to half a second (or a
//! thousand) and writes them in one statement, and prunes entries past the retention period.
//! The same task corrects the rare written entry whose request was answered otherwise.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{ProvisioningEntry, ProvisioningLogStore};

/// Entries waiting for the writer; more are dropped (and counted) rather than slowing requests.
const QUEUE: usize = 10_000;
/// Entries per write.
const BATCH: usize = 1_000;
/// How long an entry may wait for others to share its write: a busy server commits the log
/// about once per this interval instead of once per request.
const LINGER: Duration = Duration::from_millis(500);
/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

enum Msg {
    Entry(Box<ProvisioningEntry>),
    /// Correct an entry written with its write.
    Amend(Box<ProvisioningEntry>),
    /// Write everything received so far, then answer.
    Flush(oneshot::Sender<()>),
}

/// The handle requests record through. Cloning shares the one writer.
#[derive(Clone)]
pub struct ProvisioningLog {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    retention_days: u32,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl ProvisioningLog {
    /// Start the writer task; `retention_days` 0 keeps nothing (entries are not even written).
    pub fn start(
        store: Arc<dyn ProvisioningLogStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        retention_days: u32,
    ) -> ProvisioningLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, clock, rx, retention_days));
        ProvisioningLog {
            tx,
            metrics,
            retention_days,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }
    }

    /// Record one request; never waits.
    pub fn record(&self, entry: ProvisioningEntry) {
        if self.tx.try_send(Msg::Entry(Box::new(entry))).is_err() {
            self.metrics.provisioning_log_dropped();
        }
    }

    /// Correct an entry written with its write (its request was answered otherwise); never
    /// waits.
    pub fn amend(&self, entry: ProvisioningEntry) {
        if self.tx.try_send(Msg::Amend(Box::new(entry))).is_err() {
            self.metrics.provisioning_log_dropped();
        }
    }

    /// Whether entries are kept (`provisioning_log_days` above 0).
    pub fn enabled(&self) -> bool {
        self.retention_days > 0
    }

    /// Wait until everything recorded before this call is written.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Write what is queued and stop the writer (at shutdown, after the last request).
    pub async fn close(&self) {
        self.flush().await;
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn run(
    store: Arc<dyn ProvisioningLogStore>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Msg>,
    retention_days: u32,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick, at once, settles what a crash left in the store's inbox.
    let mut settling = tokio::time::interval(LINGER);
    settling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<ProvisioningEntry> = Vec::with_capacity(BATCH);
    // When the oldest unwritten entry must be written at the latest.
    let mut deadline: Option<Instant> = None;
    loop {
        let due = deadline.unwrap_or_else(|| Instant::now() + PRUNE_EVERY);
        tokio::select! {
            msg = rx.recv() => match msg {
                None => {
                    write(store.as_ref(), &mut batch, retention_days).await;
                    settle(store.as_ref(), retention_days).await;
                    return;
                }
                Some(Msg::Entry(e)) => {
                    batch.push(*e);
                    if batch.len() >= BATCH {
                        write(store.as_ref(), &mut batch, retention_days).await;
                        deadline = None;
                    } else if deadline.is_none() {
                        deadline = Some(Instant::now() + LINGER);
                    }
                }
                Some(Msg::Amend(e)) => {
                    if retention_days > 0
                        && let Err(e) = store.amend_provisioning_log(std::slice::from_ref(&e)).await
                    {
                        tracing::warn!(error = %e, "correcting a provisioning log entry failed");
                    }
                }
                Some(Msg::Flush(ack)) => {
                    write(store.as_ref(), &mut batch, retention_days).await;
                    settle(store.as_ref(), retention_days).await;
                    deadline = None;
                    let _ = ack.send(());
                }
            },
            _ = tokio::time::sleep_until(due), if deadline.is_some() => {
                write(store.as_ref(), &mut batch, retention_days).await;
                deadline = None;
            }
            _ = settling.tick() => settle(store.as_ref(), retention_days).await,
            _ = prune.tick() => {
                if retention_days > 0 {
                    let cutoff = clock.now() - chrono::Duration::days(i64::from(retention_days));
                    match store.prune_provisioning_log(cutoff).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "provisioning log pruned"),
                        Err(e) => tracing::warn!(error = %e, "pruning the provisioning log failed"),
                    }
                }
            }
        }
    }
}

/// Move the entries written with their writes into the log proper.
async fn settle(store: &dyn ProvisioningLogStore, retention_days: u32) {
    if retention_days > 0
        && let Err(e) = store.settle_provisioning_log().await
    {
        tracing::warn!(error = %e, "moving written entries into the provisioning log failed");
    }
}

async fn write(
    store: &dyn ProvisioningLogStore,
    batch: &mut Vec<ProvisioningEntry>,
    retention_days: u32,
) {
    if batch.is_empty() {
        return;
    }
    if retention_days > 0
        && let Err(e) = store.insert_provisioning_log(batch).await
    {
        tracing::warn!(error = %e, entries = batch.len(), "writing the provisioning log failed");
    }
    batch.clear();
}
