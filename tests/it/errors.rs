//! Every error is a SCIM error document with application/scim+json.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn authentication_and_tenants() {
    let app = TestApp::start().await;
    let url = app.url(ACME, "/Users");
    // Missing, wrong, and another tenant's token: 401 with WWW-Authenticate.
    for auth in [
        None,
        Some("Bearer wrong-token-0000000000"),
        Some(&*format!("Bearer {OTHER_TOKEN}")),
        Some(&*format!("Basic {ACME_TOKEN}")),
    ] {
        let mut rb = app.client.get(&url);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = app.send(rb).await;
        r.assert_error(401, None);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{auth:?}");
    }
    // The scheme is case-insensitive.
    let r = app
        .send(
            app.client
                .get(&url)
                .header("authorization", format!("bearer {ACME_TOKEN}")),
        )
        .await;
    r.assert_status(200);
    // An unauthorised write does nothing.
    let r = app
        .send(
            app.client
                .post(&url)
                .bearer_auth(OTHER_TOKEN)
                .header("content-type", "application/scim+json")
                .body(json!({"userName": "intruder"}).to_string()),
        )
        .await;
    r.assert_error(401, None);
    assert_eq!(app.list(ACME, "/Users", &[]).await.total(), 0);
    // Unknown tenant: the very answer a wrong token gets, so tenant names cannot be probed.
    let unknown = app
        .send(
            app.client
                .get(app.url("nosuch", "/Users"))
                .bearer_auth(ACME_TOKEN),
        )
        .await;
    unknown.assert_error(401, None);
    let wrong = app
        .send(app.client.get(app.url(ACME, "/Users")).bearer_auth("wrong"))
        .await;
    assert_eq!(unknown.text, wrong.text);
    let headers = |r: &Resp| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(headers(&unknown), headers(&wrong));
    // Unknown routes: 404.
    for path in [
        "/scim-api/v1/acme/scim/Nope",
        "/nope",
        "/scim-api/v2/acme/scim/Users",
    ] {
        let r = app
            .send(
                app.client
                    .get(format!("http://{}{path}", app.addr))
                    .bearer_auth(ACME_TOKEN),
            )
            .await;
        r.assert_error(404, None);
    }
    // The health check needs no token.
    let r = app
        .send(app.client.get(format!("http://{}/healthz", app.addr)))
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "ok"));
}

#[tokio::test]
async fn discovery_writes_are_405() {
    let app = TestApp::start().await;
    for (m, path) in [
        (Method::POST, "/ServiceProviderConfig"),
        (Method::PUT, "/ServiceProviderConfig"),
        (Method::DELETE, "/Schemas"),
        (Method::POST, "/ResourceTypes"),
        (Method::PATCH, "/ResourceTypes/User"),
        (Method::PUT, "/Users"),
        (Method::DELETE, "/Groups"),
    ] {
        let r = app
            .send(
                app.request(m.clone(), ACME, path)
                    .header("content-type", "application/scim+json")
                    .body("{}"),
            )
            .await;
        r.assert_error(405, None);
    }
    // Searching several resource types at once.
    let r = app.post("/.search", &json!({"filter": "id pr"})).await;
    r.assert_error(501, None);
}

