//! Whom a SCIM request was about, as its body said: the provisioning log records it with the
//! request, failures included, so an admin finds a refused create by its userName or
//! externalId although no resource was made.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::scim::schema::ResourceKind;

/// The longest userName or externalId recorded (longer ones are cut).
const MAX_CHARS: usize = 256;

/// A request's subject, filled in by the handler that reads the body; the request's observer
/// reads it when it records the request.
#[derive(Clone, Default)]
pub struct Subject(Arc<Mutex<Option<Named>>>);

/// userName (lower-cased, users only) and externalId.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Named {
    pub user_name: Option<String>,
    pub external_id: Option<String>,
}

impl Subject {
    /// Take the userName and externalId of a POST or PUT body (attribute names are
    /// case-insensitive; values that are not strings are left out).
    pub fn from_body(&self, kind: ResourceKind, body: &Value) {
        let field = |name: &str| {
            body.as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .map(|s| s.chars().take(MAX_CHARS).collect::<String>())
        };
        let named = Named {
            user_name: match kind {
                ResourceKind::User => field("userName").map(|n| n.to_lowercase()),
                ResourceKind::Group => None,
            },
            external_id: field("externalId"),
        };
        if let Ok(mut s) = self.0.lock() {
            *s = Some(named);
        }
    }

    pub fn named(&self) -> Named {
        self.0
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_names_its_user() {
        let s = Subject::default();
        assert_eq!(s.named(), Named::default());
        s.from_body(
            ResourceKind::User,
            &json!({"USERNAME": "Ann.Lee@Example.COM", "externalId": "X-1"}),
        );
        assert_eq!(
            s.named(),
            Named {
                user_name: Some("ann.lee@example.com".into()),
                external_id: Some("X-1".into())
            }
        );
        // Groups have no userName; values that are not text are not recorded; long ones are cut.
        s.from_body(
            ResourceKind::Group,
            &json!({"userName": "x", "externalId": 5}),
        );
        assert_eq!(s.named(), Named::default());
        s.from_body(ResourceKind::User, &json!({"userName": "a".repeat(1000)}));
        assert_eq!(s.named().user_name.map(|n| n.len()), Some(256));
        s.from_body(ResourceKind::User, &json!([1, 2]));
        assert_eq!(s.named(), Named::default());
    }
}
