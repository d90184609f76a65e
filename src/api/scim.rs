//! The SCIM endpoints, per tenant under /scim-api/v1/{tenant}/scim. Handlers extract, call the
//! pure SCIM code and the store, and return; errors map to HTTP in api::error.

use std::sync::Arc;

use poem::Request;
use poem::http::{StatusCode, header};
use poem_openapi::param::{Path, Query};
use poem_openapi::{OpenApi, SecurityScheme, Tags, auth::Bearer};
use serde_json::{Value, json};
use uuid::Uuid;

use super::payload::{ScimBody, ScimResponse};
use super::render::{self, parse_etags};
use super::{AppState, Tenant};
use crate::scim::filter::parse_filter;
use crate::scim::resource::{self, Projection};
use crate::scim::schema::{
    ResourceKind, ResourceType, SEARCH_REQUEST, resource_type_document, schema_document,
};
use crate::scim::{ScimError, patch};
use crate::store::{GroupChange, ListQuery, Page, RequestLog};

type Result<T> = poem::Result<T>;

#[derive(Tags)]
enum ScimTag {
    /// The SCIM 2.0 protocol the identity provider speaks (RFC 7644), with the tenant's SCIM
    /// token: users
    #[oai(rename = "SCIM users")]
    Users,
    /// SCIM 2.0 groups, with the tenant's SCIM token
    #[oai(rename = "SCIM groups")]
    Groups,
    /// SCIM 2.0 discovery: ServiceProviderConfig, ResourceTypes, Schemas
    #[oai(rename = "SCIM discovery")]
    Discovery,
}

