//! The engine's entry points: a run of a tenant (begun, then carried out), and the approval of
//! a run the guard held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use super::holder::{self, Holder};
use super::run::Run;
use super::store::{BeginRun, Heartbeat, RunningRun, SyncStore};
use super::{Counts, RunOptions, RunStatus, RunSummary, SyncError, Trigger};
use crate::clock::Clock;
use crate::config::{ApplicationConfig, Config, SyncConfig};
use crate::mapping::Mapping;
use crate::target::row::AppValue;
use crate::target::{AppConnector, AppDatabase, schema};

/// A tenant that syncs: its settings and its application database.
#[derive(Clone)]
pub(super) struct TenantSync {
    pub config: SyncConfig,
    pub app: Arc<dyn AppDatabase>,
}

impl TenantSync {
    pub fn mapping(&self) -> &Mapping {
        &self.config.mapping.0
    }
}

/// The sync engine of every configured tenant; share it with `Arc`.
pub struct SyncEngine {
    pub(super) store: Arc<dyn SyncStore>,
    pub(super) clock: Arc<dyn Clock>,
    tenants: BTreeMap<String, TenantSync>,
}

/// A run that has begun: it is in the ledger and holds the tenant's lease (a dry run needs
/// none). [`SyncEngine::execute`] carries it out.
pub struct Begun {
    pub run_id: i64,
    pub tenant: String,
    trigger: Trigger,
    options: RunOptions,
    holder: String,
    started: DateTime<Utc>,
    watermark: super::store::Mark,
    /// The run this one approves.
    approves: Option<i64>,
}

/// Tenants that write one application table must keep their rows apart: each of their
/// mappings names a tenant column (and a role tenant column when they write roles), so rows are
/// matched by key and tenant. Otherwise one tenant's user could take over another tenant's row
/// with the same key; such a configuration is refused.
fn check_shared_tables<'a>(
    mappings: impl Iterator<Item = (&'a str, &'a Mapping)>,
) -> Result<(), SyncError> {
    let mut by_table: BTreeMap<(String, String), Vec<(&str, &Mapping)>> = BTreeMap::new();
    for (name, m) in mappings {
        let target = m.target();
        by_table
            .entry((
                target.database.clone(),
                target.user_table.to_ascii_lowercase(),
            ))
            .or_default()
            .push((name, m));
    }
    for ((database, table), tenants) in by_table.iter().filter(|(_, n)| n.len() > 1) {
        let names: Vec<&str> = tenants.iter().map(|(n, _)| *n).collect();
        let unscoped: Vec<&str> = tenants
            .iter()
            .filter(|(_, m)| {
                let target = m.target();
                target.tenant_column.is_none()
                    || target
                        .roles
                        .as_ref()
                        .is_some_and(|r| r.tenant_column.is_none())
            })
            .map(|(n, _)| *n)
            .collect();
        if !unscoped.is_empty() {
            return Err(SyncError::Mapping(format!(
                "tenants {} all write table {table} of application {database}: their rows could \
                 collide on a key. Set [target] tenant_column (and [target.roles] tenant_column) in \
                 the mapping of {} so each tenant's rows are its own",
                names.join(", "),
                unscoped.join(", ")
            )));
        }
    }
    Ok(())
}

/// Check `mapping` against the live tables of `app` (`SyncError::Mapping` naming file:line
/// and column for each problem).
pub async fn check_schema(mapping: &Mapping, app: &dyn AppDatabase) -> Result<(), SyncError> {
    let target = mapping.target();
    let users = app.describe(&target.user_table).await?;
    let roles = match &target.roles {
        Some(r) => app.describe(&r.table).await?,
        None => None,
    };
    schema::check(mapping, users.as_ref(), roles.as_ref()).map_err(|p| {
        SyncError::Mapping(format!(
            "the mapping does not fit the application's tables:\n{p}"
        ))
    })
}

