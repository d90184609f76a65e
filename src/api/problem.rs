//! Admin API errors: RFC 9457 problem documents (`application/problem+json`).

use poem::Response;
use poem::error::ResponseError;
use poem::http::{HeaderValue, StatusCode, header};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use crate::scim::ScimError;
use crate::store::StoreError;
use crate::sync::SyncError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(rename = "Problem")]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's name.
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// A mapping render error: the field (column or key) that failed.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A mapping render error: why the field failed.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An error of the admin API.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct AdminError {
    pub status: StatusCode,
    pub detail: String,
    /// (field, reason) of a mapping render error.
    pub render: Option<(String, String)>,
}

impl AdminError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        AdminError {
            status,
            detail: detail.into(),
            render: None,
        }
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
    /// 422: the mapping cannot render `field`.
    pub fn render(field: &str, reason: &str) -> Self {
        AdminError {
            render: Some((field.to_string(), reason.to_string())),
            ..Self::unprocessable(format!(
                "the mapping cannot render this user: {field}: {reason}"
            ))
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "a valid admin bearer token is required (Authorization: Bearer …); SCIM tenant tokens are not accepted here",
        )
    }
    pub fn forbidden(needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!("this operation needs an admin token with the {needed} role"),
        )
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    pub fn no_such_tenant(tenant: &str) -> Self {
        Self::not_found(format!("no tenant named {tenant:?} is configured"))
    }
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.render.as_ref().map(|r| r.0.clone()),
            reason: self.render.as_ref().map(|r| r.1.clone()),
        }
    }
}

impl ResponseError for AdminError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = serde_json::to_string(&self.problem()).unwrap_or_default();
        let mut resp = Response::builder()
            .status(self.status)
            .content_type(PROBLEM_JSON)
            .body(body);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn problem_responses(responses: &[(u16, &'static str)]) -> MetaResponses {
    MetaResponses {
        responses: responses
            .iter()
            .map(|&(status, description)| MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_JSON,
                    schema: Problem::schema_ref(),
                }],
                headers: vec![],
            })
            .collect(),
    }
}

const COMMON_RESPONSES: [(u16, &str); 6] = [
    (
        400,
        "The request is malformed: a parameter or filter is invalid",
    ),
    (401, "No valid admin bearer token"),
    (403, "The token's role does not allow this operation"),
    (404, "No such tenant, resource or endpoint"),
    (500, "The server failed"),
    (503, "The staging database is busy or unreachable; retry"),
];

impl ApiResponse for AdminError {
    fn meta() -> MetaResponses {
        problem_responses(&COMMON_RESPONSES)
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// An error of an admin operation that acts on the sync engine: the admin errors, plus 409
/// (the state does not allow it now) and 422 (the mapping or the input cannot be used).
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct ActionError(#[from] pub AdminError);

impl ResponseError for ActionError {
    fn status(&self) -> StatusCode {
        self.0.status
    }

    fn as_response(&self) -> Response {
        self.0.as_response()
    }
}

impl ApiResponse for ActionError {
    fn meta() -> MetaResponses {
        let mut all = COMMON_RESPONSES.to_vec();
        all.push((
            409,
            "The tenant's or the run's state does not allow this now (a run in progress, a run not awaiting approval)",
        ));
        all.push((
            415,
            "The request body is not JSON (Content-Type: application/json)",
        ));
        all.push((
            422,
            "The mapping cannot be used: it does not load, or it cannot render the user",
        ));
        all.sort_by_key(|r| r.0);
        problem_responses(&all)
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> Self {
        ActionError(e.into())
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        let scim = ScimError::from(e);
        match scim.status {
            503 => AdminError::new(StatusCode::SERVICE_UNAVAILABLE, scim.detail),
            s if s < 500 => AdminError::new(
                StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
                scim.detail,
            ),
            _ => AdminError::internal(),
        }
    }
}

/// The sync layer's errors: what is missing is a 404, what the state refuses now a 409, a
/// mapping that cannot be used a 422, shutdown a 503, the staging database as for every other
/// read; anything else a 500 (logged, never shown).
impl From<SyncError> for AdminError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::NotConfigured(_)
            | SyncError::RunNotFound(_)
            | SyncError::NoStagedUser(_) => AdminError::not_found(e.to_string()),
            SyncError::NotAwaitingApproval(_)
            | SyncError::Busy(_)
            | SyncError::InProgress { .. }
            | SyncError::Skipped { .. } => AdminError::conflict(e.to_string()),
            SyncError::Mapping(detail) => AdminError::unprocessable(detail),
            SyncError::Render { field, reason } => AdminError::render(&field, &reason),
            SyncError::ShuttingDown => {
                AdminError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            SyncError::Db(e) => StoreError::Db(e).into(),
            other => {
                tracing::error!(error = %other, "sync operation failed");
                AdminError::internal()
            }
        }
    }
}

impl From<SyncError> for ActionError {
    fn from(e: SyncError) -> Self {
        ActionError(e.into())
    }
}

impl From<ScimError> for AdminError {
    fn from(e: ScimError) -> Self {
        if e.status >= 500 {
            return AdminError::internal();
        }
        AdminError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.detail,
        )
    }
}

/// Any error that reached the edge of the admin API (or the operations endpoints), as a problem.
pub fn to_problem_response(err: poem::Error) -> Response {
    if let Some(e) = err.downcast_ref::<AdminError>() {
        return e.as_response();
    }
    if let Some(e) = err.downcast_ref::<ActionError>() {
        return e.as_response();
    }
    if let Some(e) = err.downcast_ref::<ScimError>() {
        return AdminError::from(e.clone()).as_response();
    }
    if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseRequestPayloadError>() {
        // The parser's reason may quote the body: keep only where it failed.
        let at = e
            .reason
            .rfind(" at line ")
            .map(|i| &e.reason[i..])
            .filter(|at| at.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' '))
            .unwrap_or("");
        return AdminError::bad_request(format!(
            "the request body does not match this operation's schema (see /openapi.json){at}"
        ))
        .as_response();
    }
    let status = err.status();
    let e = match status.as_u16() {
        401 => AdminError::unauthorized(),
        404 => AdminError::not_found("no such endpoint"),
        405 => AdminError::new(status, "method not allowed on this endpoint"),
        s if s < 500 => AdminError::new(status, err.to_string()),
        _ => {
            tracing::error!(error = %err, "request failed");
            AdminError::internal()
        }
    };
    e.as_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn problems_are_rfc9457_documents() {
        let r = to_problem_response(poem::Error::from_status(StatusCode::UNAUTHORIZED));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.content_type(), Some(PROBLEM_JSON));
        assert_eq!(r.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        let body: serde_json::Value =
            serde_json::from_str(&r.into_body().into_string().await.unwrap()).unwrap();
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Unauthorized");
        assert_eq!(body["status"], 401);
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("admin bearer token")
        );
        let r = to_problem_response(ScimError::invalid_filter("bad").into());
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = to_problem_response(AdminError::from(StoreError::NotFound).into());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
