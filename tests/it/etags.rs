//! Versions: If-Match, If-None-Match, and atomic PATCH.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn if_match_and_if_none_match() {
    let app = TestApp::start().await;
    let id = app.user("etag@acme.example").await;
    let path = format!("/Users/{id}");
    let v1 = app.get(&path).await.version();
    let etag_req = |m: Method, h: &str, v: &str| {
        app.request(m, ACME, &path)
            .header(h, v.to_string())
            .header("content-type", "application/scim+json")
    };
    // If-None-Match with the current version: 304, no body, the ETag.
    let r = app.send(etag_req(Method::GET, "if-none-match", &v1)).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.text, "");
    assert_eq!(r.header("etag"), Some(v1.as_str()));
    let r = app
        .send(etag_req(Method::GET, "if-none-match", "W/\"999999\""))
        .await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some(v1.as_str()));

    // If-Match with a stale version: 412 and nothing changed.
    let change = patch_ops(json!([{"op": "replace", "path": "title", "value": "new"}]));
    let r = app
        .send(etag_req(Method::PATCH, "if-match", "W/\"999999\"").body(change.to_string()))
        .await;
    r.assert_error(412, None);
    let now = app.get(&path).await;
    assert_eq!(now.version(), v1);
    assert_eq!(now.body.get("title"), None);
    // With the current version: applied, and the version moves.
    let r = app
        .send(etag_req(Method::PATCH, "if-match", &v1).body(change.to_string()))
        .await;
    r.assert_status(200);
    let v2 = r.version();
    assert_ne!(v2, v1);
    assert_eq!(r.header("etag"), Some(v2.as_str()));
    // PUT and DELETE with the old version: 412.
    let r = app
        .send(
            etag_req(Method::PUT, "if-match", &v1)
                .body(json!({"userName": "etag@acme.example"}).to_string()),
        )
        .await;
    r.assert_error(412, None);
    let r = app.send(etag_req(Method::DELETE, "if-match", &v1)).await;
    r.assert_error(412, None);
    app.get(&path).await.assert_status(200);
    // A list of tags, one of them current; and *.
    let r = app
        .send(
            etag_req(Method::PATCH, "if-match", &format!("W/\"1\", {v2}")).body(change.to_string()),
        )
        .await;
    r.assert_status(200);
    assert_eq!(
        r.version(),
        v2,
        "a PATCH that changes nothing keeps the version"
    );
    let r = app.send(etag_req(Method::DELETE, "if-match", "*")).await;
    r.assert_status(204);
}

#[tokio::test]
async fn a_failed_patch_changes_nothing() {
    let app = TestApp::start().await;
    let u = app
        .create_user(json!({"schemas": [USER_SCHEMA], "userName": "atomic", "title": "T", "displayName": "A"}))
        .await;
    let id = u["id"].as_str().unwrap();
    let path = format!("/Users/{id}");
    let before = app.get(&path).await;
    app.clock.advance(chrono::Duration::minutes(5));
    for bad in [
        json!({"op": "replace", "path": "nosuch", "value": "x"}),
        json!({"op": "replace", "path": "active", "value": "maybe"}),
        json!({"op": "remove", "path": "userName"}),
        json!({"op": "replace", "path": "id", "value": "x"}),
        json!({"op": "replace", "path": "emails[type eq", "value": "x"}),
    ] {
        let r = app
            .patch(
                &path,
                &patch_ops(json!([
                    {"op": "Replace", "path": "displayName", "value": "changed"},
                    {"op": "Add", "value": {"title": "changed too"}},
                    bad,
                    {"op": "Replace", "path": "nickName", "value": "after"},
                ])),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.header("content-type"), Some("application/scim+json"));
        let after = app.get(&path).await;
        assert_eq!(
            after.body, before.body,
            "version, lastModified and attributes unchanged"
        );
        assert_eq!(after.header("etag"), before.header("etag"));
    }
    // A group: a bad op after a member add keeps the members.
    let m = app.user("member").await;
    let g = app.group("Atomic", &[]).await;
    let r = app
        .patch(
            &format!("/Groups/{g}"),
            &patch_ops(json!([
                {"op": "Add", "path": "members", "value": [{"value": m}]},
                {"op": "Replace", "path": "nosuch", "value": "x"},
            ])),
        )
        .await;
    r.assert_error(400, Some("invalidPath"));
    assert!(app.member_ids(&g).await.is_empty());
}

/// If-Match holds for member-only group PATCHes too.
#[tokio::test]
async fn if_match_on_group_member_changes() {
    let app = TestApp::start().await;
    let u = app.user("gm@acme.example").await;
    let g = app.group("Versioned", &[]).await;
    let v1 = app.get(&format!("/Groups/{g}")).await.version();
    let add = patch_ops(json!([{"op": "Add", "path": "members", "value": [{"value": u}]}]));
    let send = |tag: String| {
        app.request(Method::PATCH, ACME, &format!("/Groups/{g}"))
            .header("if-match", tag)
            .header("content-type", "application/scim+json")
            .body(add.to_string())
    };
    app.send(send("W/\"999999\"".into()))
        .await
        .assert_error(412, None);
    assert!(app.member_ids(&g).await.is_empty());
    app.send(send(v1.clone())).await.assert_status(204);
    assert_eq!(app.member_ids(&g).await, vec![u.clone()]);
    let v2 = app.get(&format!("/Groups/{g}")).await.version();
    assert_ne!(v2, v1);
    // The old version no longer matches.
    app.send(send(v1)).await.assert_error(412, None);
}
