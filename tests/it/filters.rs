//! Filters over HTTP: each answer is the exact set of matching users.

use serde_json::json;

use crate::helpers::*;

struct People {
    ann: String,
    bob: String,
    cy: String,
}

async fn seed(app: &TestApp) -> People {
    let mk = |body: serde_json::Value| async move {
        app.create_user(body).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ann = mk(
        json!({"schemas": [USER_SCHEMA, ENTERPRISE], "userName": "Ann@Acme.example",
        "externalId": "ext-ann", "displayName": "Ann", "title": "Engineer", "active": true,
        "name": {"givenName": "Ann", "familyName": "Archer"},
        "emails": [{"value": "ann@work.example", "type": "work", "primary": true},
                   {"value": "ann@home.example", "type": "home"}],
        ENTERPRISE: {"department": "R&D"},
        CUSTOM: {"customAttribute01": "Alpha"}}),
    )
    .await;
    let bob = mk(
        json!({"schemas": [USER_SCHEMA], "userName": "bob@acme.example",
        "externalId": "ext-bob", "displayName": "Bob", "title": "Manager", "active": false,
        "name": {"givenName": "Bob", "familyName": "Baker"},
        "emails": [{"value": "bob@work.example", "type": "work"}],
        ENTERPRISE: {"department": "Sales"}}),
    )
    .await;
    let cy = mk(
        json!({"schemas": [USER_SCHEMA], "userName": "cy@acme.example",
        "displayName": "Cy", "name": {"givenName": "Cy"}}),
    )
    .await;
    People { ann, bob, cy }
}

async fn ids(app: &TestApp, filter: &str) -> Vec<String> {
    let r = app
        .list(ACME, "/Users", &[("filter", filter), ("count", "50")])
        .await;
    r.assert_status(200);
    assert_eq!(r.total() as usize, r.ids().len(), "{filter}");
    let mut v = r.ids();
    v.sort();
    v
}

fn set(v: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn filter_grammar_over_http() {
    let app = TestApp::start().await;
    let p = seed(&app).await;
    let (ann, bob, cy) = (&p.ann, &p.bob, &p.cy);
    let cases: Vec<(String, Vec<String>)> = vec![
        ("userName eq \"ann@acme.example\"".to_string(), set(&[ann])),
        ("USERNAME EQ \"ANN@ACME.EXAMPLE\"".to_string(), set(&[ann])),
        (
            format!("{USER_SCHEMA}:userName eq \"bob@acme.example\""),
            set(&[bob]),
        ),
        ("userName sw \"b\"".to_string(), set(&[bob])),
        (
            "userName ew \"@acme.example\"".to_string(),
            set(&[ann, bob, cy]),
        ),
        ("userName co \"N@AC\"".to_string(), set(&[ann])),
        (
            "userName ne \"cy@acme.example\"".to_string(),
            set(&[ann, bob]),
        ),
        ("externalId eq \"ext-ann\"".to_string(), set(&[ann])),
        ("externalId eq \"EXT-ANN\"".to_string(), set(&[])),
        ("externalId pr".to_string(), set(&[ann, bob])),
        ("not (externalId pr)".to_string(), set(&[cy])),
        ("title pr".to_string(), set(&[ann, bob])),
        ("title eq \"engineer\"".to_string(), set(&[ann])),
        ("active eq true".to_string(), set(&[ann, cy])),
        ("active eq false".to_string(), set(&[bob])),
        ("name.familyName eq \"baker\"".to_string(), set(&[bob])),
        (
            format!("{USER_SCHEMA}:name.givenName eq \"Cy\""),
            set(&[cy]),
        ),
        (format!("{ENTERPRISE}:department eq \"sales\""), set(&[bob])),
        (format!("{ENTERPRISE}:department pr"), set(&[ann, bob])),
        (
            format!("{CUSTOM}:customAttribute01 eq \"alpha\""),
            set(&[ann]),
        ),
        (
            "emails[type eq \"work\" and value co \"ann\"]".to_string(),
            set(&[ann]),
        ),
        ("emails[type eq \"home\"]".to_string(), set(&[ann])),
        ("emails[primary eq true]".to_string(), set(&[ann])),
        (
            "emails.value ew \"work.example\"".to_string(),
            set(&[ann, bob]),
        ),
        (
            "emails[type eq \"work\"].value eq \"BOB@work.example\"".to_string(),
            set(&[bob]),
        ),
        ("emails pr".to_string(), set(&[ann, bob])),
        (
            "title eq \"Engineer\" or title eq \"Manager\"".to_string(),
            set(&[ann, bob]),
        ),
        ("title pr and active eq true".to_string(), set(&[ann])),
        (
            "(title eq \"Engineer\" or displayName eq \"Cy\") and not (active eq false)"
                .to_string(),
            set(&[ann, cy]),
        ),
        (
            "not (userName eq \"ann@acme.example\" or userName eq \"bob@acme.example\")"
                .to_string(),
            set(&[cy]),
        ),
        (
            "title eq \"Engineer\" or title eq \"Manager\" and active eq true".to_string(),
            set(&[ann]),
        ),
        (
            "meta.created ge \"2026-01-01T00:00:00Z\"".to_string(),
            set(&[ann, bob, cy]),
        ),
        (
            "meta.lastModified lt \"2026-01-01T00:00:00Z\"".to_string(),
            set(&[]),
        ),
        (format!("id eq \"{ann}\""), set(&[ann])),
    ];
    for (f, want) in cases {
        assert_eq!(ids(&app, &f).await, want, "{f}");
    }
    // The same through /.search.
    let r = app
        .post(
            "/Users/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": "title pr", "sortBy": "userName", "attributes": ["userName"]}),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.ids(), vec![ann.clone(), bob.clone()]);
    assert_eq!(r.resources()[0].get("title"), None);
}

