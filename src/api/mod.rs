//! HTTP: routes, middleware (request id, access log, metrics, provisioning log, tenant auth,
//! body limit), the SCIM API, the admin API, the OpenAPI UI and the operations endpoints.

pub mod admin;
pub mod admin_story;
pub mod admin_sync;
pub mod docs;
pub mod error;
pub mod ops;
pub mod params;
pub mod payload;
pub mod problem;
pub mod queue;
pub mod render;
pub mod scim;
pub mod subject;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use poem::error::ResponseError;
use poem::http::{HeaderValue, header};
use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route, get, handler,
};
use poem_openapi::OpenApiService;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::{AdminRole, Config, TenantConfig};
use crate::db::Staging;
use crate::metrics::{Metrics, ScimRequest};
use crate::provlog::ProvisioningLog;
use crate::scim::schema::ResourceType;
use crate::scim::{Limits, ScimError};
use crate::store::request_log::Finished;
use crate::store::{ProvisioningEntry, RequestLog};
use crate::sync::{SyncEngine, SyncService};
pub use admin::ADMIN_PREFIX;
use payload::BodyLimit;

/// A tenant as the server sees it: its configuration and its resource types.
pub struct Tenant {
    pub config: TenantConfig,
    pub users: ResourceType,
    pub groups: ResourceType,
    /// The tenant's share: its SCIM requests in progress (`[server] max_requests_per_tenant`).
    pub admission: Arc<tokio::sync::Semaphore>,
}

/// Everything a request may need.
pub struct AppState {
    pub config: Config,
    /// The staging database, in every role it plays.
    pub store: Arc<dyn Staging>,
    pub tenants: BTreeMap<String, Tenant>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Where SCIM requests are recorded (written off the request path).
    pub provlog: ProvisioningLog,
    /// The sync use cases, when a tenant syncs.
    pub sync: Option<Arc<SyncService>>,
    /// Writes of one resource, one at a time.
    pub writes: queue::WriteQueue,
}

impl AppState {
    /// Must run inside a tokio runtime: starts the provisioning log writer.
    /// `sync`: the sync service, when a tenant syncs.
    pub fn new(
        config: Config,
        store: Arc<dyn Staging>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        sync: Option<Arc<SyncService>>,
    ) -> Self {
        let provlog = ProvisioningLog::start(
            store.clone(),
            clock.clone(),
            metrics.clone(),
            config.admin.provisioning_log_days,
        );
        let tenants = config
            .tenants
            .values()
            .map(|t| {
                (
                    t.name.clone(),
                    Tenant {
                        users: ResourceType::user(&t.custom_schema),
                        groups: ResourceType::group(),
                        config: t.clone(),
                        admission: Arc::new(tokio::sync::Semaphore::new(
                            config.server.max_requests_per_tenant,
                        )),
                    },
                )
            })
            .collect();
        AppState {
            config,
            store,
            tenants,
            clock,
            metrics,
            provlog,
            sync,
            writes: queue::WriteQueue::default(),
        }
    }

    /// The sync engine new runs use, when a tenant syncs.
    pub fn sync_engine(&self) -> Option<Arc<SyncEngine>> {
        self.sync.as_ref().map(|h| h.engine())
    }

    /// The bounds on what one SCIM request may ask for (`[limits]`, docs/scim.md).
    pub fn scim_limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The retention of the tenants without a sync section (a syncing tenant's runs purge
    /// its users before offboarding them): purge the users inactive or deleted for longer
    /// than the tenant's `retention_hours`. How many; a tenant that fails is logged and the
    /// others still run.
    pub async fn purge_unsynced(&self) -> u64 {
        let now = self.clock.now();
        let mut purged = 0;
        for t in self.config.tenants.values().filter(|t| t.sync.is_none()) {
            let cutoff = now - chrono::Duration::hours(i64::from(t.retention_hours));
            match crate::sync::lifecycle::purge_unsynced(self.store.as_ref(), &t.name, cutoff, now)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(tenant = %t.name, purged = n, "retention purged staged users");
                    purged += n;
                }
                Err(e) => tracing::warn!(tenant = %t.name, error = %e, "retention purge failed"),
            }
        }
        purged
    }
}

