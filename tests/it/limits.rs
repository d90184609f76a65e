//! The per-request bounds (docs/scim.md "Bounds"), one test each, at their defaults: each
//! request beyond a bound answers the SCIM error, and changes nothing.
//!
//! The test server takes bodies up to 64 KiB, so the values are short: what is bounded is the
//! number of values, not their size.

use serde_json::{Value, json};

use crate::helpers::*;

/// Distinct three-character values: 36³ of them.
fn short(i: usize) -> String {
    let digits: Vec<char> = "0123456789abcdefghijklmnopqrstuvwxyz".chars().collect();
    [i / 1296, i / 36, i]
        .iter()
        .map(|d| digits[d % 36])
        .collect()
}

fn values(range: std::ops::Range<usize>) -> Value {
    Value::Array(range.map(|i| json!(short(i))).collect())
}

/// The user as GET answers it, to compare before and after a refused request.
async fn snapshot(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/Users/{id}")).await;
    r.assert_status(200);
    r.body
}

async fn users_named(app: &TestApp, user_name: &str) -> i64 {
    let filter = format!("userName eq \"{user_name}\"");
    let r = app.list(ACME, "/Users", &[("filter", &filter)]).await;
    r.assert_status(200);
    r.total()
}

#[tokio::test]
async fn values_per_multi_valued_attribute() {
    let app = TestApp::start().await;
    // E5-style bare strings keep 10 001 values under the test server's 64 KiB body limit.
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": "many", "emails": values(0..10_001)}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert_eq!(
        r.body["detail"],
        "emails: more than 10000 values (limit max_values_per_attribute)"
    );
    assert_eq!(users_named(&app, "many").await, 0, "nothing was created");

    let id = app
        .create_user(
            json!({"schemas": [USER_SCHEMA], "userName": "many", "emails": values(0..6_000)}),
        )
        .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let before = snapshot(&app, &id).await;
    // An add that would leave more than the bound, and a value that is over it by itself.
    for value in [values(6_000..10_001), values(20_000..30_001)] {
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch_ops(json!([
                    {"op": "replace", "path": "title", "value": "changed"},
                    {"op": "add", "path": "emails", "value": value}])),
            )
            .await;
        r.assert_error(400, Some("invalidValue"));
        assert!(
            r.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("max_values_per_attribute")),
            "{}",
            r.text
        );
        assert_eq!(
            snapshot(&app, &id).await,
            before,
            "the PATCH changed nothing"
        );
    }
    // Up to the bound is fine.
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "add", "path": "emails", "value": values(6_000..10_000)}])),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["emails"].as_array().map(Vec::len), Some(10_000));
}

#[tokio::test]
async fn patch_operations() {
    let app = TestApp::start().await;
    let id = app.user("ops").await;
    let before = snapshot(&app, &id).await;
    let op = json!({"op": "replace", "path": "title", "value": "T"});
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!(vec![op.clone(); 101])),
        )
        .await;
    r.assert_error(400, Some("invalidSyntax"));
    assert_eq!(
        r.body["detail"],
        "more than 100 PATCH operations (limit max_patch_operations)"
    );
    assert_eq!(snapshot(&app, &id).await, before);
    app.patch(&format!("/Users/{id}"), &patch_ops(json!(vec![op; 100])))
        .await
        .assert_status(200);
}

/// The bounds come from `[limits]`: a lowered one applies, the others keep their defaults.
#[tokio::test]
async fn configured_bounds_apply() {
    let app = TestApp::start_with_sections("\n[limits]\nmax_patch_operations = 2\n").await;
    let id = app.user("ops").await;
    let op = json!({"op": "replace", "path": "title", "value": "T"});
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!(vec![op.clone(); 3])),
        )
        .await;
    r.assert_error(400, Some("invalidSyntax"));
    assert_eq!(
        r.body["detail"],
        "more than 2 PATCH operations (limit max_patch_operations)"
    );
    app.patch(&format!("/Users/{id}"), &patch_ops(json!(vec![op; 2])))
        .await
        .assert_status(200);
    let terms = vec!["userName eq \"ops\""; 100].join(" or ");
    let r = app.list(ACME, "/Users", &[("filter", &terms)]).await;
    r.assert_status(200);
}

