//! The admin API's sync endpoints under /admin/v1: the run ledger (runs, their items), run
//! triggers and approvals, mapping previews and reloads, and pending offboardings. Same
//! authentication, roles, paging and problem documents as the rest of the admin API: a reader
//! may call every GET, every POST needs an operator.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags, Union};
use serde_json::{Map, Value};

use super::AppState;
use super::admin::{ADMIN_PREFIX, AdminAuth, page};
use super::admin_story::{FailingPage, failing_page};
use super::problem::{ActionError, AdminError};
use crate::config::{AdminRole, SyncConfig};
use crate::mapping::{Mapping, StagedGroup, StagedUser};
use crate::scim::resource::normalize;
use crate::sync::ledger::{self, LedgerReads, RunQuery, UserRef};
use crate::sync::service::{PreviewSource, StartedRun};
use crate::sync::{SyncService, Trigger};

type Result<T> = std::result::Result<Json<T>, AdminError>;

#[derive(Tags)]
enum SyncTag {
    /// What each sync run did to the application, user by user; start a run; approve the
    /// offboardings a run held
    #[oai(rename = "Sync runs")]
    SyncRuns,
    /// How the mapping writes a user (preview, without writing), the settings in force, and
    /// reloading them after an edit
    Mapping,
    /// Users leaving the application: who, and when their retention ends
    Offboardings,
    /// Unstick a tenant: release the lease of a run whose process died, or a quarantined user
    Recovery,
}

/// A run's counts, as in the ledger.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct RunCounts {
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub roles_added: i64,
    pub roles_removed: i64,
    pub deactivated: i64,
    pub offboarded: i64,
    pub failed: i64,
    /// Users skipped because they are quarantined (not counted as failed).
    pub quarantined: i64,
    /// Offboardings the guard held for approval.
    pub held: i64,
}

/// The approval side of a run: the offboardings it held, who approved them.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct Approval {
    /// This run performs the approval of that run.
    #[oai(nullable)]
    pub approves_run: Option<i64>,
    /// When this (awaiting_approval) run was approved.
    #[oai(nullable)]
    pub approved_at: Option<String>,
    /// The run that performed the approval.
    #[oai(nullable)]
    pub approved_by: Option<i64>,
}

/// One sync run of the ledger.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct Run {
    pub id: i64,
    pub tenant: String,
    /// `schedule`, `cli` or `api`.
    pub trigger: String,
    pub dry_run: bool,
    pub full: bool,
    /// `running`, `succeeded`, `completed_with_errors`, `failed`, `skipped` or
    /// `awaiting_approval`.
    pub status: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[oai(nullable)]
    pub ended_at: Option<String>,
    /// ended_at − started_at, once ended.
    #[oai(nullable)]
    pub duration_ms: Option<i64>,
    pub counts: RunCounts,
    /// The change sequence the run read from (0 for a full run).
    #[oai(nullable)]
    pub watermark_from: Option<i64>,
    /// The change sequence the run committed up to.
    #[oai(nullable)]
    pub watermark_to: Option<i64>,
    /// Why the run failed or was skipped.
    #[oai(nullable)]
    pub error: Option<String>,
    pub approval: Approval,
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl From<ledger::RunRow> for Run {
    fn from(r: ledger::RunRow) -> Run {
        let duration_ms = r
            .ended_at
            .as_deref()
            .and_then(|e| Some((parse_time(e)? - parse_time(&r.started_at)?).num_milliseconds()));
        Run {
            id: r.id,
            tenant: r.tenant,
            trigger: r.trigger,
            dry_run: r.dry_run,
            full: r.full,
            status: r.status,
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_ms,
            counts: RunCounts {
                created: r.created,
                updated: r.updated,
                unchanged: r.unchanged,
                roles_added: r.roles_added,
                roles_removed: r.roles_removed,
                deactivated: r.deactivated,
                offboarded: r.offboarded,
                failed: r.failed,
                quarantined: r.quarantined,
                held: r.held,
            },
            watermark_from: r.watermark_from,
            watermark_to: r.watermark_to,
            error: r.error,
            approval: Approval {
                approves_run: r.approves_run,
                approved_at: r.approved_at,
                approved_by: r.approved_by,
            },
        }
    }
}