/// The tenant's SCIM bearer token (the "Secret Token" in Entra's provisioning settings).
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct ScimToken(#[allow(dead_code)] Bearer);

pub struct ScimApi {
    pub state: Arc<AppState>,
}

/// List parameters, from the query string or a /.search body.
#[derive(Default)]
struct ListParams {
    filter: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    attributes: Option<String>,
    excluded: Option<String>,
}

/// The request's provisioning log entry, opened by the request's observer (none when the
/// request is not logged).
fn request_log(req: &Request) -> RequestLog {
    req.data::<RequestLog>().cloned().unwrap_or_default()
}

/// The request's log entry, told whom a POST or PUT body names.
fn named_log(req: &Request, kind: ResourceKind, body: &Value) -> RequestLog {
    let log = request_log(req);
    let named = super::subject::named_in(kind, body);
    log.name(named.user_name, named.external_id);
    log
}

impl ScimApi {
    fn tenant(&self, name: &str) -> std::result::Result<&Tenant, ScimError> {
        self.state
            .tenants
            .get(name)
            .ok_or_else(|| ScimError::not_found("no such tenant"))
    }

    fn base(&self, req: &Request, tenant: &str) -> String {
        let root = match &self.state.config.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let local = req.local_addr().as_socket_addr().copied();
                let host = trusted_host(
                    req.header(header::HOST),
                    &self.state.config.server.allowed_hosts,
                    local,
                )
                .unwrap_or_else(|| {
                    local.map_or_else(
                        || self.state.config.server.listen.clone(),
                        |a| a.to_string(),
                    )
                });
                format!("http://{host}")
            }
        };
        format!("{root}/scim-api/v1/{tenant}/scim")
    }

    fn projection(
        &self,
        rt: &ResourceType,
        p: &ListParams,
    ) -> std::result::Result<Projection, ScimError> {
        Projection::parse(
            rt,
            p.attributes.as_deref(),
            p.excluded.as_deref(),
            self.state.scim_limits(),
        )
    }

    async fn create(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        body: &Value,
    ) -> Result<ScimResponse> {
        let t = self.tenant(tenant)?;
        let rt = t.rt(kind);
        let log = named_log(req, kind, body);
        let n = resource::normalize(rt, body, self.state.scim_limits())?;
        let now = self.state.clock.now();
        let id = new_id(now);
        log.on_success(StatusCode::CREATED.as_u16(), &id);
        let store = &self.state.store;
        let stored = match kind {
            ResourceKind::User => {
                store
                    .create_user(tenant, rt, &id, &n.doc, now, &log)
                    .await?
            }
            ResourceKind::Group => {
                let change = GroupChange::replace_members(n.doc, n.members);
                store
                    .create_group(tenant, rt, &id, change, now, &log)
                    .await?;
                store.get_group(tenant, &id, true).await?
            }
        };
        Ok(render::single(
            rt,
            &self.base(req, tenant),
            &stored,
            &Projection::default(),
            StatusCode::CREATED,
        )?)
    }

    async fn get(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        p: ListParams,
    ) -> Result<ScimResponse> {
        let t = self.tenant(tenant)?;
        let rt = t.rt(kind);
        let projection = self.projection(rt, &p)?;
        let related = projection.wants(match kind {
            ResourceKind::User => "groups",
            ResourceKind::Group => "members",
        });
        let stored = match kind {
            ResourceKind::User => self.state.store.get_user(tenant, id, related).await?,
            ResourceKind::Group => self.state.store.get_group(tenant, id, related).await?,
        };
        if let Some(inm) = req.header(header::IF_NONE_MATCH) {
            let matches = match parse_etags(inm) {
                None => true,
                Some(list) => list.contains(&stored.version),
            };
            if matches {
                return Ok(ScimResponse::empty(StatusCode::NOT_MODIFIED)
                    .with_header(header::ETAG, render::etag(stored.version)));
            }
        }
        Ok(render::single(
            rt,
            &self.base(req, tenant),
            &stored,
            &projection,
            StatusCode::OK,
        )?)
    }

    async fn list(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        p: ListParams,
    ) -> Result<ScimResponse> {
        let t = self.tenant(tenant)?;
        let rt = t.rt(kind);
        let server = &self.state.config.server;
        let filter = match p.filter.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(f) => Some(
                parse_filter(f, self.state.scim_limits())
                    .map_err(|e| ScimError::invalid_filter(e.to_string()))?,
            ),
        };
        let query = ListQuery {
            filter: filter.as_ref(),
            sort_by: p
                .sort_by
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty()),
            descending: p
                .sort_order
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case("descending")),
        };
        let start_index = p.start_index.unwrap_or(1).max(1);
        let count = p
            .count
            .unwrap_or(server.default_page_size)
            .clamp(0, server.max_page_size);
        let projection = self.projection(rt, &p)?;
        let related = projection.wants(match kind {
            ResourceKind::User => "groups",
            ResourceKind::Group => "members",
        });
        let page = Page { start_index, count };
        let (total, items) = self
            .state
            .store
            .list(tenant, rt, query, &page, related)
            .await?;
        Ok(render::list(
            rt,
            &self.base(req, tenant),
            total,
            start_index,
            &items,
            &projection,
        )?)
    }

    async fn replace(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        body: &Value,
    ) -> Result<ScimResponse> {
        let t = self.tenant(tenant)?;
        let rt = t.rt(kind);
        let log = named_log(req, kind, body);
        let n = resource::normalize(rt, body, self.state.scim_limits())?;
        let if_match = if_match(req);
        let _turn = self.state.writes.turn(tenant, kind, id).await?;
        let now = self.state.clock.now();
        log.on_success(StatusCode::OK.as_u16(), id);
        let store = &self.state.store;
        let stored = match kind {
            ResourceKind::User => {
                store
                    .update_user(
                        tenant,
                        rt,
                        id,
                        if_match.as_deref(),
                        now,
                        &|_| Ok(n.doc.clone()),
                        &log,
                    )
                    .await?;
                store.get_user(tenant, id, true).await?
            }
            ResourceKind::Group => {
                let change = GroupChange::replace_members(n.doc, n.members);
                store
                    .update_group(
                        tenant,
                        rt,
                        id,
                        if_match.as_deref(),
                        now,
                        &|_| Ok(change.clone()),
                        &log,
                    )
                    .await?;
                store.get_group(tenant, id, true).await?
            }
        };
        Ok(render::single(
            rt,
            &self.base(req, tenant),
            &stored,
            &Projection::default(),
            StatusCode::OK,
        )?)
    }

    async fn patch(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        body: &Value,
        p: ListParams,
    ) -> Result<ScimResponse> {
        let t = self.tenant(tenant)?;
        let rt = t.rt(kind);
        let limits = self.state.scim_limits();
        let ops = patch::parse(body, limits)?;
        let if_match = if_match(req);
        let _turn = self.state.writes.turn(tenant, kind, id).await?;
        let now = self.state.clock.now();
        let store = &self.state.store;
        let projection = self.projection(rt, &p)?;
        // A group PATCH that names no attributes answers 204 (below).
        let success = match kind {
            ResourceKind::Group if projection.is_identity() => StatusCode::NO_CONTENT,
            _ => StatusCode::OK,
        };
        let log = request_log(req);
        log.on_success(success.as_u16(), id);
        let stored = match kind {
            ResourceKind::User => {
                store
                    .update_user(
                        tenant,
                        rt,
                        id,
                        if_match.as_deref(),
                        now,
                        &|mut doc| {
                            patch::apply(rt, &mut doc, &ops, limits)?;
                            Ok(doc)
                        },
                        &log,
                    )
                    .await?;
                store
                    .get_user(tenant, id, projection.wants("groups"))
                    .await?
            }
            ResourceKind::Group => {
                store
                    .update_group(
                        tenant,
                        rt,
                        id,
                        if_match.as_deref(),
                        now,
                        &|mut doc| {
                            let members = patch::apply(rt, &mut doc, &ops, limits)?;
                            Ok(GroupChange { doc, members })
                        },
                        &log,
                    )
                    .await?;
                // A group can have 100 000 members: answering every member PATCH with all of
                // them would make each batch O(group size). RFC 7644 §3.5.2 allows 204 (and
                // Entra's own examples use it); a client that names attributes gets 200.
                if success == StatusCode::NO_CONTENT {
                    return Ok(ScimResponse::empty(success));
                }
                store
                    .get_group(tenant, id, projection.wants("members"))
                    .await?
            }
        };
        Ok(render::single(
            rt,
            &self.base(req, tenant),
            &stored,
            &projection,
            StatusCode::OK,
        )?)
    }

    async fn delete(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<ScimResponse> {
        self.tenant(tenant)?;
        let if_match = if_match(req);
        let _turn = self.state.writes.turn(tenant, kind, id).await?;
        let now = self.state.clock.now();
        let log = request_log(req);
        log.on_success(StatusCode::NO_CONTENT.as_u16(), id);
        let store = &self.state.store;
        match kind {
            ResourceKind::User => {
                store
                    .delete_user(tenant, id, if_match.as_deref(), now, &log)
                    .await?
            }
            ResourceKind::Group => {
                store
                    .delete_group(tenant, id, if_match.as_deref(), now, &log)
                    .await?
            }
        }
        Ok(ScimResponse::empty(StatusCode::NO_CONTENT))
    }

    async fn search(
        &self,
        req: &Request,
        tenant: &str,
        kind: ResourceKind,
        body: &Value,
    ) -> Result<ScimResponse> {
        let obj = body
            .as_object()
            .ok_or_else(|| ScimError::invalid_syntax("the search request must be a JSON object"))?;
        let get = |k: &str| {
            obj.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        if let Some(s) = get("schemas")
            && !s
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(SEARCH_REQUEST)))
        {
            return Err(ScimError::invalid_syntax(format!(
                "schemas must contain {SEARCH_REQUEST}"
            ))
            .into());
        }
        let text = |k: &str| -> std::result::Result<Option<String>, ScimError> {
            match get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Array(a)) => Ok(Some(
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                )),
                Some(_) => Err(ScimError::invalid_value(format!("{k} must be a string"))),
            }
        };
        let int = |k: &str| -> std::result::Result<Option<i64>, ScimError> {
            match get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| ScimError::invalid_value(format!("{k} must be an integer"))),
            }
        };
        let p = ListParams {
            filter: text("filter")?,
            start_index: int("startIndex")?,
            count: int("count")?,
            sort_by: text("sortBy")?,
            sort_order: text("sortOrder")?,
            attributes: text("attributes")?,
            excluded: text("excludedAttributes")?,
        };
        self.list(req, tenant, kind, p).await
    }
}

