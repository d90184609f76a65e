//! What `scim-bridge sync` prints about a run: its counts and status; for a dry run a summary
//! of the users it would change (the first of each kind, with the names of the columns that
//! change) and every failure, or with `--verbose` every change in full; for a real run its
//! failures. A field whose value does not change is never printed.
//!
//! A summary holds the first [`SHOWN_PER_KIND`] users of each kind and the first
//! [`FAILURES_SHOWN`] failures, and counts the rest: its memory does not grow with the run.

use std::fmt::Write as _;

use crate::sync::{Change, ItemReport, Outcome, RunSummary};

// `sync --help` and docs/sync.md give these numbers.
/// Users a dry-run summary lists per kind of change.
pub const SHOWN_PER_KIND: usize = 10;
/// Failures a dry-run summary lists with their reasons; the run's ledger has every one.
pub const FAILURES_SHOWN: usize = 1000;

/// The kinds of change, in the order a summary lists them.
const KINDS: [Outcome; 8] = [
    Outcome::Created,
    Outcome::Updated,
    Outcome::Reactivated,
    Outcome::Adopted,
    Outcome::Deactivated,
    Outcome::Offboarded,
    Outcome::Purged,
    Outcome::OffboardingHeld,
];

/// The columns of an item whose value changes: a column going from null to null (a new user's
/// empty field) or to the value it had is no change.
fn changed(item: &ItemReport) -> impl Iterator<Item = (&String, &Change)> {
    item.changes.iter().filter(|(_, c)| c.before != c.after)
}

/// `id userName (key KEY)`.
fn who(item: &ItemReport) -> String {
    format!(
        "{} {} (key {})",
        item.user_id,
        item.user_name.as_deref().unwrap_or("-"),
        item.app_key.as_deref().unwrap_or("-")
    )
}

/// One user of a kind, as a summary lists it: who, and the names of what changes.
fn listed(item: &ItemReport) -> String {
    let mut what: Vec<String> = changed(item).map(|(c, _)| c.clone()).collect();
    what.extend(item.roles_added.iter().map(|r| format!("role +{r}")));
    what.extend(item.roles_removed.iter().map(|r| format!("role -{r}")));
    if what.is_empty() {
        who(item)
    } else {
        format!("{}: {}", who(item), what.join(", "))
    }
}

/// One user in full: its outcome (an offboarding's with its action), each changed column
/// before -> after, the roles, the error.
pub fn item_text(item: &ItemReport) -> String {
    let mut text = format!("{}: {}", who(item), item.outcome.as_str());
    if let Some(action) = &item.action {
        let _ = write!(text, " ({action})");
    }
    for (column, change) in changed(item) {
        let _ = write!(
            text,
            "\n    {column}: {} -> {}",
            change.before, change.after
        );
    }
    if !item.roles_added.is_empty() {
        let _ = write!(text, "\n    roles +{}", item.roles_added.join(", +"));
    }
    if !item.roles_removed.is_empty() {
        let _ = write!(text, "\n    roles -{}", item.roles_removed.join(", -"));
    }
    if let Some(e) = &item.error {
        let _ = write!(text, "\n    error: {e}");
    }
    text
}

/// The run's status and counts, and what to do about a held run or a failed one.
pub fn run_text(s: &RunSummary) -> String {
    let c = &s.counts;
    let mut text = format!(
        "run {} (tenant {}{}): {}\n",
        s.run_id,
        s.tenant,
        if s.dry_run { ", dry run" } else { "" },
        s.status.as_str()
    );
    let _ = writeln!(
        text,
        "  created {}, updated {}, unchanged {}, deactivated {}, offboarded {}, failed {}, quarantined {}, roles added {}, roles removed {}",
        c.created,
        c.updated,
        c.unchanged,
        c.deactivated,
        c.offboarded,
        c.failed,
        c.quarantined,
        c.roles_added,
        c.roles_removed
    );
    if s.held > 0 && s.dry_run {
        let _ = writeln!(
            text,
            "  {} offboardings would be held by the guard: a real run would wait for approval",
            s.held
        );
    } else if s.held > 0 {
        let _ = writeln!(
            text,
            "  {} offboardings held by the guard; review the run's items, then approve with: scim-bridge sync --tenant {} --approve {}",
            s.held, s.tenant, s.run_id
        );
    }
    if let Some(e) = &s.error {
        let _ = writeln!(text, "  {e}");
    }
    text
}

/// The users of one kind a summary saw: how many, and the first of them.
#[derive(Default)]
struct Kind {
    count: u64,
    first: Vec<String>,
}

