//! The admin API's answers about users, each one call: a user's story (by id, userName or
//! externalId), what is failing now, and the provisioning log's filters; unknown query
//! parameters are refused.

use chrono::Duration;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// The application refuses to insert this user (a trigger), so its sync fails every run.
const BAD: &str = "bad@example.com";

async fn failing_app() -> TestApp {
    let app = TestApp::start_syncing("quarantine_after = 2\n").await;
    Sql(app.dir().join("app.db")).exec(
        &format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON scifeon_users WHEN NEW.UserName = '{BAD}' \
             BEGIN SELECT RAISE(ABORT, 'refused by the application'); END"
        ),
        &[],
    );
    app
}

async fn story(app: &TestApp, query: &[(&str, &str)]) -> Resp {
    app.admin_get(&format!("/tenants/{ACME}/story"), query)
        .await
}

fn outcomes(story: &Value) -> Vec<String> {
    story["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"]["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn requests(v: &Value) -> Vec<(String, u64)> {
    let list = v
        .get("requests")
        .or_else(|| v.get("items"))
        .and_then(Value::as_array)
        .unwrap();
    list.iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_users_story_says_why_it_failed_in_one_call() {
    let app = failing_app().await;
    let ann = app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let bad = app.scifeon_user(BAD, "Bad", &[]).await;
    // A second create of ann is refused: no resource, but the log knows whom it named. (A
    // second later: the log is newest first by arrival.)
    app.clock.advance(chrono::Duration::seconds(1));
    app.post(
        "/Users",
        &json!({"schemas": [USER_SCHEMA], "userName": "Ann@Example.com"}),
    )
    .await
    .assert_error(409, Some("uniqueness"));
    let run = app.sync_now().await;
    assert_eq!(run["status"], "completed_with_errors", "{run}");
    app.flush_log().await;

    // The failing user, by userName (any case): why, since when, which run, which requests.
    let r = story(&app, &[("userName", "BAD@example.com")]).await;
    r.assert_status(200);
    let s = &r.body;
    assert_eq!(s["userId"], json!(bad), "{s}");
    assert_eq!(s["staged"]["userName"], BAD);
    assert_eq!(s["application"], Value::Null);
    assert_eq!(s["failing"]["attempts"], 1);
    assert_eq!(s["failing"]["quarantined"], false);
    let headline = s["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("Failing since") && headline.contains("refused by the application"),
        "{headline}"
    );
    assert_eq!(outcomes(s), ["failed"]);
    assert_eq!(s["items"][0]["runId"], run["id"]);
    assert_eq!(s["lastOutcome"]["item"]["outcome"], "failed");
    assert_eq!(requests(s), [("POST".to_string(), 201)]);
    assert_eq!(s["requests"][0]["resourceId"], json!(bad));

    // A synced user, by id: its application row, and both its requests (the refused one too).
    let r = story(&app, &[("userId", &ann)]).await;
    r.assert_status(200);
    let s = &r.body;
    assert_eq!(s["application"]["appKey"], "ann@example.com", "{s}");
    assert_eq!(s["lastOutcome"]["item"]["outcome"], "created");
    assert!(
        s["headline"]
            .as_str()
            .unwrap()
            .starts_with("In the application as ann@example.com (active)"),
        "{s}"
    );
    assert_eq!(s["requestsTotal"], 2, "{s}");
    assert_eq!(
        requests(s),
        [("POST".to_string(), 409), ("POST".to_string(), 201)]
    );
    assert_eq!(s["requests"][0]["resourceId"], Value::Null);
    assert_eq!(s["requests"][0]["userName"], "ann@example.com");

    // Never staged: a create the server refused, found by the userName it carried.
    app.post(
        "/Users",
        &json!({"schemas": [USER_SCHEMA], "userName": "ghost@example.com", "externalId": "g-1",
                "name": {"nickname": "G"}}),
    )
    .await
    .assert_error(400, Some("invalidValue"));
    app.flush_log().await;
    for q in [("userName", "ghost@example.com"), ("externalId", "g-1")] {
        let r = story(&app, &[q]).await;
        r.assert_status(200);
        assert_eq!(r.body["userId"], Value::Null);
        assert_eq!(r.body["staged"], Value::Null);
        let headline = r.body["headline"].as_str().unwrap();
        assert!(
            headline.starts_with(
                "Never staged: the last request about it, POST /Users, was answered 400"
            ),
            "{headline}"
        );
        assert_eq!(r.body["requests"][0]["externalId"], "g-1");
    }
    // Nobody: 404; the question must name exactly one user.
    story(&app, &[("userName", "nobody@example.com")])
        .await
        .assert_problem(404);
    story(&app, &[]).await.assert_problem(400);
    story(&app, &[("userId", &ann), ("userName", "ann@example.com")])
        .await
        .assert_problem(400);

    // Failing now: the failing user with its reason and the way to its story.
    let failing = "/failing";
    let r = app.admin_get(failing, &[]).await;
    r.assert_status(200);
    assert_eq!(r.body["total"], 1, "{}", r.text);
    let f = &r.body["items"][0];
    assert_eq!(
        (f["userId"].as_str(), f["attempts"].as_i64()),
        (Some(bad.as_str()), Some(1))
    );
    assert!(f["lastError"].as_str().unwrap().contains("refused"));
    let link = f["userStory"].as_str().unwrap().to_string();
    assert_eq!(link, format!("/admin/v1/tenants/{ACME}/story?userId={bad}"));
    let followed = app
        .send(
            app.client
                .get(format!("http://{}{link}", app.addr))
                .bearer_auth(READER_TOKEN),
        )
        .await;
    assert_eq!(followed.body["userId"], json!(bad));
    assert_eq!(r.body["items"][0]["tenant"], ACME);
    // One tenant's: the same; a tenant that does not sync: 404.
    let r = app.admin_get(failing, &[("tenant", ACME)]).await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    app.admin_get(failing, &[("tenant", OTHER)])
        .await
        .assert_problem(404);
    assert_eq!(
        app.admin_get(failing, &[("quarantined", "true")])
            .await
            .body["total"],
        0
    );
    // A second failure quarantines it: listed as such, and the story says so.
    app.sync_now().await;
    let r = app.admin_get(failing, &[("quarantined", "true")]).await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    assert_eq!(r.body["items"][0]["quarantined"], true);
    let s = story(&app, &[("userId", &bad)]).await.body;
    assert!(
        s["headline"]
            .as_str()
            .unwrap()
            .starts_with("Quarantined since"),
        "{s}"
    );
    assert_eq!(outcomes(&s), ["failed", "failed"]);
    // A misspelt parameter is refused, never ignored.
    let r = app.admin_get(failing, &[("quarantine", "true")]).await;
    r.assert_problem(400);
    assert!(
        r.body["detail"].as_str().unwrap().contains("`quarantine`"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn a_users_story_follows_its_offboarding() {
    let app = TestApp::start_syncing("").await;
    let ann = app.scifeon_user("ann@example.com", "Ann", &[]).await;
    app.sync_now().await;
    app.patch(
        &format!("/Users/{ann}"),
        &patch_ops(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await
    .assert_status(200);
    app.sync_now().await;
    app.flush_log().await;
    let s = story(&app, &[("userName", "ann@example.com")]).await.body;
    assert_eq!(s["offboarding"]["state"], "inactive", "{s}");
    assert_eq!(s["offboarding"]["due"], false);
    assert_eq!(s["offboarding"]["dueAt"], "2026-01-17T09:00:00.000Z");
    assert_eq!(s["application"]["state"], "deactivated");
    assert!(
        s["headline"]
            .as_str()
            .unwrap()
            .contains("offboarded when its retention ends")
    );
    assert_eq!(outcomes(&s), ["deactivated", "created"]);
    assert_eq!(
        requests(&s),
        [("PATCH".to_string(), 200), ("POST".to_string(), 201)]
    );

    app.clock.advance(Duration::hours(49));
    let s = story(&app, &[("userId", &ann)]).await.body;
    assert_eq!(s["offboarding"]["due"], true, "{s}");
    assert!(
        s["headline"].as_str().unwrap().contains("retention ended"),
        "{s}"
    );
    // Offboarded: purged from staging, its story still told by the ledger and the log.
    app.sync_now().await;
    let s = story(&app, &[("userId", &ann)]).await.body;
    assert_eq!(s["staged"], Value::Null, "{s}");
    assert_eq!(s["application"], Value::Null);
    assert_eq!(s["offboarding"], Value::Null);
    assert_eq!(outcomes(&s)[0], "offboarded");
    // The offboarding's item says what it did and what the row held before.
    let offboarded = &s["items"][0]["item"];
    assert_eq!(offboarded["action"], "delete", "{s}");
    assert_eq!(
        offboarded["changes"]["FirstName"],
        json!({"before": "Ann", "after": null})
    );
    assert_eq!(s["items"][1]["item"]["action"], Value::Null);
    let headline = s["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("Not staged any more") && headline.contains("offboarded (delete)"),
        "{s}"
    );
}

#[tokio::test]
async fn the_provisioning_log_filters_by_user_method_and_request() {
    let app = TestApp::start().await;
    // The log is newest first by arrival time: each request arrives a second after the last
    // (entries are written in another order: a write's with its write, the others queued).
    let tick = || app.clock.advance(chrono::Duration::seconds(1));
    let create = |name: &str, external: &str| json!({"schemas": [USER_SCHEMA], "userName": name, "externalId": external});
    let ann = app.create_user(create("Ann@Example.com", "x-ann")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    tick();
    app.create_user(create("bob@example.com", "x-bob")).await;
    tick();
    app.post("/Users", &create("ann@example.com", "x-other"))
        .await
        .assert_status(409);
    tick();
    let r = app
        .send(
            app.request(Method::PATCH, ACME, &format!("/Users/{ann}"))
                .header("content-type", "application/scim+json")
                .header("x-request-id", "req-ann-patch")
                .body(
                    patch_ops(json!([{"op": "replace", "path": "displayName", "value": "A"}]))
                        .to_string(),
                ),
        )
        .await;
    r.assert_status(200);
    tick();
    app.get(&format!("/Users/{ann}")).await.assert_status(200);
    app.flush_log().await;
    let log = format!("/tenants/{ACME}/requests");
    let get = |q: Vec<(&'static str, String)>| {
        let (app, log) = (&app, &log);
        async move {
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.admin_get(log, &q).await
        }
    };
    // By userName (any case): the requests by its id and the refused create that named it.
    let r = get(vec![("userName", "ANN@example.com".into())]).await;
    r.assert_status(200);
    assert_eq!(
        requests(&r.body),
        [
            ("GET".to_string(), 200),
            ("PATCH".to_string(), 200),
            ("POST".to_string(), 409),
            ("POST".to_string(), 201)
        ],
        "{}",
        r.text
    );
    let refused = &r.body["items"][2];
    assert_eq!(refused["userName"], "ann@example.com");
    assert_eq!(refused["externalId"], "x-other");
    assert_eq!(
        refused["userStory"],
        format!("/admin/v1/tenants/{ACME}/story?userName=ann%40example.com")
    );
    assert_eq!(
        r.body["items"][0]["userStory"],
        format!("/admin/v1/tenants/{ACME}/story?userId={ann}")
    );
    // By externalId, by resource id, by method, by request id.
    let r = get(vec![("externalId", "x-ann".into())]).await;
    assert_eq!(r.body["total"], 3, "{}", r.text);
    let r = get(vec![("resourceId", ann.clone())]).await;
    assert_eq!(r.body["total"], 3, "{}", r.text);
    let r = get(vec![("method", "POST".into())]).await;
    assert_eq!(r.body["total"], 3, "{}", r.text);
    let r = get(vec![("method", "POST".into()), ("status", "4xx".into())]).await;
    assert_eq!(requests(&r.body), [("POST".to_string(), 409)]);
    let r = get(vec![("requestId", "req-ann-patch".into())]).await;
    assert_eq!(requests(&r.body), [("PATCH".to_string(), 200)]);
    // Refused: an unknown parameter (named), a method outside the list, two users at once.
    let r = get(vec![("resourceid", ann.clone())]).await;
    r.assert_problem(400);
    assert!(
        r.body["detail"].as_str().unwrap().contains("`resourceid`"),
        "{}",
        r.text
    );
    get(vec![("method", "post".into())])
        .await
        .assert_problem(400);
    get(vec![("userName", "a".into()), ("externalId", "b".into())])
        .await
        .assert_problem(400);
}
