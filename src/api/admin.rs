//! The admin API under /admin/v1: tenants, their staged data and their provisioning log, for
//! the application's administrators. Authenticated by admin tokens (`[admin.tokens.NAME]`),
//! never by a tenant's SCIM token. A `reader` may call every GET; an `operator` may also call
//! the operations that act (POST).
//!
//! The sync endpoints (runs and their items, triggers, approvals, mapping preview and reload,
//! pending offboardings) are in `admin_sync`, with the same `AdminAuth`, roles, paging
//! parameters and problem documents.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, SecurityScheme, Tags};
use serde_json::{Map, Value};

use super::problem::AdminError;
use super::{AppState, Tenant};
use crate::config::AdminRole;
use crate::scim::filter::parse_filter;
use crate::scim::schema::ResourceKind;
use crate::store::{
    About, ListQuery, Page, ProvisioningQuery, ProvisioningRow, StatusFilter, StoreError, Stored,
    UserKey,
};

pub const ADMIN_PREFIX: &str = "/admin/v1";

type Result<T> = std::result::Result<Json<T>, AdminError>;

/// A page of a list answer: `page!(UserPage of UserSummary)` declares the object `UserPage`
/// with the items and the paging applied (`total` is how many match in all).
macro_rules! page {
    ($name:ident of $item:ty $(, total: $doc:literal)?) => {
        #[derive(poem_openapi::Object)]
        #[oai(rename_all = "camelCase")]
        pub struct $name {
            pub items: Vec<$item>,
            $(#[doc = $doc])?
            pub total: i64,
            pub limit: i64,
            pub offset: i64,
        }
    };
}
pub(super) use page;

#[derive(Tags)]
enum AdminTag {
    /// Tenants: how many users and groups each has, its last sync run and its next one
    Tenants,
    /// What the identity provider sent: each tenant's users and groups as staged (read-only)
    #[oai(rename = "Staged data")]
    Staging,
    /// Every request the identity provider made, with its answer: find a user's by its id,
    /// userName or externalId, and the refused ones by status
    #[oai(rename = "Provisioning log")]
    ProvisioningLog,
}

/// Who called: the admin token's name and role.
#[derive(Debug, Clone)]
pub struct Admin {
    pub name: String,
    pub role: AdminRole,
}

/// An admin bearer token from `[admin.tokens.NAME]` (not a tenant's SCIM token).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_admin_token")]
pub struct AdminAuth(pub Admin);

async fn check_admin_token(req: &Request, bearer: Bearer) -> poem::Result<Admin> {
    let state = req
        .data::<Arc<AppState>>()
        .ok_or_else(AdminError::internal)?;
    let token = state
        .config
        .admin
        .authenticate(bearer.token.trim())
        .ok_or_else(AdminError::unauthorized)?;
    tracing::Span::current().record("admin", token.name.as_str());
    Ok(Admin {
        name: token.name.clone(),
        role: token.role,
    })
}

impl AdminAuth {
    /// 403 unless the token has at least `role`.
    pub fn require(&self, role: AdminRole) -> std::result::Result<(), AdminError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(AdminError::forbidden(role.as_str()))
        }
    }
}

pub struct AdminApi {
    pub state: Arc<AppState>,
}

/// A tenant and what it has staged.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct TenantSummary {
    /// The tenant's name: the path segment in /scim-api/v1/{tenant}/scim.
    pub name: String,
    /// Live users with active = true.
    pub active_users: i64,
    /// Live users with active = false (their retention clock runs).
    pub inactive_users: i64,
    pub groups: i64,
    /// Group memberships (one per group and member).
    pub memberships: i64,
    /// The mapping file the tenant syncs with, when configured.
    #[oai(nullable)]
    pub mapping: Option<String>,
    /// The tenant's newest sync run (null: it does not sync, or has not run yet).
    #[oai(nullable)]
    pub last_run: Option<LastRun>,
    /// When the scheduler runs the tenant next (null: no schedule).
    #[oai(nullable)]
    pub next_run_at: Option<String>,
    /// Offboardings not applied yet (null: the tenant does not sync).
    #[oai(nullable)]
    pub pending_offboardings: Option<i64>,
    /// The tenant's custom extension schema URN.
    pub custom_schema: String,
}

