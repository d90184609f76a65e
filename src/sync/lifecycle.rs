//! The lifecycle of a run: users inactive or deleted past the retention are purged from staging
//! and their application offboarding queued (or, past the guard, held for approval), then the
//! queue is applied. Each step reads a batch, plans it purely and records it in one call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use super::plan::{
    failed_item, offboarding_action, offboarding_changes, offboarding_from_json, offboarding_json,
};
use super::run::Run;
use super::store::{
    DueBatch, DueQuery, LifecyclePlanner, LifecycleRecord, NewOffboarding, PruneRuns, Queued,
    SyncStore,
};
use super::{ItemReport, Outcome, SyncError, UserFailure};
use crate::mapping::Mapping;
use crate::target::UserApplied;

/// What a lifecycle plan records besides its items.
struct Context {
    tenant: String,
    run_id: i64,
    now: DateTime<Utc>,
    holder: Option<String>,
    lease_expires: DateTime<Utc>,
}

impl Context {
    fn record(self) -> LifecycleRecord {
        LifecycleRecord {
            tenant: self.tenant,
            run_id: self.run_id,
            now: self.now,
            holder: self.holder,
            lease_expires: self.lease_expires,
            ..LifecycleRecord::default()
        }
    }
}

/// An item for a due user with nothing else to say.
fn item(row_id: &str, user_name: &str, app_key: Option<String>, outcome: Outcome) -> ItemReport {
    ItemReport {
        user_id: row_id.to_string(),
        user_name: Some(user_name.to_string()),
        app_key,
        outcome,
        action: None,
        changes: BTreeMap::new(),
        roles_added: vec![],
        roles_removed: vec![],
        error: None,
        log_reason: None,
    }
}

/// The guard holds every due user: each gets an item, nothing else happens.
fn plan_held(batch: DueBatch, ctx: Context) -> LifecycleRecord {
    let mut record = ctx.record();
    for row in &batch.rows {
        let key = batch.links.get(&row.id).map(|l| l.app_key.clone());
        record
            .items
            .push(item(&row.id, &row.user_name, key, Outcome::OffboardingHeld));
    }
    record
}

/// Purge each due user; a user with an application row of its own has its offboarding queued
/// with the purge (a dry run reports what the offboarding would change instead). A user whose
/// application row another user's link shares is purged with its link only: the row is the
/// other user's now. A user whose offboarding cannot be rendered stays, and is tried again by
/// the next run.
fn plan_due(
    mapping: &Mapping,
    mut batch: DueBatch,
    dry_run: bool,
    ctx: Context,
) -> LifecycleRecord {
    let mut record = ctx.record();
    for row in &batch.rows {
        let link = batch.links.get(&row.id);
        let action = match row
            .staged()
            .map_err(UserFailure::Staged)
            .and_then(|s| mapping.offboarding(&s).map_err(UserFailure::Render))
        {
            Ok(a) => a,
            Err(failure) => {
                record
                    .items
                    .push(failed_item(row, link.map(|l| l.app_key.clone()), failure));
                continue;
            }
        };
        let shared = link.is_some_and(|l| batch.key_links.get(&l.app_key).copied() > Some(1));
        match link {
            Some(l) if !shared => {
                if dry_run {
                    let mut it = item(
                        &row.id,
                        &row.user_name,
                        Some(l.app_key.clone()),
                        Outcome::Offboarded,
                    );
                    it.action = Some(offboarding_action(&action).to_string());
                    it.changes = offboarding_changes(&action, &l.fields);
                    it.roles_removed = l.applied_roles.iter().cloned().collect();
                    record.items.push(it);
                } else {
                    // Recorded with the purge; applied (and reported) from the queue.
                    record.queue.push(NewOffboarding {
                        user_id: row.id.clone(),
                        user_name: row.user_name.clone(),
                        app_key: l.app_key.clone(),
                        action: offboarding_json(&action),
                        roles: l.applied_roles.clone(),
                    });
                    record.purge.push(row.id.clone());
                }
            }
            _ => {
                // Nothing in the application, or its row now belongs to another user.
                let key = link.map(|l| l.app_key.clone());
                record
                    .items
                    .push(item(&row.id, &row.user_name, key.clone(), Outcome::Purged));
                if !dry_run {
                    record.purge.push(row.id.clone());
                    record.unlink.push(row.id.clone());
                    // Later users of this batch no longer share the key with this one.
                    if let Some(n) = key.and_then(|k| batch.key_links.get_mut(&k)) {
                        *n -= 1;
                    }
                }
            }
        }
    }
    record
}

