//! Stored resources → SCIM JSON (schemas, id, meta, groups/members), with attribute projection.

use poem::http::{StatusCode, header};
use serde_json::{Map, Value, json};

use super::payload::ScimResponse;
use crate::blocking;
use crate::scim::ScimError;
use crate::scim::resource::Projection;
use crate::scim::schema::{LIST_RESPONSE, ResourceKind, ResourceType};
use crate::store::{StoreError, Stored};

pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// The full SCIM representation of a stored resource, projected.
pub fn resource(
    rt: &ResourceType,
    base: &str,
    stored: &Stored,
    projection: &Projection,
) -> Result<Value, ScimError> {
    let mut doc: Map<String, Value> =
        serde_json::from_str(&stored.doc).map_err(|e| ScimError::from(StoreError::Corrupt(e)))?;
    let mut schemas = vec![Value::String(rt.core.id.clone())];
    for ext in &rt.extensions {
        if doc.contains_key(&ext.id) {
            schemas.push(Value::String(ext.id.clone()));
        }
    }
    let endpoint = rt.kind.endpoint();
    doc.insert("schemas".into(), Value::Array(schemas));
    doc.insert("id".into(), Value::String(stored.id.clone()));
    doc.insert(
        "meta".into(),
        json!({
            "resourceType": rt.kind.name(),
            "created": stored.created,
            "lastModified": stored.last_modified,
            "location": format!("{base}/{endpoint}/{}", stored.id),
            "version": etag(stored.version),
        }),
    );
    if let Some(related) = &stored.related {
        let (name, items): (&str, Vec<Value>) = match rt.kind {
            ResourceKind::User => (
                "groups",
                related
                    .iter()
                    .map(|g| {
                        json!({"value": g.id, "$ref": format!("{base}/Groups/{}", g.id),
                               "display": g.display, "type": g.kind})
                    })
                    .collect(),
            ),
            ResourceKind::Group => (
                "members",
                related
                    .iter()
                    .map(|m| {
                        let mut o = json!({"value": m.id, "type": m.kind,
                            "$ref": format!("{base}/{}s/{}", m.kind, m.id)});
                        if let (Some(d), Some(obj)) = (&m.display, o.as_object_mut()) {
                            obj.insert("display".into(), Value::String(d.clone()));
                        }
                        o
                    })
                    .collect(),
            ),
        };
        if !items.is_empty() {
            doc.insert(name.into(), Value::Array(items));
        }
    }
    if !projection.is_identity() {
        projection.apply(rt, &mut doc);
    }
    Ok(Value::Object(doc))
}

/// 200 (or 201 with Location) with the resource and its ETag.
pub fn single(
    rt: &ResourceType,
    base: &str,
    stored: &Stored,
    projection: &Projection,
    status: StatusCode,
) -> Result<ScimResponse, ScimError> {
    let mut resp =
        blocking::off_worker_if_large(rendered_bytes(stored), blocking::LARGE_RENDER, || {
            let body = resource(rt, base, stored, projection)?;
            Ok::<_, ScimError>(ScimResponse::json(status, &body))
        })?
        .with_header(header::ETAG, etag(stored.version));
    if status == StatusCode::CREATED {
        resp = resp.with_header(
            header::LOCATION,
            format!("{base}/{}/{}", rt.kind.endpoint(), stored.id),
        );
    }
    Ok(resp)
}

/// A ListResponse.
pub fn list(
    rt: &ResourceType,
    base: &str,
    total: i64,
    start_index: i64,
    items: &[Stored],
    projection: &Projection,
) -> Result<ScimResponse, ScimError> {
    let bytes = items.iter().map(rendered_bytes).sum();
    blocking::off_worker_if_large(bytes, blocking::LARGE_RENDER, || {
        let resources = items
            .iter()
            .map(|s| resource(rt, base, s, projection))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScimResponse::json(
            StatusCode::OK,
            &json!({
                "schemas": [LIST_RESPONSE],
                "totalResults": total,
                "itemsPerPage": resources.len(),
                "startIndex": start_index,
                "Resources": resources,
            }),
        ))
    })
}

/// About how many bytes rendering `stored` goes through: its document and its groups or
/// members (a group with 100 000 members renders megabytes from a small document).
fn rendered_bytes(stored: &Stored) -> usize {
    stored.doc.len() + stored.related.as_ref().map_or(0, |r| r.len() * 100)
}

/// Versions named by an If-Match / If-None-Match header: None for "*" (any version).
pub fn parse_etags(header: &str) -> Option<Vec<i64>> {
    if header.trim() == "*" {
        return None;
    }
    Some(
        header
            .split(',')
            .filter_map(|t| {
                let t = t.trim();
                let t = t.strip_prefix("W/").unwrap_or(t);
                t.trim_matches('"').parse::<i64>().ok()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA};
    use crate::store::Related;

    #[test]
    fn renders_schemas_meta_and_groups() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let stored = Stored {
            id: "u1".into(),
            doc: format!(r#"{{"userName":"a","{ENTERPRISE_SCHEMA}":{{"department":"D"}}}}"#),
            version: 7,
            created: "2026-01-01T00:00:00.000Z".into(),
            last_modified: "2026-01-02T00:00:00.000Z".into(),
            related: Some(vec![Related {
                id: "g1".into(),
                kind: "direct".into(),
                display: Some("G".into()),
            }]),
        };
        let v = resource(
            &rt,
            "http://h/scim-api/v1/t/scim",
            &stored,
            &Projection::default(),
        )
        .unwrap();
        assert_eq!(
            v["schemas"],
            json!([crate::scim::schema::USER_SCHEMA, ENTERPRISE_SCHEMA])
        );
        assert_eq!(v["meta"]["version"], "W/\"7\"");
        assert_eq!(
            v["meta"]["location"],
            "http://h/scim-api/v1/t/scim/Users/u1"
        );
        assert_eq!(v["groups"][0]["value"], "g1");
    }

    #[test]
    fn etag_headers() {
        assert_eq!(parse_etags("W/\"3\", \"4\""), Some(vec![3, 4]));
        assert_eq!(parse_etags("*"), None);
        assert_eq!(parse_etags("W/\"abc\""), Some(vec![]));
    }
}