page!(RunPage of Run);

/// A field's value before and after (null: none).
#[derive(Object, Clone)]
#[oai(rename_all = "camelCase")]
pub struct FieldChange {
    pub before: Value,
    pub after: Value,
}

fn changes_of(m: Map<String, Value>) -> BTreeMap<String, FieldChange> {
    m.into_iter()
        .map(|(c, v)| {
            (
                c,
                FieldChange {
                    before: v.get("before").cloned().unwrap_or(Value::Null),
                    after: v.get("after").cloned().unwrap_or(Value::Null),
                },
            )
        })
        .collect()
}

/// One user a run changed (or would change, in a dry run), failed on, held or offboarded.
#[derive(Object, Clone)]
#[oai(rename_all = "camelCase")]
pub struct RunItem {
    pub id: i64,
    pub user_id: String,
    #[oai(nullable)]
    pub user_name: Option<String>,
    /// The user's key in the application.
    #[oai(nullable)]
    pub app_key: Option<String>,
    /// `created`, `updated`, `reactivated`, `deactivated`, `failed`, `offboarded`, `purged` or
    /// `offboarding_held`.
    pub outcome: String,
    /// Column → before/after, only the columns that differ.
    pub changes: BTreeMap<String, FieldChange>,
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
    #[oai(nullable)]
    pub error: Option<String>,
}

page!(RunItemPage of RunItem);

impl From<ledger::ItemRow> for RunItem {
    fn from(r: ledger::ItemRow) -> RunItem {
        RunItem {
            id: r.id,
            user_id: r.user_id,
            user_name: r.user_name,
            app_key: r.app_key,
            outcome: r.outcome,
            changes: changes_of(r.changes),
            roles_added: r.roles_added,
            roles_removed: r.roles_removed,
            error: r.error,
        }
    }
}

/// What to run.
#[derive(Object, Default)]
#[oai(rename_all = "camelCase")]
pub struct RunRequest {
    /// Compute and record what would change, write nothing to the application.
    #[oai(default)]
    pub dry_run: bool,
    /// Read every user of the tenant, not only those changed since the last run.
    #[oai(default)]
    pub full: bool,
}

/// A run that has started.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct RunStarted {
    /// The run's ledger id: GET /admin/v1/runs/{runId}.
    pub run_id: i64,
    pub tenant: String,
}

#[derive(ApiResponse)]
pub enum Started {
    /// The run has started in the background; its ledger entry is at Location
    #[oai(status = 202)]
    Accepted(Json<RunStarted>, #[oai(header = "Location")] String),
}

impl Started {
    fn new(run_id: i64, tenant: String) -> Started {
        Started::Accepted(
            Json(RunStarted { run_id, tenant }),
            format!("{ADMIN_PREFIX}/runs/{run_id}"),
        )
    }
}

/// A group for a previewed document.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct PreviewGroup {
    #[oai(validator(max_length = 256))]
    pub display_name: String,
    #[oai(validator(max_length = 256))]
    pub external_id: Option<String>,
    #[oai(validator(max_length = 256))]
    pub id: Option<String>,
}

/// A staged user, by id.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct PreviewById {
    #[oai(validator(max_length = 256))]
    pub user_id: String,
}

/// A staged user, by userName (case-insensitive).
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct PreviewByName {
    #[oai(validator(max_length = 1024))]
    pub user_name: String,
}

/// A SCIM user document with its groups, normalised as a SCIM POST would be.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct PreviewDocument {
    /// A SCIM User resource as a client would POST it.
    pub user: BTreeMap<String, Value>,
    /// The groups the user would be a member of.
    #[oai(default, validator(max_items = 1000))]
    pub groups: Vec<PreviewGroup>,
}

