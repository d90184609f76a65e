//! Query parameters an operation does not declare are refused, never ignored: a misspelt or
//! unsupported filter must not answer as if it had applied. The declared names come from the
//! OpenAPI document, so the check and the documentation cannot disagree.

use poem::http::Method;

/// Each documented operation's path template and query parameter names.
pub struct QueryTable {
    ops: Vec<Operation>,
    /// Names every operation under a path prefix takes, and which mean nothing here.
    everywhere: Vec<(&'static str, &'static str)>,
}

/// Microsoft Entra ID's tenant-URL flag for its RFC-conformant PATCH; Entra appends it to
/// every request of an app whose tenant URL has it. The server behaves the same either way.
pub const ENTRA_FLAG: &str = "aadOptscim062020";

struct Operation {
    method: Method,
    /// The template's segments; None: a `{parameter}`.
    segments: Vec<Option<String>>,
    names: Vec<String>,
}

/// Why a query was refused (the parameter's name is shortened to 64 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryProblem {
    Unknown { name: String, known: Vec<String> },
    Repeated(String),
}

impl std::fmt::Display for QueryProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryProblem::Unknown { name, known } if known.is_empty() => {
                write!(
                    f,
                    "unknown query parameter `{name}`: this operation takes none"
                )
            }
            QueryProblem::Unknown { name, known } => write!(
                f,
                "unknown query parameter `{name}` (this operation takes: {})",
                known.join(", ")
            ),
            QueryProblem::Repeated(name) => {
                write!(f, "query parameter `{name}` is given more than once")
            }
        }
    }
}

impl QueryTable {
    /// From the OpenAPI document (JSON).
    pub fn from_spec(spec: &str) -> QueryTable {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut ops = Vec::new();
        let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
            return QueryTable {
                ops,
                everywhere: Vec::new(),
            };
        };
        for (path, methods) in paths {
            let segments: Vec<Option<String>> = path
                .split('/')
                .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                .collect();
            for (method, op) in methods.as_object().into_iter().flatten() {
                let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                    continue;
                };
                let names = op
                    .get("parameters")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("in").and_then(|i| i.as_str()) == Some("query"))
                    .filter_map(|p| p.get("name").and_then(|n| n.as_str()))
                    .map(str::to_string)
                    .collect();
                ops.push(Operation {
                    method,
                    segments: segments.clone(),
                    names,
                });
            }
        }
        QueryTable {
            ops,
            everywhere: Vec::new(),
        }
    }

    /// Let every operation under `prefix` take `name` (which it ignores).
    pub fn everywhere(mut self, prefix: &'static str, name: &'static str) -> QueryTable {
        self.everywhere.push((prefix, name));
        self
    }

    /// Check a request's query against its operation's parameters. A request no operation
    /// documents passes (the router answers it: 404 or 405).
    pub fn check(&self, method: &Method, path: &str, query: &str) -> Result<(), QueryProblem> {
        if query.is_empty() {
            return Ok(());
        }
        let parts: Vec<&str> = path.split('/').collect();
        // The most specific template: `/Users/.search` before `/Users/{id}`.
        let Some(op) = self
            .ops
            .iter()
            .filter(|o| o.method == method && matches(&o.segments, &parts))
            .max_by_key(|o| o.segments.iter().filter(|s| s.is_some()).count())
        else {
            return Ok(());
        };
        let mut seen: Vec<String> = Vec::new();
        for (name, _) in form_urlencoded::parse(query.as_bytes()) {
            if name.is_empty() {
                continue;
            }
            let shown: String = name.chars().take(64).collect();
            let anywhere = self
                .everywhere
                .iter()
                .any(|(prefix, n)| *n == name && path.starts_with(prefix));
            if anywhere {
                continue;
            }
            if !op.names.iter().any(|n| *n == name) {
                return Err(QueryProblem::Unknown {
                    name: shown,
                    known: op.names.clone(),
                });
            }
            if seen.iter().any(|s| *s == name) {
                return Err(QueryProblem::Repeated(shown));
            }
            seen.push(name.into_owned());
        }
        Ok(())
    }
}

fn matches(template: &[Option<String>], parts: &[&str]) -> bool {
    template.len() == parts.len()
        && template
            .iter()
            .zip(parts)
            .all(|(s, p)| s.as_deref().is_none_or(|s| s == *p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> QueryTable {
        QueryTable::from_spec(&super::super::openapi_spec())
            .everywhere(super::super::SCIM_PREFIX, ENTRA_FLAG)
    }

    #[test]
    fn declared_parameters_pass_and_others_are_named() {
        let t = table();
        let runs = "/admin/v1/runs";
        assert_eq!(t.check(&Method::GET, runs, "status=failed&limit=5"), Ok(()));
        assert_eq!(t.check(&Method::GET, runs, ""), Ok(()));
        let e = t
            .check(&Method::GET, runs, "limit=5&statuss=failed")
            .unwrap_err();
        assert!(
            matches!(&e, QueryProblem::Unknown { name, known } if name == "statuss" && known.contains(&"status".to_string())),
            "{e:?}"
        );
        assert!(e.to_string().contains("`statuss`"), "{e}");
        assert_eq!(
            t.check(&Method::GET, runs, "limit=5&limit=6"),
            Err(QueryProblem::Repeated("limit".into()))
        );
        // Names are decoded before they are compared, and shortened when shown.
        assert_eq!(t.check(&Method::GET, runs, "st%61tus=failed"), Ok(()));
        let long = "x".repeat(500);
        match t.check(&Method::GET, runs, &format!("{long}=1")) {
            Err(QueryProblem::Unknown { name, .. }) => assert_eq!(name.len(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_most_specific_template_and_scim_paths() {
        let t = table();
        let users = "/scim-api/v1/acme/scim/Users";
        assert_eq!(
            t.check(
                &Method::GET,
                users,
                "filter=userName%20eq%20%22a%22&startIndex=1&count=2"
            ),
            Ok(())
        );
        assert!(t.check(&Method::GET, users, "startindex=1").is_err());
        // Entra's flag goes with every SCIM request, and only there.
        assert_eq!(
            t.check(&Method::GET, users, "aadOptscim062020&count=1"),
            Ok(())
        );
        assert_eq!(
            t.check(
                &Method::DELETE,
                "/scim-api/v1/acme/scim/Users/abc",
                "aadOptscim062020"
            ),
            Ok(())
        );
        assert!(
            t.check(&Method::GET, "/admin/v1/runs", "aadOptscim062020")
                .is_err()
        );
        let one = "/scim-api/v1/acme/scim/Users/abc";
        assert_eq!(t.check(&Method::GET, one, "attributes=userName"), Ok(()));
        assert!(t.check(&Method::GET, one, "filter=x").is_err());
        // An operation without query parameters takes none.
        let e = t
            .check(&Method::DELETE, one, "force=true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes none"), "{e}");
        // Undocumented paths and methods are the router's to answer.
        assert_eq!(t.check(&Method::GET, "/nowhere", "a=1"), Ok(()));
        assert_eq!(t.check(&Method::PUT, "/admin/v1/runs", "a=1"), Ok(()));
    }
}
