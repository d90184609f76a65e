//! Bounds on the work one SCIM request may ask for.
//!
//! Every piece of per-request protocol work is linear (or n log n) in its input; these bounds
//! cap the input, so one request of one tenant cannot occupy a worker for long. Exceeding a bound
//! is a 400 SCIM error that names the bound and its value, never the request's data.
//!
//! The defaults are far above what Microsoft Entra ID sends (at most 10 PATCH operations and
//! 100 members per request, filters of one or two terms, `excludedAttributes=members`).

use std::fmt;

use serde::Deserialize;

use super::error::{ScimError, ScimType};
use super::filter::{DEPTH_CEILING, TERMS_CEILING};

/// The per-request bounds: the `[limits]` section of the configuration, each key defaulting
/// to `Limits::DEFAULT` (documented in docs/scim.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Values of one multi-valued attribute (emails, phoneNumbers, roles, …) in a request, and
    /// in the resource an `add` leaves behind. Group members are rows, not values: they are
    /// bounded by `max_members_per_request`.
    pub max_values_per_attribute: usize,
    /// Operations in one PATCH request.
    pub max_patch_operations: usize,
    /// Terms in all the filters of one request: the `filter` parameter, or every value filter
    /// in the paths of one PATCH together. Each comparison and presence test is a term, and so
    /// is each `and`, `or`, `not` and value path: `a eq 1 or b pr` is three.
    pub max_filter_terms: usize,
    /// Nesting of parentheses, `not (…)` and `[…]` in any one filter.
    pub max_filter_depth: usize,
    /// Entries in `attributes`, and in `excludedAttributes`.
    pub max_attribute_paths: usize,
    /// Group members one request adds or removes by id: a POST or PUT member list, or the sum
    /// over the operations of a PATCH.
    pub max_members_per_request: usize,
    /// Characters (Unicode scalar values) in a userName.
    pub max_user_name_chars: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        // Entra sends a handful of emails, phone numbers and roles; 10 000 is a real directory's
        // worst case many times over, and keeps one PATCH on one attribute well under a second.
        max_values_per_attribute: 10_000,
        // Entra: at most 10.
        max_patch_operations: 100,
        // Entra: at most 4 terms per filter (`emails[type eq "work"].value eq "x"`), one per
        // PATCH path, at most 10 paths. 200 is also what the store's SQL translation takes.
        max_filter_terms: 200,
        max_filter_depth: 32,
        // Every attribute and sub-attribute the schemas define is well under 100 paths.
        max_attribute_paths: 100,
        // Entra: at most 100 members per PATCH. Each member is a row write.
        max_members_per_request: 1_000,
        // The staging column is NVARCHAR(256) on SQL Server; the bound makes SQLite agree, so a
        // user accepted on one backend is accepted on the other. Entra's UPNs are at most 113
        // characters, email addresses 254.
        max_user_name_chars: 256,
    };

    /// Every bound at least 1, and within what the code beneath it takes: filters are
    /// evaluated recursively (at most 64 deep, 1 000 terms), and the staging column holds 256
    /// characters of a userName.
    pub fn validate(&self) -> Result<(), String> {
        for bound in Bound::ALL {
            if self.get(bound) == 0 {
                return Err(format!("limits.{} must be at least 1", bound.name()));
            }
        }
        for (bound, ceiling) in [
            (Bound::FilterTerms, TERMS_CEILING),
            (Bound::FilterDepth, DEPTH_CEILING),
            (Bound::UserNameChars, Self::DEFAULT.max_user_name_chars),
        ] {
            if self.get(bound) > ceiling {
                return Err(format!("limits.{} is at most {ceiling}", bound.name()));
            }
        }
        Ok(())
    }

    /// The configured value of `bound`.
    pub fn get(&self, bound: Bound) -> usize {
        match bound {
            Bound::ValuesPerAttribute => self.max_values_per_attribute,
            Bound::PatchOperations => self.max_patch_operations,
            Bound::FilterTerms => self.max_filter_terms,
            Bound::FilterDepth => self.max_filter_depth,
            Bound::AttributePaths => self.max_attribute_paths,
            Bound::MembersPerRequest => self.max_members_per_request,
            Bound::UserNameChars => self.max_user_name_chars,
        }
    }

    /// The error for a request that goes beyond `bound`. `subject` names what went beyond it in
    /// the schema's words (an attribute name, a parameter name), never with request data.
    pub fn exceeded(&self, bound: Bound, subject: Option<&str>) -> ScimError {
        bound.exceeded(self.get(bound), subject)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One of the bounds, by the name it has in [`Limits`] and in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    ValuesPerAttribute,
    PatchOperations,
    FilterTerms,
    FilterDepth,
    AttributePaths,
    MembersPerRequest,
    UserNameChars,
}