/// Whom to preview: a staged user (`userId`, or `userName`), or a SCIM user document with its
/// groups (`user`, `groups`). When several are given, `userId` wins, then `userName`.
#[derive(Union)]
pub enum PreviewRequest {
    ById(PreviewById),
    ByName(PreviewByName),
    Document(PreviewDocument),
}

/// What the application row holds since the last write.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct LinkState {
    pub app_key: String,
    /// `active` or `deactivated`.
    pub state: String,
    /// The roles the engine assigned.
    pub roles: Vec<String>,
    pub updated_at: String,
}

impl From<ledger::LinkRow> for LinkState {
    fn from(l: ledger::LinkRow) -> LinkState {
        LinkState {
            app_key: l.app_key,
            state: l.state,
            roles: l.applied_roles.into_iter().collect(),
            updated_at: l.updated_at,
        }
    }
}

/// A user rendered with the tenant's current mapping; nothing is written.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct Preview {
    /// `staged` or `document`.
    pub source: String,
    #[oai(nullable)]
    pub user_id: Option<String>,
    #[oai(nullable)]
    pub user_name: Option<String>,
    /// The state rendered: `active`, or `deactivated` (inactive or deleted).
    pub state: String,
    pub key_column: String,
    pub key: String,
    /// Column → value (JSON: null, string, number, boolean; timestamps as RFC 3339).
    pub fields: BTreeMap<String, Value>,
    pub roles: Vec<String>,
    /// The user's application row as last written (a staged user that has one).
    #[oai(nullable)]
    pub link: Option<LinkState>,
    /// With a link: the columns a run would change (key included), before → after.
    #[oai(nullable)]
    pub changes: Option<BTreeMap<String, FieldChange>>,
    #[oai(nullable)]
    pub roles_added: Option<Vec<String>>,
    #[oai(nullable)]
    pub roles_removed: Option<Vec<String>>,
}

/// The mapping a tenant syncs with.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct MappingInfo {
    pub tenant: String,
    /// The mapping file.
    pub path: String,
    /// The `[applications.NAME]` it writes to.
    pub database: String,
    pub user_table: String,
    pub key_column: String,
    /// What it writes, as table.column (the user table, the role table).
    pub columns: Vec<String>,
    pub role_rules: i64,
    /// `none`, `delete` or `update`.
    pub offboarding: String,
    /// The file's own test cases (all passed when loaded by a reload).
    pub tests: i64,
    /// The tenant's sync settings in force (as the last start or reload read them).
    pub settings: SyncSettings,
}

/// A tenant's `[tenants.NAME.sync]` settings in force.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct SyncSettings {
    /// The cron expression as written; null: runs only on demand.
    #[oai(nullable)]
    pub schedule: Option<String>,
    pub retention_hours: i64,
    pub guard_share: f64,
    pub guard_min: i64,
    pub batch_size: i64,
    pub lease_seconds: i64,
    /// 0: never quarantine.
    pub quarantine_after: i64,
}

/// An offboarding not applied yet.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct PendingOffboarding {
    /// `inactive` or `deleted`: still staged, its retention running (or ended, waiting for the
    /// next run or an approval); `queued`: purged from staging, the application offboarding
    /// not applied yet (retried by every run).
    pub state: String,
    pub user_id: String,
    #[oai(nullable)]
    pub user_name: Option<String>,
    pub app_key: String,
    #[oai(nullable)]
    pub deactivated_at: Option<String>,
    #[oai(nullable)]
    pub deleted_at: Option<String>,
    /// When the retention ends and the next run offboards the user (queued: when queued).
    pub due_at: String,
    /// Whether due_at has passed.
    pub due: bool,
    #[oai(nullable)]
    pub queued_at: Option<String>,
    /// Failed attempts to apply a queued offboarding.
    pub attempts: i64,
    #[oai(nullable)]
    pub last_error: Option<String>,
}