pub const SCIM_PREFIX: &str = "/scim-api/v1";

const DESCRIPTION: &str = "\
The SCIM 2.0 service provider (RFC 7643/7644), one tenant per path segment under \
`/scim-api/v1/{tenant}/scim`, authenticated with the tenant's SCIM token (`ScimToken`); \
and the admin API under `/admin/v1`, authenticated with an admin token (`AdminAuth`): \
tenants, staged users and groups, each tenant's provisioning log, sync runs and their \
items, run triggers and approvals, mapping previews and reloads, and pending offboardings. \
Admin errors are \
RFC 9457 problem documents; SCIM errors use the SCIM error schema.";

/// Both APIs in one OpenAPI document; `SpecOnly` variants describe without serving.
/// The admin sections come first: the UI lists them in this order.
pub type Apis = (
    admin_story::AdminStoryApi,
    admin_sync::AdminSyncApi,
    admin::AdminApi,
    scim::ScimApi,
);

pub fn api_service(state: Arc<AppState>) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            admin_story::AdminStoryApi {
                state: state.clone(),
            },
            admin_sync::AdminSyncApi {
                state: state.clone(),
            },
            admin::AdminApi {
                state: state.clone(),
            },
            scim::ScimApi { state },
        ),
        "scim-bridge",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
}

/// The OpenAPI document (JSON) of both APIs, without a running application.
pub fn openapi_spec() -> String {
    spec_service().spec()
}

/// Every API's description, in the order the document lists them.
type SpecApis = (
    SpecOnly<admin_story::AdminStoryApi>,
    SpecOnly<admin_sync::AdminSyncApi>,
    SpecOnly<admin::AdminApi>,
    SpecOnly<scim::ScimApi>,
);

/// Both APIs described, with no routes and no state.
fn spec_service() -> OpenApiService<SpecApis, ()> {
    OpenApiService::new(
        (
            SpecOnly::<admin_story::AdminStoryApi>::default(),
            SpecOnly::<admin_sync::AdminSyncApi>::default(),
            SpecOnly::<admin::AdminApi>::default(),
            SpecOnly::<scim::ScimApi>::default(),
        ),
        "scim-bridge",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
}

#[cfg(test)]
fn api_service_spec_html() -> String {
    spec_service().swagger_ui_html()
}

/// An API's description with no routes: the spec needs no state.
pub struct SpecOnly<T>(std::marker::PhantomData<T>);

impl<T> Default for SpecOnly<T> {
    fn default() -> Self {
        SpecOnly(std::marker::PhantomData)
    }
}

impl<T: poem_openapi::OpenApi> poem_openapi::OpenApi for SpecOnly<T> {
    fn meta() -> Vec<poem_openapi::registry::MetaApi> {
        T::meta()
    }
    fn register(registry: &mut poem_openapi::registry::Registry) {
        T::register(registry);
    }
    fn add_routes(
        self,
        _route_table: &mut std::collections::HashMap<
            String,
            std::collections::HashMap<poem::http::Method, poem::endpoint::BoxEndpoint<'static>>,
        >,
    ) {
    }
}

/// The whole HTTP application.
pub fn app(state: Arc<AppState>) -> impl Endpoint {
    let service = api_service(state.clone());
    let spec_text = service.spec();
    let allow = Arc::new(AllowTable::from_spec(&spec_text, ADMIN_PREFIX));
    let queries = Arc::new(
        params::QueryTable::from_spec(&spec_text).everywhere(SCIM_PREFIX, params::ENTRA_FLAG),
    );
    let scim_queries = queries.clone();
    let spec = service.spec_endpoint();
    let docs = docs::endpoint(&service.swagger_ui_html());
    // One endpoint serves both APIs (their paths carry their prefixes); each prefix has its
    // own guard.
    let api = Arc::new(service.into_endpoint());
    let scim = api.clone().around({
        let state = state.clone();
        move |next, req| scim_guard(state.clone(), scim_queries.clone(), next, req)
    });
    let admin = api
        .with(poem::middleware::CatchPanic::new().with_handler(|_| {
            tracing::error!("request handler panicked");
            problem::AdminError::internal().as_response()
        }))
        .around({
            let state = state.clone();
            move |next, req| admin_guard(state.clone(), allow.clone(), queries.clone(), next, req)
        });
    let routes = Route::new()
        .nest_no_strip(SCIM_PREFIX, scim)
        .nest_no_strip(ADMIN_PREFIX, admin)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at("/", get(docs::root))
        // The admin console: HTML over the same use cases, not in the OpenAPI document.
        .nest(
            crate::console::PREFIX,
            crate::console::endpoint(state.clone()),
        );
    // With `[server] ops_listen`, /readyz and /metrics are served there only.
    let routes = match state.config.ops_listen {
        None => ops_routes(routes, &state),
        Some(_) => routes,
    };
    serve_routes(routes, state)
}

/// The operations listener's application (`[server] ops_listen`): /readyz, /metrics and
/// /healthz, with the same middleware as [`app`].
pub fn ops_app(state: Arc<AppState>) -> impl Endpoint {
    serve_routes(ops_routes(Route::new(), &state), state)
}

/// `routes` with /readyz and /metrics, behind `[server] ops_token` when it is set.
fn ops_routes(routes: Route, state: &Arc<AppState>) -> Route {
    routes
        .at("/readyz", ops_guarded(get(ops::readyz), state.clone()))
        .at("/metrics", ops_guarded(get(ops::metrics), state.clone()))
}

/// An operations endpoint: the state as request data, behind [`ops_guard`].
fn ops_guarded<E: Endpoint + 'static>(ep: E, state: Arc<AppState>) -> impl Endpoint {
    let guard = state.clone();
    ep.data(state)
        .around(move |next, req| ops_guard(guard.clone(), next, req))
}