/// A tenant's newest sync run, in short (GET /admin/v1/runs/{id} for the rest).
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct LastRun {
    pub id: i64,
    pub status: String,
    pub started_at: String,
    #[oai(nullable)]
    pub ended_at: Option<String>,
}

page!(TenantPage of TenantSummary, total: " How many match in all.");

/// A staged user, summarised.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct UserSummary {
    pub id: String,
    pub user_name: String,
    #[oai(nullable)]
    pub external_id: Option<String>,
    #[oai(nullable)]
    pub display_name: Option<String>,
    pub active: bool,
    /// The resource's version (its ETag is W/"version").
    pub version: i64,
    pub created: String,
    pub last_modified: String,
}

page!(UserPage of UserSummary);

/// A group a user belongs to.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct GroupRef {
    pub id: String,
    #[oai(nullable)]
    pub display_name: Option<String>,
}

/// One staged user with its groups and its full stored document.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct UserDetail {
    #[oai(flatten)]
    pub summary: UserSummary,
    pub groups: Vec<GroupRef>,
    /// The staged SCIM attributes as received (normalised), without id and meta.
    pub document: Value,
}

/// A staged group, summarised.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct GroupSummary {
    pub id: String,
    pub display_name: String,
    #[oai(nullable)]
    pub external_id: Option<String>,
    pub members: i64,
    pub version: i64,
    pub created: String,
    pub last_modified: String,
}

page!(GroupPage of GroupSummary);

/// One SCIM request of the provisioning log.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ProvisioningRequest {
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    pub request_id: String,
    pub method: String,
    /// The route template, e.g. /Users/{id}: never a query string.
    pub path: String,
    #[oai(nullable)]
    pub resource_id: Option<String>,
    pub status: u16,
    pub duration_ms: f64,
    /// The SCIM error's detail, for error answers.
    #[oai(nullable)]
    pub error: Option<String>,
    /// The userName a POST or PUT to /Users carried (lower-cased), failures included.
    #[oai(nullable)]
    pub user_name: Option<String>,
    /// The externalId a POST or PUT carried, failures included.
    #[oai(nullable)]
    pub external_id: Option<String>,
    /// The admin API path of the story of the user the request was about (null: a group, or
    /// a request about no user).
    #[oai(nullable)]
    pub user_story: Option<String>,
}

page!(ProvisioningPage of ProvisioningRequest);

/// The HTTP method of a SCIM request.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "UPPERCASE")]
pub enum ScimMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl ScimMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ScimMethod::Get => "GET",
            ScimMethod::Post => "POST",
            ScimMethod::Put => "PUT",
            ScimMethod::Patch => "PATCH",
            ScimMethod::Delete => "DELETE",
        }
    }
}

/// A provisioning log entry as the admin API shows it, with the way to its user's story.
pub fn provisioning_request(tenant: &str, r: ProvisioningRow) -> ProvisioningRequest {
    let about_user = r.path.starts_with("/Users");
    let user_story = match (&r.resource_id, &r.user_name, &r.external_id) {
        _ if !about_user => None,
        (Some(id), _, _) => Some(story_path(tenant, "userId", id)),
        (None, Some(n), _) => Some(story_path(tenant, "userName", n)),
        (None, None, Some(x)) => Some(story_path(tenant, "externalId", x)),
        (None, None, None) => None,
    };
    ProvisioningRequest {
        time: r.at,
        request_id: r.request_id,
        method: r.method,
        path: r.path,
        resource_id: r.resource_id,
        status: r.status,
        duration_ms: r.duration_ms,
        error: r.error,
        user_name: r.user_name,
        external_id: r.external_id,
        user_story,
    }
}

/// `/admin/v1/tenants/{tenant}/story?{param}={value}`, the value percent-encoded.
pub fn story_path(tenant: &str, param: &str, value: &str) -> String {
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{ADMIN_PREFIX}/tenants/{tenant}/story?{param}={value}")
}

/// What a prune removed.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct PruneResult {
    /// Entries deleted.
    pub deleted: u64,
    /// Entries older than this were deleted (RFC 3339).
    pub before: String,
}

/// What both admin APIs ask of the application state.
impl AppState {
    /// The configured tenant `name`; 404 otherwise.
    pub(super) fn admin_tenant(&self, name: &str) -> std::result::Result<&Tenant, AdminError> {
        self.tenants
            .get(name)
            .ok_or_else(|| AdminError::no_such_tenant(name))
    }