/// A lease an operator released.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ReleasedLease {
    /// Who held it: host/pid:start/run.
    pub holder: String,
    /// The run it was held for.
    #[oai(nullable)]
    pub run_id: Option<i64>,
    pub acquired_at: String,
    pub expires_at: String,
}

#[derive(ApiResponse)]
pub enum Released {
    /// Released: the next run tries the user again
    #[oai(status = 204)]
    Done,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct OffboardingPage {
    pub items: Vec<PendingOffboarding>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    /// The tenant's retention.
    pub retention_hours: i64,
}

pub struct AdminSyncApi {
    pub state: Arc<AppState>,
}

impl AdminSyncApi {
    /// The sync service and settings of a tenant that syncs; 404 otherwise.
    fn syncing(
        &self,
        tenant: &str,
    ) -> std::result::Result<(&Arc<SyncService>, SyncConfig), AdminError> {
        self.state.admin_tenant(tenant)?;
        let service = self.service()?;
        Ok((service, service.tenant_config(tenant)?))
    }

    /// The sync service; 404 when no tenant syncs.
    fn service(&self) -> std::result::Result<&Arc<SyncService>, AdminError> {
        self.state
            .sync
            .as_ref()
            .ok_or_else(|| AdminError::not_found("no tenant syncs: there are no sync runs"))
    }

