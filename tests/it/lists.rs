//! Paging, sorting and projection over HTTP.

use serde_json::{Value, json};

use crate::helpers::*;

/// 120 users with names in reverse creation order, so creation and name order differ.
async fn seed(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = app
            .create_user(json!({"schemas": [USER_SCHEMA],
                "userName": format!("user{:03}@acme.example", n - i),
                "displayName": format!("D{}", i % 7),
                "title": if i % 2 == 0 { "even" } else { "odd" }}))
            .await;
        ids.push(id["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn paging_through_all_users() {
    let app = TestApp::start().await;
    let ids = seed(&app, 120).await;

    // Page with count=17: every user exactly once, in creation order.
    let mut seen = Vec::new();
    let mut start = 1;
    loop {
        let r = app
            .list(
                ACME,
                "/Users",
                &[("startIndex", &start.to_string()), ("count", "17")],
            )
            .await;
        r.assert_status(200);
        assert_eq!(r.total(), 120);
        assert_eq!(r.body["startIndex"], start);
        let page = r.ids();
        assert_eq!(r.body["itemsPerPage"], page.len());
        assert_eq!(page.len(), 17.min(121 - start as usize));
        seen.extend(page);
        start += 17;
        if start > 120 {
            break;
        }
    }
    assert_eq!(seen, ids);

    // Past the end: an empty page, still the total.
    let r = app
        .list(ACME, "/Users", &[("startIndex", "121"), ("count", "10")])
        .await;
    assert_eq!((r.total(), r.resources().len()), (120, 0));
    // startIndex below 1 is 1.
    let r = app
        .list(ACME, "/Users", &[("startIndex", "0"), ("count", "2")])
        .await;
    assert_eq!(r.ids(), ids[..2].to_vec());
    assert_eq!(r.body["startIndex"], 1);
    // count=0: totalResults only.
    let r = app.list(ACME, "/Users", &[("count", "0")]).await;
    r.assert_status(200);
    assert_eq!(r.total(), 120);
    assert_eq!(r.body["itemsPerPage"], 0);
    assert!(r.resources().is_empty());
    let r = app
        .list(
            ACME,
            "/Users",
            &[("count", "0"), ("filter", "title eq \"odd\"")],
        )
        .await;
    assert_eq!((r.total(), r.resources().len()), (60, 0));
    // Default page size, and a larger count is capped at the maximum.
    let r = app.list(ACME, "/Users", &[]).await;
    assert_eq!((r.total(), r.resources().len()), (120, 20));
    let r = app.list(ACME, "/Users", &[("count", "1000")]).await;
    assert_eq!((r.total(), r.resources().len()), (120, MAX_PAGE as usize));
    // Negative count is 0.
    let r = app.list(ACME, "/Users", &[("count", "-5")]).await;
    assert_eq!((r.total(), r.resources().len()), (120, 0));
    // A filtered list pages too.
    let r = app
        .list(
            ACME,
            "/Users",
            &[
                ("filter", "title eq \"even\""),
                ("startIndex", "51"),
                ("count", "50"),
            ],
        )
        .await;
    assert_eq!(r.total(), 60);
    let evens: Vec<String> = ids.iter().step_by(2).cloned().collect();
    assert_eq!(r.ids(), evens[50..].to_vec());
    // A non-numeric startIndex is a 400 SCIM error.
    let r = app.list(ACME, "/Users", &[("startIndex", "abc")]).await;
    r.assert_error(400, r.body.get("scimType").and_then(Value::as_str));
}

#[tokio::test]
async fn sorting() {
    let app = TestApp::start().await;
    let ids = seed(&app, 12).await;
    let mut by_name = ids.clone();
    by_name.reverse(); // user001 was created last
    let r = app
        .list(ACME, "/Users", &[("sortBy", "userName"), ("count", "50")])
        .await;
    assert_eq!(r.assert_status(200).ids(), by_name);
    let r = app
        .list(
            ACME,
            "/Users",
            &[
                ("sortBy", "userName"),
                ("sortOrder", "ascending"),
                ("count", "50"),
            ],
        )
        .await;
    assert_eq!(r.ids(), by_name);
    let r = app
        .list(
            ACME,
            "/Users",
            &[
                ("sortBy", "USERNAME"),
                ("sortOrder", "descending"),
                ("count", "50"),
            ],
        )
        .await;
    assert_eq!(r.ids(), ids);
    // Sorted pages join up.
    let r1 = app
        .list(ACME, "/Users", &[("sortBy", "userName"), ("count", "5")])
        .await;
    let r2 = app
        .list(
            ACME,
            "/Users",
            &[("sortBy", "userName"), ("count", "5"), ("startIndex", "6")],
        )
        .await;
    assert_eq!([r1.ids(), r2.ids()].concat(), by_name[..10].to_vec());
    // sortBy meta.created equals creation order.
    let r = app
        .list(
            ACME,
            "/Users",
            &[("sortBy", "meta.created"), ("count", "50")],
        )
        .await;
    assert_eq!(r.assert_status(200).ids().len(), 12);
    // Sorting on a JSON attribute (displayName D0..D6), then checked monotone.
    let r = app
        .list(
            ACME,
            "/Users",
            &[("sortBy", "displayName"), ("count", "50")],
        )
        .await;
    let names: Vec<String> = r
        .resources()
        .iter()
        .map(|u| u["displayName"].as_str().unwrap().to_string())
        .collect();
    let mut sorted_names = names.clone();
    sorted_names.sort();
    assert_eq!(names, sorted_names);
    // An unknown sortBy is a 400.
    let r = app.list(ACME, "/Users", &[("sortBy", "nosuch")]).await;
    r.assert_error(400, Some("invalidValue"));
}

#[tokio::test]
async fn attributes_and_excluded_attributes() {
    let app = TestApp::start().await;
    let u = app
        .create_user(
            json!({"schemas": [USER_SCHEMA, ENTERPRISE], "userName": "proj",
            "displayName": "P", "title": "T", "name": {"givenName": "G", "familyName": "F"},
            "emails": [{"value": "p@x", "type": "work"}],
            ENTERPRISE: {"department": "D", "costCenter": "C"}}),
        )
        .await;
    let id = u["id"].as_str().unwrap();
    // attributes: the named ones plus id and schemas (returned always); meta is not requested.
    let r = app
        .get(&format!(
            "/Users/{id}?attributes=displayName,name.givenName"
        ))
        .await;
    r.assert_status(200);
    assert_eq!(
        (&r.body["id"], &r.body["displayName"]),
        (&json!(id), &json!("P"))
    );
    assert_eq!(r.body["name"], json!({"givenName": "G"}));
    assert_eq!(r.body.get("title"), None);
    assert_eq!(r.body.get("emails"), None);
    assert_eq!(r.body.get(ENTERPRISE), None);
    // excludedAttributes removes those named; id cannot be excluded.
    let r = app
        .get(&format!(
            "/Users/{id}?excludedAttributes=title,emails,id,{ENTERPRISE}:department"
        ))
        .await;
    r.assert_status(200);
    assert_eq!(r.body.get("title"), None);
    assert_eq!(r.body.get("emails"), None);
    assert_eq!(r.body["id"], json!(id));
    assert_eq!(r.body["displayName"], "P");
    assert_eq!(r.body[ENTERPRISE], json!({"costCenter": "C"}));
    // URN-qualified attributes in a list.
    let r = app
        .list(
            ACME,
            "/Users",
            &[("attributes", &format!("{ENTERPRISE}:department"))],
        )
        .await;
    r.assert_status(200);
    let first = &r.resources()[0];
    assert_eq!(first[ENTERPRISE], json!({"department": "D"}));
    assert_eq!(first.get("title"), None);
    assert_eq!(first["id"], json!(id));
}
