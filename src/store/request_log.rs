//! One SCIM request's provisioning log entry while the request runs.
//!
//! The request's observer opens it with what the request line says; the handler adds whom the
//! body names and, for a write, what the write answers when it succeeds, and passes it to the
//! store. The store writes the entry in the write's own transaction when the write changes
//! something, so the change and its entry commit together: a crash keeps both or neither, and
//! an answered write costs one commit. When the request ends, the observer records the entry
//! through the log's queue unless the store wrote it, and amends a written entry whose answer
//! turned out otherwise (a deadline that struck after the commit).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::ProvisioningEntry;

/// Shared by the observer, the handler and the store; `RequestLog::default()` records nothing.
#[derive(Clone, Default)]
pub struct RequestLog(Option<Arc<Mutex<Draft>>>);

struct Draft {
    entry: ProvisioningEntry,
    started: Instant,
    /// What a successful write answers and is about, once the handler said so.
    success: Option<(u16, String)>,
    /// The entry as the store committed it with the write.
    written: Option<ProvisioningEntry>,
}

/// What the observer does with a request's entry when the request ends.
#[derive(Debug, PartialEq)]
pub enum Finished {
    /// Nothing: the store committed it with the write, as it was answered.
    Written,
    /// The store committed it, but the answer was another: correct the committed entry (found
    /// by tenant, request id and time) to this.
    Amend(ProvisioningEntry),
    /// Record this through the queue.
    Record(ProvisioningEntry),
    /// Nothing: this request is not logged.
    Off,
}

impl RequestLog {
    /// An entry for a request that started at `started`; its status and duration are set when
    /// it is written or finished.
    pub fn open(entry: ProvisioningEntry, started: Instant) -> RequestLog {
        RequestLog(Some(Arc::new(Mutex::new(Draft {
            entry,
            started,
            success: None,
            written: None,
        }))))
    }

    fn draft(&self) -> Option<MutexGuard<'_, Draft>> {
        let d = self.0.as_ref()?;
        Some(d.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Whom the request is about, as its body said (failures included).
    pub fn name(&self, user_name: Option<String>, external_id: Option<String>) {
        if let Some(mut d) = self.draft() {
            d.entry.user_name = user_name;
            d.entry.external_id = external_id;
        }
    }

    /// The write about to be made answers `status` about `resource_id` when it succeeds.
    pub fn on_success(&self, status: u16, resource_id: &str) {
        if let Some(mut d) = self.draft() {
            d.success = Some((status, resource_id.chars().take(200).collect()));
        }
    }

    /// For the store, as it makes the write: the entry to write with it, with its duration so
    /// far. None when nothing is to be written with it (no log, or not a write).
    pub fn for_write(&self) -> Option<ProvisioningEntry> {
        let d = self.draft()?;
        let (status, resource_id) = d.success.clone()?;
        Some(ProvisioningEntry {
            status,
            resource_id: Some(resource_id),
            duration_ms: millis(d.started),
            ..d.entry.clone()
        })
    }

    /// For the store: `entry` (from [`RequestLog::for_write`]) committed with the write.
    pub fn written(&self, entry: ProvisioningEntry) {
        if let Some(mut d) = self.draft() {
            d.written = Some(entry);
        }
    }

    /// The request was answered `status` (with `error`, the SCIM error's detail); a create
    /// names its new resource `created` (from Location) if the handler did not.
    pub fn finish(&self, status: u16, error: Option<String>, created: Option<String>) -> Finished {
        let Some(mut d) = self.draft() else {
            return Finished::Off;
        };
        let duration_ms = millis(d.started);
        if let Some(w) = d.written.take() {
            if w.status == status && error.is_none() {
                return Finished::Written;
            }
            return Finished::Amend(ProvisioningEntry {
                status,
                duration_ms,
                error,
                ..w
            });
        }
        let mut entry = d.entry.clone();
        if entry.resource_id.is_none() {
            entry.resource_id = created.map(|id| id.chars().take(200).collect());
        }
        Finished::Record(ProvisioningEntry {
            status,
            duration_ms,
            error,
            ..entry
        })
    }
}

/// Milliseconds since `started`, to the microsecond.
fn millis(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn entry() -> ProvisioningEntry {
        ProvisioningEntry {
            tenant: "t".into(),
            at: DateTime::UNIX_EPOCH,
            request_id: "r1".into(),
            method: "POST".into(),
            path: "/Users".into(),
            resource_id: None,
            status: 0,
            duration_ms: 0.0,
            error: None,
            user_name: None,
            external_id: None,
        }
    }

    #[test]
    fn a_request_without_a_log_records_nothing() {
        let log = RequestLog::default();
        log.name(Some("a".into()), None);
        log.on_success(201, "u1");
        assert!(log.for_write().is_none());
        assert_eq!(log.finish(201, None, None), Finished::Off);
    }

    #[test]
    fn an_entry_written_with_its_write_and_answered_so_is_done() {
        let log = RequestLog::open(entry(), Instant::now());
        log.name(Some("alice".into()), Some("e1".into()));
        assert!(log.for_write().is_none(), "no write announced yet");
        log.on_success(201, "u1");
        let w = log.for_write().expect("an entry to write");
        assert_eq!(
            (w.status, w.resource_id.as_deref(), w.user_name.as_deref()),
            (201, Some("u1"), Some("alice"))
        );
        log.written(w);
        assert_eq!(log.finish(201, None, None), Finished::Written);
    }

    #[test]
    fn a_written_entry_answered_otherwise_is_amended() {
        let log = RequestLog::open(entry(), Instant::now());
        log.on_success(200, "u1");
        let w = log.for_write().expect("an entry to write");
        log.written(w.clone());
        match log.finish(503, Some("deadline".into()), None) {
            Finished::Amend(e) => {
                assert_eq!((e.status, e.error.as_deref()), (503, Some("deadline")));
                assert_eq!((e.request_id, e.at), (w.request_id, w.at));
            }
            other => panic!("expected an amendment, got {other:?}"),
        }
    }

    #[test]
    fn an_entry_not_written_is_recorded_with_its_answer() {
        let log = RequestLog::open(entry(), Instant::now());
        log.name(Some("alice".into()), None);
        // A write announced but refused (or one that changed nothing) was not written.
        log.on_success(201, "u1");
        match log.finish(409, Some("taken".into()), None) {
            Finished::Record(e) => {
                assert_eq!((e.status, e.error.as_deref()), (409, Some("taken")));
                assert_eq!(e.user_name.as_deref(), Some("alice"));
                assert_eq!(e.resource_id, None, "a refused create made no resource");
            }
            other => panic!("expected a record, got {other:?}"),
        }
        let log = RequestLog::open(entry(), Instant::now());
        match log.finish(201, None, Some("u9".into())) {
            Finished::Record(e) => assert_eq!(e.resource_id.as_deref(), Some("u9")),
            other => panic!("expected a record, got {other:?}"),
        }
    }
}