    /// limit within 1..=max_page_size (default: default_page_size), offset ≥ 0.
    pub(super) fn admin_paging(&self, limit: Option<i64>, offset: Option<i64>) -> (i64, i64) {
        let server = &self.config.server;
        let limit = limit
            .unwrap_or(server.default_page_size)
            .clamp(1, server.max_page_size);
        (limit, offset.unwrap_or(0).max(0))
    }
}

impl AdminApi {
    async fn summary(&self, t: &Tenant) -> std::result::Result<TenantSummary, AdminError> {
        let c = self.state.store.tenant_counts(&t.config.name).await?;
        let sync = match &self.state.sync {
            Some(service) => service.summary(&t.config.name).await?,
            None => None,
        };
        let (mapping, last_run, next_run_at, pending) = match sync {
            None => (None, None, None, None),
            Some(s) => (
                Some(s.mapping),
                s.last_run.map(|r| LastRun {
                    id: r.id,
                    status: r.status,
                    started_at: r.started_at,
                    ended_at: r.ended_at,
                }),
                s.next_run_at,
                Some(s.pending_offboardings),
            ),
        };
        Ok(TenantSummary {
            name: t.config.name.clone(),
            active_users: c.active_users,
            inactive_users: c.inactive_users,
            groups: c.groups,
            memberships: c.memberships,
            mapping,
            last_run,
            next_run_at,
            pending_offboardings: pending,
            custom_schema: t.config.custom_schema.clone(),
        })
    }

    /// One page of a tenant's staged users or groups (without related resources):
    /// the total, the rows, and the limit and offset applied.
    async fn staged(
        &self,
        tenant: &str,
        kind: ResourceKind,
        filter: Option<&str>,
        limit: Option<i64>,
        offset: Option<i64>,
    ) -> std::result::Result<(i64, Vec<Stored>, i64, i64), AdminError> {
        let (limit, offset) = self.state.admin_paging(limit, offset);
        let page = Page {
            start_index: offset.saturating_add(1),
            count: limit,
        };
        let t = self.state.admin_tenant(tenant)?;
        let rt = t.rt(kind);
        let parsed = match filter.map(str::trim) {
            None | Some("") => None,
            Some(f) => Some(
                parse_filter(f, self.state.scim_limits())
                    .map_err(|e| AdminError::bad_request(format!("invalid filter: {e}")))?,
            ),
        };
        let query = ListQuery {
            filter: parsed.as_ref(),
            ..ListQuery::default()
        };
        // The backend translates the filter: what it cannot translate is a bad filter.
        self.state
            .store
            .list(tenant, rt, query, &page, false)
            .await
            .map(|(total, rows)| (total, rows, limit, offset))
            .map_err(|e| match e {
                StoreError::Rejected(e) => {
                    AdminError::bad_request(format!("invalid filter: {}", e.detail))
                }
                other => other.into(),
            })
    }
}

impl AdminApi {
    /// The entries a user filter asks for: one of a resource id, a userName (its staged users'
    /// ids and the requests that named it) or an externalId (likewise).
    async fn about(
        &self,
        tenant: &str,
        resource_id: Option<String>,
        user_name: Option<String>,
        external_id: Option<String>,
    ) -> std::result::Result<Option<About>, AdminError> {
        let given = [&resource_id, &user_name, &external_id]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if given > 1 {
            return Err(AdminError::bad_request(
                "give one of resourceId, userName and externalId",
            ));
        }
        Ok(match (resource_id, user_name, external_id) {
            (Some(id), _, _) => Some(About {
                ids: vec![id],
                ..About::default()
            }),
            (_, Some(n), _) => Some(About {
                ids: self
                    .state
                    .store
                    .user_ids(tenant, &UserKey::UserName(n.clone()))
                    .await?,
                user_name: Some(n.to_lowercase()),
                external_id: None,
            }),
            (_, _, Some(x)) => Some(About {
                ids: self
                    .state
                    .store
                    .user_ids(tenant, &UserKey::ExternalId(x.clone()))
                    .await?,
                user_name: None,
                external_id: Some(x),
            }),
            _ => None,
        })
    }
}