/// A run's heartbeat task; it stops when this is dropped.
struct Beating(tokio::task::JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What beginning a run came to.
pub enum Start {
    Begun(Box<Begun>),
    /// Another run holds the lease: recorded as skipped.
    Skipped(Box<RunSummary>),
}

impl SyncEngine {
    /// The engine of every tenant that has a `[tenants.NAME.sync]`, with its application
    /// database (opened once per application).
    pub async fn new(
        config: &Config,
        store: Arc<dyn SyncStore>,
        connector: &dyn AppConnector,
        clock: Arc<dyn Clock>,
    ) -> Result<SyncEngine, SyncError> {
        check_shared_tables(
            config
                .tenants
                .iter()
                .filter_map(|(n, t)| t.sync.as_ref().map(|s| (n.as_str(), &*s.mapping.0))),
        )?;
        let mut engine = SyncEngine {
            store,
            clock,
            tenants: BTreeMap::new(),
        };
        for (name, t) in &config.tenants {
            if let Some(sync) = &t.sync {
                let app = engine
                    .application(name, sync, &config.applications, connector)
                    .await?;
                engine.tenants.insert(
                    name.clone(),
                    TenantSync {
                        config: sync.clone(),
                        app,
                    },
                );
            }
        }
        Ok(engine)
    }

    /// The same engine with `tenant` syncing with `config` (a reloaded mapping); the other
    /// tenants keep theirs, and open application databases are shared.
    pub async fn with_tenant(
        &self,
        tenant: &str,
        config: SyncConfig,
        applications: &BTreeMap<String, ApplicationConfig>,
        connector: &dyn AppConnector,
    ) -> Result<SyncEngine, SyncError> {
        check_shared_tables(
            self.tenants
                .iter()
                .filter(|(n, _)| n.as_str() != tenant)
                .map(|(n, t)| (n.as_str(), t.mapping()))
                .chain([(tenant, &*config.mapping.0)]),
        )?;
        let app = self
            .application(tenant, &config, applications, connector)
            .await?;
        let mut tenants = self.tenants.clone();
        tenants.insert(tenant.to_string(), TenantSync { config, app });
        Ok(SyncEngine {
            store: self.store.clone(),
            clock: self.clock.clone(),
            tenants,
        })
    }

    /// The application database `sync` writes to: one already open, or opened now.
    async fn application(
        &self,
        tenant: &str,
        sync: &SyncConfig,
        applications: &BTreeMap<String, ApplicationConfig>,
        connector: &dyn AppConnector,
    ) -> Result<Arc<dyn AppDatabase>, SyncError> {
        let name = &sync.mapping.0.target().database;
        if let Some(t) = self
            .tenants
            .values()
            .find(|t| &t.mapping().target().database == name)
        {
            check_schema(&sync.mapping.0, t.app.as_ref()).await?;
            return Ok(t.app.clone());
        }
        let config = applications
            .get(name)
            .ok_or_else(|| SyncError::NotConfigured(tenant.to_string()))?;
        let app = connector.open(config).await?;
        check_schema(&sync.mapping.0, app.as_ref()).await?;
        Ok(app)
    }

    /// The staging database the engine keeps its state in.
    pub fn store(&self) -> &Arc<dyn SyncStore> {
        &self.store
    }

    /// The tenants that sync.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// The sync settings of a tenant (schedule, retention, …).
    pub fn tenant_config(&self, tenant: &str) -> Option<&SyncConfig> {
        self.tenants.get(tenant).map(|t| &t.config)
    }

    pub(super) fn tenant(&self, tenant: &str) -> Result<&TenantSync, SyncError> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| SyncError::NotConfigured(tenant.to_string()))
    }

    /// Close the runs left `running` by a process that stopped — of one tenant, or of every
    /// tenant (at start) — as failed: a run whose holder on this host is gone, or whose last
    /// sign of life is older than three leases. How many.
    pub async fn close_abandoned_runs(&self, tenant: Option<&str>) -> Result<u64, SyncError> {
        let now = self.clock.now();
        let abandoned: Vec<i64> = self
            .store
            .running_runs(tenant)
            .await?
            .into_iter()
            .filter(|r| self.abandoned(r, now))
            .map(|r| r.id)
            .collect();
        if abandoned.is_empty() {
            return Ok(0);
        }
        let n = self
            .store
            .close_runs(
                &abandoned,
                "abandoned: the process running it stopped before it finished",
                now,
            )
            .await?;
        tracing::warn!(?tenant, runs = ?abandoned, "closed sync runs a stopped process left running");
        Ok(n)
    }

    fn abandoned(&self, r: &RunningRun, now: DateTime<Utc>) -> bool {
        if r.holder.as_deref().is_some_and(holder::is_gone) {
            return true;
        }
        let lease = self
            .tenants
            .get(&r.tenant)
            .map(|t| t.config.lease())
            .unwrap_or_else(|| chrono::Duration::seconds(30));
        r.heartbeat_at.unwrap_or(r.started_at) + lease * 3 < now
    }

    /// Run one sync of `tenant`: begin it, then carry it out. A run that cannot get the
    /// tenant's lease is recorded as skipped. Errors that end a started run are recorded in
    /// its ledger row and returned in the summary (status failed); `Err` means the run could
    /// not be recorded at all.
    pub async fn run(
        &self,
        tenant: &str,
        trigger: Trigger,
        options: RunOptions,
    ) -> Result<RunSummary, SyncError> {
        match self.begin(tenant, trigger, options).await? {
            Start::Begun(run) => self.execute(*run).await,
            Start::Skipped(summary) => Ok(*summary),
        }
    }

    /// Insert the run in the ledger and take the tenant's lease; nothing else is done yet.
    pub async fn begin(
        &self,
        tenant: &str,
        trigger: Trigger,
        options: RunOptions,
    ) -> Result<Start, SyncError> {
        let ts = self.tenant(tenant)?;
        self.close_abandoned_runs(Some(tenant)).await?;
        let started = self.clock.now();
        let holder = Holder::this_process().to_string();
        let watermark = self.store.watermark(tenant).await?;
        let begun = self
            .store
            .begin_run(BeginRun {
                tenant: tenant.to_string(),
                holder: holder.clone(),
                take_from: self.gone_holder(tenant).await?,
                trigger: trigger.as_str(),
                dry_run: options.dry_run,
                full: options.full,
                started_at: started,
                lease_expires: started + ts.config.lease(),
                watermark_from: Some(if options.full { 0 } else { watermark.seq }),
            })
            .await?;
        if !begun.leased {
            tracing::info!(
                tenant,
                run_id = begun.run_id,
                "sync run skipped: another run holds the lease"
            );
            return Ok(Start::Skipped(Box::new(RunSummary {
                run_id: begun.run_id,
                tenant: tenant.to_string(),
                trigger,
                dry_run: options.dry_run,
                full: options.full,
                status: RunStatus::Skipped,
                counts: Counts::default(),
                held: 0,
                watermark_from: Some(watermark.seq),
                watermark_to: None,
                started_at: started,
                ended_at: started,
                error: Some("another run holds the tenant's lease".into()),
                failures: vec![],
            })));
        }
        tracing::info!(
            tenant,
            run_id = begun.run_id,
            trigger = trigger.as_str(),
            dry_run = options.dry_run,
            full = options.full,
            "sync run started"
        );
        Ok(Start::Begun(Box::new(Begun {
            run_id: begun.run_id,
            tenant: tenant.to_string(),
            trigger,
            options,
            holder,
            started,
            watermark,
            approves: None,
        })))
    }

    /// Keep a run's heartbeat (and its lease, unless it is a dry run) fresh, a third of a lease
    /// apart, until the returned guard is dropped; `lost` turns true when the lease is no
    /// longer the run's.
    fn heartbeat(&self, ts: &TenantSync, begun: &Begun, lost: Arc<AtomicBool>) -> Beating {
        let (store, clock) = (self.store.clone(), self.clock.clone());
        let lease = ts.config.lease();
        let period = (lease / 3)
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(10));
        let (tenant, run_id, holder) = (begun.tenant.clone(), begun.run_id, begun.holder.clone());
        let leased = !begun.options.dry_run;
        Beating(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = clock.now();
                let beat = Heartbeat {
                    tenant: tenant.clone(),
                    run_id,
                    holder: holder.clone(),
                    leased,
                    now,
                    lease_expires: now + lease,
                };
                match store.heartbeat(beat).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(tenant, run_id, error = %e, "sync run heartbeat failed")
                    }
                }
            }
        }))
    }

    /// The holder of the tenant's unexpired lease, when its process is certainly gone: its
    /// lease may be taken over now.
    async fn gone_holder(&self, tenant: &str) -> Result<Option<String>, SyncError> {
        let now = self.clock.now();
        Ok(self
            .store
            .lease_row(tenant)
            .await?
            .filter(|l| l.expires_at > now && holder::is_gone(&l.holder))
            .map(|l| l.holder))
    }

    /// Begin the approval of a run that is awaiting approval: recorded as a run of its own
    /// that holds the lease; the approved run records `approver` (the admin token's name, or
    /// `cli`) and the time, and its status becomes `approved`.
    pub async fn begin_approval(
        &self,
        run_id: i64,
        trigger: Trigger,
        approver: &str,
    ) -> Result<Begun, SyncError> {
        let Some(approved) = self.store.run_state(run_id).await? else {
            return Err(SyncError::RunNotFound(run_id));
        };
        if approved.status != RunStatus::AwaitingApproval.as_str()
            || approved.dry_run
            || approved.approved
        {
            return Err(SyncError::NotAwaitingApproval(run_id));
        }
        let tenant = approved.tenant;
        let ts = self.tenant(&tenant)?;
        self.close_abandoned_runs(Some(&tenant)).await?;
        let started = self.clock.now();
        let holder = Holder::this_process().to_string();
        let new_id = self
            .store
            .begin_approval(
                BeginRun {
                    tenant: tenant.clone(),
                    holder: holder.clone(),
                    take_from: self.gone_holder(&tenant).await?,
                    trigger: trigger.as_str(),
                    dry_run: false,
                    full: false,
                    started_at: started,
                    lease_expires: started + ts.config.lease(),
                    watermark_from: None,
                },
                run_id,
                approver,
            )
            .await?;
        tracing::info!(
            tenant,
            run_id = new_id,
            approves = run_id,
            approver,
            "offboarding approved"
        );
        Ok(Begun {
            run_id: new_id,
            tenant,
            trigger,
            options: RunOptions::default(),
            holder,
            started,
            watermark: Default::default(),
            approves: Some(run_id),
        })
    }

    /// Approve a run that is awaiting approval: perform the offboardings it held that are
    /// still due (users reactivated since are left alone). Recorded as a run of its own.
    pub async fn approve(
        &self,
        run_id: i64,
        trigger: Trigger,
        approver: &str,
    ) -> Result<RunSummary, SyncError> {
        let begun = self.begin_approval(run_id, trigger, approver).await?;
        self.execute(begun).await
    }

    /// Carry out a begun run: the change pass and the lifecycle (an approval: the offboardings
    /// it approves), then record its end.
    pub async fn execute(&self, begun: Begun) -> Result<RunSummary, SyncError> {
        let ts = self.tenant(&begun.tenant)?;
        let lost = Arc::new(AtomicBool::new(false));
        let _beating = self.heartbeat(ts, &begun, lost.clone());
        let mut run = Run::new(
            self,
            &begun.tenant,
            ts,
            begun.run_id,
            begun.holder,
            begun.options,
            lost,
        );
        let (result, watermark_from) = match begun.approves {
            Some(approved) => (run.lifecycle(Some(approved)).await, None),
            None => {
                let from = if run.options.full {
                    0
                } else {
                    begun.watermark.seq
                };
                (run.sync(begun.watermark).await, Some(from))
            }
        };
        run.finish(begun.trigger, begun.started, watermark_from, result)
            .await
    }
}