fn if_match(req: &Request) -> Option<Vec<i64>> {
    req.header(header::IF_MATCH).and_then(parse_etags)
}

fn kind_of(t: &Tenant, name: &str) -> std::result::Result<ResourceKind, ScimError> {
    [ResourceKind::User, ResourceKind::Group]
        .into_iter()
        .find(|k| t.rt(*k).kind.name() == name)
        .ok_or_else(|| ScimError::not_found("no such resource type"))
}

#[allow(clippy::too_many_arguments)]
#[OpenApi(prefix_path = "/scim-api/v1")]
impl ScimApi {
    /// Create a user
    #[oai(
        path = "/:tenant/scim/Users",
        method = "post",
        tag = "ScimTag::Users",
        operation_id = "scimCreateUser"
    )]
    async fn create_user(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        self.create(req, &tenant, ResourceKind::User, &body.0).await
    }

    /// List users (filter, paging, sorting, projection)
    #[oai(
        path = "/:tenant/scim/Users",
        method = "get",
        tag = "ScimTag::Users",
        operation_id = "scimListUsers"
    )]
    async fn list_users(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
        filter: Query<Option<String>>,
        #[oai(name = "startIndex")] start_index: Query<Option<i64>>,
        count: Query<Option<i64>>,
        #[oai(name = "sortBy")] sort_by: Query<Option<String>>,
        #[oai(name = "sortOrder")] sort_order: Query<Option<String>>,
        attributes: Query<Option<String>>,
        #[oai(name = "excludedAttributes")] excluded: Query<Option<String>>,
    ) -> Result<ScimResponse> {
        let p = ListParams {
            filter: filter.0,
            start_index: start_index.0,
            count: count.0,
            sort_by: sort_by.0,
            sort_order: sort_order.0,
            attributes: attributes.0,
            excluded: excluded.0,
        };
        self.list(req, &tenant, ResourceKind::User, p).await
    }

    /// Search users with a SearchRequest body
    #[oai(
        path = "/:tenant/scim/Users/.search",
        method = "post",
        tag = "ScimTag::Users",
        operation_id = "scimSearchUsers"
    )]
    async fn search_users(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        self.search(req, &tenant, ResourceKind::User, &body.0).await
    }

    /// Get a user
    #[oai(
        path = "/:tenant/scim/Users/:id",
        method = "get",
        tag = "ScimTag::Users",
        operation_id = "scimGetUser"
    )]
    async fn get_user(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
        attributes: Query<Option<String>>,
        #[oai(name = "excludedAttributes")] excluded: Query<Option<String>>,
    ) -> Result<ScimResponse> {
        let p = ListParams {
            attributes: attributes.0,
            excluded: excluded.0,
            ..Default::default()
        };
        self.get(req, &tenant, ResourceKind::User, &id, p).await
    }

    /// Replace a user
    #[oai(
        path = "/:tenant/scim/Users/:id",
        method = "put",
        tag = "ScimTag::Users",
        operation_id = "scimReplaceUser"
    )]
    async fn replace_user(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        self.replace(req, &tenant, ResourceKind::User, &id, &body.0)
            .await
    }

    /// Modify a user (PatchOp)
    #[oai(
        path = "/:tenant/scim/Users/:id",
        method = "patch",
        tag = "ScimTag::Users",
        operation_id = "scimPatchUser"
    )]
    async fn patch_user(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
        attributes: Query<Option<String>>,
        #[oai(name = "excludedAttributes")] excluded: Query<Option<String>>,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        let p = ListParams {
            attributes: attributes.0,
            excluded: excluded.0,
            ..Default::default()
        };
        self.patch(req, &tenant, ResourceKind::User, &id, &body.0, p)
            .await
    }

    /// Delete a user
    #[oai(
        path = "/:tenant/scim/Users/:id",
        method = "delete",
        tag = "ScimTag::Users",
        operation_id = "scimDeleteUser"
    )]
    async fn delete_user(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        self.delete(req, &tenant, ResourceKind::User, &id).await
    }

    /// Create a group
    #[oai(
        path = "/:tenant/scim/Groups",
        method = "post",
        tag = "ScimTag::Groups",
        operation_id = "scimCreateGroup"
    )]
    async fn create_group(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        self.create(req, &tenant, ResourceKind::Group, &body.0)
            .await
    }

    /// List groups (filter, paging, sorting, projection)
    #[oai(
        path = "/:tenant/scim/Groups",
        method = "get",
        tag = "ScimTag::Groups",
        operation_id = "scimListGroups"
    )]
    async fn list_groups(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
        filter: Query<Option<String>>,
        #[oai(name = "startIndex")] start_index: Query<Option<i64>>,
        count: Query<Option<i64>>,
        #[oai(name = "sortBy")] sort_by: Query<Option<String>>,
        #[oai(name = "sortOrder")] sort_order: Query<Option<String>>,
        attributes: Query<Option<String>>,
        #[oai(name = "excludedAttributes")] excluded: Query<Option<String>>,
    ) -> Result<ScimResponse> {
        let p = ListParams {
            filter: filter.0,
            start_index: start_index.0,
            count: count.0,
            sort_by: sort_by.0,
            sort_order: sort_order.0,
            attributes: attributes.0,
            excluded: excluded.0,
        };
        self.list(req, &tenant, ResourceKind::Group, p).await
    }

    /// Search groups with a SearchRequest body
    #[oai(
        path = "/:tenant/scim/Groups/.search",
        method = "post",
        tag = "ScimTag::Groups",
        operation_id = "scimSearchGroups"
    )]
    async fn search_groups(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        self.search(req, &tenant, ResourceKind::Group, &body.0)
            .await
    }

    /// Get a group
    #[oai(
        path = "/:tenant/scim/Groups/:id",
        method = "get",
        tag = "ScimTag::Groups",
        operation_id = "scimGetGroup"
    )]
    async fn get_group(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
        attributes: Query<Option<String>>,
        #[oai(name = "excludedAttributes")] excluded: Query<Option<String>>,
    ) -> Result<ScimResponse> {
        let p = ListParams {
            attributes: attributes.0,
            excluded: excluded.0,
            ..Default::default()
        };
        self.get(req, &tenant, ResourceKind::Group, &id, p).await
    }

    /// Replace a group
    #[oai(
        path = "/:tenant/scim/Groups/:id",
        method = "put",
        tag = "ScimTag::Groups",
        operation_id = "scimReplaceGroup"
    )]
    async fn replace_group(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        self.replace(req, &tenant, ResourceKind::Group, &id, &body.0)
            .await
    }

    /// Modify a group (PatchOp); answers 204, or 200 with the group when attributes or excludedAttributes are given
    #[oai(
        path = "/:tenant/scim/Groups/:id",
        method = "patch",
        tag = "ScimTag::Groups",
        operation_id = "scimPatchGroup"
    )]
    async fn patch_group(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
        attributes: Query<Option<String>>,
        #[oai(name = "excludedAttributes")] excluded: Query<Option<String>>,
        body: ScimBody,
    ) -> Result<ScimResponse> {
        let p = ListParams {
            attributes: attributes.0,
            excluded: excluded.0,
            ..Default::default()
        };
        self.patch(req, &tenant, ResourceKind::Group, &id, &body.0, p)
            .await
    }

    /// Delete a group
    #[oai(
        path = "/:tenant/scim/Groups/:id",
        method = "delete",
        tag = "ScimTag::Groups",
        operation_id = "scimDeleteGroup"
    )]
    async fn delete_group(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        self.delete(req, &tenant, ResourceKind::Group, &id).await
    }

    /// Search across resource types: not supported (use /Users/.search or /Groups/.search)
    #[oai(
        path = "/:tenant/scim/.search",
        method = "post",
        tag = "ScimTag::Discovery",
        operation_id = "scimSearchAll"
    )]
    async fn search_all(&self, tenant: Path<String>, _auth: ScimToken) -> Result<ScimResponse> {
        self.tenant(&tenant)?;
        Err(ScimError::new(501, None, "searching several resource types at once is not supported; use /Users/.search or /Groups/.search").into())
    }

    /// The service provider's capabilities
    #[oai(
        path = "/:tenant/scim/ServiceProviderConfig",
        method = "get",
        tag = "ScimTag::Discovery",
        operation_id = "scimServiceProviderConfig"
    )]
    async fn service_provider_config(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        self.tenant(&tenant)?;
        let base = self.base(req, &tenant);
        let max = self.state.config.server.max_page_size;
        let max_bytes = self.state.config.server.max_body_bytes;
        Ok(ScimResponse::json(
            StatusCode::OK,
            &json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
                "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
                "patch": { "supported": true },
                "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": max_bytes },
                "filter": { "supported": true, "maxResults": max },
                "changePassword": { "supported": false },
                "sort": { "supported": true },
                "etag": { "supported": true },
                "authenticationSchemes": [{
                    "type": "oauthbearertoken",
                    "name": "Bearer token",
                    "description": "The tenant's secret token in the Authorization header",
                    "primary": true
                }],
                "meta": { "resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig") }
            }),
        ))
    }

    /// The resource types (User, Group)
    #[oai(
        path = "/:tenant/scim/ResourceTypes",
        method = "get",
        tag = "ScimTag::Discovery",
        operation_id = "scimResourceTypes"
    )]
    async fn resource_types(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        let t = self.tenant(&tenant)?;
        let base = self.base(req, &tenant);
        let docs: Vec<Value> = [&t.users, &t.groups]
            .iter()
            .map(|rt| resource_type_document(rt, &base))
            .collect();
        Ok(list_response(docs))
    }

    /// One resource type
    #[oai(
        path = "/:tenant/scim/ResourceTypes/:id",
        method = "get",
        tag = "ScimTag::Discovery",
        operation_id = "scimResourceType"
    )]
    async fn resource_type(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        let t = self.tenant(&tenant)?;
        let kind = kind_of(t, &id)?;
        Ok(ScimResponse::json(
            StatusCode::OK,
            &resource_type_document(t.rt(kind), &self.base(req, &tenant)),
        ))
    }

    /// The schemas: core User and Group, enterprise User, and the tenant's custom extension
    #[oai(
        path = "/:tenant/scim/Schemas",
        method = "get",
        tag = "ScimTag::Discovery",
        operation_id = "scimSchemas"
    )]
    async fn schemas(
        &self,
        req: &Request,
        tenant: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        let t = self.tenant(&tenant)?;
        let base = self.base(req, &tenant);
        Ok(list_response(all_schemas(t, &base)))
    }

    /// One schema by URN
    #[oai(
        path = "/:tenant/scim/Schemas/:id",
        method = "get",
        tag = "ScimTag::Discovery",
        operation_id = "scimSchema"
    )]
    async fn schema(
        &self,
        req: &Request,
        tenant: Path<String>,
        id: Path<String>,
        _auth: ScimToken,
    ) -> Result<ScimResponse> {
        let t = self.tenant(&tenant)?;
        let base = self.base(req, &tenant);
        all_schemas(t, &base)
            .into_iter()
            .find(|s| {
                s["id"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(&id))
            })
            .map(|s| ScimResponse::json(StatusCode::OK, &s))
            .ok_or_else(|| ScimError::not_found("no such schema").into())
    }
}