fn doc_of(s: &Stored) -> std::result::Result<Map<String, Value>, AdminError> {
    serde_json::from_str(&s.doc).map_err(|e| {
        tracing::error!(error = %e, "a stored document is not JSON");
        AdminError::internal()
    })
}

fn text(doc: &Map<String, Value>, key: &str) -> Option<String> {
    doc.get(key).and_then(Value::as_str).map(str::to_string)
}

fn user_summary(s: &Stored, doc: &Map<String, Value>) -> UserSummary {
    UserSummary {
        id: s.id.clone(),
        user_name: text(doc, "userName").unwrap_or_default(),
        external_id: text(doc, "externalId"),
        display_name: text(doc, "displayName"),
        active: doc.get("active").and_then(Value::as_bool).unwrap_or(true),
        version: s.version,
        created: s.created.clone(),
        last_modified: s.last_modified.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
#[OpenApi(prefix_path = "/admin/v1")]
impl AdminApi {
    /// List the configured tenants with their staged counts
    #[oai(
        path = "/tenants",
        method = "get",
        tag = "AdminTag::Tenants",
        operation_id = "adminListTenants"
    )]
    async fn list_tenants(
        &self,
        _auth: AdminAuth,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<TenantPage> {
        let (limit, offset) = self.state.admin_paging(limit.0, offset.0);
        let mut items = Vec::new();
        for t in self
            .state
            .tenants
            .values()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(0))
        {
            items.push(self.summary(t).await?);
        }
        Ok(Json(TenantPage {
            items,
            total: self.state.tenants.len() as i64,
            limit,
            offset,
        }))
    }

    /// One tenant with its staged counts
    #[oai(
        path = "/tenants/:tenant",
        method = "get",
        tag = "AdminTag::Tenants",
        operation_id = "adminGetTenant"
    )]
    async fn get_tenant(&self, _auth: AdminAuth, tenant: Path<String>) -> Result<TenantSummary> {
        let t = self.state.admin_tenant(&tenant)?;
        Ok(Json(self.summary(t).await?))
    }

    /// A tenant's staged users, optionally filtered with a SCIM filter
    #[oai(
        path = "/tenants/:tenant/users",
        method = "get",
        tag = "AdminTag::Staging",
        operation_id = "adminListUsers"
    )]
    async fn list_users(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        /// A SCIM filter (RFC 7644 §3.4.2.2), e.g. `active eq false` or `userName sw "a"`
        filter: Query<Option<String>>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<UserPage> {
        let (total, rows, limit, offset) = self
            .staged(
                &tenant,
                ResourceKind::User,
                filter.0.as_deref(),
                limit.0,
                offset.0,
            )
            .await?;
        let items = rows
            .iter()
            .map(|s| doc_of(s).map(|d| user_summary(s, &d)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Json(UserPage {
            items,
            total,
            limit,
            offset,
        }))
    }

    /// One staged user with its groups
    #[oai(
        path = "/tenants/:tenant/users/:id",
        method = "get",
        tag = "AdminTag::Staging",
        operation_id = "adminGetUser"
    )]
    async fn get_user(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        id: Path<String>,
    ) -> Result<UserDetail> {
        self.state.admin_tenant(&tenant)?;
        let s = self
            .state
            .store
            .get_user(&tenant, &id, true)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => {
                    AdminError::not_found(format!("tenant {:?} has no user with this id", &*tenant))
                }
                other => other.into(),
            })?;
        let doc = doc_of(&s)?;
        let groups = s
            .related
            .iter()
            .flatten()
            .map(|g| GroupRef {
                id: g.id.clone(),
                display_name: g.display.clone(),
            })
            .collect();
        Ok(Json(UserDetail {
            summary: user_summary(&s, &doc),
            groups,
            document: Value::Object(doc),
        }))
    }

    /// A tenant's staged groups, optionally filtered with a SCIM filter
    #[oai(
        path = "/tenants/:tenant/groups",
        method = "get",
        tag = "AdminTag::Staging",
        operation_id = "adminListGroups"
    )]
    async fn list_groups(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        /// A SCIM filter (RFC 7644 §3.4.2.2), e.g. `displayName sw "Sales"`
        filter: Query<Option<String>>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<GroupPage> {
        let (total, rows, limit, offset) = self
            .staged(
                &tenant,
                ResourceKind::Group,
                filter.0.as_deref(),
                limit.0,
                offset.0,
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|s| s.id.clone()).collect();
        let counts = self.state.store.member_counts(&tenant, &ids).await?;
        let items = rows
            .iter()
            .zip(counts)
            .map(|(s, members)| {
                doc_of(s).map(|d| GroupSummary {
                    id: s.id.clone(),
                    display_name: text(&d, "displayName").unwrap_or_default(),
                    external_id: text(&d, "externalId"),
                    members,
                    version: s.version,
                    created: s.created.clone(),
                    last_modified: s.last_modified.clone(),
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Json(GroupPage {
            items,
            total,
            limit,
            offset,
        }))
    }

    /// A tenant's provisioning log: its SCIM requests, newest first, filtered by user, method,
    /// status, request id and time
    #[oai(
        path = "/tenants/:tenant/requests",
        method = "get",
        tag = "AdminTag::ProvisioningLog",
        operation_id = "adminListRequests"
    )]
    async fn list_requests(
        &self,
        _auth: AdminAuth,
        tenant: Path<String>,
        /// Requests about this resource (its id)
        #[oai(name = "resourceId", validator(max_length = 200))]
        resource_id: Query<Option<String>>,
        /// Requests about this user: any with its id, and POST or PUT requests that carried
        /// this userName (case-insensitive), refused ones included
        #[oai(name = "userName", validator(max_length = 256))]
        user_name: Query<Option<String>>,
        /// Requests about the user with this externalId, as `userName` does
        #[oai(name = "externalId", validator(max_length = 256))]
        external_id: Query<Option<String>>,
        /// Only this method
        method: Query<Option<ScimMethod>>,
        /// A status (`404`) or a class (`4xx`, `5xx`)
        #[oai(validator(pattern = "^([1-5][0-9][0-9]|[1-5][xX][xX])$"))]
        status: Query<Option<String>>,
        /// The request with this X-Request-Id
        #[oai(name = "requestId", validator(max_length = 128))]
        request_id: Query<Option<String>>,
        /// Requests at or after this time (RFC 3339)
        since: Query<Option<DateTime<Utc>>>,
        /// Requests before this time (RFC 3339)
        until: Query<Option<DateTime<Utc>>>,
        /// Page size (default: server.default_page_size, at most server.max_page_size)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
        offset: Query<Option<i64>>,
    ) -> Result<ProvisioningPage> {
        self.state.admin_tenant(&tenant)?;
        let (limit, offset) = self.state.admin_paging(limit.0, offset.0);
        let about = self
            .about(&tenant, resource_id.0, user_name.0, external_id.0)
            .await?;
        let status = match status.0.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(StatusFilter::parse(s).ok_or_else(|| {
                AdminError::bad_request("status must be a status code (404) or a class (4xx)")
            })?),
        };
        let q = ProvisioningQuery {
            status,
            method: method.0.map(|m| m.as_str().to_string()),
            request_id: request_id.0,
            about,
            since: since.0,
            until: until.0,
            limit,
            offset,
        };
        let (total, rows) = self.state.store.provisioning_log(&tenant, &q).await?;
        let items = rows
            .into_iter()
            .map(|r| provisioning_request(&tenant, r))
            .collect();
        Ok(Json(ProvisioningPage {
            items,
            total,
            limit,
            offset,
        }))
    }

    /// Prune the provisioning log now (operator): delete entries past admin.provisioning_log_days
    #[oai(
        path = "/provisioning-log/prune",
        method = "post",
        tag = "AdminTag::ProvisioningLog",
        operation_id = "adminPruneProvisioningLog"
    )]
    async fn prune_log(&self, auth: AdminAuth) -> Result<PruneResult> {
        auth.require(AdminRole::Operator)?;
        self.state.provlog.flush().await;
        let days = self.state.config.admin.provisioning_log_days;
        let before = self.state.clock.now() - chrono::Duration::days(i64::from(days));
        let deleted = self.state.store.prune_provisioning_log(before).await?;
        tracing::info!(admin = %auth.0.name, deleted, "provisioning log pruned on request");
        Ok(Json(PruneResult {
            deleted,
            before: crate::store::format_time(before),
        }))
    }
}
