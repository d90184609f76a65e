//! The one place where errors become HTTP responses.

use poem::error::ResponseError;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};

use super::payload::SCIM_JSON;
use crate::scim::ScimError;
use crate::store::{DbError, StoreError};

impl ResponseError for ScimError {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn as_response(&self) -> Response {
        let mut resp = Response::builder()
            .status(self.status())
            .content_type(SCIM_JSON)
            .body(self.to_json().to_string());
        // Filters, and PATCH paths (which may carry a value filter), can quote values.
        let detail = if matches!(
            self.scim_type,
            Some(
                crate::scim::error::ScimType::InvalidFilter
                    | crate::scim::error::ScimType::InvalidPath
                    | crate::scim::error::ScimType::NoTarget
            )
        ) {
            redact_quoted(&self.detail)
        } else {
            self.detail.clone()
        };
        resp.set_data(ErrorDetail(detail));
        // Every 503 and 429 is worth retrying (busy, full, contended, past a deadline, a
        // tenant at its share): say when.
        if self.status == 503 || self.status == 429 {
            resp.headers_mut().insert(
                poem::http::header::RETRY_AFTER,
                poem::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        resp
    }
}

/// What a 503 answer advises in `Retry-After`.
pub const RETRY_AFTER_SECONDS: &str = "5";

/// A filter error may quote a piece of the filter, which may be a value (personal data):
/// the provisioning log keeps the message with every quoted piece replaced by '…'.
pub fn redact_quoted(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut inside = false;
    for c in detail.chars() {
        if c == '\'' {
            if inside {
                out.push('…');
            }
            out.push(c);
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// The detail of a SCIM error answer, kept on the response for the provisioning log.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ScimError::not_found("resource not found"),
            StoreError::Conflict(what) => ScimError::uniqueness(what),
            StoreError::VersionMismatch => ScimError::precondition_failed(),
            StoreError::Rejected(e) => e,
            StoreError::Db(DbError::Busy) => {
                tracing::warn!("staging database busy");
                ScimError::new(503, None, "the staging database is busy; retry")
            }
            StoreError::Db(DbError::Full) => {
                tracing::error!("staging database storage is full");
                ScimError::new(
                    503,
                    None,
                    "the staging database's storage is full; writes resume once space is freed",
                )
            }
            StoreError::Contended => ScimError::new(
                503,
                None,
                "the resource is being changed concurrently; retry",
            ),
            other => {
                tracing::error!(error = %other, "staging store failed");
                ScimError::internal()
            }
        }
    }
}

impl From<StoreError> for poem::Error {
    fn from(e: StoreError) -> Self {
        ScimError::from(e).into()
    }
}

/// Any error that reached the edge of the SCIM API, as a SCIM error response.
pub fn to_scim_response(err: poem::Error) -> Response {
    if let Some(e) = err.downcast_ref::<ScimError>() {
        return e.as_response();
    }
    let status = err.status();
    let e = match status.as_u16() {
        401 => ScimError::unauthorized("a valid bearer token is required"),
        404 => ScimError::not_found("no such endpoint"),
        405 => ScimError::new(405, None, "method not allowed on this endpoint"),
        413 => ScimError::new(413, None, "the request body is too large"),
        415 => ScimError::new(
            415,
            None,
            "use Content-Type application/scim+json or application/json",
        ),
        400 => ScimError::invalid_syntax(err.to_string()),
        s if s < 500 => ScimError::new(s, None, err.to_string()),
        _ => {
            tracing::error!(error = %err, "request failed");
            ScimError::internal()
        }
    };
    e.as_response()
}

/// The same, for use with `catch_all_error`.
pub async fn catch_all(err: poem::Error) -> impl IntoResponse {
    to_scim_response(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_scim_statuses() {
        let e = ScimError::from(StoreError::Conflict("userName taken".into()));
        assert_eq!(
            (e.status, e.scim_type.map(|t| t.as_str())),
            (409, Some("uniqueness"))
        );
        assert_eq!(ScimError::from(StoreError::NotFound).status, 404);
        assert_eq!(ScimError::from(StoreError::VersionMismatch).status, 412);
        let e = ScimError::from(StoreError::Db(DbError::Failed("disk I/O error".into())));
        assert_eq!(e.status, 500);
        assert_eq!(e.detail, "internal server error", "no internals leak");
        let e = ScimError::from(StoreError::Db(DbError::Busy));
        assert_eq!(e.status, 503);
        let e = ScimError::from(StoreError::Db(DbError::Full));
        assert_eq!(e.status, 503);
        assert!(e.detail.contains("storage is full"), "{}", e.detail);
        let r = e.as_response();
        assert_eq!(
            r.headers().get(poem::http::header::RETRY_AFTER).unwrap(),
            RETRY_AFTER_SECONDS
        );
    }

    #[test]
    fn the_logged_detail_of_a_path_error_quotes_no_value() {
        let r = ScimError::invalid_path(
            "path: unknown operator '\"ann@example.com\"' (expected eq) (at character 17)",
        )
        .as_response();
        let d = &r.data::<ErrorDetail>().unwrap().0;
        assert!(!d.contains("ann@"), "{d}");
        assert!(d.contains("'…'"), "{d}");
    }

    #[test]
    fn quoted_filter_pieces_are_redacted() {
        assert_eq!(
            redact_quoted("unknown operator '\"ann@example.com\"' (expected eq) (at character 9)"),
            "unknown operator '…' (expected eq) (at character 9)"
        );
        assert_eq!(redact_quoted("no quotes"), "no quotes");
    }

    #[test]
    fn poem_errors_become_scim_documents() {
        let r = to_scim_response(poem::Error::from_status(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.content_type(), Some(SCIM_JSON));
        let r = to_scim_response(ScimError::invalid_filter("bad").into());
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