    /// The ledger; 404 when no tenant syncs.
    fn ledger(&self) -> std::result::Result<&Arc<dyn LedgerReads>, AdminError> {
        Ok(self.service()?.ledger())
    }
}

impl From<StartedRun> for Started {
    fn from(r: StartedRun) -> Started {
        Started::new(r.run_id, r.tenant)
    }
}

fn mapping_info(tenant: &str, c: &SyncConfig) -> MappingInfo {
    let m: &Mapping = &c.mapping.0;
    let t = m.target();
    MappingInfo {
        tenant: tenant.to_string(),
        path: c.mapping_path.display().to_string(),
        database: t.database.clone(),
        user_table: t.user_table.clone(),
        key_column: t.key_column.clone(),
        columns: m.writes(),
        role_rules: m.role_rule_count() as i64,
        offboarding: m.offboarding_action().to_string(),
        tests: m.test_count() as i64,
        settings: SyncSettings {
            schedule: c.schedule.as_ref().map(|s| s.expr.clone()),
            retention_hours: i64::from(c.retention_hours),
            guard_share: c.guard_share,
            guard_min: i64::from(c.guard_min),
            batch_size: i64::from(c.batch_size),
            lease_seconds: i64::from(c.lease_seconds),
            quarantine_after: i64::from(c.quarantine_after),
        },
    }
}

#[allow(clippy::too_many_arguments)]
#[OpenApi(prefix_path = "/admin/v1")]
impl AdminSyncApi {
    /// Sync runs, newest first, optionally of one tenant, status and time range
    #[oai(
        path = "/runs",
        method = "get",
        tag = "SyncTag::SyncRuns",
        operation_id = "adminListRuns"
    )]
    async fn list_runs(
        &self,
        _auth: AdminAuth,
        /// Only this tenant's runs
        #[oai(validator(max_length = 256))]
        tenant: Query<Option<String>>,
        /// Only runs with this status
        #[oai(validator(
            pattern = "^(running|succeeded|completed_with_errors|failed|skipped|awaiting_approval)$"
        ))]
        status: Query<Option<String>>,
        /// Runs started at or after this time (RFC 3339)
        since: Query<Option<DateTime<Utc>>>,
        /// Runs started before this time (RFC 3339)
        until: Query<Option<DateTime<Utc>>>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<RunPage> {
        if let Some(t) = tenant.0.as_deref() {
            self.state.admin_tenant(t)?;
        }
        let (limit, offset) = self.state.admin_paging(limit.0, offset.0);
        let q = RunQuery {
            tenant: tenant.0,
            status: status.0,
            trigger: None,
            since: since.0,
            until: until.0,
            limit,
            offset,
        };
        let (total, rows) = self.ledger()?.runs(&q).await?;
        Ok(Json(RunPage {
            items: rows.into_iter().map(Run::from).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// One sync run: counts, timings, trigger, watermarks, error and approval
    #[oai(
        path = "/runs/:id",
        method = "get",
        tag = "SyncTag::SyncRuns",
        operation_id = "adminGetRun"
    )]
    async fn get_run(&self, _auth: AdminAuth, id: Path<i64>) -> Result<Run> {
        let run = self
            .ledger()?
            .run(id.0)
            .await?
            .ok_or_else(|| AdminError::not_found(format!("no run {}", id.0)))?;
        Ok(Json(run.into()))
    }

    /// A run's items: every user it changed, failed on, held or offboarded, with field changes
    #[oai(
        path = "/runs/:id/items",
        method = "get",
        tag = "SyncTag::SyncRuns",
        operation_id = "adminListRunItems"
    )]
    async fn list_run_items(
        &self,
        _auth: AdminAuth,
        id: Path<i64>,
        /// Only items with this outcome
        #[oai(validator(
            pattern = "^(created|updated|reactivated|deactivated|failed|offboarded|purged|offboarding_held)$"
        ))]
        outcome: Query<Option<String>>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<RunItemPage> {
        let ledger = self.ledger()?;
        if ledger.run(id.0).await?.is_none() {
            return Err(AdminError::not_found(format!("no run {}", id.0)));
        }
        let (limit, offset) = self.state.admin_paging(limit.0, offset.0);
        let (total, rows) = ledger
            .items(id.0, outcome.0.as_deref(), limit, offset)
            .await?;
        let items = rows.into_iter().map(RunItem::from).collect();
        Ok(Json(RunItemPage {
            items,
            total,
            limit,
            offset,
        }))
    }

    /// Start a sync run of a tenant now (operator); answers once the run is in the ledger
    #[oai(
        path = "/tenants/:tenant/runs",
        method = "post",
        tag = "SyncTag::SyncRuns",
        operation_id = "adminStartRun"
    )]
    async fn start_run(
        &self,
        auth: AdminAuth,
        tenant: Path<String>,
        body: Json<RunRequest>,
    ) -> std::result::Result<Started, ActionError> {
        auth.require(AdminRole::Operator)?;
        let (service, _) = self.syncing(&tenant)?;
        let RunRequest { dry_run, full } = body.0;
        tracing::info!(admin = %auth.0.name, tenant = %*tenant, dry_run, full, "sync run requested");
        let started = service
            .start_run(&tenant, Trigger::Api, dry_run, full)
            .await?;
        Ok(started.into())
    }

    /// Approve a run that waits for approval (operator): apply the offboardings it held
    #[oai(
        path = "/runs/:id/approve",
        method = "post",
        tag = "SyncTag::SyncRuns",
        operation_id = "adminApproveRun"
    )]
    async fn approve_run(
        &self,
        auth: AdminAuth,
        id: Path<i64>,
    ) -> std::result::Result<Started, ActionError> {
        auth.require(AdminRole::Operator)?;
        let run = self
            .ledger()?
            .run(id.0)
            .await?
            .ok_or_else(|| AdminError::not_found(format!("no run {}", id.0)))?;
        if run.status != crate::sync::RunStatus::AwaitingApproval.as_str()
            || run.dry_run
            || run.approved_at.is_some()
        {
            return Err(AdminError::conflict(format!(
                "run {} is not awaiting approval (status {}{})",
                run.id,
                run.status,
                if run.approved_at.is_some() {
                    ", already approved"
                } else {
                    ""
                }
            ))
            .into());
        }
        let (service, _) = self.syncing(&run.tenant)?;
        tracing::info!(admin = %auth.0.name, tenant = %run.tenant, run_id = id.0, "approval requested");
        Ok(service.approve(id.0, Trigger::Api).await?.into())
    }

    /// Render a staged user or a posted SCIM user with the tenant's mapping (operator); writes nothing
    #[oai(
        path = "/tenants/:tenant/mapping/preview",
        method = "post",
        tag = "SyncTag::Mapping",
        operation_id = "adminPreviewMapping"
    )]
    async fn preview(
        &self,
        auth: AdminAuth,
        tenant: Path<String>,
        body: Json<PreviewRequest>,
    ) -> std::result::Result<Json<Preview>, ActionError> {
        auth.require(AdminRole::Operator)?;
        let (service, _) = self.syncing(&tenant)?;
        let t = self.state.admin_tenant(&tenant)?;
        let source = match &body.0 {
            PreviewRequest::ById(b) => PreviewSource::Staged(UserRef::Id(&b.user_id)),
            PreviewRequest::ByName(b) => PreviewSource::Staged(UserRef::UserName(&b.user_name)),
            PreviewRequest::Document(d) => {
                let doc = Value::Object(d.user.clone().into_iter().collect());
                let n = normalize(&t.users, &doc, self.state.scim_limits())
                    .map_err(AdminError::from)?;
                let active = n.doc.get("active").and_then(Value::as_bool).unwrap_or(true);
                let groups = d
                    .groups
                    .iter()
                    .map(|g| StagedGroup {
                        id: g.id.clone().unwrap_or_default(),
                        display_name: g.display_name.clone(),
                        external_id: g.external_id.clone(),
                    })
                    .collect();
                PreviewSource::Document {
                    user: StagedUser {
                        id: String::new(),
                        doc: n.doc,
                        groups,
                    },
                    active,
                }
            }
        };
        let p = service.preview(&tenant, source).await?;
        let fc = |m: BTreeMap<String, crate::sync::Change>| -> BTreeMap<String, FieldChange> {
            m.into_iter()
                .map(|(c, ch)| {
                    (
                        c,
                        FieldChange {
                            before: ch.before,
                            after: ch.after,
                        },
                    )
                })
                .collect()
        };
        Ok(Json(Preview {
            source: p.source.to_string(),
            user_id: p.user_id,
            user_name: p.user_name,
            state: p.state.to_string(),
            key_column: p.key_column,
            key: p.key,
            fields: p.fields,
            roles: p.roles,
            link: p.link.map(LinkState::from),
            changes: p.changes.map(fc),
            roles_added: p.roles_added,
            roles_removed: p.roles_removed,
        }))
    }

    /// The mapping a tenant syncs with, and the sync settings in force
    #[oai(
        path = "/tenants/:tenant/mapping",
        method = "get",
        tag = "SyncTag::Mapping",
        operation_id = "adminGetMapping"
    )]
    async fn get_mapping(&self, _auth: AdminAuth, tenant: Path<String>) -> Result<MappingInfo> {
        let (_, config) = self.syncing(&tenant)?;
        Ok(Json(mapping_info(&tenant, &config)))
    }

    /// Read the tenant's sync section again from the configuration file (operator): its
    /// mapping file, schedule, retention, guard, batch size, lease and quarantine settings. A
    /// section or mapping that fails to load, fails its own tests or does not fit the
    /// application's tables is rejected and the settings in force stay; the new ones apply from
    /// the next run
    #[oai(
        path = "/tenants/:tenant/mapping/reload",
        method = "post",
        tag = "SyncTag::Mapping",
        operation_id = "adminReloadMapping"
    )]
    async fn reload_mapping(
        &self,
        auth: AdminAuth,
        tenant: Path<String>,
    ) -> std::result::Result<Json<MappingInfo>, ActionError> {
        auth.require(AdminRole::Operator)?;
        let (service, _) = self.syncing(&tenant)?;
        let t = self.state.admin_tenant(&tenant)?;
        let loaded = service
            .reload(&tenant, &t.config.custom_schema)
            .await
            .inspect_err(|_| {
                tracing::warn!(tenant = %*tenant, admin = %auth.0.name, "mapping reload rejected")
            })?;
        tracing::info!(tenant = %*tenant, admin = %auth.0.name, "mapping reloaded");
        Ok(Json(mapping_info(&tenant, &loaded)))
    }

    /// Offboardings not applied yet: users whose retention runs, and queued offboardings
    #[oai(
        path = "/tenants/:tenant/offboardings",
        method = "get",
        tag = "SyncTag::Offboardings",
        operation_id = "adminListOffboardings"
    )]
    async fn list_offboardings(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<OffboardingPage> {
        let (service, config) = self.syncing(&tenant)?;
        let (limit, offset) = self.state.admin_paging(limit.0, offset.0);
        let (total, rows) = service
            .ledger()
            .pending_offboardings(&tenant, config.retention_hours, limit, offset)
            .await?;
        let now = self.state.clock.now();
        let items = rows
            .into_iter()
            .map(|r| PendingOffboarding {
                due: parse_time(&r.due_at).is_some_and(|d| d <= now),
                state: r.state,
                user_id: r.user_id,
                user_name: r.user_name,
                app_key: r.app_key,
                deactivated_at: r.deactivated_at,
                deleted_at: r.deleted_at,
                due_at: r.due_at,
                queued_at: r.queued_at,
                attempts: r.attempts,
                last_error: r.last_error,
            })
            .collect();
        Ok(Json(OffboardingPage {
            items,
            total,
            limit,
            offset,
            retention_hours: i64::from(config.retention_hours),
        }))
    }

    /// Release the tenant's sync lease whoever holds it (operator; recorded with the admin's
    /// name): for a run whose process died, so the next run need not wait for the lease to expire
    #[oai(
        path = "/tenants/:tenant/lease",
        method = "delete",
        tag = "SyncTag::Recovery",
        operation_id = "adminReleaseLease"
    )]
    async fn release_lease(
        &self,
        auth: AdminAuth,
        tenant: Path<String>,
    ) -> std::result::Result<Json<ReleasedLease>, ActionError> {
        auth.require(AdminRole::Operator)?;
        let (service, _) = self.syncing(&tenant)?;
        let lease = service
            .release_lease(&tenant, &auth.0.name)
            .await?
            .ok_or_else(|| {
                AdminError::not_found(format!("tenant {:?} holds no lease", &*tenant))
            })?;
        Ok(Json(ReleasedLease {
            holder: lease.holder,
            run_id: lease.run_id,
            acquired_at: crate::store::format_time(lease.acquired_at),
            expires_at: crate::store::format_time(lease.expires_at),
        }))
    }

    /// Users the runs skip because they failed runs in a row, longest quarantined first
    #[oai(
        path = "/tenants/:tenant/quarantine",
        method = "get",
        tag = "SyncTag::Recovery",
        operation_id = "adminListQuarantine"
    )]
    async fn list_quarantine(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<FailingPage> {
        let (service, _) = self.syncing(&tenant)?;
        failing_page(
            service,
            Some(&tenant),
            true,
            self.state.admin_paging(limit.0, offset.0),
        )
        .await
    }

    /// Release a quarantined user (operator; recorded with the admin's name): the next run tries it again
    #[oai(
        path = "/tenants/:tenant/quarantine/:user_id/release",
        method = "post",
        tag = "SyncTag::Recovery",
        operation_id = "adminReleaseQuarantine"
    )]
    async fn release_quarantine(
        &self,
        auth: AdminAuth,
        tenant: Path<String>,
        #[oai(validator(max_length = 256))] user_id: Path<String>,
    ) -> std::result::Result<Released, ActionError> {
        auth.require(AdminRole::Operator)?;
        let (service, _) = self.syncing(&tenant)?;
        if !service
            .release_quarantine(&tenant, &user_id, &auth.0.name)
            .await?
        {
            return Err(AdminError::not_found(format!(
                "user {:?} of tenant {:?} is not quarantined",
                &*user_id, &*tenant
            ))
            .into());
        }
        Ok(Released::Done)
    }
}
