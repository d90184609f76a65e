//! Text for `scim-bridge mapping check` and `scim-bridge mapping test`.

use std::fmt::Write;

use super::{Mapping, TestOutcome};

/// What a valid mapping targets, reads and writes.
pub fn check_report(m: &Mapping) -> String {
    let t = m.target();
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", m.origin());
    let _ = writeln!(
        out,
        "  target:      database `{}`, table {}, key column {} from {}",
        t.database, t.user_table, t.key_column, t.key_source
    );
    match &t.roles {
        Some(r) => {
            let _ = writeln!(
                out,
                "  roles:       {} ({}, {}), {} rule(s)",
                r.table,
                r.user_column,
                r.role_column,
                m.role_rule_count()
            );
        }
        None => {
            let _ = writeln!(out, "  roles:       none");
        }
    }
    let _ = writeln!(out, "  offboarding: {}", m.offboarding_action());
    let _ = writeln!(out, "  reads:       {}", m.reads().join(", "));
    let _ = writeln!(out, "  writes:      {}", m.writes().join(", "));
    let _ = writeln!(out, "  tests:       {} case(s)", m.test_count());
    out
}

/// PASS/FAIL per case with the differences; true when every case passed.
pub fn test_report(m: &Mapping, outcomes: &[TestOutcome]) -> (String, bool) {
    let mut out = String::new();
    if outcomes.is_empty() {
        let _ = writeln!(out, "{}: no [[test]] cases", m.origin());
        return (out, true);
    }
    let mut failed = 0;
    for o in outcomes {
        if o.passed() {
            let _ = writeln!(out, "PASS  {}", o.name);
        } else {
            failed += 1;
            let _ = writeln!(out, "FAIL  {}  ({}:{})", o.name, m.origin(), o.line);
            for f in &o.failures {
                let _ = writeln!(out, "        {f}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} passed, {} failed",
        outcomes.len() - failed,
        failed
    );
    (out, failed == 0)
}