/// What `sync --verify` found: the links whose application row is gone or differs from what
/// the engine last wrote, or lacks roles it applied.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub tenant: String,
    /// Links compared.
    pub linked: u64,
    pub missing: u64,
    pub differing: u64,
    pub roles_missing: u64,
    /// The first drifts found, in user id order (at most [`VerifyReport::SHOWN`]).
    pub drifts: Vec<Drift>,
}

impl VerifyReport {
    /// Drifts listed in full; the counts cover them all.
    pub const SHOWN: usize = 1000;

    pub fn is_clean(&self) -> bool {
        self.missing + self.differing + self.roles_missing == 0
    }
}

/// One link whose application row drifted.
#[derive(Debug, Clone)]
pub struct Drift {
    pub user_id: String,
    pub app_key: String,
    /// The row is gone.
    pub missing: bool,
    /// Column → what the engine wrote (after) and what the row holds now (before).
    pub changes: BTreeMap<String, super::Change>,
    /// Roles the engine applied that the row no longer has.
    pub roles_missing: Vec<String>,
}

impl SyncEngine {
    /// Compare every link of `tenant` with its application row as it is now. Reads only.
    pub async fn verify(&self, tenant: &str) -> Result<VerifyReport, SyncError> {
        let ts = self.tenant(tenant)?;
        let target = ts.mapping().target();
        let mut report = VerifyReport {
            tenant: tenant.to_string(),
            ..VerifyReport::default()
        };
        let mut after = String::new();
        loop {
            let links = self
                .store
                .links_page(tenant, &after, ts.config.batch_size)
                .await?;
            let Some((last, _)) = links.last() else { break };
            after = last.clone();
            let mut columns: Vec<String> = Vec::new();
            for (_, l) in &links {
                for c in l.fields.keys() {
                    if !columns.contains(c) {
                        columns.push(c.clone());
                    }
                }
            }
            let keys: Vec<String> = links.iter().map(|(_, l)| l.app_key.clone()).collect();
            let rows = ts.app.read_rows(target, tenant, &columns, &keys).await?;
            for (user_id, link) in links {
                report.linked += 1;
                let mut drift = Drift {
                    user_id,
                    app_key: link.app_key.clone(),
                    missing: false,
                    changes: BTreeMap::new(),
                    roles_missing: vec![],
                };
                match rows.get(&link.app_key) {
                    None => {
                        drift.missing = true;
                        report.missing += 1;
                    }
                    Some(row) => {
                        for (c, wrote) in &link.fields {
                            let now = row.fields.get(c).cloned().unwrap_or(AppValue::Null);
                            if !now.holds_json(wrote) {
                                drift.changes.insert(
                                    c.clone(),
                                    super::Change {
                                        before: now.to_json(),
                                        after: wrote.clone(),
                                    },
                                );
                            }
                        }
                        drift.roles_missing =
                            link.applied_roles.difference(&row.roles).cloned().collect();
                        report.differing += u64::from(!drift.changes.is_empty());
                        report.roles_missing += u64::from(!drift.roles_missing.is_empty());
                    }
                }
                let drifted =
                    drift.missing || !drift.changes.is_empty() || !drift.roles_missing.is_empty();
                if drifted && report.drifts.len() < VerifyReport::SHOWN {
                    report.drifts.push(drift);
                }
            }
        }
        Ok(report)
    }
}
