//! One run's change pass: batches of changed users read and planned on a blocking thread while
//! the previous batch is written to the application and recorded in staging; and the end of
//! the run.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use super::engine::{SyncEngine, TenantSync};
use super::plan::{Plan, Planned, Write, failed_item, field_json, plan_batch, state_name};
use super::store::{LinkWrite, Mark, Owned, Read, Record, RetryWrite, RowsOf};
use super::{
    Change, Counts, FailedUser, ItemReport, Outcome, RunOptions, RunStatus, RunSummary, SyncError,
    Trigger, UserFailure,
};
use crate::mapping::Adopt;
use crate::target::row::AppValue;
use crate::target::{Existing, UserApplied, UserWrite};

/// The mutable state of one run.
pub(super) struct Run<'a> {
    pub engine: &'a SyncEngine,
    pub tenant: &'a str,
    pub ts: &'a TenantSync,
    pub run_id: i64,
    pub holder: String,
    pub options: RunOptions,
    pub counts: Counts,
    pub held: u64,
    pub watermark_to: Option<i64>,
    /// Set by the heartbeat when the lease is no longer the run's.
    pub lost: Arc<AtomicBool>,
    /// The first users that failed (for the summary and the log; the ledger has them all).
    pub failures: Vec<FailedUser>,
}

fn join_error(e: tokio::task::JoinError) -> SyncError {
    SyncError::Task(e.to_string())
}

