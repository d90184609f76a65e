//! Group → role rules (`[[roles]]`).

use std::collections::BTreeSet;

use regex::Regex;

use super::StagedGroup;

#[derive(Debug, Clone)]
enum Matcher {
    /// Exact display name, compared case-insensitively (display names are unique that way).
    Group(String),
    /// Regular expression that must match the whole display name.
    GroupPattern(Regex),
    /// Exact external id (Entra's object id), compared case-insensitively.
    ExternalId(String),
    ExternalIdPattern(Regex),
}

/// A pattern as written: the rule holds it anchored as `^(?:…)$`.
fn unanchored(p: &str) -> &str {
    p.strip_prefix("^(?:")
        .and_then(|p| p.strip_suffix(")$"))
        .unwrap_or(p)
}

#[derive(Debug, Clone)]
pub struct RoleRule {
    matcher: Matcher,
    roles: Vec<String>,
}

impl RoleRule {
    /// What the rule matches, in the file's words, and the roles it grants.
    pub fn describe(&self) -> (String, Vec<String>) {
        let matches = match &self.matcher {
            Matcher::Group(g) => format!("group = {g:?}"),
            Matcher::GroupPattern(r) => format!("group_pattern = {:?}", unanchored(r.as_str())),
            Matcher::ExternalId(e) => format!("external_id = {e:?}"),
            Matcher::ExternalIdPattern(r) => {
                format!("external_id_pattern = {:?}", unanchored(r.as_str()))
            }
        };
        (matches, self.roles.clone())
    }

    /// Build a rule from its matchers (exactly one must be set) and roles (at least one).
    pub fn new(
        group: Option<String>,
        group_pattern: Option<String>,
        external_id: Option<String>,
        external_id_pattern: Option<String>,
        roles: Vec<String>,
    ) -> Result<RoleRule, String> {
        let set = [
            group.is_some(),
            group_pattern.is_some(),
            external_id.is_some(),
            external_id_pattern.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(
                "a role rule needs exactly one of group, group_pattern, external_id, external_id_pattern"
                    .into(),
            );
        }
        if roles.is_empty() {
            return Err("a role rule needs `role` or `roles`".into());
        }
        if let Some(r) = roles.iter().find(|r| r.trim().is_empty()) {
            return Err(format!("empty role name `{r}`"));
        }
        let anchored = |p: &str| {
            // Check the pattern as written first, so the error message shows it as written.
            Regex::new(p)
                .and_then(|_| Regex::new(&format!("^(?:{p})$")))
                .map_err(|e| format!("bad regular expression: {e}"))
        };
        let matcher = if let Some(g) = group {
            Matcher::Group(g)
        } else if let Some(p) = group_pattern {
            Matcher::GroupPattern(anchored(&p)?)
        } else if let Some(e) = external_id {
            Matcher::ExternalId(e)
        } else if let Some(p) = external_id_pattern {
            Matcher::ExternalIdPattern(anchored(&p)?)
        } else {
            return Err("a role rule needs a matcher".into());
        };
        Ok(RoleRule { matcher, roles })
    }

    fn matches(&self, g: &StagedGroup) -> bool {
        let ext = g.external_id.as_deref();
        match &self.matcher {
            Matcher::Group(n) => n.to_lowercase() == g.display_name.to_lowercase(),
            Matcher::GroupPattern(r) => r.is_match(&g.display_name),
            Matcher::ExternalId(e) => ext.is_some_and(|x| x.eq_ignore_ascii_case(e)),
            Matcher::ExternalIdPattern(r) => ext.is_some_and(|x| r.is_match(x)),
        }
    }
}

/// The union of the roles of every rule matching any of the user's groups.
pub fn roles_for(rules: &[RoleRule], groups: &[StagedGroup]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for g in groups {
        for r in rules.iter().filter(|r| r.matches(g)) {
            out.extend(r.roles.iter().cloned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, ext: Option<&str>) -> StagedGroup {
        StagedGroup {
            id: format!("id-{name}"),
            display_name: name.into(),
            external_id: ext.map(str::to_owned),
        }
    }

    fn rule(
        group: Option<&str>,
        pattern: Option<&str>,
        ext: Option<&str>,
        roles: &[&str],
    ) -> RoleRule {
        RoleRule::new(
            group.map(Into::into),
            pattern.map(Into::into),
            ext.map(Into::into),
            None,
            roles.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn exact_pattern_and_external_id_rules_union() {
        let rules = vec![
            rule(Some("Lab Admins"), None, None, &["Admin", "User"]),
            rule(None, Some("Lab-.*"), None, &["LabUser"]),
            rule(None, None, Some("AAAA-1"), &["Reader"]),
        ];
        let groups = [
            g("lab admins", None),
            g("Lab-Copenhagen", None),
            g("Other", Some("aaaa-1")),
            g("Unrelated", Some("bbbb")),
        ];
        let got: Vec<String> = roles_for(&rules, &groups).into_iter().collect();
        assert_eq!(got, ["Admin", "LabUser", "Reader", "User"]);
        // Patterns match the whole name, not a part of it.
        assert!(roles_for(&rules, &[g("Old-Lab-X", None)]).is_empty());
        assert!(roles_for(&rules, &[]).is_empty());
    }

    #[test]
    fn rules_are_validated() {
        assert!(RoleRule::new(None, None, None, None, vec!["x".into()]).is_err());
        assert!(
            RoleRule::new(
                Some("a".into()),
                Some("b".into()),
                None,
                None,
                vec!["x".into()]
            )
            .is_err()
        );
        assert!(RoleRule::new(Some("a".into()), None, None, None, vec![]).is_err());
        assert!(RoleRule::new(None, Some("(".into()), None, None, vec!["x".into()]).is_err());
        assert!(RoleRule::new(Some("a".into()), None, None, None, vec![" ".into()]).is_err());
    }

    #[test]
    fn external_id_pattern_needs_an_external_id() {
        let r = RoleRule::new(
            None,
            None,
            None,
            Some("[0-9a-f-]+".into()),
            vec!["R".into()],
        )
        .unwrap();
        assert!(roles_for(std::slice::from_ref(&r), &[g("x", None)]).is_empty());
        assert_eq!(roles_for(&[r], &[g("x", Some("12ab-3"))]).len(), 1);
    }

    #[test]
    fn a_rule_describes_itself_as_written() {
        let r =
            RoleRule::new(None, Some("Lab .+".into()), None, None, vec!["User".into()]).unwrap();
        assert_eq!(
            r.describe(),
            (
                "group_pattern = \"Lab .+\"".to_string(),
                vec!["User".to_string()]
            )
        );
        let r = RoleRule::new(Some("Admins".into()), None, None, None, vec!["A".into()]).unwrap();
        assert_eq!(r.describe().0, "group = \"Admins\"");
    }
}
