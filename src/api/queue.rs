//! Writes to one resource queue behind each other: a PATCH, PUT or DELETE holds its
//! resource's turn for its read-modify-write, so concurrent writes of one user land one after
//! the other instead of racing the store's compare-and-swap (which stays, for writers in other
//! processes). A write that waits longer than [`MAX_WAIT`] gives up with `Contended` (503 with
//! Retry-After).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::scim::schema::ResourceKind;
use crate::store::StoreError;

/// The longest a write waits for its turn.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

type Key = (String, ResourceKind, String);

/// One turn per (tenant, kind, id) that has a write in flight or waiting.
#[derive(Default)]
pub struct WriteQueue {
    turns: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// A resource's turn, held until dropped.
pub struct Turn<'a> {
    queue: &'a WriteQueue,
    key: Key,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteQueue {
    /// Wait for the resource's turn (at most [`MAX_WAIT`]).
    pub async fn turn(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Turn<'_>, StoreError> {
        self.turn_within(tenant, kind, id, MAX_WAIT).await
    }

    async fn turn_within(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        wait: Duration,
    ) -> Result<Turn<'_>, StoreError> {
        let key = (tenant.to_string(), kind, id.to_string());
        let lock = self.with(|t| t.entry(key.clone()).or_default().clone());
        let mut turn = Turn {
            queue: self,
            key,
            guard: None,
        };
        // On a timeout the Turn still drops, and with it the entry when no one else waits.
        let guard = tokio::time::timeout(wait, lock.lock_owned())
            .await
            .map_err(|_| StoreError::Contended)?;
        turn.guard = Some(guard);
        Ok(turn)
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Key, Arc<tokio::sync::Mutex<()>>>) -> T) -> T {
        let mut t = match self.turns.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut t)
    }

    /// Resources with a write in flight or waiting.
    pub fn len(&self) -> usize {
        self.with(|t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.queue.with(|t| {
            // Only the map holds it: no one else is in or waiting.
            if t.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
                t.remove(&self.key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_taken_in_order_and_forgotten_after() {
        let q = Arc::new(WriteQueue::default());
        let first = q.turn("t", ResourceKind::User, "1").await.unwrap();
        // Another resource is not held up.
        drop(q.turn("t", ResourceKind::User, "2").await.unwrap());
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move {
                let _t = q.turn("t", ResourceKind::User, "1").await.unwrap();
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap();
        assert!(q.is_empty(), "no entry outlives its writes");
    }

    #[tokio::test]
    async fn a_write_that_waits_too_long_is_contended() {
        let q = WriteQueue::default();
        let _held = q.turn("t", ResourceKind::Group, "g").await.unwrap();
        let late = q
            .turn_within("t", ResourceKind::Group, "g", Duration::from_millis(20))
            .await;
        assert!(matches!(late, Err(StoreError::Contended)));
        assert_eq!(q.len(), 1, "the holder's entry stays");
    }
}
