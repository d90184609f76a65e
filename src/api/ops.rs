//! Operations endpoints: /readyz (named readiness checks) and /metrics (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{IntoResponse, Response, handler};
use serde::Serialize;

use super::AppState;
use crate::metrics::CONTENT_TYPE;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one readiness check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

async fn check<F>(name: &'static str, f: F) -> Check
where
    F: Future<Output = Result<String, String>>,
{
    let (ok, detail) = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(d)) => (true, d),
        Ok(Err(e)) => (false, e),
        Err(_) => (
            false,
            format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
        ),
    };
    Check { name, ok, detail }
}

/// Every readiness check, in order. Add a check here (a name and a future answering
/// Ok(detail) or Err(reason)) and /readyz reports it.
pub async fn readiness(state: &AppState) -> Vec<Check> {
    vec![
        check("staging_database", async {
            state
                .store
                .ping()
                .await
                .map(|_| "reachable".to_string())
                .map_err(|e| {
                    tracing::warn!(error = %e, "readiness: staging database unreachable");
                    "the staging database does not answer".to_string()
                })
        })
        .await,
        check("staging_writable", async {
            state
                .store
                .writable()
                .await
                .map(|_| "writable".to_string())
                .map_err(|e| {
                    tracing::warn!(error = %e, "readiness: staging database not writable");
                    match e {
                        crate::store::StoreError::Db(crate::store::DbError::Full) => {
                            "the staging database's storage is full".to_string()
                        }
                        _ => "the staging database cannot be written".to_string(),
                    }
                })
        })
        .await,
        check("mappings_loaded", async {
            match state.sync_engine() {
                None => Ok("no tenant syncs".to_string()),
                Some(engine) => {
                    let n = engine.tenants().count();
                    let missing: Vec<&str> = state
                        .config
                        .tenants
                        .values()
                        .filter(|t| t.sync.is_some() && engine.tenant_config(&t.name).is_none())
                        .map(|t| t.name.as_str())
                        .collect();
                    if missing.is_empty() {
                        Ok(format!("{n} mapping(s) loaded"))
                    } else {
                        Err(format!("no mapping loaded for {}", missing.join(", ")))
                    }
                }
            }
        })
        .await,
        check("scheduler_running", async {
            match &state.sync {
                None => Ok("no tenant syncs".to_string()),
                Some(h) if h.scheduler_running() => Ok("running".to_string()),
                Some(_) => Err("the sync scheduler is not running".to_string()),
            }
        })
        .await,
    ]
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    checks: Vec<Check>,
}

/// 200 when every check passes, else 503; the body lists every check.
#[handler]
pub async fn readyz(state: Data<&Arc<AppState>>) -> Response {
    let checks = readiness(&state).await;
    let ready = checks.iter().all(|c| c.ok);
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        checks,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Json(body).with_status(status).into_response()
}

/// The metrics, with each syncing tenant's pending offboardings counted at scrape time.
#[handler]
pub async fn metrics(state: Data<&Arc<AppState>>) -> Response {
    if let Some(handle) = &state.sync {
        let engine = handle.engine();
        for tenant in engine.tenants() {
            let Some(c) = engine.tenant_config(tenant) else {
                continue;
            };
            match handle
                .ledger()
                .count_pending(tenant, c.retention_hours)
                .await
            {
                Ok(n) => state.metrics.set_pending_offboardings(tenant, n),
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "metrics: counting pending offboardings")
                }
            }
        }
    }
    Response::builder()
        .content_type(CONTENT_TYPE)
        .body(state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_report_their_outcome() {
        let ok = check("a", async { Ok("fine".to_string()) }).await;
        assert!(ok.ok && ok.name == "a" && ok.detail == "fine");
        let bad = check("b", async { Err("down".to_string()) }).await;
        assert!(!bad.ok && bad.detail == "down");
    }
}
