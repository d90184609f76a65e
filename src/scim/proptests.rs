//! Property tests of the three parsers that read what a client sends in a URL or a path: the
//! filter, the PATCH path and the attributes/excludedAttributes lists. Whatever the input, they
//! do not panic, and their work, counted in steps (see `work`), is linear in the input and
//! stops soon after a bound is passed. No clock is read.

use proptest::prelude::*;
use serde_json::json;

use super::filter::{self, Filter, FilterBudget};
use super::limits::{Bound, Limits};
use super::resource::Projection;
use super::schema::{DEFAULT_CUSTOM_SCHEMA, ResourceType};
use super::work::counted;

/// Steps per character of input the parsers may take: each character is read a bounded number
/// of times (a token, then a keyword check on it).
const STEPS_PER_CHAR: usize = 8;

const PIECES: &[&str] = &[
    "userName",
    "emails",
    "value",
    "type",
    "name.givenName",
    "members",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
    "urn:",
    ":",
    ".",
    " ",
    "\t",
    "eq",
    "co",
    "gt",
    "pr",
    "and",
    "or",
    "not",
    "(",
    ")",
    "[",
    "]",
    "\"",
    "\"work\"",
    "\\",
    "\\u",
    "d83d",
    "1",
    "-2.5e3",
    "true",
    "null",
    "$ref",
    ",",
    "ü",
    "😀",
    "\u{0}",
];

/// Token soup that often comes close to valid syntax, and arbitrary text.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(PIECES), 0..96).prop_map(|v| v.concat()),
        1 => any::<String>(),
        1 => "[ -~]{0,96}",
    ]
}

/// The nodes of a filter: what `max_filter_terms` counts.
fn terms(f: &Filter) -> usize {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => 1 + terms(a) + terms(b),
        Filter::Not(a) | Filter::ValuePath { filter: a, .. } => 1 + terms(a),
        Filter::Compare { .. } | Filter::Present(_) => 1,
    }
}

fn small() -> Limits {
    Limits {
        max_filter_terms: 5,
        max_filter_depth: 3,
        max_attribute_paths: 4,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn filter_parser_never_panics_and_reads_each_character_a_bounded_number_of_times(
        s in input()
    ) {
        for limits in [Limits::default(), small()] {
            let (parsed, steps) = counted(|| filter::parse_filter(&s, &limits));
            prop_assert!(steps <= STEPS_PER_CHAR * (s.chars().count() + 1), "{steps} steps for {s:?}");
            if let Ok(f) = parsed {
                prop_assert!(terms(&f) <= limits.max_filter_terms);
                // Evaluating it is at most one step per term (and element of a value path).
                let user = json!({"userName": "a", "emails": [{"value": "x", "type": "work"}]});
                let (_, steps) = counted(|| filter::matches(&f, &user, &|_, _, _| false));
                prop_assert!(steps <= terms(&f));
            }
        }
    }

    #[test]
    fn patch_path_parser_never_panics_and_spends_from_one_budget(
        paths in prop::collection::vec(input(), 1..6)
    ) {
        let limits = small();
        let mut budget = FilterBudget::new(&limits);
        let mut spent = 0;
        let mut chars = 0;
        for p in &paths {
            chars += p.chars().count() + 1;
            let (parsed, steps) = counted(|| filter::parse_path(p, &mut budget));
            prop_assert!(steps <= STEPS_PER_CHAR * (p.chars().count() + 1), "{steps} steps for {p:?}");
            if let Ok(path) = parsed {
                spent += path.filter.as_ref().map_or(0, terms);
            }
        }
        prop_assert!(spent <= limits.max_filter_terms, "{spent} terms in {chars} characters");
    }

    #[test]
    fn projection_parser_never_panics_and_reads_at_most_one_entry_past_the_bound(
        list in prop::collection::vec(input(), 0..12).prop_map(|v| v.join(","))
    ) {
        let limits = small();
        let entries = list.split(',').filter(|e| !e.trim().is_empty()).count();
        for rt in [ResourceType::user(DEFAULT_CUSTOM_SCHEMA), ResourceType::group()] {
            let (parsed, steps) = counted(|| Projection::parse(&rt, Some(&list), Some(&list), &limits));
            prop_assert!(steps <= 2 * (limits.max_attribute_paths + 1));
            match parsed {
                Ok(_) => prop_assert!(entries <= limits.max_attribute_paths),
                Err(e) => {
                    prop_assert!(entries > limits.max_attribute_paths);
                    prop_assert!(e.detail.contains(Bound::AttributePaths.name()));
                }
            }
        }
    }
}

/// Large hostile inputs: refused after work proportional to the bound, not to the input.
#[test]
fn large_adversarial_inputs_stop_at_the_bound() {
    let limits = Limits::default();
    let cases = [
        "(".repeat(1_000_000),
        "not(".repeat(250_000),
        "a pr or ".repeat(125_000),
        format!("emails[{}]", "value eq \"x\" or ".repeat(60_000)),
    ];
    for s in &cases {
        let (parsed, steps) = counted(|| filter::parse_filter(s, &limits));
        let e = parsed.expect_err("too big");
        assert!(e.bound.is_some(), "{e}");
        assert!(steps < 20_000, "{steps} steps for {} characters", s.len());
        let (parsed, steps) = counted(|| filter::parse_path(s, &mut FilterBudget::new(&limits)));
        assert!(parsed.is_err());
        assert!(steps < 20_000, "{steps} steps for {} characters", s.len());
    }
    // Without a bound to stop at, the work is linear in the input.
    let unterminated = format!("userName eq \"{}", "x".repeat(1_000_000));
    let (parsed, steps) = counted(|| filter::parse_filter(&unterminated, &limits));
    assert!(parsed.is_err());
    assert!(steps <= STEPS_PER_CHAR * unterminated.len(), "{steps}");

    let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
    let excluded = vec!["emails.value"; 60_000].join(",");
    let (parsed, steps) = counted(|| Projection::parse(&rt, None, Some(&excluded), &limits));
    assert!(parsed.is_err());
    assert_eq!(steps, limits.max_attribute_paths + 1);
}