/// What every listener serves around its routes: /healthz (load balancers probe every
/// listener), a SCIM error for an unknown path, panics caught, `[server]`'s deadlines, and
/// the request id, access log and request metrics.
fn serve_routes(routes: Route, state: Arc<AppState>) -> impl Endpoint {
    routes
        .at("/healthz", get(healthz))
        .catch_all_error(error::catch_all)
        // A bug must still answer with a SCIM error, and never take the process down.
        .with(poem::middleware::CatchPanic::new().with_handler(|_| {
            tracing::error!("request handler panicked");
            error::to_scim_response(ScimError::internal().into())
        }))
        .around({
            let state = state.clone();
            move |next, req| deadlines(state.clone(), next, req)
        })
        .around(move |next, req| observe(state.clone(), next, req))
}

/// `[server]`'s body-read timeout and whole-request deadline. A body that has not arrived in
/// time answers 408; a request that runs too long is stopped — its future is dropped, so its
/// work ends at its next await; on SQLite a running read is interrupted and a write still
/// waiting for its turn is skipped (one the writer has begun commits) —
/// and answers 503. Both close the connection, whose body may be half read.
async fn deadlines<E: Endpoint>(
    state: Arc<AppState>,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let s = &state.config.server;
    let admin = req.uri().path().starts_with(ADMIN_PREFIX);
    if let Some((status, detail)) = head_too_large(&req) {
        return Ok(edge_error(admin, status, detail));
    }
    let body_late = Arc::new(AtomicBool::new(false));
    if has_body(&req) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(s.body_read_timeout_seconds);
        let body = req.take_body().into_bytes_stream();
        req.set_body(poem::Body::from_bytes_stream(until(
            body,
            deadline,
            body_late.clone(),
        )));
    }
    let limit = Duration::from_secs(s.request_timeout_seconds);
    let answer = tokio::time::timeout(limit, next.call(req)).await;
    let late = |status: u16, detail: String| edge_error(admin, status, detail);
    if body_late.load(Ordering::Relaxed) {
        return Ok(late(
            408,
            format!(
                "the request body did not arrive within {} s",
                s.body_read_timeout_seconds
            ),
        ));
    }
    match answer {
        Ok(r) => r.map(IntoResponse::into_response),
        Err(_) => {
            tracing::warn!(
                limit_s = s.request_timeout_seconds,
                "request stopped at its deadline"
            );
            let mut resp = late(
                503,
                format!(
                    "the request took longer than {} s and was stopped",
                    s.request_timeout_seconds
                ),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(error::RETRY_AFTER_SECONDS),
            );
            Ok(resp)
        }
    }
}

