//! Work figures for the heaviest requests a hostile client can send, run by hand:
//!
//!     cargo test --lib scim::bench -- --ignored --nocapture --test-threads 1
//!
//! Each request runs with the default [`Limits`] (it is refused, and how fast) and with the
//! bound it hits lifted (the work itself, at growing sizes where that shows it is linear). They
//! print wall-clock figures and assert nothing about time: timed tests are flaky.

use std::time::Instant;

use serde_json::{Value, json};

use super::limits::Limits;
use super::patch;
use super::resource::{self, Projection};
use super::schema::{DEFAULT_CUSTOM_SCHEMA, PATCH_OP, ResourceType};

/// The defaults with every bound these requests hit lifted as far as it goes.
fn lifted() -> Limits {
    Limits {
        max_values_per_attribute: usize::MAX,
        max_filter_terms: usize::MAX,
        max_attribute_paths: usize::MAX,
        ..Limits::default()
    }
}

fn emails(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"value": format!("{prefix}{i}@example.com"), "type": "work"}))
            .collect(),
    )
}

fn user_with_emails(rt: &ResourceType, n: usize) -> serde_json::Map<String, Value> {
    let body = json!({"userName": "heavy", "emails": emails("old", n)});
    resource::normalize(rt, &body, &lifted()).unwrap().doc
}

fn time<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!("{what}: {:.3} s", start.elapsed().as_secs_f64());
    out
}

fn outcome<T>(r: Result<T, super::ScimError>) -> String {
    match r {
        Ok(_) => "applied".into(),
        Err(e) => format!("{} {}", e.status, e.detail),
    }
}

/// One PATCH adding `added` emails to a user that has `existing`.
fn add_emails(existing: usize, added: usize, limits: &Limits, label: &str) {
    let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
    let mut doc = user_with_emails(&rt, existing);
    let body = json!({"schemas": [PATCH_OP], "Operations": [
        {"op": "add", "path": "emails", "value": emails("new", added)}]});
    let result = time(
        &format!("PATCH add {added} emails to a user with {existing} ({label})"),
        || patch::parse(&body, limits).and_then(|ops| patch::apply(&rt, &mut doc, &ops, limits)),
    );
    println!("  -> {}", outcome(result));
}

#[test]
#[ignore = "prints work figures; run by hand"]
fn patch_adding_emails() {
    for (existing, added) in [
        (9_000, 3_000),
        (18_000, 6_000),
        (36_000, 12_000),
        (72_000, 24_000),
    ] {
        add_emails(existing, added, &lifted(), "bound lifted");
    }
    add_emails(72_000, 24_000, &Limits::default(), "default limits");
}

/// A PATCH whose path filter has `n` comparisons joined by `or`, none matching, on a user with
/// 40 000 emails.
fn patch_with_a_value_filter(n: usize, limits: &Limits, label: &str) {
    let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
    let mut doc = user_with_emails(&rt, 40_000);
    let terms: Vec<String> = (0..n)
        .map(|i| format!("value eq \"nobody{i}@example.com\""))
        .collect();
    let path = format!("emails[{}].type", terms.join(" or "));
    let body = json!({"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": path, "value": "home"}]});
    let result = time(
        &format!("PATCH with a {n}-comparison value filter on a user with 40000 emails ({label})"),
        || patch::parse(&body, limits).and_then(|ops| patch::apply(&rt, &mut doc, &ops, limits)),
    );
    println!("  -> {}", outcome(result));
}

#[test]
#[ignore = "prints work figures; run by hand"]
fn patch_with_a_1000_term_value_filter() {
    patch_with_a_value_filter(1000, &Limits::default(), "default limits");
    // The largest filters that are taken: at the default, and at the ceiling.
    patch_with_a_value_filter(100, &Limits::default(), "default limits");
    patch_with_a_value_filter(500, &lifted(), "bound lifted to its ceiling");
}

#[test]
#[ignore = "prints work figures; run by hand"]
fn projection_with_one_path_60000_times() {
    let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
    let excluded = vec!["emails.value"; 60_000].join(",");
    for (limits, label) in [
        (lifted(), "bound lifted"),
        (Limits::default(), "default limits"),
    ] {
        let mut doc = user_with_emails(&rt, 40_000);
        let projection = time(
            &format!("parse excludedAttributes with 60000 entries ({label})"),
            || Projection::parse(&rt, None, Some(&excluded), &limits),
        );
        match projection {
            Ok(p) => time("  apply it to a user with 40000 emails", || {
                p.apply(&rt, &mut doc)
            }),
            Err(e) => println!("  -> {} {}", e.status, e.detail),
        }
    }
}