#[tokio::test]
async fn filter_terms_and_depth() {
    let app = TestApp::start().await;
    app.user("ann").await;
    // n comparisons joined by n - 1 `or`s are 2n - 1 terms.
    let terms = |n: usize| vec!["userName eq \"ann\""; n].join(" or ");
    let nested = |n: usize| format!("{}userName pr{}", "(".repeat(n), ")".repeat(n));
    for (filter, found) in [(terms(100), true), (nested(32), true)] {
        let r = app.list(ACME, "/Users", &[("filter", &filter)]).await;
        r.assert_status(200);
        assert_eq!(r.total(), i64::from(found));
    }
    for (filter, bound) in [
        (terms(101), "max_filter_terms"),
        (nested(33), "max_filter_depth"),
    ] {
        let r = app.list(ACME, "/Users", &[("filter", &filter)]).await;
        r.assert_error(400, Some("invalidFilter"));
        assert!(r.text.contains(bound), "{}", r.text);
        let r = app
            .post(
                "/Users/.search",
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                        "filter": filter}),
            )
            .await;
        r.assert_error(400, Some("invalidFilter"));
        let r = app.list(ACME, "/Groups", &[("filter", &filter)]).await;
        r.assert_error(400, Some("invalidFilter"));
    }
}

/// The value filters in the paths of one PATCH share the request's terms.
#[tokio::test]
async fn filter_terms_in_patch_paths() {
    let app = TestApp::start().await;
    let id = app
        .create_user(json!({"schemas": [USER_SCHEMA], "userName": "paths",
            "emails": [{"value": "a@example.com", "type": "work"}]}))
        .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let before = snapshot(&app, &id).await;
    let path = |n: usize| {
        let terms = vec!["value eq \"nobody@example.com\""; n].join(" or ");
        format!("emails[{terms}]")
    };
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([
                {"op": "remove", "path": path(50)},
                {"op": "remove", "path": path(52)}])),
        )
        .await;
    // 99 terms and 103 terms.
    r.assert_error(400, Some("invalidFilter"));
    assert!(r.text.contains("max_filter_terms"), "{}", r.text);
    assert_eq!(snapshot(&app, &id).await, before);
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "remove", "path": format!("emails[{}]", "(".repeat(32) + "type pr" + &")".repeat(32))}])),
        )
        .await;
    r.assert_error(400, Some("invalidFilter"));
    assert!(r.text.contains("max_filter_depth"), "{}", r.text);
    app.patch(
        &format!("/Users/{id}"),
        &patch_ops(json!([
            {"op": "remove", "path": path(50)},
            {"op": "remove", "path": path(51)}])),
    )
    .await
    .assert_status(200);
}

