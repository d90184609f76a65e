//! Tenant isolation and concurrent writers.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn ids_of_one_tenant_are_404_in_another() {
    let app = TestApp::start().await;
    let uid = app.user("iso@acme.example").await;
    let gid = app.group("Iso", &[&uid]).await;
    for (m, path) in [
        (Method::GET, format!("/Users/{uid}")),
        (Method::DELETE, format!("/Users/{uid}")),
        (Method::GET, format!("/Groups/{gid}")),
        (Method::DELETE, format!("/Groups/{gid}")),
    ] {
        app.call(m, OTHER, &path, None)
            .await
            .assert_error(404, None);
    }
    let patch = patch_ops(json!([{"op": "replace", "path": "displayName", "value": "hijack"}]));
    app.call(Method::PATCH, OTHER, &format!("/Users/{uid}"), Some(&patch))
        .await
        .assert_error(404, None);
    app.call(
        Method::PATCH,
        OTHER,
        &format!("/Groups/{gid}"),
        Some(&patch),
    )
    .await
    .assert_error(404, None);
    app.call(
        Method::PUT,
        OTHER,
        &format!("/Users/{uid}"),
        Some(&json!({"schemas": [USER_SCHEMA], "userName": "hijack"})),
    )
    .await
    .assert_error(404, None);
    // Lists and filters see only their own tenant.
    let r = app.list(OTHER, "/Users", &[]).await;
    assert_eq!(r.assert_status(200).total(), 0);
    let f = format!("id eq \"{uid}\"");
    assert_eq!(
        app.list(OTHER, "/Users", &[("filter", f.as_str())])
            .await
            .total(),
        0
    );
    let f = format!("members[value eq \"{uid}\"]");
    assert_eq!(
        app.list(OTHER, "/Groups", &[("filter", f.as_str())])
            .await
            .total(),
        0
    );
    // And acme is untouched.
    let r = app.get(&format!("/Users/{uid}")).await;
    assert_eq!(r.assert_status(200).body["userName"], "iso@acme.example");
    assert_eq!(app.member_ids(&gid).await, vec![uid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_user_name() {
    let app = TestApp::start().await;
    for round in 0..5 {
        let body =
            json!({"schemas": [USER_SCHEMA], "userName": format!("race{round}@acme.example")});
        let upper =
            json!({"schemas": [USER_SCHEMA], "userName": format!("RACE{round}@acme.example")});
        let (a, b) = tokio::join!(app.post("/Users", &body), app.post("/Users", &upper));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "{} / {}", a.text, b.text);
        let loser = if a.status == 409 { &a } else { &b };
        loser.assert_error(409, Some("uniqueness"));
        let f = format!("userName eq \"race{round}@acme.example\"");
        assert_eq!(
            app.list(ACME, "/Users", &[("filter", f.as_str())])
                .await
                .total(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_member_adds_all_land() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(app.user(&format!("c{i:02}")).await);
    }
    let gid = app.group("Concurrent", &[]).await;
    let path = format!("/Groups/{gid}");
    let futures = ids.chunks(4).map(|chunk| {
        let value: Vec<_> = chunk.iter().map(|i| json!({"value": i})).collect();
        let body = patch_ops(json!([{"op": "Add", "path": "members", "value": value}]));
        let app = &app;
        let path = path.clone();
        async move { app.patch(&path, &body).await }
    });
    let results = futures_util::future::join_all(futures).await;
    for r in &results {
        r.assert_status(204);
    }
    let mut want = ids.clone();
    want.sort();
    assert_eq!(app.member_ids(&gid).await, want);
    // Concurrent PATCHes to one user's different attributes: both land too.
    let u = &ids[0];
    let p = format!("/Users/{u}");
    let title = patch_ops(json!([{"op": "replace", "path": "title", "value": "T"}]));
    let nick = patch_ops(json!([{"op": "replace", "path": "nickName", "value": "N"}]));
    let (a, b) = tokio::join!(app.patch(&p, &title), app.patch(&p, &nick));
    a.assert_status(200);
    b.assert_status(200);
    let r = app.get(&p).await;
    assert_eq!(
        (&r.body["title"], &r.body["nickName"]),
        (&json!("T"), &json!("N"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_of_one_user_queue_and_all_land() {
    let app = TestApp::start().await;
    let uid = app.user("queued@acme.example").await;
    let path = format!("/Users/{uid}");
    let futures = (0..50).map(|i| {
        let body = patch_ops(json!([{
            "op": "add", "path": "emails",
            "value": [{"value": format!("q{i:02}@acme.example"), "type": "other"}]
        }]));
        let (app, path) = (&app, path.clone());
        async move { app.patch(&path, &body).await }
    });
    let results = futures_util::future::join_all(futures).await;
    for r in &results {
        r.assert_status(200);
    }
    let r = app.get(&path).await;
    assert_eq!(
        r.body["emails"].as_array().map(Vec::len),
        Some(50),
        "{}",
        r.text
    );
    assert!(app.state.writes.is_empty(), "no turn is left behind");

    // With If-Match, exactly one of those naming the same version wins; the others are 412.
    let version = r.header("etag").unwrap().to_string();
    let futures = (0..20).map(|i| {
        let body = patch_ops(json!([{"op": "replace", "path": "title", "value": format!("T{i}")}]));
        let (app, path, version) = (&app, path.clone(), version.clone());
        async move {
            app.send(
                app.request(Method::PATCH, ACME, &path)
                    .header("if-match", version)
                    .header("content-type", "application/scim+json")
                    .body(body.to_string()),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(futures).await;
    let won = results.iter().filter(|r| r.status == 200).count();
    let refused = results.iter().filter(|r| r.status == 412).count();
    assert_eq!((won, refused), (1, 19));
}

/// A PATCH of a large user is planned off the async worker on the server's multi-threaded
/// runtime (block_in_place): it succeeds, and the other tenant is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_user_is_patched_off_the_worker() {
    let app = TestApp::start().await;
    let id = app.user("big@acme.example").await;
    let emails = |from: usize| {
        json!([{"op": "add", "path": "emails", "value":
            (from..from + 800)
                .map(|i| json!({"value": format!("address-{i:05}@example.com"), "type": "work"}))
                .collect::<Vec<_>>()}])
    };
    // Each PATCH stays under the test server's 64 KiB body; together they pass 64 KiB.
    for from in [0, 800, 1600] {
        let (path, body) = (format!("/Users/{id}"), patch_ops(emails(from)));
        let (patched, other) =
            tokio::join!(app.patch(&path, &body), app.list(OTHER, "/Users", &[]));
        patched.assert_status(200);
        other.assert_status(200);
    }
    let user = app.get(&format!("/Users/{id}")).await;
    assert_eq!(user.body["emails"].as_array().unwrap().len(), 2400);
    assert!(user.text.len() > 64 * 1024, "{}", user.text.len());
}