/// The longest request target (path and query) answered with an error document; hyper's own
/// limit (64 KiB) is above it and answers without one.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most request headers, and their total size, answered with an error document (hyper
/// is configured above them: `server::HYPER_MAX_HEADERS`, and its 400 KiB head buffer).
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why a request's head is too large, when it is.
fn head_too_large(req: &Request) -> Option<(u16, String)> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some((
            414,
            format!("the request path and query are longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = req.headers();
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || size > MAX_HEADER_BYTES {
        return Some((
            431,
            format!(
                "the request headers are more than {MAX_HEADERS} or larger than {MAX_HEADER_BYTES} bytes"
            ),
        ));
    }
    None
}

/// An error answered before the request reached its API, in that API's format; the
/// connection closes after it.
fn edge_error(admin: bool, status: u16, detail: String) -> Response {
    let mut resp = if admin {
        problem::AdminError::new(
            poem::http::StatusCode::from_u16(status).unwrap_or(poem::http::StatusCode::BAD_REQUEST),
            detail,
        )
        .as_response()
    } else {
        error::to_scim_response(ScimError::new(status, None, detail).into())
    };
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether a request announces a body.
fn has_body(req: &Request) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .header(header::CONTENT_LENGTH)
            .is_some_and(|l| l.trim() != "0")
}

/// The body's chunks up to `limit` bytes in all; past it an error, and `oversize` is set.
fn capped(
    body: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    limit: usize,
    oversize: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use futures_util::StreamExt;
    let mut seen = 0usize;
    body.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            oversize.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("the request body is too large"));
        }
        Ok(chunk)
    })
}

/// The body's chunks until `deadline`; then an error, and `late` is set.
fn until(
    body: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    deadline: tokio::time::Instant,
    late: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use futures_util::StreamExt;
    futures_util::stream::unfold((Box::pin(body), false), move |(mut body, done)| {
        let late = late.clone();
        async move {
            if done {
                return None;
            }
            match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(chunk)) => Some((chunk, (body, false))),
                Ok(None) => None,
                Err(_) => {
                    late.store(true, Ordering::Relaxed);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    );
                    Some((Err(e), (body, true)))
                }
            }
        }
    })
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// Admin API: the state for the token check, and every error as a problem document (a 405
/// with the `Allow` header of its path).
async fn admin_guard<E: Endpoint>(
    state: Arc<AppState>,
    allow: Arc<AllowTable>,
    queries: Arc<params::QueryTable>,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    if let Err(p) = queries.check(req.method(), &path, req.uri().query().unwrap_or("")) {
        return Ok(problem::AdminError::bad_request(p.to_string()).as_response());
    }
    // Every admin write needs an operator token: refuse before a byte of the body is read.
    if !matches!(
        *req.method(),
        poem::http::Method::GET | poem::http::Method::HEAD | poem::http::Method::OPTIONS
    ) {
        match state.config.admin.authenticate(bearer(&req)) {
            None => return Ok(problem::AdminError::unauthorized().as_response()),
            Some(t) if t.role < AdminRole::Operator => {
                return Ok(
                    problem::AdminError::forbidden(AdminRole::Operator.as_str()).as_response()
                );
            }
            Some(_) => {}
        }
    }
    let limit = state.config.admin.max_body_bytes;
    let too_large = || {
        problem::AdminError::new(
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
        .as_response()
    };
    if req
        .header(header::CONTENT_LENGTH)
        .and_then(|l| l.trim().parse::<u64>().ok())
        .is_some_and(|l| l > limit as u64)
    {
        return Ok(too_large());
    }
    let oversize = Arc::new(AtomicBool::new(false));
    if has_body(&req) {
        let body = req.take_body().into_bytes_stream();
        req.set_body(poem::Body::from_bytes_stream(capped(
            body,
            limit,
            oversize.clone(),
        )));
    }
    req.set_data(state);
    let answer = next.call(req).await;
    if oversize.load(Ordering::Relaxed) {
        return Ok(too_large());
    }
    let mut resp = match answer {
        Ok(r) => r.into_response(),
        Err(e) => problem::to_problem_response(e),
    };
    if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allow.methods(&path)
        && let Ok(v) = HeaderValue::from_str(methods)
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    Ok(resp)
}

/// The methods of each documented path (templates like `/runs/{id}` match any one segment).
pub struct AllowTable(Vec<(Vec<Option<String>>, String)>);

impl AllowTable {
    /// From the OpenAPI document (JSON), the paths under `prefix`.
    pub fn from_spec(spec: &str, prefix: &str) -> AllowTable {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut rows = Vec::new();
        if let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) {
            for (path, ops) in paths.iter().filter(|(p, _)| p.starts_with(prefix)) {
                let segments = path
                    .split('/')
                    .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                    .collect();
                let methods: Vec<String> = ops
                    .as_object()
                    .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                rows.push((segments, methods.join(", ")));
            }
        }
        AllowTable(rows)
    }

    /// The `Allow` value for a request path, when it is a documented path.
    pub fn methods(&self, path: &str) -> Option<&str> {
        let parts: Vec<&str> = path.split('/').collect();
        self.0
            .iter()
            .find(|(segments, _)| {
                segments.len() == parts.len()
                    && segments
                        .iter()
                        .zip(&parts)
                        .all(|(s, p)| s.as_deref().is_none_or(|s| s == *p))
            })
            .map(|(_, m)| m.as_str())
    }
}

