//! The admin API's answers about users, each one call: a user's story (what is staged, what
//! the application has, how its syncs went, which SCIM requests were about it, and why it
//! is where it is) and what is failing now.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};
use serde_json::Value;

use super::AppState;
use super::admin::{AdminAuth, ProvisioningRequest, page, provisioning_request, story_path};
use super::admin_sync::{LinkState, RunItem};
use super::problem::AdminError;
use crate::store::{About, ProvisioningQuery, ProvisioningRow};
use crate::sync::SyncService;
use crate::sync::ledger::{FailingRow, StagedRow, UserItem, UserRef, UserSyncRow};

type Result<T> = std::result::Result<Json<T>, AdminError>;

#[derive(Tags)]
enum StoryTag {
    /// Start here: what happened to a user and why, and which users are failing now
    Users,
}

/// A user whose last sync attempt failed: retried by every run, or quarantined (skipped).
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct FailingUser {
    pub tenant: String,
    pub user_id: String,
    /// Null when the user has left staging since.
    #[oai(nullable)]
    pub user_name: Option<String>,
    /// Runs in a row it failed.
    pub attempts: i64,
    /// Why it failed last.
    pub last_error: String,
    /// Failing since.
    pub first_failed_at: String,
    pub last_failed_at: String,
    /// Skipped by the runs until its staged data changes or an operator releases it.
    pub quarantined: bool,
    #[oai(nullable)]
    pub quarantined_at: Option<String>,
    /// The admin API path of the user's story.
    pub user_story: String,
}

page!(FailingPage of FailingUser);

fn failing_user(r: FailingRow) -> FailingUser {
    FailingUser {
        user_story: story_path(&r.tenant, "userId", &r.user_id),
        tenant: r.tenant,
        user_id: r.user_id,
        user_name: r.user_name,
        attempts: r.attempts,
        last_error: r.last_error,
        first_failed_at: r.first_failed_at,
        last_failed_at: r.last_failed_at,
        quarantined: r.quarantined_at.is_some(),
        quarantined_at: r.quarantined_at,
    }
}

/// A page of the failing users of a syncing tenant or of all (or quarantined ones only).
pub async fn failing_page(
    service: &SyncService,
    tenant: Option<&str>,
    quarantined_only: bool,
    (limit, offset): (i64, i64),
) -> Result<FailingPage> {
    let (total, rows) = service
        .ledger()
        .failing(tenant, quarantined_only, limit, offset)
        .await?;
    Ok(Json(FailingPage {
        items: rows.into_iter().map(failing_user).collect(),
        total,
        limit,
        offset,
    }))
}

/// The user as staged (inactive and deleted users too, until purged).
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct StagedState {
    pub user_name: String,
    #[oai(nullable)]
    pub external_id: Option<String>,
    #[oai(nullable)]
    pub display_name: Option<String>,
    pub active: bool,
    /// Deleted through SCIM: gone from the SCIM API, kept until its retention ends.
    pub deleted: bool,
    #[oai(nullable)]
    pub deactivated_at: Option<String>,
    #[oai(nullable)]
    pub deleted_at: Option<String>,
    /// The display names of its groups.
    pub groups: Vec<String>,
}

/// A ledger item of the user, with its run.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct StoryItem {
    pub run_id: i64,
    /// `schedule`, `cli` or `api`.
    pub trigger: String,
    pub dry_run: bool,
    pub run_status: String,
    pub run_started_at: String,
    pub item: RunItem,
}

impl From<UserItem> for StoryItem {
    fn from(i: UserItem) -> StoryItem {
        StoryItem {
            run_id: i.run_id,
            trigger: i.trigger,
            dry_run: i.dry_run,
            run_status: i.run_status,
            run_started_at: i.started_at,
            item: RunItem::from(i.item),
        }
    }
}

/// An offboarding not applied yet.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct StoryOffboarding {
    /// `inactive` or `deleted`: staged, its retention running (or ended, waiting for the next
    /// run or an approval); `queued`: purged from staging, the application offboarding not
    /// applied yet (retried by every run).
    pub state: String,
    /// When the retention ends (queued: when it was queued).
    pub due_at: String,
    pub due: bool,
    /// Queued: `delete`, `update` or `none`.
    #[oai(nullable)]
    pub action: Option<String>,
    pub attempts: i64,
    #[oai(nullable)]
    pub last_error: Option<String>,
}

