//! The admin API: auth and roles, tenants with counts, staged users and groups, and the
//! provisioning log of SCIM requests.

use chrono::Duration;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Every admin endpoint, as (method, path) with acme's resources filled in.
fn endpoints(user: &str) -> Vec<(Method, String)> {
    vec![
        (Method::GET, "/tenants".into()),
        (Method::GET, format!("/tenants/{ACME}")),
        (Method::GET, format!("/tenants/{ACME}/users")),
        (Method::GET, format!("/tenants/{ACME}/users/{user}")),
        (Method::GET, format!("/tenants/{ACME}/groups")),
        (Method::GET, format!("/tenants/{ACME}/requests")),
        (Method::POST, "/provisioning-log/prune".into()),
    ]
}

#[tokio::test]
async fn every_endpoint_needs_an_admin_token_and_operations_need_an_operator() {
    let app = TestApp::start().await;
    let user = app.user("ann@example.com").await;
    for (method, path) in endpoints(&user) {
        let what = format!("{method} {path}");
        // No token, a SCIM tenant token, an unknown token: 401 problem with a challenge.
        for token in [None, Some(ACME_TOKEN), Some("not-a-configured-token-000")] {
            let r = app
                .send(app.admin_request(method.clone(), &path, token))
                .await;
            r.assert_problem(401);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
            assert!(
                r.body["detail"].as_str().unwrap().contains("admin"),
                "{what}: {}",
                r.text
            );
        }
        let reader = app
            .send(app.admin_request(method.clone(), &path, Some(READER_TOKEN)))
            .await;
        let operator = app
            .send(app.admin_request(method.clone(), &path, Some(OPERATOR_TOKEN)))
            .await;
        if method == Method::GET {
            reader.assert_status(200);
            operator.assert_status(200);
            assert_eq!(
                reader.header("content-type"),
                Some("application/json; charset=utf-8"),
                "{what}"
            );
        } else {
            reader.assert_problem(403);
            assert!(
                reader.body["detail"].as_str().unwrap().contains("operator"),
                "{}",
                reader.text
            );
            operator.assert_status(200);
        }
    }
    // A tenant token does not become an admin token on the SCIM side either: admin tokens
    // are not SCIM tokens.
    app.send(
        app.client
            .get(app.url(ACME, "/Users"))
            .bearer_auth(READER_TOKEN),
    )
    .await
    .assert_error(401, None);
}

#[tokio::test]
async fn unknown_tenants_users_and_endpoints_are_problems() {
    let app = TestApp::start().await;
    for path in [
        "/tenants/nope",
        "/tenants/nope/users",
        "/tenants/nope/groups",
        "/tenants/nope/requests",
        "/tenants/acme/users/00000000-0000-0000-0000-000000000000",
        "/no-such-endpoint",
    ] {
        let r = app.admin_get(path, &[]).await;
        r.assert_problem(404);
    }
    let r = app.admin_get("/tenants/nope", &[]).await;
    assert!(r.body["detail"].as_str().unwrap().contains("nope"));
    // Malformed parameters: 400 problems naming the parameter.
    for (path, query) in [
        ("/tenants", ("limit", "0")),
        ("/tenants", ("limit", "many")),
        ("/tenants", ("offset", "-1")),
        ("/tenants/acme/users", ("filter", "userName eq")),
        (
            "/tenants/acme/users",
            ("filter", "nosuchattribute eq \"x\""),
        ),
        ("/tenants/acme/requests", ("status", "4x")),
        ("/tenants/acme/requests", ("since", "yesterday")),
    ] {
        let r = app.admin_get(path, &[query]).await;
        r.assert_problem(400);
    }
}