impl Bound {
    pub const ALL: [Bound; 7] = [
        Bound::ValuesPerAttribute,
        Bound::PatchOperations,
        Bound::FilterTerms,
        Bound::FilterDepth,
        Bound::AttributePaths,
        Bound::MembersPerRequest,
        Bound::UserNameChars,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bound::ValuesPerAttribute => "max_values_per_attribute",
            Bound::PatchOperations => "max_patch_operations",
            Bound::FilterTerms => "max_filter_terms",
            Bound::FilterDepth => "max_filter_depth",
            Bound::AttributePaths => "max_attribute_paths",
            Bound::MembersPerRequest => "max_members_per_request",
            Bound::UserNameChars => "max_user_name_chars",
        }
    }

    /// The error for going beyond this bound when it is `limit`.
    pub fn exceeded(self, limit: usize, subject: Option<&str>) -> ScimError {
        let what = match self {
            Bound::ValuesPerAttribute => format!("more than {limit} values"),
            Bound::PatchOperations => format!("more than {limit} PATCH operations"),
            Bound::FilterTerms => format!("more than {limit} filter terms in one request"),
            Bound::FilterDepth => format!("a filter nested deeper than {limit} levels"),
            Bound::AttributePaths => format!("more than {limit} attribute paths"),
            Bound::MembersPerRequest => {
                format!("more than {limit} members added or removed in one request")
            }
            Bound::UserNameChars => format!("longer than {limit} characters"),
        };
        let detail = match subject {
            Some(s) => format!("{s}: {what} (limit {self})"),
            None => format!("{what} (limit {self})"),
        };
        ScimError::bad_request(self.scim_type(), detail)
    }

    /// RFC 7644 §3.12: invalidFilter for filters (PATCH path filters included); invalidSyntax
    /// for the shape of the PatchOp message; invalidValue for values and parameters.
    pub fn scim_type(self) -> ScimType {
        match self {
            Bound::FilterTerms | Bound::FilterDepth => ScimType::InvalidFilter,
            Bound::PatchOperations => ScimType::InvalidSyntax,
            Bound::ValuesPerAttribute
            | Bound::AttributePaths
            | Bound::MembersPerRequest
            | Bound::UserNameChars => ScimType::InvalidValue,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_bound_and_its_value() {
        let limits = Limits::default();
        let e = limits.exceeded(Bound::ValuesPerAttribute, Some("emails"));
        assert_eq!(e.status, 400);
        assert_eq!(e.scim_type, Some(ScimType::InvalidValue));
        assert_eq!(
            e.detail,
            "emails: more than 10000 values (limit max_values_per_attribute)"
        );
        let e = limits.exceeded(Bound::FilterDepth, None);
        assert_eq!(e.scim_type, Some(ScimType::InvalidFilter));
        assert_eq!(
            e.detail,
            "a filter nested deeper than 32 levels (limit max_filter_depth)"
        );
        let custom = Limits {
            max_patch_operations: 3,
            ..Limits::default()
        };
        let e = custom.exceeded(Bound::PatchOperations, None);
        assert_eq!(e.scim_type, Some(ScimType::InvalidSyntax));
        assert_eq!(
            e.detail,
            "more than 3 PATCH operations (limit max_patch_operations)"
        );
    }

    #[test]
    fn defaults_are_far_above_what_entra_sends() {
        let d = Limits::default();
        assert!(d.max_patch_operations >= 10 * 10);
        assert!(d.max_members_per_request >= 100 * 10);
        assert!(d.max_user_name_chars >= 254);
    }
}