#[tokio::test]
async fn unanswerable_filters_are_400_invalid_filter() {
    let app = TestApp::start().await;
    seed(&app).await;
    for f in [
        "nosuch eq \"x\"",
        "userName eq",
        "userName zz \"x\"",
        "(userName eq \"x\"",
        "active gt true",
        "name eq \"x\"",
        "emails[type eq \"work\"",
        "userName eq \"x\" and",
        "meta.created gt \"yesterday\"",
        "urn:ietf:params:scim:schemas:extension:nosuch:2.0:User:x eq \"1\"",
    ] {
        let r = app.list(ACME, "/Users", &[("filter", f)]).await;
        r.assert_error(400, Some("invalidFilter"));
    }
    let r = app
        .list(ACME, "/Groups", &[("filter", "members[display eq \"x\"]")])
        .await;
    r.assert_error(400, Some("invalidFilter"));
}

#[tokio::test]
async fn unicode_case_quotes_and_deleted_users() {
    let app = TestApp::start().await;
    let a = app
        .create_user(
            json!({"schemas": [USER_SCHEMA], "userName": "ÄRGER@acme.example", "externalId": "x-1",
            "title": "Ingénieur"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let q = app
        .create_user(json!({"schemas": [USER_SCHEMA], "userName": "say \"hi\"\\there"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ids(&app, "userName eq \"ärger@ACME.example\"").await,
        vec![a.clone()]
    );
    assert_eq!(ids(&app, "title co \"GÉN\"").await, vec![a.clone()]);
    assert_eq!(
        ids(&app, "userName eq \"say \\\"hi\\\"\\\\there\"").await,
        vec![q.clone()]
    );
    // A userName differing only in Unicode case is taken.
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": "ärger@acme.example"}),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    // Deleted users are in no answer.
    app.delete(&format!("/Users/{a}")).await.assert_status(204);
    for f in ["externalId eq \"x-1\"", "userName sw \"ä\"", "title pr"] {
        assert_eq!(ids(&app, f).await, Vec::<String>::new(), "{f}");
    }
    let r = app.list(ACME, "/Users", &[]).await;
    assert_eq!(r.ids(), vec![q.clone()]);
    // A group id is not a user id.
    let g = app.group("G", &[&q]).await;
    app.get(&format!("/Users/{g}"))
        .await
        .assert_error(404, None);
    app.get(&format!("/Groups/{q}"))
        .await
        .assert_error(404, None);
    // Too many terms is a 400, not a slow query.
    let long = (0..300)
        .map(|i| format!("userName eq \"u{i}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let r = app.list(ACME, "/Users", &[("filter", long.as_str())]).await;
    r.assert_error(400, Some("invalidFilter"));
}