#[tokio::test]
async fn tenants_list_with_counts_and_pages() {
    let app = TestApp::start().await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    let _cy = app.user("cy@example.com").await;
    app.patch(
        &format!("/Users/{bob}"),
        &patch_ops(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await
    .assert_status(200);
    app.group("Sales", &[&ann, &bob]).await;
    app.group("Empty", &[]).await;

    let r = app.admin_get("/tenants", &[]).await;
    r.assert_status(200);
    assert_eq!(r.body["total"], 2);
    let acme = &r.body["items"][0];
    assert_eq!(acme["name"], ACME);
    assert_eq!(
        (
            &acme["activeUsers"],
            &acme["inactiveUsers"],
            &acme["groups"],
            &acme["memberships"]
        ),
        (&json!(2), &json!(1), &json!(2), &json!(2)),
        "{}",
        r.text
    );
    assert_eq!(acme["mapping"], Value::Null);
    let other = &r.body["items"][1];
    assert_eq!(
        (&other["name"], &other["activeUsers"]),
        (&json!(OTHER), &json!(0))
    );

    let r = app
        .admin_get("/tenants", &[("limit", "1"), ("offset", "1")])
        .await;
    assert_eq!(
        (&r.body["total"], &r.body["limit"], &r.body["offset"]),
        (&json!(2), &json!(1), &json!(1))
    );
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [OTHER]);
    let r = app.admin_get("/tenants", &[("offset", "5")]).await;
    assert_eq!(
        (
            r.body["total"].as_i64(),
            r.body["items"].as_array().map(Vec::len)
        ),
        (Some(2), Some(0))
    );

    let r = app.admin_get(&format!("/tenants/{ACME}"), &[]).await;
    r.assert_status(200);
    assert_eq!(r.body["activeUsers"], 2);
    assert_eq!(r.body["memberships"], 2);
}

#[tokio::test]
async fn staged_users_filter_page_and_detail() {
    let app = TestApp::start().await;
    let mut ids = vec![];
    for name in ["amy", "anna", "bert", "bob", "carl"] {
        let b = app
            .create_user(json!({
                "schemas": [USER_SCHEMA],
                "userName": format!("{name}@example.com"),
                "displayName": name.to_uppercase(),
                "externalId": format!("ext-{name}"),
                "active": name != "bob",
            }))
            .await;
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let users = format!("/tenants/{ACME}/users");
    let r = app.admin_get(&users, &[]).await;
    assert_eq!(r.body["total"], 5);
    assert_eq!(r.body["items"][0]["userName"], "amy@example.com");
    assert_eq!(r.body["items"][0]["externalId"], "ext-amy");
    assert_eq!(r.body["items"][0]["displayName"], "AMY");
    assert_eq!(r.body["items"][0]["id"], ids[0].as_str());

    let names = |r: &Resp| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["userName"].as_str().unwrap().to_string())
            .collect()
    };
    let r = app
        .admin_get(&users, &[("filter", "userName sw \"a\"")])
        .await;
    assert_eq!(names(&r), ["amy@example.com", "anna@example.com"]);
    assert_eq!(r.body["total"], 2);
    let r = app
        .admin_get(&users, &[("filter", "active eq false")])
        .await;
    assert_eq!(names(&r), ["bob@example.com"]);
    assert_eq!(r.body["items"][0]["active"], false);
    // Paging: limit and offset over a filtered list; total stays the number of matches.
    let r = app
        .admin_get(
            &users,
            &[
                ("filter", "active eq true"),
                ("limit", "2"),
                ("offset", "1"),
            ],
        )
        .await;
    assert_eq!(names(&r), ["anna@example.com", "bert@example.com"]);
    assert_eq!((&r.body["total"], &r.body["limit"]), (&json!(4), &json!(2)));
    // A limit above the server's maximum is capped.
    let r = app.admin_get(&users, &[("limit", "1000")]).await;
    assert_eq!(r.body["limit"], MAX_PAGE);
    // The other tenant sees none of them.
    let r = app.admin_get(&format!("/tenants/{OTHER}/users"), &[]).await;
    assert_eq!(r.body["total"], 0);

    // One user with its groups and document.
    let sales = app.group("Sales", &[&ids[0]]).await;
    let _ops = app.group("Ops", &[&ids[1]]).await;
    let r = app
        .admin_get(&format!("/tenants/{ACME}/users/{}", ids[0]), &[])
        .await;
    r.assert_status(200);
    assert_eq!(r.body["userName"], "amy@example.com");
    assert_eq!(
        r.body["groups"],
        json!([{"id": sales, "displayName": "Sales"}])
    );
    assert_eq!(r.body["document"]["externalId"], "ext-amy");
    assert!(r.body["version"].as_i64().unwrap() >= 1);
    // The user is not visible through the other tenant.
    app.admin_get(&format!("/tenants/{OTHER}/users/{}", ids[0]), &[])
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn staged_groups_with_member_counts() {
    let app = TestApp::start().await;
    let a = app.user("a@example.com").await;
    let b = app.user("b@example.com").await;
    app.group("Sales EU", &[&a, &b]).await;
    app.group("Sales US", &[&a]).await;
    app.group("Ops", &[]).await;
    let groups = format!("/tenants/{ACME}/groups");
    let r = app.admin_get(&groups, &[]).await;
    let got: Vec<(String, i64)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["displayName"].as_str().unwrap().to_string(),
                g["members"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Sales EU".to_string(), 2),
            ("Sales US".to_string(), 1),
            ("Ops".to_string(), 0)
        ]
    );
    let r = app
        .admin_get(
            &groups,
            &[("filter", "displayName sw \"sales\""), ("limit", "1")],
        )
        .await;
    assert_eq!(r.body["total"], 2);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
}