/// `[server] ops_token`, when set, guards /readyz and /metrics.
async fn ops_guard<E: Endpoint>(
    state: Arc<AppState>,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    if let Some(token) = &state.config.ops_token
        && !token.matches(bearer(&req))
    {
        return Ok(problem::AdminError::new(
            poem::http::StatusCode::UNAUTHORIZED,
            "a valid operations bearer token is required ([server] ops_token)",
        )
        .as_response());
    }
    Ok(next.call(req).await?.into_response())
}

/// How long a request of a tenant at its share waits for a place before it is 429.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// The bearer token a request presents ("" when none).
fn bearer(req: &Request) -> &str {
    req.header(header::AUTHORIZATION)
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("")
}

/// Tenant and bearer token check before any body is read; sets the body limit.
async fn scim_guard<E: Endpoint>(
    state: Arc<AppState>,
    queries: Arc<params::QueryTable>,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path();
    let tenant_name = path
        .strip_prefix(SCIM_PREFIX)
        .unwrap_or(path)
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    // An unknown tenant answers exactly as a wrong token does (a token is compared either
    // way), so tenant names cannot be probed.
    let tenant = state.tenants.get(tenant_name);
    let accepted = match tenant {
        Some(t) => t.config.accepts(bearer(&req)),
        None => {
            let _ = crate::config::TokenHash::of("no such tenant").matches(bearer(&req));
            false
        }
    };
    if !accepted {
        let mut resp = error::to_scim_response(
            ScimError::unauthorized("a valid bearer token for this tenant is required").into(),
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    tracing::Span::current().record("tenant", tenant_name);
    if let Err(p) = queries.check(
        req.method(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    ) {
        return Err(ScimError::invalid_value(p.to_string()).into());
    }
    // A tenant at its share waits a moment for a place (a burst, such as concurrent writes of
    // one user, gets through), then is told to come back; the others, whose shares are their
    // own, go on. Nothing of the body has been read yet.
    let share = match state.tenants.get(tenant_name) {
        // A free place is taken at once, without arming a timer.
        Some(t) => match t.admission.clone().try_acquire_owned() {
            Ok(place) => Some(place),
            Err(_) => tokio::time::timeout(ADMISSION_WAIT, t.admission.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        },
        None => None,
    };
    let Some(_share) = share else {
        tracing::warn!(
            limit = state.config.server.max_requests_per_tenant,
            "tenant at its share of concurrent requests"
        );
        return Err(ScimError::new(
            429,
            None,
            "this tenant has as many requests in progress as it may; retry",
        )
        .into());
    };
    req.set_data(BodyLimit(state.config.server.max_body_bytes));
    Ok(next.call(req).await?.into_response())
}

/// Request id (X-Request-Id honoured or generated, echoed), a tracing span per request so every
/// log line carries the id, one access-log line per request with tenant, operation, status and
/// duration — never bodies, query strings or tokens — and, for SCIM requests of a configured
/// tenant, the request metrics and a provisioning log entry.
async fn observe<E: Endpoint>(
    state: Arc<AppState>,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let request_id = req
        .header("x-request-id")
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        // Time-ordered, so the provisioning log's request index grows at its end instead of
        // taking a random page per request.
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let operation = operation(&method, &path);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        operation = %operation,
        tenant = tracing::field::Empty,
        admin = tracing::field::Empty,
    );
    let at = state.clock.now();
    let start = Instant::now();
    let route = ScimRoute::parse(&method, &path).filter(|r| state.tenants.contains_key(r.tenant));
    let log = match &route {
        Some(r) if state.provlog.enabled() => RequestLog::open(
            ProvisioningEntry {
                tenant: r.tenant.to_string(),
                at,
                request_id: request_id.clone(),
                method: method.chars().take(16).collect(),
                path: r.template.clone(),
                resource_id: r.id.map(|id| id.chars().take(200).collect()),
                status: 0,
                duration_ms: 0.0,
                error: None,
                user_name: None,
                external_id: None,
            },
            start,
        ),
        _ => RequestLog::default(),
    };
    req.set_data(log.clone());
    let result = next.call(req).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(r) => r.into_response(),
        Err(e) if path.starts_with(ADMIN_PREFIX) => problem::to_problem_response(e),
        Err(e) => error::to_scim_response(e),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!(status, duration_ms, "request failed");
        } else {
            tracing::info!(status, duration_ms, "request");
        }
    });
    if let Some(route) = route {
        state.metrics.scim_request(
            &ScimRequest {
                tenant: route.tenant,
                resource: route.resource,
                operation: route.operation,
                status,
            },
            elapsed,
        );
        // A request refused at its tenant's share (429) is counted, not logged: a flooding
        // tenant would otherwise fill its own log with refusals and push out what matters.
        if status != 429 {
            let error = resp
                .data::<error::ErrorDetail>()
                .map(|d| d.0.chars().take(1000).collect());
            // A create names its new resource in Location.
            let created = (status == 201)
                .then(|| resp.header(header::LOCATION))
                .flatten()
                .and_then(|l| l.rsplit('/').next())
                .map(str::to_string);
            match log.finish(status, error, created) {
                Finished::Written | Finished::Off => {}
                Finished::Amend(entry) => state.provlog.amend(entry),
                Finished::Record(entry) => state.provlog.record(entry),
            }
        }
    }
    Ok(resp)
}