/// A dry run's users as it goes: the first of each kind of change and the failures, bounded.
#[derive(Default)]
pub struct DryRunSummary {
    kinds: [Kind; KINDS.len()],
    failures: Vec<String>,
    failed: u64,
}

impl DryRunSummary {
    pub fn add(&mut self, item: &ItemReport) {
        if item.outcome == Outcome::Failed {
            self.failed += 1;
            if self.failures.len() < FAILURES_SHOWN {
                self.failures.push(format!(
                    "{}: {}",
                    who(item),
                    item.error.as_deref().unwrap_or("failed")
                ));
            }
            return;
        }
        let Some(i) = KINDS.iter().position(|k| *k == item.outcome) else {
            return;
        };
        let kind = &mut self.kinds[i];
        kind.count += 1;
        if kind.first.len() < SHOWN_PER_KIND {
            kind.first.push(listed(item));
        }
    }

    /// The run's counts, then each kind of change with its first users, then every failure
    /// (up to [`FAILURES_SHOWN`]).
    pub fn text(&self, run: &RunSummary) -> String {
        let mut text = run_text(run);
        for (outcome, kind) in KINDS.iter().zip(&self.kinds) {
            if kind.count == 0 {
                continue;
            }
            let _ = writeln!(text, "  {}: {}", outcome.as_str(), kind.count);
            for line in &kind.first {
                let _ = writeln!(text, "    {line}");
            }
            let more = kind.count - kind.first.len() as u64;
            if more > 0 {
                let _ = writeln!(text, "    … and {more} more");
            }
        }
        if self.failed > 0 {
            let _ = writeln!(text, "  failed: {}", self.failed);
            for line in &self.failures {
                let _ = writeln!(text, "    {line}");
            }
            let more = self.failed - self.failures.len() as u64;
            if more > 0 {
                let _ = writeln!(
                    text,
                    "    … and {more} more; the run's items list every one with its reason \
                     (GET /admin/v1/runs/{}/items?outcome=failed)",
                    run.run_id
                );
            }
        }
        if self.kinds.iter().any(|k| k.count > 0) {
            let _ = writeln!(
                text,
                "  (--verbose prints every change with its values; the run's items in the admin \
                 API list every user: GET /admin/v1/runs/{}/items)",
                run.run_id
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use serde_json::{Value, json};

    use super::*;
    use crate::sync::{Counts, RunStatus, Trigger};

    fn item(id: &str, outcome: Outcome, changes: &[(&str, Value, Value)]) -> ItemReport {
        ItemReport {
            user_id: id.into(),
            user_name: Some(format!("{id}@example.com")),
            app_key: Some(format!("key-{id}")),
            outcome,
            changes: changes
                .iter()
                .map(|(c, before, after)| {
                    (
                        c.to_string(),
                        Change {
                            before: before.clone(),
                            after: after.clone(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            roles_added: vec![],
            roles_removed: vec![],
            error: None,
            action: None,
            log_reason: None,
        }
    }

    fn created(i: usize) -> ItemReport {
        item(
            &format!("c{i:02}"),
            Outcome::Created,
            &[
                ("external_id", Value::Null, json!(format!("key-c{i:02}"))),
                (
                    "user_name",
                    Value::Null,
                    json!(format!("secret-name-{i:02}")),
                ),
                // A new user's empty field: no change.
                ("phone", Value::Null, Value::Null),
            ],
        )
    }

    fn updated(i: usize) -> ItemReport {
        let mut it = item(
            &format!("u{i}"),
            Outcome::Updated,
            &[
                ("display_name", json!("Old Name"), json!("New Name")),
                ("office", json!("Basel"), json!("Basel")),
            ],
        );
        it.roles_added = vec!["Editor".into()];
        it
    }

    fn failed(i: usize, reason: &str) -> ItemReport {
        let mut it = item(&format!("f{i}"), Outcome::Failed, &[]);
        it.error = Some(reason.into());
        it
    }

    fn run(counts: Counts) -> RunSummary {
        let t = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
        RunSummary {
            run_id: 42,
            tenant: "demo".into(),
            trigger: Trigger::Cli,
            dry_run: true,
            full: false,
            status: RunStatus::CompletedWithErrors,
            counts,
            held: 0,
            watermark_from: Some(0),
            watermark_to: Some(30),
            started_at: t,
            ended_at: t,
            error: None,
            failures: vec![],
        }
    }

    /// 25 creates, 3 updates, 2 failures, as `sync --dry-run` prints them by default.
    fn summary() -> (DryRunSummary, Vec<ItemReport>, RunSummary) {
        let mut items: Vec<ItemReport> = (0..25).map(created).collect();
        items.extend((0..3).map(updated));
        items.push(failed(0, "fields.active: `maybe` is not a boolean"));
        items.push(failed(
            1,
            "the application row with this key belongs to tenant \"x\"",
        ));
        let mut counts = Counts::default();
        let mut s = DryRunSummary::default();
        for it in &items {
            counts.add(it);
            s.add(it);
        }
        (s, items, run(counts))
    }

    #[test]
    fn a_summary_lists_the_first_users_of_each_kind_and_every_failure() {
        let (s, _, run) = summary();
        let text = s.text(&run);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            text.starts_with("run 42 (tenant demo, dry run): completed_with_errors\n"),
            "{text}"
        );
        assert!(
            text.contains("  created 25, updated 3, unchanged 0"),
            "{text}"
        );
        assert!(text.contains("failed 2"), "{text}");
        let listed = |prefix: &str| {
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("    {prefix}")))
                .count()
        };
        assert!(lines.contains(&"  created: 25"), "{text}");
        assert_eq!(listed("c"), SHOWN_PER_KIND, "{text}");
        assert!(
            lines.contains(&"    c00 c00@example.com (key key-c00): external_id, user_name"),
            "{text}"
        );
        assert!(lines.contains(&"    … and 15 more"), "{text}");
        assert!(lines.contains(&"  updated: 3"), "{text}");
        assert_eq!(listed("u"), 3, "{text}");
        assert!(
            lines.contains(&"    u0 u0@example.com (key key-u0): display_name, role +Editor"),
            "{text}"
        );
        assert_eq!(
            text.matches("more").count(),
            1,
            "only the creates had more: {text}"
        );
        assert!(lines.contains(&"  failed: 2"), "{text}");
        assert!(
            lines.contains(
                &"    f0 f0@example.com (key key-f0): fields.active: `maybe` is not a boolean"
            ),
            "{text}"
        );
        assert!(text.contains("f1 f1@example.com (key key-f1): the application row"));
        // Unchanged fields, and no values at all.
        for absent in [
            "phone",
            "office",
            "Basel",
            "Old Name",
            "New Name",
            "secret-name",
            "null",
        ] {
            assert!(!text.contains(absent), "{absent:?} in the summary: {text}");
        }
    }

    #[test]
    fn verbose_prints_every_changed_value_and_no_unchanged_field() {
        let (_, items, _) = summary();
        let text: Vec<String> = items.iter().map(item_text).collect();
        assert_eq!(text.len(), 30);
        assert_eq!(
            text[25],
            "u0 u0@example.com (key key-u0): updated\n    \
             display_name: \"Old Name\" -> \"New Name\"\n    roles +Editor"
        );
        assert!(
            text[24].contains("user_name: null -> \"secret-name-24\""),
            "{}",
            text[24]
        );
        assert!(text[28].ends_with("error: fields.active: `maybe` is not a boolean"));
        let all = text.join("\n");
        for absent in ["phone", "office", "Basel"] {
            assert!(!all.contains(absent), "{absent:?} printed: {all}");
        }
    }

    #[test]
    fn verbose_names_an_offboardings_action() {
        let mut it = item(
            "u9",
            Outcome::Offboarded,
            &[("display_name", json!("Ann"), Value::Null)],
        );
        it.action = Some("delete".into());
        assert_eq!(
            item_text(&it),
            "u9 u9@example.com (key key-u9): offboarded (delete)\n    display_name: \"Ann\" -> null"
        );
    }

    /// The failures a summary lists are bounded; the rest are counted and pointed to.
    #[test]
    fn a_summary_keeps_a_bounded_number_of_users() {
        let mut s = DryRunSummary::default();
        let mut counts = Counts::default();
        for i in 0..(FAILURES_SHOWN + 5) {
            let it = failed(i, "nope");
            counts.add(&it);
            s.add(&it);
        }
        for i in 0..5000 {
            let it = created(i);
            counts.add(&it);
            s.add(&it);
        }
        assert_eq!(s.failures.len(), FAILURES_SHOWN);
        assert_eq!(s.kinds[0].first.len(), SHOWN_PER_KIND);
        let text = s.text(&run(counts));
        assert!(text.contains("    … and 4990 more\n"), "{text}");
        assert!(
            text.contains("    … and 5 more; the run's items list every one with its reason (GET /admin/v1/runs/42/items?outcome=failed)"),
            "{text}"
        );
    }
}