impl<'a> Run<'a> {
    pub fn new(
        engine: &'a SyncEngine,
        tenant: &'a str,
        ts: &'a TenantSync,
        run_id: i64,
        holder: String,
        options: RunOptions,
        lost: Arc<AtomicBool>,
    ) -> Run<'a> {
        Run {
            engine,
            tenant,
            ts,
            run_id,
            holder,
            options,
            counts: Counts::default(),
            held: 0,
            watermark_to: None,
            lost,
            failures: Vec::new(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.engine.clock.now()
    }

    /// Count and report a recorded item.
    pub fn tally(&mut self, item: &ItemReport) {
        self.counts.add(item);
        if item.outcome == Outcome::OffboardingHeld {
            self.held += 1;
        }
        if self.failures.len() < RunSummary::FAILURES_KEPT {
            self.failures.extend(FailedUser::of(item));
        }
        if let Some(p) = &self.options.progress {
            p.item(item);
        }
    }

    /// The lease to renew with a write (None: a dry run, which holds none).
    pub fn lease_holder(&self) -> Option<String> {
        (!self.options.dry_run).then(|| self.holder.clone())
    }

    /// Start reading and planning a batch on a blocking thread.
    fn fetch(&self, read: Read) -> tokio::task::JoinHandle<Result<Planned, SyncError>> {
        let store = self.engine.store.clone();
        let mapping = self.ts.config.mapping.0.clone();
        let tenant = self.tenant.to_string();
        let limit = self.ts.config.batch_size;
        let full = self.options.full;
        tokio::spawn(async move {
            store
                .read_batch(
                    &tenant,
                    read,
                    limit,
                    Box::new(move |rows, links| plan_batch(&mapping, rows, &links, full)),
                )
                .await
        })
    }

    /// The change pass, then the lifecycle.
    pub async fn sync(&mut self, wm: Mark) -> Result<(), SyncError> {
        let store = self.engine.store.clone();
        let high = store.high_seq().await?;
        let from = if self.options.full {
            Mark::default()
        } else {
            wm
        };
        if let Some(p) = &self.options.progress {
            let n = store.count_changed(self.tenant, from, high).await?;
            p.start(u64::try_from(n).unwrap_or(0));
        }
        if !self.options.full {
            // Failed users the watermark has passed; the others come with the changes.
            let mut after = 0;
            loop {
                let read = Read::Retry {
                    watermark: wm,
                    after_pk: after,
                };
                let planned = self.fetch(read).await.map_err(join_error)??;
                let Some(last) = planned.last else { break };
                after = last.pk;
                self.batch(planned, None).await?;
                self.check_stop()?;
            }
        }
        // The next batch is read and planned while the current one is written and recorded.
        let mut next = Some(self.fetch(Read::Changed { after: from, high }));
        while let Some(handle) = next.take() {
            let planned = handle.await.map_err(join_error)??;
            let Some(cursor) = planned.last else { break };
            next = Some(self.fetch(Read::Changed {
                after: cursor,
                high,
            }));
            let n = planned.ids.len() as u64;
            self.batch(planned, Some(cursor)).await?;
            self.watermark_to = Some(cursor.seq.max(wm.seq));
            if let Some(p) = &self.options.progress {
                p.advance(n);
            }
            self.check_stop()?;
        }
        if self.watermark_to.is_none() {
            self.watermark_to = Some(wm.seq);
        }
        self.lifecycle(None).await
    }

    /// Stop between batches when asked to (shutdown): what is committed stays, the watermark
    /// covers it, and the next run goes on from there.
    pub fn check_stop(&self) -> Result<(), SyncError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(SyncError::LeaseLost);
        }
        match &self.options.stop {
            Some(stop) if stop.load(std::sync::atomic::Ordering::SeqCst) => Err(SyncError::Stopped),
            _ => Ok(()),
        }
    }

    /// The application table this tenant writes, and its rows' scope in it.
    pub fn rows_of(&self) -> RowsOf {
        let target = self.ts.mapping().target();
        RowsOf {
            application: target.database.clone(),
            table: target.user_table.clone(),
            scope: if target.tenant_column.is_some() {
                self.tenant.to_string()
            } else {
                String::new()
            },
        }
    }

    /// What each write does with a row that already has its key: a row this tenant owns (or
    /// linked before owners were recorded) is updated; one another tenant owns is refused; for
    /// a new user the application is asked whether a row has its key — one the application
    /// made is adopted if the mapping says so, else refused — and the rows to create are
    /// claimed in staging before they are written.
    #[allow(clippy::vec_box)]
    async fn decide_existing(&self, writes: &mut [Box<Write>]) -> Result<(), SyncError> {
        if writes.is_empty() {
            return Ok(());
        }
        let rows_of = self.rows_of();
        let target = self.ts.mapping().target();
        let keys: Vec<String> = writes.iter().map(|w| w.rendered.key.clone()).collect();
        let owners = self.engine.store.owners(&rows_of, &keys).await?;
        let belongs = |owner: &str| {
            format!(
                "the application row with this {} belongs to tenant {owner:?}",
                target.key_column
            )
        };
        let mut unknown = Vec::new();
        for (i, w) in writes.iter_mut().enumerate() {
            match owners.get(&w.rendered.key) {
                Some(owner) if owner != self.tenant => w.refused = Some(belongs(owner)),
                Some(_) => w.existing = Existing::Owned,
                None if w.linked => w.existing = Existing::Owned,
                None => unknown.push(i),
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = unknown
            .iter()
            .map(|&i| writes[i].rendered.key.clone())
            .collect();
        let present = self
            .ts
            .app
            .read_rows(target, self.tenant, &[], &keys)
            .await?;
        let mut claims = Vec::new();
        for &i in &unknown {
            let w = &mut writes[i];
            if !present.contains_key(&w.rendered.key) {
                w.existing = Existing::Create;
                claims.push(Owned {
                    key: w.rendered.key.clone(),
                    user_id: w.row.id.clone(),
                    how: "created",
                });
            } else if target.adopt == Adopt::MatchByKey {
                w.existing = Existing::Adopt;
            } else {
                w.refused = Some(crate::target::writer::not_ours(&target.key_column));
            }
        }
        if claims.is_empty() || self.options.dry_run {
            return Ok(());
        }
        let taken = self
            .engine
            .store
            .claim(&rows_of, self.tenant, claims, self.now())
            .await?;
        for w in writes.iter_mut() {
            if taken.contains(&w.rendered.key) && w.existing == Existing::Create {
                w.refused = Some(belongs("another"));
            }
        }
        Ok(())
    }

    /// The users a full run's links call unchanged, against their application rows as they
    /// are now (one read): a row gone is written again (created), a row that differs is
    /// rewritten (the item's "before" is what the row held), missing roles come back. None:
    /// the row is as the link says.
    #[allow(clippy::vec_box)]
    async fn compare_with_rows(
        &self,
        checks: Vec<Box<Write>>,
    ) -> Result<Vec<Option<Box<Write>>>, SyncError> {
        if checks.is_empty() {
            return Ok(vec![]);
        }
        let target = self.ts.mapping().target();
        let mut columns: Vec<String> = Vec::new();
        for w in &checks {
            for (c, _) in &w.rendered.fields {
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
        }
        let keys: Vec<String> = checks.iter().map(|w| w.rendered.key.clone()).collect();
        let rows = self
            .ts
            .app
            .read_rows(target, self.tenant, &columns, &keys)
            .await?;
        Ok(checks
            .into_iter()
            .map(|mut w| {
                let Some(row) = rows.get(&w.rendered.key) else {
                    w.outcome = Outcome::Created;
                    w.changes = all_fields(target.key_column.as_str(), &w);
                    w.roles_to_add = w.rendered.roles.clone();
                    return Some(w);
                };
                let mut changes = BTreeMap::new();
                for (c, v) in &w.rendered.fields {
                    let now = row.fields.get(c).cloned().unwrap_or(AppValue::Null);
                    if !now.holds(v) {
                        changes.insert(
                            c.clone(),
                            Change {
                                before: now.to_json(),
                                after: field_json(v),
                            },
                        );
                    }
                }
                let missing: BTreeSet<String> =
                    w.rendered.roles.difference(&row.roles).cloned().collect();
                if changes.is_empty() && missing.is_empty() {
                    return None;
                }
                w.outcome = Outcome::Updated;
                w.changes = changes;
                w.roles_to_add = missing;
                Some(w)
            })
            .collect())
    }

    /// Write a batch's users to the application (one transaction); what each write did, in
    /// order. The writes stay boxed as the plans hold them: unboxing would copy each one.
    #[allow(clippy::vec_box)]
    async fn write(
        &self,
        writes: Vec<Box<Write>>,
    ) -> Result<(Vec<Box<Write>>, Vec<Option<Result<UserApplied, String>>>), SyncError> {
        if self.options.dry_run || writes.is_empty() {
            let n = writes.len();
            return Ok((writes, vec![None; n]));
        }
        let target = self.ts.mapping().target().clone();
        let tenant = self.tenant.to_string();
        let writes = Arc::new(writes);
        let shared = writes.clone();
        let applied = self
            .ts
            .app
            .batch(Box::new(move |app| {
                Ok(shared
                    .iter()
                    .map(|w| {
                        if let Some(why) = &w.refused {
                            return Err(why.clone());
                        }
                        let write = UserWrite {
                            key: &w.rendered.key,
                            previous_key: w.previous_key.as_deref(),
                            fields: &w.rendered.fields,
                            // Every desired role: a role row lost in the application comes
                            // back, and a write repeated after a crash adds nothing twice.
                            roles_to_add: &w.rendered.roles,
                            roles_to_remove: &w.roles_to_remove,
                            tenant: &tenant,
                            existing: w.existing,
                        };
                        app.apply_user(&target, &write).map_err(|e| e.to_string())
                    })
                    .collect())
            }))
            .await?;
        // The closure (and its reference) is gone once the batch returned.
        let writes = Arc::try_unwrap(writes)
            .map_err(|_| SyncError::Task("the batch's writes are still shared".into()))?;
        Ok((writes, applied.into_iter().map(Some).collect()))
    }

    /// One batch: write to the application, record in staging (advancing the watermark to
    /// `advance` when given).
    async fn batch(&mut self, planned: Planned, advance: Option<Mark>) -> Result<(), SyncError> {
        let Planned {
            ids, seqs, plans, ..
        } = planned;
        let seqs: std::collections::HashMap<String, i64> = ids.iter().cloned().zip(seqs).collect();
        // The users to write, in batch order; failures keep their place among them.
        enum Slot {
            Failed(Box<ItemReport>),
            Write(usize),
            Check(usize),
        }
        let mut slots = Vec::with_capacity(plans.len());
        let mut writes: Vec<Box<Write>> = Vec::new();
        let mut checks: Vec<Box<Write>> = Vec::new();
        let mut quarantined = HashSet::new();
        for (plan, id) in plans.into_iter().zip(&ids) {
            match plan {
                Plan::Unchanged => self.counts.unchanged += 1,
                Plan::Quarantined => {
                    quarantined.insert(id.clone());
                }
                Plan::Failed {
                    row,
                    app_key,
                    failure,
                } => slots.push(Slot::Failed(Box::new(failed_item(&row, app_key, failure)))),
                Plan::Write(w) => {
                    slots.push(Slot::Write(writes.len()));
                    writes.push(w);
                }
                Plan::Check(w) => {
                    slots.push(Slot::Check(checks.len()));
                    checks.push(w);
                }
            }
        }
        // A full run: the users its links call unchanged, compared with their rows as they are.
        let mut repaired = self.compare_with_rows(checks).await?.into_iter();
        let slots: Vec<Slot> = slots
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Check(_) => match repaired.next().flatten() {
                    Some(w) => {
                        writes.push(w);
                        Some(Slot::Write(writes.len() - 1))
                    }
                    None => {
                        self.counts.unchanged += 1;
                        None
                    }
                },
                other => Some(other),
            })
            .collect();
        self.decide_existing(&mut writes).await?;
        let (writes, applied) = self.write(writes).await?;
        let mut writes: Vec<Option<Box<Write>>> = writes.into_iter().map(Some).collect();
        let mut items: Vec<(ItemReport, Option<Box<Write>>)> = Vec::with_capacity(slots.len());
        let mut unclaimed: Vec<String> = Vec::new();
        for slot in slots {
            let i = match slot {
                Slot::Failed(item) => {
                    items.push((*item, None));
                    continue;
                }
                Slot::Write(i) | Slot::Check(i) => i,
            };
            let Some(w) = writes.get_mut(i).and_then(Option::take) else {
                continue;
            };
            let mut item = ItemReport {
                user_id: w.row.id.clone(),
                user_name: Some(w.row.user_name.clone()),
                app_key: Some(w.rendered.key.clone()),
                outcome: w.outcome,
                action: None,
                changes: w.changes.clone(),
                roles_added: w.roles_to_add.iter().cloned().collect(),
                roles_removed: w.roles_to_remove.iter().cloned().collect(),
                error: None,
                log_reason: None,
            };
            if let Some(why) = &w.refused {
                items.push((
                    failed_item(
                        &w.row,
                        Some(w.rendered.key.clone()),
                        UserFailure::Refused(why.clone()),
                    ),
                    None,
                ));
                continue;
            }
            match applied.get(i).cloned().flatten() {
                None => {}
                Some(Ok(applied)) if w.existing == Existing::Adopt && !applied.created => {
                    // The application's own row with this key, taken over.
                    item.outcome = Outcome::Adopted;
                }
                Some(Ok(applied)) => {
                    if applied.created && item.outcome != Outcome::Created {
                        // The row had gone from the application: written again.
                        item.outcome = Outcome::Created;
                    } else if !applied.created && item.outcome == Outcome::Created {
                        // A row with this key was already there (a re-run after a crash, or
                        // a row the application made): now linked.
                        item.outcome = Outcome::Updated;
                    }
                }
                Some(Err(e)) => {
                    if w.existing == Existing::Create {
                        // Nothing was created: the claim goes.
                        unclaimed.push(w.rendered.key.clone());
                    }
                    let failure = UserFailure::Application(e);
                    items.push((
                        failed_item(&w.row, Some(w.rendered.key.clone()), failure),
                        None,
                    ));
                    continue;
                }
            }
            items.push((item, Some(w)));
        }
        for (item, _) in &items {
            self.tally(item);
        }
        let now = self.now();
        let mut record = Record {
            tenant: self.tenant.to_string(),
            holder: self.holder.clone(),
            run_id: self.run_id,
            now,
            lease_expires: now + self.ts.config.lease(),
            counts: self.counts,
            watermark_to: self.watermark_to,
            items: Vec::with_capacity(items.len()),
            dry_run: self.options.dry_run,
            links: Vec::new(),
            retries: Vec::new(),
            quarantine_after: self.ts.config.quarantine_after,
            cleared: Vec::new(),
            advance,
            rows_of: self.rows_of(),
            owned: Vec::new(),
            disowned: unclaimed,
        };
        let mut failed = HashSet::new();
        for (item, w) in items {
            if let Some(w) = &w {
                record.owned.push(Owned {
                    key: w.rendered.key.clone(),
                    user_id: w.row.id.clone(),
                    how: match item.outcome {
                        Outcome::Adopted => "adopted",
                        _ if !w.linked => "created",
                        _ => "linked",
                    },
                });
                record.disowned.extend(w.previous_key.clone());
            }
            match w {
                Some(w) => record.links.push(LinkWrite {
                    user_id: w.row.id,
                    app_key: w.rendered.key,
                    fingerprint: w.fingerprint,
                    applied_roles: w.rendered.roles,
                    fields: w.fields,
                    state: state_name(w.state),
                }),
                None => {
                    failed.insert(item.user_id.clone());
                    record.retries.push(RetryWrite {
                        user_id: item.user_id.clone(),
                        error: item.error.clone().unwrap_or_else(|| "failed".into()),
                        change_seq: seqs.get(&item.user_id).copied().unwrap_or_default(),
                    });
                }
            }
            record.items.push(item);
        }
        // Written and unchanged users that were waiting for a retry are fine now; a quarantined
        // one stays quarantined.
        record.cleared = ids
            .into_iter()
            .filter(|id| !failed.contains(id) && !quarantined.contains(id))
            .collect();
        self.engine.store.record(record).await
    }

    /// Record the end of the run and let go of the lease.
    pub async fn finish(
        &mut self,
        trigger: Trigger,
        started: DateTime<Utc>,
        watermark_from: Option<i64>,
        result: Result<(), SyncError>,
    ) -> Result<RunSummary, SyncError> {
        match self.engine.store.count_quarantined(self.tenant).await {
            Ok(n) => self.counts.quarantined = u64::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!(tenant = self.tenant, error = %e, "counting quarantined users")
            }
        }
        let ended = self.now();
        let error = result.err().map(|e| e.to_string());
        let status = if error.is_some() {
            RunStatus::Failed
        } else if self.held > 0 {
            RunStatus::AwaitingApproval
        } else if self.counts.failed > 0 {
            RunStatus::CompletedWithErrors
        } else {
            RunStatus::Succeeded
        };
        self.engine
            .store
            .finish_run(super::store::FinishRun {
                tenant: self.tenant.to_string(),
                run_id: self.run_id,
                holder: self.lease_holder(),
                status,
                counts: self.counts,
                watermark_to: self.watermark_to,
                ended_at: ended,
                error: error.clone(),
            })
            .await?;
        match &error {
            Some(e) => {
                tracing::error!(tenant = self.tenant, run_id = self.run_id, error = %e, "sync run failed")
            }
            None => tracing::info!(
                tenant = self.tenant,
                run_id = self.run_id,
                status = status.as_str(),
                created = self.counts.created,
                updated = self.counts.updated,
                unchanged = self.counts.unchanged,
                deactivated = self.counts.deactivated,
                offboarded = self.counts.offboarded,
                failed = self.counts.failed,
                quarantined = self.counts.quarantined,
                "sync run finished"
            ),
        }
        Ok(RunSummary {
            run_id: self.run_id,
            tenant: self.tenant.to_string(),
            trigger,
            dry_run: self.options.dry_run,
            full: self.options.full,
            status,
            counts: self.counts,
            held: self.held,
            watermark_from,
            watermark_to: self.watermark_to,
            started_at: started,
            ended_at: ended,
            error,
            failures: std::mem::take(&mut self.failures),
        })
    }
}

/// Every column of a write going from nothing to its value (its row is gone).
fn all_fields(key_column: &str, w: &Write) -> BTreeMap<String, Change> {
    let mut out = BTreeMap::new();
    out.insert(
        key_column.to_string(),
        Change {
            before: serde_json::Value::Null,
            after: serde_json::Value::String(w.rendered.key.clone()),
        },
    );
    for (c, v) in &w.rendered.fields {
        out.insert(
            c.clone(),
            Change {
                before: serde_json::Value::Null,
                after: field_json(v),
            },
        );
    }
    out
}
