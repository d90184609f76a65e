//! SCIM request and response bodies as poem-openapi payloads: application/scim+json, also
//! accepting application/json, with the body size limit enforced on the bytes actually read.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Request, RequestBody, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{
    MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::scim::ScimError;

pub const SCIM_JSON: &str = "application/scim+json";

/// The limit on request bodies; stored in the request's data by the SCIM middleware.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A SCIM request body: any JSON object, validated by the handlers against the tenant's schemas.
pub struct ScimBody(pub Value);

impl Payload for ScimBody {
    const CONTENT_TYPE: &'static str = SCIM_JSON;

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        essence == SCIM_JSON || essence == "application/json"
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("object")))
    }
}

impl ParsePayload for ScimBody {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(1024 * 1024);
        let bytes = read_limited(body, limit).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            // serde's message names line and column, never the content.
            ScimError::invalid_syntax(format!("the body is not valid JSON: {e}"))
        })?;
        Ok(ScimBody(value))
    }
}

/// Read at most `limit` bytes of the body; more is 413, whatever Content-Length said.
pub async fn read_limited(body: &mut RequestBody, limit: usize) -> poem::Result<Vec<u8>> {
    let body = body.take()?;
    let mut reader = body.into_async_read().take(limit as u64 + 1);
    let mut buf = Vec::new();
    reader
        .read_to_end(&mut buf)
        .await
        .map_err(|_| ScimError::invalid_syntax("the request body could not be read"))?;
    if buf.len() > limit {
        return Err(ScimError::new(
            413,
            None,
            format!("the request body is larger than {limit} bytes"),
        )
        .into());
    }
    Ok(buf)
}

/// Every SCIM answer: a status, an optional JSON body, and headers (Location, ETag).
pub struct ScimResponse {
    pub status: StatusCode,
    pub body: Option<String>,
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ScimResponse {
    pub fn json(status: StatusCode, body: &Value) -> Self {
        ScimResponse {
            status,
            body: Some(body.to_string()),
            headers: vec![],
        }
    }
    pub fn empty(status: StatusCode) -> Self {
        ScimResponse {
            status,
            body: None,
            headers: vec![],
        }
    }
    pub fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for ScimResponse {
    fn into_response(self) -> Response {
        let mut resp = Response::builder().status(self.status);
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp = resp.header(name, v);
            }
        }
        match self.body {
            Some(body) => resp.content_type(SCIM_JSON).body(body),
            None => resp.finish(),
        }
    }
}

fn response(status: u16, description: &'static str, with_body: bool) -> MetaResponse {
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content: if with_body {
            vec![MetaMediaType {
                content_type: SCIM_JSON,
                schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("object"))),
            }]
        } else {
            vec![]
        },
        headers: vec![],
    }
}

impl ApiResponse for ScimResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![
                response(200, "The resource or list (application/scim+json)", true),
                response(201, "Created; Location names the new resource", true),
                response(204, "No content", false),
                response(304, "Not modified (If-None-Match)", false),
                response(
                    400,
                    "SCIM error: invalidFilter, invalidSyntax, invalidValue, invalidPath, noTarget, mutability",
                    true,
                ),
                response(401, "SCIM error: missing or wrong bearer token", true),
                response(404, "SCIM error: no such tenant or resource", true),
                response(409, "SCIM error: uniqueness", true),
                response(412, "SCIM error: If-Match does not match", true),
                response(413, "SCIM error: body too large", true),
                response(415, "SCIM error: the body is not JSON", true),
                response(500, "SCIM error: the server failed", true),
                response(
                    501,
                    "SCIM error: not supported (search across resource types)",
                    true,
                ),
                response(503, "SCIM error: the staging database is busy; retry", true),
            ],
        }
    }

    fn register(_registry: &mut Registry) {}
}

impl<'a> poem_openapi::ApiExtractor<'a> for ScimBody {
    const TYPES: &'static [poem_openapi::ApiExtractorType] =
        &[poem_openapi::ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<poem_openapi::registry::MetaRequest> {
        Some(poem_openapi::registry::MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: SCIM_JSON,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: poem_openapi::ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if Self::check_content_type(ct) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            _ => Err(ScimError::new(
                415,
                None,
                "use Content-Type application/scim+json or application/json",
            )
            .into()),
        }
    }
}