#[tokio::test]
async fn attribute_paths() {
    let app = TestApp::start().await;
    let id = app.user("proj").await;
    let many = vec!["emails.value"; 101].join(",");
    for (endpoint, parameter) in [
        ("/Users", "attributes"),
        ("/Users", "excludedAttributes"),
        ("/Groups", "excludedAttributes"),
    ] {
        let r = app.list(ACME, endpoint, &[(parameter, &many)]).await;
        r.assert_error(400, Some("invalidValue"));
        assert_eq!(
            r.body["detail"],
            json!(format!(
                "{parameter}: more than 100 attribute paths (limit max_attribute_paths)"
            ))
        );
    }
    let r = app
        .list(
            ACME,
            &format!("/Users/{id}"),
            &[("excludedAttributes", &many)],
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    // The search body of issue 11, one path many times, as an array.
    let r = app
        .post(
            "/Users/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "excludedAttributes": vec!["emails.value"; 3_000]}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    // A refused PATCH projection refuses the PATCH before it changes anything.
    let before = snapshot(&app, &id).await;
    let r = app
        .send(
            app.request(reqwest::Method::PATCH, ACME, &format!("/Users/{id}"))
                .query(&[("attributes", &many)])
                .header("content-type", "application/scim+json")
                .body(
                    patch_ops(json!([{"op": "replace", "path": "title", "value": "T"}]))
                        .to_string(),
                ),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert_eq!(snapshot(&app, &id).await, before);
    let hundred = vec!["emails.value"; 100].join(",");
    let r = app
        .list(ACME, "/Users", &[("excludedAttributes", &hundred)])
        .await;
    r.assert_status(200);
    assert_eq!(r.total(), 1);
}

#[tokio::test]
async fn members_per_request() {
    let app = TestApp::start().await;
    let u1 = app.user("m1").await;
    let g = app.group("G", &[&u1]).await;
    let refs = |n: usize| -> Vec<Value> { (0..n).map(|i| json!({"value": short(i)})).collect() };

    let r = app
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "Big", "members": refs(1_001)}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert_eq!(
        r.body["detail"],
        "more than 1000 members added or removed in one request (limit max_members_per_request)"
    );
    let r = app
        .list(ACME, "/Groups", &[("filter", "displayName eq \"Big\"")])
        .await;
    assert_eq!(r.total(), 0, "nothing was created");
    let r = app
        .put(
            &format!("/Groups/{g}"),
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "G2", "members": refs(1_001)}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));

    // All the member operations of one PATCH count together.
    let r = app
        .patch(
            &format!("/Groups/{g}"),
            &patch_ops(json!([
                {"op": "replace", "path": "displayName", "value": "Renamed"},
                {"op": "add", "path": "members", "value": refs(600)},
                {"op": "remove", "path": "members", "value": refs(401)}])),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert_eq!(app.member_ids(&g).await, vec![u1.clone()]);
    let r = app.get(&format!("/Groups/{g}")).await;
    assert_eq!(r.body["displayName"], "G");
    // Removing every member names none.
    app.patch(
        &format!("/Groups/{g}"),
        &patch_ops(json!([{"op": "remove", "path": "members"}])),
    )
    .await
    .assert_status(204);
    assert!(app.member_ids(&g).await.is_empty());
}

#[tokio::test]
async fn user_name_rule_and_length() {
    let app = TestApp::start().await;
    let long = "x".repeat(257);
    for (bad, why) in [
        (" lead", "whitespace"),
        ("trail ", "whitespace"),
        ("tab\tinside", "control"),
        ("nul\u{0}inside", "control"),
        ("newline\n", "control"),
        (long.as_str(), "max_user_name_chars"),
    ] {
        let r = app
            .post(
                "/Users",
                &json!({"schemas": [USER_SCHEMA], "userName": bad}),
            )
            .await;
        r.assert_error(400, Some("invalidValue"));
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(why), "{bad:?}: {detail}");
        assert!(
            !detail.contains(bad.trim()),
            "the detail never echoes the value"
        );
    }
    let r = app.list(ACME, "/Users", &[]).await;
    assert_eq!(r.total(), 0, "nothing was created");

    let id = app.user(&"x".repeat(256)).await;
    let before = snapshot(&app, &id).await;
    for body in [
        patch_ops(json!([{"op": "replace", "path": "userName", "value": " x"}])),
        patch_ops(json!([{"op": "Replace", "value": {"userName": "x\u{7}"}}])),
    ] {
        let r = app.patch(&format!("/Users/{id}"), &body).await;
        r.assert_error(400, Some("invalidValue"));
    }
    let r = app
        .put(
            &format!("/Users/{id}"),
            &json!({"schemas": [USER_SCHEMA], "userName": "x\u{0}"}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert_eq!(snapshot(&app, &id).await, before);
    // Whitespace inside is allowed.
    app.patch(
        &format!("/Users/{id}"),
        &patch_ops(json!([{"op": "replace", "path": "userName", "value": "Ann Lee"}])),
    )
    .await
    .assert_status(200);
}

/// externalId and a group's displayName fit their key columns on every backend: POST, PUT and
/// PATCH beyond 256 characters are refused and change nothing.
#[tokio::test]
async fn key_texts_fit_their_columns() {
    let app = TestApp::start().await;
    let long = "x".repeat(257);
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": "kit", "externalId": long}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert!(!r.text.contains(&long));
    assert_eq!(users_named(&app, "kit").await, 0);
    let g = app.group("Chemists", &[]).await;
    let before = app.get(&format!("/Groups/{g}")).await.body;
    for ops in [
        json!([{"op": "replace", "path": "displayName", "value": long}]),
        json!([{"op": "replace", "path": "externalId", "value": "a\u{0}b"}]),
    ] {
        app.patch(&format!("/Groups/{g}"), &patch_ops(ops))
            .await
            .assert_error(400, Some("invalidValue"));
    }
    assert_eq!(app.get(&format!("/Groups/{g}")).await.body, before);
    app.patch(
        &format!("/Groups/{g}"),
        &patch_ops(json!([{"op": "replace", "path": "displayName", "value": "x".repeat(256)}])),
    )
    .await
    .assert_status(204);
}