impl Run<'_> {
    fn context(&self) -> Context {
        let now = self.now();
        Context {
            tenant: self.tenant.to_string(),
            run_id: self.run_id,
            now,
            holder: self.lease_holder(),
            lease_expires: now + self.ts.config.lease(),
        }
    }

    /// Retention: purge and offboard the users that are due (all of them, or with `held_in`
    /// only those that run held), unless the guard stops it; then apply the queue.
    pub async fn lifecycle(&mut self, held_in: Option<i64>) -> Result<(), SyncError> {
        let store = self.engine.store.clone();
        let config = &self.ts.config;
        let cutoff = self.now() - config.retention();
        let due = store.count_due(self.tenant, cutoff, held_in).await?;
        let mut hold = false;
        if held_in.is_none() && due > 0 {
            let linked = store.count_links(self.tenant).await?;
            let allowed = f64::from(config.guard_min).max(config.guard_share * linked as f64);
            if due as f64 > allowed {
                tracing::warn!(
                    tenant = self.tenant,
                    run_id = self.run_id,
                    due,
                    allowed,
                    "offboarding guard: the run waits for approval"
                );
                hold = true;
            }
        }
        let mut after = 0;
        loop {
            let query = DueQuery {
                tenant: self.tenant.to_string(),
                cutoff,
                held_in,
                after_pk: after,
                limit: config.batch_size,
            };
            let ctx = self.context();
            let (mapping, dry_run) = (self.ts.config.mapping.0.clone(), self.options.dry_run);
            let plan: super::store::LifecyclePlanner = if hold {
                Box::new(move |batch| Ok(plan_held(batch, ctx)))
            } else {
                Box::new(move |batch| Ok(plan_due(&mapping, batch, dry_run, ctx)))
            };
            let Some(done) = store.lifecycle_batch(query, plan).await? else {
                break;
            };
            after = done.last_pk;
            for item in &done.items {
                self.tally(item);
            }
        }
        self.apply_queue().await
    }

    /// Apply the queued offboardings to the application, then forget them.
    async fn apply_queue(&mut self) -> Result<(), SyncError> {
        let store = self.engine.store.clone();
        let target = Arc::new(self.ts.mapping().target().clone());
        let mut after = 0;
        loop {
            let queued = store
                .queued(self.tenant, after, self.ts.config.batch_size)
                .await?;
            let Some(last) = queued.last() else { break };
            after = last.id;
            let errors: Vec<Option<String>> = if self.options.dry_run {
                vec![None; queued.len()]
            } else {
                let (target, shared) = (target.clone(), Arc::new(queued.clone()));
                let tenant = self.tenant.to_string();
                self.ts
                    .app
                    .batch(Box::new(move |app| {
                        Ok(shared
                            .iter()
                            .map(|q| {
                                let action = offboarding_from_json(&q.action);
                                app.offboard(&target, &tenant, &q.app_key, &action, &q.roles)
                                    .map(|()| UserApplied { created: false })
                                    .map_err(|e| e.to_string())
                            })
                            .collect())
                    }))
                    .await?
                    .into_iter()
                    .map(Result::err)
                    .collect()
            };
            let mut record = self.context().record();
            record.rows_of = self.rows_of();
            for (q, error) in queued.iter().zip(errors) {
                record
                    .items
                    .push(queue_item(q, error.clone().map(UserFailure::Offboarding)));
                if self.options.dry_run {
                    continue;
                }
                match error {
                    None => {
                        record.done.push((q.id, q.user_id.clone()));
                        if q.action.get("action").and_then(|a| a.as_str()) == Some("delete") {
                            record.disowned.push(q.app_key.clone());
                        }
                    }
                    Some(e) => record.failed.push((q.id, e)),
                }
            }
            for item in &record.items {
                self.tally(item);
            }
            store.record_lifecycle(record).await?;
        }
        Ok(())
    }
}