/// A SCIM request's route: tenant, resource, operation and path template, from fixed
/// vocabularies (metric labels and log entries never carry request data beyond the tenant
/// and the resource id).
#[derive(Debug, PartialEq, Eq)]
pub struct ScimRoute<'a> {
    pub tenant: &'a str,
    pub resource: &'static str,
    pub operation: &'static str,
    /// e.g. `/Users/{id}`.
    pub template: String,
    pub id: Option<&'a str>,
}

impl<'a> ScimRoute<'a> {
    pub fn parse(method: &str, path: &'a str) -> Option<ScimRoute<'a>> {
        let rest = path.strip_prefix(SCIM_PREFIX)?.strip_prefix('/')?;
        let (tenant, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let rest = rest.strip_prefix("scim")?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let resource = |name: &str| -> &'static str {
            match name {
                "Users" => "Users",
                "Groups" => "Groups",
                "ServiceProviderConfig" => "ServiceProviderConfig",
                "Schemas" => "Schemas",
                "ResourceTypes" => "ResourceTypes",
                _ => "other",
            }
        };
        let (res, operation, template, id) = match parts.as_slice() {
            [] => ("", "other", "/".to_string(), None),
            [".search"] => ("", "search", "/.search".to_string(), None),
            [r] => {
                let res = resource(r);
                let op = match method {
                    "GET" => "list",
                    "POST" => "create",
                    _ => "other",
                };
                (res, op, format!("/{}", label(res)), None)
            }
            [r, ".search"] => {
                let res = resource(r);
                (res, "search", format!("/{}/.search", label(res)), None)
            }
            [r, id] => {
                let res = resource(r);
                let op = match method {
                    "GET" => "get",
                    "PUT" => "replace",
                    "PATCH" => "patch",
                    "DELETE" => "delete",
                    _ => "other",
                };
                (res, op, format!("/{}/{{id}}", label(res)), Some(*id))
            }
            [r, ..] => {
                let res = resource(r);
                (res, "other", format!("/{}/…", label(res)), None)
            }
        };
        Some(ScimRoute {
            tenant,
            resource: res,
            operation,
            template,
            id,
        })
    }
}

/// A resource label in a path template: unknown names never echo the request.
fn label(res: &str) -> &str {
    if res == "other" { "{unknown}" } else { res }
}

/// "PATCH /scim-api/v1/acme/scim/Users/{id}" → "PATCH Users/{id}": the route, not the ids.
pub fn operation(method: &str, path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = match parts.as_slice() {
        ["scim-api", "v1", _tenant, "scim", resource] => (*resource).to_string(),
        ["scim-api", "v1", _tenant, "scim", resource, ".search"] => format!("{resource}/.search"),
        ["scim-api", "v1", _tenant, "scim", resource, _id] => format!("{resource}/{{id}}"),
        [""] | ["healthz"] | ["readyz"] | ["metrics"] | ["openapi.json"] => path.to_string(),
        ["docs", ..] => "/docs/…".to_string(),
        // Admin routes: their words; ids, names and anything else as a placeholder.
        ["admin", "v1", rest @ ..] => {
            let words: Vec<&str> = rest
                .iter()
                .map(|s| {
                    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                        *s
                    } else {
                        "{…}"
                    }
                })
                .collect();
            format!("/admin/v1/{}", words.join("/"))
        }
        _ => "{unmatched}".to_string(),
    };
    format!("{method} {route}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_the_methods_of_a_documented_path() {
        let t = AllowTable::from_spec(&openapi_spec(), ADMIN_PREFIX);
        assert_eq!(t.methods("/admin/v1/runs"), Some("GET"));
        assert_eq!(t.methods("/admin/v1/runs/7/approve"), Some("POST"));
        assert_eq!(t.methods("/admin/v1/tenants/acme/runs"), Some("POST"));
        assert_eq!(t.methods("/admin/v1/nothing"), None);
        assert_eq!(t.methods("/scim-api/v1/acme/scim/Users"), None);
    }

