//! HTTP: routes, middleware (request id, access log, tenant auth, body limit), and the SCIM API.

pub mod error;
pub mod payload;
pub mod render;
pub mod scim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use poem::http::{HeaderValue, header};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler};
use poem_openapi::OpenApiService;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::{Config, TenantConfig};
use crate::scim::ScimError;
use crate::scim::schema::ResourceType;
use crate::store::Store;
use payload::BodyLimit;

/// A tenant as the server sees it: its configuration and its resource types.
pub struct Tenant {
    pub config: TenantConfig,
    pub users: ResourceType,
    pub groups: ResourceType,
}

/// Everything a request may need.
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub tenants: BTreeMap<String, Tenant>,
    pub clock: Arc<dyn Clock>,
}

impl AppState {
    pub fn new(config: Config, store: Store, clock: Arc<dyn Clock>) -> Self {
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
                    },
                )
            })
            .collect();
        AppState {
            config,
            store,
            tenants,
            clock,
        }
    }
}

pub const SCIM_PREFIX: &str = "/scim-api/v1";

pub fn scim_service(state: Arc<AppState>) -> OpenApiService<scim::ScimApi, ()> {
    OpenApiService::new(
        scim::ScimApi { state },
        "scim-bridge",
        env!("CARGO_PKG_VERSION"),
    )
    .description("SCIM 2.0 service provider (RFC 7643/7644), one tenant per path segment.")
    .server(SCIM_PREFIX)
}

/// The whole HTTP application.
pub fn app(state: Arc<AppState>) -> impl Endpoint {
    let scim = scim_service(state.clone());
    let spec = scim.spec_endpoint();
    let guarded = scim.around({
        let state = state.clone();
        move |next, req| scim_guard(state.clone(), next, req)
    });
    Route::new()
        .nest(SCIM_PREFIX, guarded)
        .at("/openapi.json", spec)
        .at("/healthz", get(healthz))
        .catch_all_error(error::catch_all)
        // A bug must still answer with a SCIM error, and never take the process down.
        .with(poem::middleware::CatchPanic::new().with_handler(|_| {
            tracing::error!("request handler panicked");
            error::to_scim_response(ScimError::internal().into())
        }))
        .around(access_log)
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// Tenant and bearer token check before any body is read; sets the body limit.
async fn scim_guard<E: Endpoint>(
    state: Arc<AppState>,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path();
    let tenant_name = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let Some(tenant) = state.tenants.get(tenant_name) else {
        return Err(ScimError::not_found("no such tenant").into());
    };
    tracing::Span::current().record("tenant", tenant_name);
    let presented = req
        .header(header::AUTHORIZATION)
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    if !tenant.config.accepts(presented) {
        let mut resp = error::to_scim_response(
            ScimError::unauthorized("a valid bearer token for this tenant is required").into(),
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    req.set_data(BodyLimit(state.config.server.max_body_bytes));
    Ok(next.call(req).await?.into_response())
}

/// Request id (X-Request-Id honoured or generated, echoed) and one access-log line per request
/// with tenant, operation, status and duration — never bodies, query strings or tokens.
async fn access_log<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let request_id = req
        .header("x-request-id")
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let operation = operation(req.method().as_str(), req.uri().path());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        operation = %operation,
        tenant = tracing::field::Empty,
    );
    let start = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(r) => r.into_response(),
        Err(e) => error::to_scim_response(e),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!(status, duration_ms, "request failed");
        } else {
            tracing::info!(status, duration_ms, "request");
        }
    });
    Ok(resp)
}

/// "PATCH /scim-api/v1/acme/scim/Users/{id}" → "PATCH Users/{id}": the route, not the ids.
pub fn operation(method: &str, path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = match parts.as_slice() {
        ["scim-api", "v1", _tenant, "scim", resource] => (*resource).to_string(),
        ["scim-api", "v1", _tenant, "scim", resource, ".search"] => format!("{resource}/.search"),
        ["scim-api", "v1", _tenant, "scim", resource, _id] => format!("{resource}/{{id}}"),
        _ => path.to_string(),
    };
    format!("{method} {route}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