/// The provisioning log entries of acme, newest first.
async fn log(app: &TestApp, query: &[(&str, &str)]) -> Resp {
    app.flush_log().await;
    let r = app
        .admin_get(&format!("/tenants/{ACME}/requests"), query)
        .await;
    r.assert_status(200);
    r
}

fn entries(r: &Resp) -> Vec<(String, String, i64)> {
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn provisioning_log_records_scim_requests_without_personal_data() {
    let app = TestApp::start().await;
    const SECRET_FILTER: &str = "filter-secret@example.com";
    const SECRET_BODY: &str = "Body Secret Displayname";
    let created = app
        .create_user(
            json!({"schemas": [USER_SCHEMA], "userName": "ann@example.com",
                            "displayName": SECRET_BODY}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    app.clock.advance(Duration::seconds(1));
    app.get(&format!("/Users/{id}")).await.assert_status(200);
    app.clock.advance(Duration::seconds(1));
    let missing = "00000000-0000-0000-0000-00000000dead";
    app.get(&format!("/Users/{missing}"))
        .await
        .assert_error(404, None);
    app.clock.advance(Duration::seconds(1));
    app.list(
        ACME,
        "/Users",
        &[("filter", &format!("userName eq \"{SECRET_FILTER}\""))],
    )
    .await
    .assert_status(200);
    app.clock.advance(Duration::seconds(1));
    // A malformed filter whose error message would quote the value.
    app.list(
        ACME,
        "/Users",
        &[("filter", &format!("userName \"{SECRET_FILTER}\""))],
    )
    .await
    .assert_error(400, Some("invalidFilter"));
    app.clock.advance(Duration::seconds(1));
    app.patch(
        &format!("/Users/{id}"),
        &patch_ops(json!([{"op": "replace", "path": "displayName", "value": SECRET_BODY}])),
    )
    .await
    .assert_status(200);
    app.clock.advance(Duration::seconds(1));
    // Wrong token: recorded for the tenant.
    app.send(
        app.client
            .get(app.url(ACME, "/Groups"))
            .bearer_auth(OTHER_TOKEN),
    )
    .await
    .assert_error(401, None);
    // Another tenant's request is not in acme's log; an unknown tenant is in none.
    app.list(OTHER, "/Users", &[]).await.assert_status(200);
    app.send(
        app.client
            .get(format!("http://{}/scim-api/v1/ghost/scim/Users", app.addr)),
    )
    .await
    .assert_error(401, None);

    let r = log(&app, &[]).await;
    assert_eq!(
        entries(&r),
        [
            ("GET".into(), "/Groups".into(), 401),
            ("PATCH".into(), "/Users/{id}".into(), 200),
            ("GET".into(), "/Users".into(), 400),
            ("GET".into(), "/Users".into(), 200),
            ("GET".into(), "/Users/{id}".into(), 404),
            ("GET".into(), "/Users/{id}".into(), 200),
            ("POST".into(), "/Users".into(), 201),
        ],
        "{}",
        r.text
    );
    assert_eq!(r.body["total"], 7);
    let items = r.body["items"].as_array().unwrap();
    // Resource ids: from the path, and from Location for a create.
    assert_eq!(items[6]["resourceId"], id.as_str());
    assert_eq!(items[5]["resourceId"], id.as_str());
    assert_eq!(items[4]["resourceId"], missing);
    assert_eq!(items[3]["resourceId"], Value::Null);
    // Error details from the SCIM error body; none for successes.
    assert!(
        items[4]["error"].as_str().unwrap().contains("not found"),
        "{}",
        r.text
    );
    assert!(
        items[2]["error"].as_str().unwrap().contains("operator"),
        "{}",
        r.text
    );
    assert!(
        items[0]["error"].as_str().unwrap().contains("token"),
        "{}",
        r.text
    );
    assert_eq!(items[5]["error"], Value::Null);
    // Time, request id and duration of each.
    assert_eq!(items[6]["time"], "2026-01-15T09:00:00.000Z");
    assert_eq!(items[5]["time"], "2026-01-15T09:00:01.000Z");
    for e in items {
        assert!(e["requestId"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(e["durationMs"].as_f64().is_some_and(|d| d >= 0.0));
    }
    // Never a filter value or a body, in the answer or in the table.
    assert!(!r.text.contains("filter-secret"), "{}", r.text);
    assert!(!r.text.contains("Body Secret"), "{}", r.text);
    let dump: Vec<String> = app.db().query(
        "SELECT tenant || method || path || coalesce(resource_id, '') || coalesce(error, '') FROM provisioning_log",
        &[],
        |r| r.get(0),
    );
    assert_eq!(dump.len(), 8, "acme's 7 and other's 1: {dump:?}");
    for row in &dump {
        assert!(
            !row.contains("filter-secret") && !row.contains("Body Secret"),
            "{row}"
        );
        assert!(!row.contains('?'), "no query strings: {row}");
    }
}

#[tokio::test]
async fn provisioning_log_filters_by_status_and_time_and_pages() {
    let app = TestApp::start().await;
    let start = start_time();
    // Minute m: one request answered with statuses[m].
    let id = app.user("ann@example.com").await; // 09:00 201
    app.clock.advance(Duration::minutes(1));
    app.get(&format!("/Users/{id}")).await.assert_status(200); // 09:01
    app.clock.advance(Duration::minutes(1));
    app.get("/Users/nope").await.assert_status(404); // 09:02
    app.clock.advance(Duration::minutes(1));
    app.post(
        "/Users",
        &json!({"schemas": [USER_SCHEMA], "userName": "ann@example.com"}),
    )
    .await
    .assert_status(409); // 09:03
    app.clock.advance(Duration::minutes(1));
    app.get("/Groups/nope").await.assert_status(404); // 09:04

    let statuses = |r: &Resp| -> Vec<i64> { entries(r).into_iter().map(|e| e.2).collect() };
    assert_eq!(statuses(&log(&app, &[]).await), [404, 409, 404, 200, 201]);
    assert_eq!(statuses(&log(&app, &[("status", "404")]).await), [404, 404]);
    assert_eq!(
        statuses(&log(&app, &[("status", "4xx")]).await),
        [404, 409, 404]
    );
    assert_eq!(statuses(&log(&app, &[("status", "2XX")]).await), [200, 201]);
    assert_eq!(
        statuses(&log(&app, &[("status", "5xx")]).await),
        Vec::<i64>::new()
    );
    let at = |m: i64| (start + Duration::minutes(m)).to_rfc3339();
    let r = log(&app, &[("since", &at(1)), ("until", &at(3))]).await;
    assert_eq!(statuses(&r), [404, 200], "since inclusive, until exclusive");
    let r = log(&app, &[("status", "4xx"), ("since", &at(3))]).await;
    assert_eq!(statuses(&r), [404, 409]);
    // Pages of two, newest first, with the total.
    let r = log(&app, &[("limit", "2"), ("offset", "2")]).await;
    assert_eq!(statuses(&r), [404, 200]);
    assert_eq!(
        (&r.body["total"], &r.body["offset"]),
        (&json!(5), &json!(2))
    );
}

#[tokio::test]
async fn provisioning_log_is_pruned_after_its_retention() {
    let app = TestApp::start().await;
    app.user("ann@example.com").await;
    app.clock.advance(Duration::days(10));
    app.user("bob@example.com").await;
    app.flush_log().await;
    let prune = || {
        app.send(app.admin_request(
            Method::POST,
            "/provisioning-log/prune",
            Some(OPERATOR_TOKEN),
        ))
    };
    let r = prune().await;
    r.assert_status(200);
    assert_eq!(r.body["deleted"], 0, "both are within 14 days");
    app.clock.advance(Duration::days(5)); // the first is 15 days old, the second 5
    let r = prune().await;
    assert_eq!(r.body["deleted"], 1);
    assert_eq!(r.body["before"], "2026-01-16T09:00:00.000Z");
    let r = log(&app, &[]).await;
    assert_eq!(r.body["total"], 1);
}

#[tokio::test]
async fn provisioning_log_is_written_at_shutdown() {
    let mut app = TestApp::start().await;
    for i in 0..20 {
        app.user(&format!("u{i}@example.com")).await;
    }
    // No flush: stopping the server must write what is still queued (the writer would
    // otherwise hold it for a while to batch it with more).
    app.stop().await;
    let n = app.db().scalar(
        "SELECT count(*) FROM provisioning_log WHERE status = 201",
        &[],
    );
    assert_eq!(n, 20);
}

/// Send `head` on a fresh connection and read the answer's status line and body.
async fn raw_answer(app: &TestApp, head: &str, then: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(then).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&got).contains("\"status\"") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_write_is_refused_by_role_before_its_body_is_read() {
    let app = TestApp::start().await;
    // 200 MB announced, none sent: the answer comes without waiting for it.
    let head = |token: &str| {
        format!(
            "POST /admin/v1/tenants/{ACME}/runs HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: 200000000\r\n\r\n"
        )
    };
    let answer = raw_answer(&app, &head(READER_TOKEN), b"").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    let answer = raw_answer(&app, &head("not-a-token"), b"").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // An operator's is refused by its size, also before reading it.
    let answer = raw_answer(&app, &head(OPERATOR_TOKEN), b"").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test]
async fn an_oversize_admin_body_is_413_whatever_its_framing() {
    let app = TestApp::start().await;
    let r = app
        .send(
            app.admin_request(
                Method::POST,
                &format!("/tenants/{ACME}/runs"),
                Some(OPERATOR_TOKEN),
            )
            .header("content-type", "application/json")
            .body(vec![b' '; 300 * 1024]),
        )
        .await;
    r.assert_problem(413);
    // Chunked, without a length: counted as it is read.
    let head = format!(
        "POST /admin/v1/tenants/{ACME}/runs HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut chunks = Vec::new();
    for _ in 0..40 {
        chunks.extend_from_slice(b"2000\r\n");
        chunks.extend_from_slice(&[b' '; 0x2000]);
        chunks.extend_from_slice(b"\r\n");
    }
    chunks.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_answer(&app, &head, &chunks).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn an_admin_error_never_echoes_the_body() {
    let app = TestApp::start().await;
    let r = app
        .send(
            app.admin_request(
                Method::POST,
                &format!("/tenants/{ACME}/runs"),
                Some(OPERATOR_TOKEN),
            )
            .header("content-type", "application/json")
            .body(r#"{"dryRun": "ann.secret@example.com"}"#),
        )
        .await;
    r.assert_problem(400);
    assert!(!r.text.contains("ann.secret"), "{}", r.text);
}