/// The item of a queued offboarding applied (or failed): the action it took (or tried) and,
/// when applied, the columns it changed from the values the engine last wrote to the row.
fn queue_item(q: &Queued, failure: Option<UserFailure>) -> ItemReport {
    let error = failure.as_ref().map(UserFailure::reason);
    let action = offboarding_from_json(&q.action);
    ItemReport {
        user_id: q.user_id.clone(),
        user_name: q.user_name.clone(),
        app_key: Some(q.app_key.clone()),
        outcome: if error.is_some() {
            Outcome::Failed
        } else {
            Outcome::Offboarded
        },
        action: Some(offboarding_action(&action).to_string()),
        changes: if error.is_some() {
            BTreeMap::new()
        } else {
            offboarding_changes(&action, &q.applied)
        },
        roles_added: vec![],
        roles_removed: if error.is_some() {
            vec![]
        } else {
            q.roles.iter().cloned().collect()
        },
        error,
        log_reason: failure.as_ref().map(UserFailure::loggable),
    }
}

/// The retention of a tenant that does not sync: its users inactive or deleted since before
/// `cutoff` are purged from staging (there is no application to offboard them from). A user
/// with a link (the tenant synced once) is left for a sync run to offboard. How many.
pub async fn purge_unsynced(
    store: &dyn SyncStore,
    tenant: &str,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, SyncError> {
    let purged = Arc::new(AtomicU64::new(0));
    let mut after = 0;
    loop {
        let due = DueQuery {
            tenant: tenant.to_string(),
            cutoff,
            held_in: None,
            after_pk: after,
            limit: 500,
        };
        let (t, counter) = (tenant.to_string(), purged.clone());
        let plan: LifecyclePlanner = Box::new(move |batch| {
            let purge: Vec<String> = batch
                .rows
                .iter()
                .filter(|r| !batch.links.contains_key(&r.id))
                .map(|r| r.id.clone())
                .collect();
            counter.fetch_add(purge.len() as u64, Ordering::Relaxed);
            Ok(LifecycleRecord {
                tenant: t,
                now,
                purge,
                ..LifecycleRecord::default()
            })
        });
        let Some(done) = store.lifecycle_batch(due, plan).await? else {
            break;
        };
        after = done.last_pk;
    }
    Ok(purged.load(Ordering::Relaxed))
}

/// Run retention's cutoffs at `now`: no-op runs older than `noop_run_days`, every other run
/// older than `run_days` (0: no-op runs as long as the others; others for ever); of every
/// tenant.
pub fn run_retention(noop_run_days: u32, run_days: u32, now: DateTime<Utc>) -> PruneRuns {
    // Nothing started before 1970: a cutoff there prunes nothing.
    let cutoff = |days: u32| match days {
        0 => DateTime::UNIX_EPOCH,
        d => now - chrono::Duration::days(i64::from(d)),
    };
    let before = cutoff(run_days);
    PruneRuns {
        noop_before: if noop_run_days == 0 {
            before
        } else {
            cutoff(noop_run_days).max(before)
        },
        before,
        tenant: None,
    }
}

/// Prune the run ledger as `prune` says (see [`run_retention`]); how many runs went, with
/// their items. A run that is running or awaiting approval, or a tenant's newest run, stays.
pub async fn prune_runs(store: &dyn SyncStore, prune: PruneRuns) -> Result<u64, SyncError> {
    let tenant = prune.tenant.clone();
    let pruned = store.prune_runs(prune).await?;
    if pruned > 0 {
        tracing::info!(
            pruned,
            tenant = tenant.as_deref().unwrap_or("*"),
            "run retention pruned sync runs"
        );
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;

    use super::*;
    use crate::sync::store::{Link, UserRow};

    fn row(pk: i64, id: &str) -> UserRow {
        UserRow {
            pk,
            id: id.into(),
            user_name: id.into(),
            doc: r#"{"userName":"x","active":false}"#.into(),
            active: false,
            deleted: false,
            change_seq: 1,
            groups: None,
            quarantined: false,
        }
    }

    fn link(key: &str) -> Link {
        Link::parse(
            key.into(),
            "f".into(),
            "[\"r\"]",
            "{}",
            "deactivated".into(),
        )
        .unwrap()
    }

    fn ctx() -> Context {
        Context {
            tenant: "t".into(),
            run_id: 1,
            now: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
            holder: Some("h".into()),
            lease_expires: Utc.with_ymd_and_hms(2030, 1, 1, 0, 5, 0).unwrap(),
        }
    }

    fn mapping() -> Mapping {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[target]\ndatabase = \"app\"\nuser_table = \"users\"\nkey_column = \"k\"\n\
             key = \"userName\"\n[fields]\nname = \"{{userName}}\"\n[offboarding]\naction = \"delete\"\n",
        )
        .unwrap();
        Mapping::load(&path, crate::scim::schema::DEFAULT_CUSTOM_SCHEMA).unwrap()
    }

    /// Two due users linked to one application row: the first is purged with its link only
    /// (the row is shared), and then the second, no longer sharing it, has it offboarded.
    #[test]
    fn a_shared_key_is_offboarded_once_its_other_link_went_in_the_same_batch() {
        let batch = DueBatch {
            rows: vec![row(1, "a"), row(2, "b")],
            links: HashMap::from([("a".to_string(), link("K")), ("b".to_string(), link("K"))]),
            key_links: HashMap::from([("K".to_string(), 2)]),
        };
        let r = plan_due(&mapping(), batch, false, ctx());
        assert_eq!(r.purge, ["a", "b"]);
        assert_eq!(r.unlink, ["a"]);
        assert_eq!(r.queue.len(), 1);
        assert_eq!(r.queue[0].user_id, "b");
        assert_eq!(
            r.items.len(),
            1,
            "b is reported when its offboarding is applied"
        );
        assert_eq!(r.items[0].outcome, Outcome::Purged);
    }

    #[test]
    fn run_retention_keeps_no_op_runs_no_longer_than_the_others() {
        let now = Utc.with_ymd_and_hms(2030, 1, 31, 0, 0, 0).unwrap();
        let day = |d: u32| Utc.with_ymd_and_hms(2030, 1, d, 0, 0, 0).unwrap();
        let r = run_retention(7, 20, now);
        assert_eq!((r.noop_before, r.before), (day(24), day(11)));
        // 0: no-op runs as long as the others, the others for ever.
        let r = run_retention(0, 20, now);
        assert_eq!((r.noop_before, r.before), (day(11), day(11)));
        let r = run_retention(7, 0, now);
        assert_eq!((r.noop_before, r.before), (day(24), DateTime::UNIX_EPOCH));
        let r = run_retention(0, 0, now);
        assert_eq!(
            (r.noop_before, r.before),
            (DateTime::UNIX_EPOCH, DateTime::UNIX_EPOCH)
        );
    }

    /// A dry run changes nothing, so the key stays shared for both.
    #[test]
    fn a_dry_run_keeps_shared_keys_shared() {
        let batch = DueBatch {
            rows: vec![row(1, "a"), row(2, "b")],
            links: HashMap::from([("a".to_string(), link("K")), ("b".to_string(), link("K"))]),
            key_links: HashMap::from([("K".to_string(), 2)]),
        };
        let r = plan_due(&mapping(), batch, true, ctx());
        assert!(r.purge.is_empty() && r.unlink.is_empty() && r.queue.is_empty());
        let outcomes: Vec<Outcome> = r.items.iter().map(|i| i.outcome).collect();
        assert_eq!(outcomes, [Outcome::Purged, Outcome::Purged]);
    }
}