fn all_schemas(t: &Tenant, base: &str) -> Vec<Value> {
    let mut out = vec![schema_document(&t.users.core, true, base)];
    out.extend(
        t.users
            .extensions
            .iter()
            .map(|s| schema_document(s, false, base)),
    );
    out.push(schema_document(&t.groups.core, true, base));
    out
}

fn list_response(items: Vec<Value>) -> ScimResponse {
    ScimResponse::json(
        StatusCode::OK,
        &json!({
            "schemas": [crate::scim::schema::LIST_RESPONSE],
            "totalResults": items.len(),
            "itemsPerPage": items.len(),
            "startIndex": 1,
            "Resources": items,
        }),
    )
}

impl Tenant {
    pub fn rt(&self, kind: ResourceKind) -> &ResourceType {
        match kind {
            ResourceKind::User => &self.users,
            ResourceKind::Group => &self.groups,
        }
    }
}

/// A new resource id: a UUID whose leading bits are the creation time (version 7), so ids
/// created together sit together in the id and membership indexes.
fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        now.timestamp().max(0) as u64,
        now.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(ts).to_string()
}

/// The Host header, when it may go into meta.location and Location: a name in `[server]
/// allowed_hosts` (with or without its port), `localhost`, a loopback address or the address
/// the connection came in on. Anything else is a client's say-so (a link to another site in
/// an answer that may be cached or logged), and None.
pub fn trusted_host(
    host: Option<&str>,
    allowed: &[String],
    local: Option<std::net::SocketAddr>,
) -> Option<String> {
    let host = host?.trim();
    if host.is_empty()
        || host.len() > 255
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return None;
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(':') && !p.contains(']') => (n, Some(p)),
        _ => (host, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let listed = allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name));
    let ip = bare.parse::<std::net::IpAddr>().ok();
    let ours = name.eq_ignore_ascii_case("localhost")
        || ip.is_some_and(|ip| ip.is_loopback() || local.is_some_and(|l| l.ip() == ip));
    (listed || ours).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::trusted_host;

    #[test]
    fn only_trusted_hosts_go_into_locations() {
        let allowed = vec!["scim.example.com".to_string()];
        let local = Some("10.0.0.5:8080".parse().unwrap());
        let t = |h: &str| trusted_host(Some(h), &allowed, local);
        assert_eq!(t("scim.example.com").as_deref(), Some("scim.example.com"));
        assert_eq!(
            t("SCIM.example.com:8443").as_deref(),
            Some("scim.example.com:8443")
        );
        assert_eq!(t("localhost:8080").as_deref(), Some("localhost:8080"));
        assert_eq!(t("127.0.0.1:9").as_deref(), Some("127.0.0.1:9"));
        assert_eq!(t("[::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(t("10.0.0.5:8080").as_deref(), Some("10.0.0.5:8080"));
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.6",
            "scim.example.com.evil.example",
            "scim.example.com:80x",
            "scim.example.com/x",
            "a@scim.example.com",
            "",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(trusted_host(None, &allowed, local), None);
    }
}
