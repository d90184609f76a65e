//! Whom a SCIM request was about, as its body said: the provisioning log records it with the
//! request, failures included, so an admin finds a refused create by its userName or
//! externalId although no resource was made.

use serde_json::Value;

use crate::scim::schema::ResourceKind;

/// The longest userName or externalId recorded (longer ones are cut).
const MAX_CHARS: usize = 256;

/// userName (lower-cased, users only) and externalId.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Named {
    pub user_name: Option<String>,
    pub external_id: Option<String>,
}

/// The userName and externalId of a POST or PUT body (attribute names are case-insensitive;
/// values that are not strings are left out).
pub fn named_in(kind: ResourceKind, body: &Value) -> Named {
    let field = |name: &str| {
        body.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(|s| s.chars().take(MAX_CHARS).collect::<String>())
    };
    Named {
        user_name: match kind {
            ResourceKind::User => field("userName").map(|n| n.to_lowercase()),
            ResourceKind::Group => None,
        },
        external_id: field("externalId"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_names_its_user() {
        assert_eq!(
            named_in(
                ResourceKind::User,
                &json!({"USERNAME": "Ann.Lee@Example.COM", "externalId": "X-1"}),
            ),
            Named {
                user_name: Some("ann.lee@example.com".into()),
                external_id: Some("X-1".into())
            }
        );
        // Groups have no userName; values that are not text are not recorded; long ones are cut.
        assert_eq!(
            named_in(
                ResourceKind::Group,
                &json!({"userName": "x", "externalId": 5})
            ),
            Named::default()
        );
        let long = named_in(ResourceKind::User, &json!({"userName": "a".repeat(1000)}));
        assert_eq!(long.user_name.map(|n| n.len()), Some(256));
        assert_eq!(
            named_in(ResourceKind::User, &json!([1, 2])),
            Named::default()
        );
    }
}