    #[test]
    fn operation_names_hide_ids() {
        assert_eq!(
            operation("PATCH", "/scim-api/v1/acme/scim/Users/123"),
            "PATCH Users/{id}"
        );
        assert_eq!(
            operation("GET", "/scim-api/v1/acme/scim/Users"),
            "GET Users"
        );
        assert_eq!(
            operation("POST", "/scim-api/v1/acme/scim/Groups/.search"),
            "POST Groups/.search"
        );
        assert_eq!(operation("GET", "/healthz"), "GET /healthz");
        assert_eq!(
            operation("GET", "/wp-admin/ann@example.com"),
            "GET {unmatched}"
        );
        assert_eq!(
            operation("GET", "/admin/v1/tenants/acme/users/0190a1b2"),
            "GET /admin/v1/tenants/acme/users/{…}"
        );
        assert_eq!(operation("GET", "/scim-api/v1/x/y"), "GET {unmatched}");
    }

    #[test]
    fn scim_routes_are_templates() {
        let r = ScimRoute::parse("PATCH", "/scim-api/v1/acme/scim/Users/123").unwrap();
        assert_eq!(
            (r.tenant, r.resource, r.operation, r.template.as_str(), r.id),
            ("acme", "Users", "patch", "/Users/{id}", Some("123"))
        );
        let r = ScimRoute::parse("GET", "/scim-api/v1/acme/scim/Groups").unwrap();
        assert_eq!((r.operation, r.template.as_str()), ("list", "/Groups"));
        let r = ScimRoute::parse("POST", "/scim-api/v1/acme/scim/Users/.search").unwrap();
        assert_eq!(
            (r.operation, r.template.as_str()),
            ("search", "/Users/.search")
        );
        let r = ScimRoute::parse("GET", "/scim-api/v1/acme/scim/ann@example.com").unwrap();
        assert_eq!((r.resource, r.template.as_str()), ("other", "/{unknown}"));
        assert_eq!(ScimRoute::parse("GET", "/admin/v1/tenants"), None);
        assert_eq!(ScimRoute::parse("GET", "/scim-api/v1/acme/scimx"), None);
    }
}
