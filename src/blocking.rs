//! CPU work of milliseconds (planning an update of a large document, rendering a large
//! answer) off the async worker: on the server's multi-threaded runtime the worker hands its
//! other tasks to another thread while the work runs (`block_in_place`), so requests queued
//! behind it on that worker are not held up. Small work, and other runtimes, run in place (the
//! hand-over costs more than they do).

use tokio::runtime::{Handle, RuntimeFlavor};

/// Planning an update of a document this large (parsing, the change, comparing, serialising)
/// is CPU work of milliseconds.
pub const LARGE_UPDATE: usize = 64 * 1024;
/// Rendering this many bytes of documents is: a page of 100 ordinary users (about 100 KB)
/// renders in well under a millisecond, less than the hand-over would cost it.
pub const LARGE_RENDER: usize = 1024 * 1024;

/// Run `work`, off the async worker when `bytes` (of documents it goes through) is at least
/// `large`.
pub fn off_worker_if_large<T>(bytes: usize, large: usize, work: impl FnOnce() -> T) -> T {
    let multi_threaded =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if bytes >= large && multi_threaded {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// block_in_place panics on a current-thread runtime; large work there runs in place.
    #[tokio::test(flavor = "current_thread")]
    async fn large_work_on_a_current_thread_runtime_runs_in_place() {
        assert_eq!(off_worker_if_large(1, 1, || 7), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn large_work_on_the_server_runtime_leaves_the_worker_free() {
        // With one worker, a task queued behind the large work (on the same worker) runs
        // meanwhile only if the work gave the worker up.
        let on_worker = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let other = tokio::spawn(async move { tx.send(()).unwrap() });
            let got = off_worker_if_large(1, 1, || {
                rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok()
            });
            other.await.unwrap();
            got
        });
        assert!(on_worker.await.unwrap(), "the other task ran meanwhile");
    }

    #[test]
    fn outside_a_runtime_work_runs_in_place() {
        assert_eq!(off_worker_if_large(2, 1, || "done"), "done");
    }
}