/// Everything known about one user, and a sentence saying where it stands.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct UserStory {
    pub tenant: String,
    /// Null: no user was ever staged under this name (the requests say why).
    #[oai(nullable)]
    pub user_id: Option<String>,
    /// Where the user stands and why, in one sentence.
    pub headline: String,
    /// Null: not staged (never created, or purged after its retention).
    #[oai(nullable)]
    pub staged: Option<StagedState>,
    /// Whether the tenant syncs to an application.
    pub syncs: bool,
    /// What the application row holds since the engine last wrote it (null: no row).
    #[oai(nullable)]
    pub application: Option<LinkState>,
    /// The newest item of a real (not dry) run.
    #[oai(nullable)]
    pub last_outcome: Option<StoryItem>,
    /// Set while its last attempt failed.
    #[oai(nullable)]
    pub failing: Option<FailingUser>,
    #[oai(nullable)]
    pub offboarding: Option<StoryOffboarding>,
    /// The runs that touched it, newest first (`limit` of `itemsTotal`).
    pub items: Vec<StoryItem>,
    pub items_total: i64,
    /// The SCIM requests about it, newest first (`limit` of `requestsTotal`).
    pub requests: Vec<ProvisioningRequest>,
    pub requests_total: i64,
}

pub struct AdminStoryApi {
    pub state: Arc<AppState>,
}

/// Who the admin asked about.
pub enum Asked {
    Id(String),
    UserName(String),
    ExternalId(String),
}

impl Asked {
    pub fn of(
        user_id: Option<String>,
        user_name: Option<String>,
        external_id: Option<String>,
    ) -> std::result::Result<Asked, AdminError> {
        match (user_id, user_name, external_id) {
            (Some(id), None, None) => Ok(Asked::Id(id)),
            (None, Some(n), None) => Ok(Asked::UserName(n)),
            (None, None, Some(x)) => Ok(Asked::ExternalId(x)),
            _ => Err(AdminError::bad_request(
                "give exactly one of userId, userName and externalId",
            )),
        }
    }

    fn user_ref(&self) -> UserRef<'_> {
        match self {
            Asked::Id(id) => UserRef::Id(id),
            Asked::UserName(n) => UserRef::UserName(n),
            Asked::ExternalId(x) => UserRef::ExternalId(x),
        }
    }
}