#[tokio::test]
async fn bodies_size_type_and_syntax() {
    let app = TestApp::start().await;
    let big = format!(
        "{{\"schemas\":[\"{USER_SCHEMA}\"],\"userName\":\"big\",\"title\":\"{}\"}}",
        "x".repeat(MAX_BODY)
    );
    // With Content-Length.
    let r = app
        .send(
            app.request(Method::POST, ACME, "/Users")
                .header("content-type", "application/scim+json")
                .body(big.clone()),
        )
        .await;
    r.assert_error(413, None);
    // Without Content-Length: chunked.
    let chunk_a = &big[..MAX_BODY / 2];
    let chunk_b = &big[MAX_BODY / 2..];
    let req = format!(
        "POST /scim-api/v1/acme/scim/Users HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ACME_TOKEN}\r\nContent-Type: application/scim+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk_a}\r\n{:x}\r\n{chunk_b}\r\n0\r\n\r\n",
        app.addr,
        chunk_a.len(),
        chunk_b.len()
    );
    let (status, head, body) = raw_http(app.addr, req.as_bytes()).await;
    assert_eq!(status, 413, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/scim+json"),
        "{head}"
    );
    assert!(
        body.contains(ERROR_SCHEMA) && body.contains("\"413\""),
        "{body}"
    );
    // A small chunked body is fine.
    let small = json!({"schemas": [USER_SCHEMA], "userName": "chunked"}).to_string();
    let req = format!(
        "POST /scim-api/v1/acme/scim/Users HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ACME_TOKEN}\r\nContent-Type: application/scim+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
        app.addr,
        small.len()
    );
    let (status, head, _) = raw_http(app.addr, req.as_bytes()).await;
    assert_eq!(status, 201, "{head}");
    // Nothing of the big one was stored.
    let r = app.list(ACME, "/Users", &[]).await;
    assert_eq!(r.total(), 1);

    // 415: another media type; application/json with charset is fine.
    for ct in [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
    ] {
        let r = app
            .send(
                app.request(Method::POST, ACME, "/Users")
                    .header("content-type", ct)
                    .body(json!({"userName": "t"}).to_string()),
            )
            .await;
        r.assert_error(415, None);
    }
    let r = app
        .send(
            app.request(Method::POST, ACME, "/Users")
                .header("content-type", "application/json; charset=utf-8")
                .body(json!({"userName": "json-ok"}).to_string()),
        )
        .await;
    r.assert_status(201);

    // Malformed JSON and wrong shapes: 400.
    for body in ["{\"userName\": ", "not json", ""] {
        let r = app
            .send(
                app.request(Method::POST, ACME, "/Users")
                    .header("content-type", "application/scim+json")
                    .body(body),
            )
            .await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.text);
        r.assert_error(400, Some("invalidSyntax"));
    }
    let r = app
        .post("/Users", &json!({"userName": "x", "nosuchattr": 1}))
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert!(r.body["detail"].as_str().unwrap().contains("nosuchattr"));
    let r = app
        .post("/Users", &json!({"displayName": "no username"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = app
        .post("/Users", &json!({"userName": "x", "active": "maybe"}))
        .await;
    r.assert_error(400, Some("invalidValue"));
    let id = app.user("p@x").await;
    let r = app
        .patch(&format!("/Users/{id}"), &json!({"Operations": "nope"}))
        .await;
    r.assert_error(400, Some("invalidSyntax"));
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "frob", "path": "title", "value": "x"}])),
        )
        .await;
    r.assert_error(400, Some("invalidSyntax"));
}

#[tokio::test]
async fn uniqueness_is_409() {
    let app = TestApp::start().await;
    app.user("Dup@Acme.example").await;
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": "dup@ACME.EXAMPLE"}),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    // Renaming onto a taken userName, by PATCH and by PUT.
    let other = app.user("free@acme.example").await;
    let r = app
        .patch(
            &format!("/Users/{other}"),
            &patch_ops(json!([{"op": "Replace", "path": "userName", "value": "DUP@acme.example"}])),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    let r = app
        .put(
            &format!("/Users/{other}"),
            &json!({"schemas": [USER_SCHEMA], "userName": "dup@acme.example"}),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    assert_eq!(
        app.get(&format!("/Users/{other}")).await.body["userName"],
        "free@acme.example"
    );
    // The same userName in another tenant is fine.
    let r = app
        .call(
            Method::POST,
            OTHER,
            "/Users",
            Some(&json!({"schemas": [USER_SCHEMA], "userName": "dup@acme.example"})),
        )
        .await;
    r.assert_status(201);
    // Groups: displayName, case-insensitive.
    app.group("Admins", &[]).await;
    let r = app
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "ADMINS"}),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    let g = app.group("Users", &[]).await;
    let r = app
        .patch(
            &format!("/Groups/{g}?attributes=displayName"),
            &patch_ops(json!([{"op": "Replace", "path": "displayName", "value": "admins"}])),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
}

#[tokio::test]
async fn request_ids_are_honoured_or_generated() {
    let app = TestApp::start().await;
    let r = app
        .send(
            app.request(Method::GET, ACME, "/Users")
                .header("x-request-id", "entra-req-42"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("entra-req-42"));
    // Also on errors.
    let r = app
        .send(
            app.client
                .get(app.url(ACME, "/Users"))
                .header("x-request-id", "abc-401"),
        )
        .await;
    r.assert_error(401, None);
    assert_eq!(r.header("x-request-id"), Some("abc-401"));
    // Generated when absent or not sane, and different each time.
    let a = app.get("/Users").await;
    let b = app
        .send(
            app.request(Method::GET, ACME, "/Users")
                .header("x-request-id", "bad id with spaces"),
        )
        .await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert!(!a.is_empty() && !b.is_empty());
    assert_ne!(a, b);
    assert_ne!(b, "bad id with spaces");
}