fn doc_text(s: &StagedRow, key: &str) -> Option<String> {
    s.user
        .doc
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The offboarding waiting for the user: queued, or its retention running while it has
/// an application row.
fn offboarding(
    sync: &UserSyncRow,
    retention_hours: Option<u32>,
    now: DateTime<Utc>,
) -> Option<StoryOffboarding> {
    if let Some(q) = &sync.queued {
        return Some(StoryOffboarding {
            state: "queued".into(),
            due_at: q.queued_at.clone(),
            due: true,
            action: Some(q.action.clone()),
            attempts: q.attempts,
            last_error: q.last_error.clone(),
        });
    }
    let started = sync.deactivated_at.as_deref()?;
    sync.link.as_ref()?;
    let from = [Some(started), sync.deleted_at.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(parse_time)
        .max()?;
    let due_at = from + chrono::Duration::hours(i64::from(retention_hours?));
    Some(StoryOffboarding {
        state: if sync.deleted_at.is_some() {
            "deleted"
        } else {
            "inactive"
        }
        .into(),
        due_at: crate::store::format_time(due_at),
        due: due_at <= now,
        action: None,
        attempts: 0,
        last_error: None,
    })
}

/// Where the user stands, in one sentence, from the most pressing fact down.
fn headline(s: &UserStory, last_request: Option<&ProvisioningRequest>) -> String {
    if let Some(f) = &s.failing {
        return match &f.quarantined_at {
            Some(at) => format!(
                "Quarantined since {at} after failing {} runs in a row: {}. Runs skip it until \
                 its staged data changes or an operator releases it.",
                f.attempts, f.last_error
            ),
            None => format!(
                "Failing since {} ({} run{} in a row): {}. Every run tries it again.",
                f.first_failed_at,
                f.attempts,
                if f.attempts == 1 { "" } else { "s" },
                f.last_error
            ),
        };
    }
    if let Some(o) = &s.offboarding {
        return match o.state.as_str() {
            "queued" => format!(
                "Purged from staging; its offboarding ({}) is queued since {} and not applied \
                 yet{}.",
                o.action.as_deref().unwrap_or("unknown"),
                o.due_at,
                o.last_error
                    .as_deref()
                    .map(|e| format!(": {} failed attempt(s), the last: {e}", o.attempts))
                    .unwrap_or_default()
            ),
            state if o.due => format!(
                "{} in the identity provider; its retention ended at {}: the next run \
                 offboards it (or waits for an approval if the guard holds it).",
                if state == "deleted" {
                    "Deleted"
                } else {
                    "Deactivated"
                },
                o.due_at
            ),
            state => format!(
                "{} in the identity provider and deactivated in the application; offboarded \
                 when its retention ends at {}.",
                if state == "deleted" {
                    "Deleted"
                } else {
                    "Deactivated"
                },
                o.due_at
            ),
        };
    }
    let last = s.last_outcome.as_ref().map(|i| {
        let action = i
            .item
            .action
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        format!(
            "{}{action} in run {} at {}",
            i.item.outcome, i.run_id, i.run_started_at
        )
    });
    match (&s.staged, &s.application) {
        (None, _) => match (last, last_request) {
            (Some(last), _) => {
                format!("Not staged any more (purged after its retention); last: {last}.")
            }
            (None, Some(r)) => format!(
                "Never staged: the last request about it, {} {}, was answered {}{}.",
                r.method,
                r.path,
                r.status,
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            (None, None) => "Not staged.".into(),
        },
        (Some(st), _) if !s.syncs => format!(
            "Staged ({}); this tenant does not sync to an application.",
            staged_state(st)
        ),
        (Some(st), Some(app)) => format!(
            "In the application as {} ({}); staged {}{}.",
            app.app_key,
            app.state,
            staged_state(st),
            last.map(|l| format!("; last change: {l}"))
                .unwrap_or_default()
        ),
        (Some(st), None) if !st.active || st.deleted => format!(
            "Staged {} before its first sync: it is never created in the application, and is \
             purged when its retention ends.",
            staged_state(st)
        ),
        (Some(_), None) => "Staged, not in the application yet: the next run creates it.".into(),
    }
}

fn staged_state(s: &StagedState) -> &'static str {
    if s.deleted {
        "deleted"
    } else if s.active {
        "active"
    } else {
        "inactive"
    }
}

/// Everything known about one user of `tenant` and where it stands (`limit` runs and
/// requests each): the admin API's story and the console's user page.
pub async fn user_story(
    state: &AppState,
    tenant: &str,
    asked: Asked,
    limit: i64,
) -> std::result::Result<UserStory, AdminError> {
    let t = state.admin_tenant(tenant)?;
    let store = &state.store;
    let staged = store.staged_user(tenant, asked.user_ref()).await?;
    let id = match (&staged, &asked) {
        (Some(s), _) => Some(s.user.id.clone()),
        (None, Asked::Id(id)) => Some(id.clone()),
        (None, _) => None,
    };
    let sync_config = t.config.sync.is_some().then(|| {
        state
            .sync
            .as_ref()
            .and_then(|s| s.tenant_config(tenant).ok())
    });
    let syncs = sync_config.is_some();
    let sync = match &id {
        Some(id) if syncs => store.user_sync(tenant, id, limit).await?,
        _ => UserSyncRow::default(),
    };
    // Its requests: by its id, and those whose body named it.
    let (asked_name, asked_external) = match &asked {
        Asked::UserName(n) => (Some(n.to_lowercase()), None),
        Asked::ExternalId(x) => (None, Some(x.clone())),
        Asked::Id(_) => (None, None),
    };
    let about = About {
        ids: id.iter().cloned().collect(),
        user_name: staged
            .as_ref()
            .map(|s| s.user_name.to_lowercase())
            .or(asked_name),
        external_id: staged
            .as_ref()
            .and_then(|s| doc_text(s, "externalId"))
            .or(asked_external),
    };
    let q = ProvisioningQuery {
        about: Some(about),
        limit,
        ..ProvisioningQuery::default()
    };
    let (requests_total, requests): (i64, Vec<ProvisioningRow>) =
        store.provisioning_log(tenant, &q).await?;
    if staged.is_none() && sync.items_total == 0 && sync.queued.is_none() && requests_total == 0 {
        return Err(AdminError::not_found(format!(
            "tenant {:?} has no such user: none is staged, and no SCIM request named it",
            tenant
        )));
    }
    let retention = sync_config.flatten().map(|c| c.retention_hours);
    let offboarding = offboarding(&sync, retention, state.clock.now());
    let requests: Vec<ProvisioningRequest> = requests
        .into_iter()
        .map(|r| provisioning_request(tenant, r))
        .collect();
    let staged = staged.map(|s| StagedState {
        user_name: s.user_name.clone(),
        external_id: doc_text(&s, "externalId"),
        display_name: doc_text(&s, "displayName"),
        active: s.active,
        deleted: s.deleted,
        deactivated_at: sync.deactivated_at.clone(),
        deleted_at: sync.deleted_at.clone(),
        groups: s
            .user
            .groups
            .iter()
            .map(|g| g.display_name.clone())
            .collect(),
    });
    let UserSyncRow {
        link,
        failing,
        items_total,
        items,
        ..
    } = sync;
    let items: Vec<StoryItem> = items.into_iter().map(StoryItem::from).collect();
    let last_outcome = items.iter().find(|i| !i.dry_run).map(|i| StoryItem {
        run_id: i.run_id,
        trigger: i.trigger.clone(),
        dry_run: i.dry_run,
        run_status: i.run_status.clone(),
        run_started_at: i.run_started_at.clone(),
        item: i.item.clone(),
    });
    let mut story = UserStory {
        tenant: tenant.to_string(),
        user_id: id,
        headline: String::new(),
        staged,
        syncs,
        application: link.map(LinkState::from),
        last_outcome,
        failing: failing.map(failing_user),
        offboarding,
        items,
        items_total,
        requests,
        requests_total,
    };
    story.headline = headline(&story, story.requests.first());
    Ok(story)
}

#[allow(clippy::too_many_arguments)]
#[OpenApi(prefix_path = "/admin/v1")]
impl AdminStoryApi {
    /// What happened to a user, and why: staged state, application row, last outcome and
    /// error, the runs and SCIM requests about it, pending offboarding, quarantine
    #[oai(
        path = "/tenants/:tenant/story",
        method = "get",
        tag = "StoryTag::Users",
        operation_id = "adminUserStory"
    )]
    async fn story(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        /// The user's id (in staging and in SCIM)
        #[oai(name = "userId", validator(max_length = 200))]
        user_id: Query<Option<String>>,
        /// The user's userName (case-insensitive)
        #[oai(name = "userName", validator(max_length = 256))]
        user_name: Query<Option<String>>,
        /// The user's externalId (Entra's object id)
        #[oai(name = "externalId", validator(max_length = 256))]
        external_id: Query<Option<String>>,
        /// Runs and requests to list (each; default 20)
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
    ) -> Result<UserStory> {
        let asked = Asked::of(user_id.0, user_name.0, external_id.0)?;
        let story = user_story(&self.state, &tenant, asked, limit.0.unwrap_or(20)).await?;
        Ok(Json(story))
    }

    /// Users failing now, of every tenant or of one: those whose last sync attempt failed
    /// (every run tries them again) and the quarantined ones, longest failing first, with why
    /// and since when
    #[oai(
        path = "/failing",
        method = "get",
        tag = "StoryTag::Users",
        operation_id = "adminListFailing"
    )]
    async fn failing(
        &self,
        _auth: AdminAuth,
        /// Only this tenant's
        #[oai(validator(max_length = 256))]
        tenant: Query<Option<String>>,
        /// Only the quarantined users
        #[oai(default)]
        quarantined: Query<bool>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<FailingPage> {
        let paging = self.state.admin_paging(limit.0, offset.0);
        let tenant = tenant.0.as_deref();
        if let Some(t) = tenant {
            self.state.admin_tenant(t)?;
        }
        let service = self
            .state
            .sync
            .as_ref()
            .filter(|s| tenant.is_none_or(|t| s.tenant_config(t).is_ok()));
        match service {
            Some(service) => failing_page(service, tenant, quarantined.0, paging).await,
            // Nothing syncs (here), so nothing fails.
            None if tenant.is_none() => Ok(Json(FailingPage {
                items: Vec::new(),
                total: 0,
                limit: paging.0,
                offset: paging.1,
            })),
            None => Err(AdminError::not_found(format!(
                "tenant {:?} does not sync",
                tenant.unwrap_or_default()
            ))),
        }
    }
}
