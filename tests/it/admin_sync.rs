//! The admin API's sync endpoints on a server whose acme tenant syncs (a copy of the shipped
//! Scifeon mapping, a temp application database): the run ledger, triggers, approvals, the
//! mapping preview and reload, pending offboardings, the tenant summary, readiness and metrics.

use std::time::Duration as StdDuration;

use chrono::Duration;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    pub(crate) async fn admin_post(&self, path: &str, token: &str, body: Option<Value>) -> Resp {
        let mut rb = self.admin_request(Method::POST, path, Some(token));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.send(rb).await
    }

    /// Start a run of acme; answers 202 with its id.
    pub(crate) async fn start_run(&self, body: Value) -> i64 {
        let r = self
            .admin_post(&format!("/tenants/{ACME}/runs"), OPERATOR_TOKEN, Some(body))
            .await;
        r.assert_status(202);
        let id = r.body["runId"].as_i64().unwrap();
        assert_eq!(
            r.header("location"),
            Some(format!("/admin/v1/runs/{id}").as_str())
        );
        id
    }

    /// The run, once it has ended.
    pub(crate) async fn finished(&self, id: i64) -> Value {
        for _ in 0..500 {
            let r = self.admin_get(&format!("/runs/{id}"), &[]).await;
            r.assert_status(200);
            if r.body["status"] != "running" {
                return r.body;
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
        panic!("run {id} did not end");
    }

    pub(crate) async fn sync_now(&self) -> Value {
        let id = self.start_run(json!({})).await;
        self.finished(id).await
    }

    pub(crate) async fn scifeon_user(
        &self,
        user_name: &str,
        given: &str,
        groups: &[&str],
    ) -> String {
        let id = self
            .create_user(json!({
                "schemas": [USER_SCHEMA],
                "userName": user_name,
                "name": {"givenName": given, "familyName": "Test"},
                "title": "Chemist",
            }))
            .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        for g in groups {
            self.group(g, &[&id]).await;
        }
        id
    }
}

#[tokio::test]
async fn sync_endpoints_need_a_token_and_posts_need_an_operator() {
    let app = TestApp::start_syncing("").await;
    let user = app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let run = app.sync_now().await["id"].as_i64().unwrap();
    let gets = [
        "/runs".to_string(),
        format!("/runs/{run}"),
        format!("/runs/{run}/items"),
        format!("/tenants/{ACME}/mapping"),
        format!("/tenants/{ACME}/offboardings"),
    ];
    let posts = [
        (format!("/tenants/{ACME}/runs"), json!({"dryRun": true})),
        (format!("/runs/{run}/approve"), json!({})),
        (
            format!("/tenants/{ACME}/mapping/preview"),
            json!({"userId": user}),
        ),
        (format!("/tenants/{ACME}/mapping/reload"), json!({})),
        ("/runs/prune".to_string(), json!({})),
    ];
    for path in &gets {
        for token in [None, Some(ACME_TOKEN)] {
            app.send(app.admin_request(Method::GET, path, token))
                .await
                .assert_problem(401);
        }
        app.admin_get(path, &[]).await.assert_status(200);
    }
    for (path, body) in &posts {
        app.send(app.admin_request(Method::POST, path, None).json(body))
            .await
            .assert_problem(401);
        let r = app.admin_post(path, READER_TOKEN, Some(body.clone())).await;
        r.assert_problem(403);
        assert!(r.body["detail"].as_str().unwrap().contains("operator"));
    }
    // The operator may: a dry run starts, the run is not awaiting approval, the preview renders,
    // the mapping reloads, the ledger is pruned.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for (path, body) in &posts {
            v.push(
                app.admin_post(path, OPERATOR_TOKEN, Some(body.clone()))
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(statuses, [202, 409, 200, 200, 200]);
    // A method a path does not have: 405 naming the ones it has.
    let r = app
        .send(app.admin_request(
            Method::DELETE,
            &format!("/runs/{run}"),
            Some(OPERATOR_TOKEN),
        ))
        .await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = app
        .send(app.admin_request(
            Method::GET,
            &format!("/tenants/{ACME}/runs"),
            Some(READER_TOKEN),
        ))
        .await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
    // A tenant without sync has none of it; an unknown tenant is 404 too.
    for path in [
        format!("/tenants/{OTHER}/offboardings"),
        format!("/tenants/{OTHER}/mapping"),
        "/tenants/nobody/offboardings".to_string(),
    ] {
        app.admin_get(&path, &[]).await.assert_problem(404);
    }
    app.admin_post(
        &format!("/tenants/{OTHER}/runs"),
        OPERATOR_TOKEN,
        Some(json!({})),
    )
    .await
    .assert_problem(404);
}

#[tokio::test]
async fn a_triggered_run_is_in_the_ledger_with_its_items_and_changes() {
    let app = TestApp::start_syncing("").await;
    app.scifeon_user("ann@example.com", "Ann", &["Scifeon Admins"])
        .await;
    let bob = app.scifeon_user("bob@example.com", "Bob", &[]).await;
    let first = app.sync_now().await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["trigger"], "api");
    assert_eq!(first["tenant"], ACME);
    assert_eq!(first["counts"]["created"], 2, "{first}");
    assert_eq!(first["counts"]["rolesAdded"], 2, "{first}");
    assert!(first["endedAt"].is_string() && first["durationMs"].is_i64());
    assert!(first["watermarkTo"].as_i64().unwrap() > 0);
    let run = first["id"].as_i64().unwrap();

    let items = app.admin_get(&format!("/runs/{run}/items"), &[]).await;
    items.assert_status(200);
    assert_eq!(items.body["total"], 2);
    let ann = &items.body["items"][0];
    assert_eq!(ann["userName"], "ann@example.com");
    assert_eq!(ann["outcome"], "created");
    assert_eq!(ann["appKey"], "ann@example.com");
    assert_eq!(
        ann["changes"]["FirstName"],
        json!({"before": null, "after": "Ann"})
    );
    assert_eq!(ann["rolesAdded"], json!(["Administrator", "User"]));
    let page = app
        .admin_get(
            &format!("/runs/{run}/items"),
            &[("limit", "1"), ("offset", "1")],
        )
        .await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["items"][0]["userName"], "bob@example.com");
    assert_eq!(page.body["total"], 2);

    // A change: the second run updates Bob, before → after.
    app.patch(
        &format!("/Users/{bob}"),
        &patch_ops(json!([{"op": "replace", "path": "title", "value": "Head Chemist"}])),
    )
    .await
    .assert_status(200);
    app.clock.advance(Duration::minutes(5));
    let second = app.sync_now().await;
    assert_eq!(second["counts"]["updated"], 1, "{second}");
    let second_id = second["id"].as_i64().unwrap();
    let updated = app
        .admin_get(
            &format!("/runs/{second_id}/items"),
            &[("outcome", "updated")],
        )
        .await;
    assert_eq!(updated.body["total"], 1);
    assert_eq!(
        updated.body["items"][0]["changes"],
        json!({"JobTitle": {"before": "Chemist", "after": "Head Chemist"}})
    );
    let none = app
        .admin_get(
            &format!("/runs/{second_id}/items"),
            &[("outcome", "created")],
        )
        .await;
    assert_eq!(none.body["total"], 0);

    // A dry run records what it would do and writes nothing.
    let dry = app.start_run(json!({"dryRun": true, "full": true})).await;
    let dry = app.finished(dry).await;
    assert_eq!(
        (dry["dryRun"].clone(), dry["full"].clone()),
        (json!(true), json!(true))
    );

    // The list: newest first, filters, paging.
    let all = app.admin_get("/runs", &[]).await;
    let ids: Vec<i64> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [dry["id"].as_i64().unwrap(), second_id, run]);
    assert_eq!(all.body["total"], 3);
    let filtered = app
        .admin_get(
            "/runs",
            &[
                ("tenant", ACME),
                ("status", "succeeded"),
                ("limit", "1"),
                ("offset", "1"),
            ],
        )
        .await;
    assert_eq!(filtered.body["total"], 3);
    assert_eq!(filtered.body["items"][0]["id"], second_id);
    let since = (start_time() + Duration::minutes(1)).to_rfc3339();
    let later = app.admin_get("/runs", &[("since", since.as_str())]).await;
    assert_eq!(later.body["total"], 2);
    let until = app.admin_get("/runs", &[("until", since.as_str())]).await;
    assert_eq!(until.body["total"], 1);
    assert_eq!(until.body["items"][0]["id"], run);
    assert_eq!(
        app.admin_get("/runs", &[("status", "failed")]).await.body["total"],
        0
    );
    app.admin_get("/runs", &[("status", "bogus")])
        .await
        .assert_problem(400);
    // Runs started from the API; none from the schedule. Filters are enums, spelled exactly.
    assert_eq!(
        app.admin_get("/runs", &[("trigger", "api")]).await.body["total"],
        3
    );
    assert_eq!(
        app.admin_get("/runs", &[("trigger", "schedule")])
            .await
            .body["total"],
        0
    );
    for (name, value) in [
        ("trigger", "API"),
        ("status", "Failed"),
        ("trigger", "cron"),
    ] {
        app.admin_get("/runs", &[(name, value)])
            .await
            .assert_problem(400);
    }
    app.admin_get(&format!("/runs/{run}/items"), &[("outcome", "Failed")])
        .await
        .assert_problem(400);
    assert_eq!(
        app.admin_get(&format!("/runs/{run}/items"), &[("outcome", "adopted")])
            .await
            .body["total"],
        0
    );
    app.admin_get("/runs", &[("tenant", "nobody")])
        .await
        .assert_problem(404);
    app.admin_get("/runs/999999", &[]).await.assert_problem(404);
    app.admin_get("/runs/999999/items", &[])
        .await
        .assert_problem(404);

    // The tenant summary shows the sync side; the metrics count the runs.
    let t = app.admin_get(&format!("/tenants/{ACME}"), &[]).await;
    assert!(
        t.body["mapping"].as_str().unwrap().ends_with(MAPPING_FILE),
        "{}",
        t.text
    );
    assert_eq!(t.body["lastRun"]["id"], dry["id"]);
    assert_eq!(t.body["lastRun"]["status"], "succeeded");
    assert_eq!(t.body["pendingOffboardings"], 0);
    let other = app.admin_get(&format!("/tenants/{OTHER}"), &[]).await;
    assert_eq!(other.body["mapping"], Value::Null);
    assert_eq!(other.body["lastRun"], Value::Null);
    let metrics = app.get_root("/metrics").await.text;
    assert!(
        metrics.contains("scim_bridge_sync_runs_total{tenant=\"acme\",status=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scim_bridge_sync_items_total{tenant=\"acme\",outcome=\"created\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("scim_bridge_sync_pending_offboardings{tenant=\"acme\"} 0"));
}

#[tokio::test]
async fn a_run_while_the_lease_is_held_is_a_conflict() {
    let app = TestApp::start_syncing("").await;
    app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let expires = crate::helpers::start_time() + Duration::minutes(5);
    app.db().exec(
        "INSERT INTO sync_leases (tenant, holder, run_id, acquired_at, expires_at) VALUES (?, 'elsewhere', 41, ?, ?)",
        &[
            &ACME,
            &start_time().to_rfc3339(),
            &expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ],
    );
    let r = app
        .admin_post(
            &format!("/tenants/{ACME}/runs"),
            OPERATOR_TOKEN,
            Some(json!({})),
        )
        .await;
    r.assert_problem(409);
    assert!(
        r.body["detail"].as_str().unwrap().contains("run 41"),
        "{}",
        r.text
    );
    // Nothing was recorded; a dry run needs no lease.
    assert_eq!(app.admin_get("/runs", &[]).await.body["total"], 0);
    let dry = app.start_run(json!({"dryRun": true})).await;
    assert_eq!(app.finished(dry).await["counts"]["created"], 1);
    // Once the lease has expired, a run may start.
    app.clock.advance(Duration::minutes(6));
    let run = app.start_run(json!({})).await;
    assert_eq!(app.finished(run).await["status"], "succeeded");
}

#[tokio::test]
async fn the_guard_holds_offboardings_until_an_operator_approves() {
    let app = TestApp::start_syncing("retention_hours = 2\nguard_min = 0\nguard_share = 0.0").await;
    let ann = app
        .scifeon_user("ann@example.com", "Ann", &["Scifeon Admins"])
        .await;
    app.scifeon_user("bob@example.com", "Bob", &[]).await;
    app.sync_now().await;
    app.patch(
        &format!("/Users/{ann}"),
        &patch_ops(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await
    .assert_status(200);
    let deactivated_at = app.clock_now();
    let deactivation = app.sync_now().await;
    assert_eq!(deactivation["counts"]["deactivated"], 1, "{deactivation}");

    // Inside the retention: pending, not yet due.
    let pending = app
        .admin_get(&format!("/tenants/{ACME}/offboardings"), &[])
        .await;
    pending.assert_status(200);
    assert_eq!(pending.body["total"], 1, "{}", pending.text);
    assert_eq!(pending.body["retentionHours"], 2);
    let p = &pending.body["items"][0];
    assert_eq!(p["state"], "inactive");
    assert_eq!(p["userId"], ann.as_str());
    assert_eq!(p["appKey"], "ann@example.com");
    assert_eq!(p["deactivatedAt"], fmt(deactivated_at));
    assert_eq!(p["dueAt"], fmt(deactivated_at + Duration::hours(2)));
    assert_eq!(p["due"], false);

    // Past it: the guard (nothing allowed) holds the offboarding.
    app.clock.advance(Duration::hours(3));
    let pending = app
        .admin_get(&format!("/tenants/{ACME}/offboardings"), &[])
        .await;
    assert_eq!(pending.body["items"][0]["due"], true);
    let held = app.sync_now().await;
    assert_eq!(held["status"], "awaiting_approval", "{held}");
    assert_eq!(held["counts"]["held"], 1);
    let held_id = held["id"].as_i64().unwrap();
    let items = app
        .admin_get(
            &format!("/runs/{held_id}/items"),
            &[("outcome", "offboarding_held")],
        )
        .await;
    assert_eq!(items.body["items"][0]["userId"], ann.as_str());
    assert_eq!(
        app.admin_get(&format!("/tenants/{ACME}"), &[]).await.body["pendingOffboardings"],
        1
    );
    let metrics = app.get_root("/metrics").await.text;
    assert!(metrics.contains("scim_bridge_sync_pending_offboardings{tenant=\"acme\"} 1"));

    // Approval: a reader may not, an operator may; it runs as a run of its own.
    app.admin_post(&format!("/runs/{held_id}/approve"), READER_TOKEN, None)
        .await
        .assert_problem(403);
    let r = app
        .admin_post(&format!("/runs/{held_id}/approve"), OPERATOR_TOKEN, None)
        .await;
    r.assert_status(202);
    let approving = r.body["runId"].as_i64().unwrap();
    assert_ne!(approving, held_id);
    let done = app.finished(approving).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"]["offboarded"], 1);
    assert_eq!(done["approval"]["approvesRun"], held_id);
    // The held run says it was approved, by which admin token, when and by which run.
    let held = app.admin_get(&format!("/runs/{held_id}"), &[]).await.body;
    assert_eq!(held["status"], "approved", "{held}");
    assert_eq!(held["approval"]["approver"], "ops");
    assert_eq!(held["approval"]["approvedBy"], approving);
    assert_eq!(
        held["approval"]["approvedAt"],
        held_started(&app, approving).await
    );
    let approved = app.admin_get("/runs", &[("status", "approved")]).await;
    assert_eq!(approved.body["total"], 1, "{}", approved.text);
    assert_eq!(approved.body["items"][0]["id"], held_id);
    // What the offboarding did: the Scifeon mapping deletes the row (its roles went with the
    // deactivation, which removes them).
    let items = app
        .admin_get(&format!("/runs/{approving}/items"), &[])
        .await
        .body;
    let item = &items["items"][0];
    assert_eq!(
        (&item["outcome"], &item["action"], &item["userId"]),
        (&json!("offboarded"), &json!("delete"), &json!(ann)),
        "{items}"
    );
    assert_eq!(
        item["changes"]["FirstName"],
        json!({"before": "Ann", "after": null}),
        "{items}"
    );
    assert_eq!(item["rolesRemoved"], json!([]));
    assert_eq!(
        app.admin_get(&format!("/tenants/{ACME}/offboardings"), &[])
            .await
            .body["total"],
        0
    );
    // Not again, not a run that never waited, not an unknown run.
    app.admin_post(&format!("/runs/{held_id}/approve"), OPERATOR_TOKEN, None)
        .await
        .assert_problem(409);
    app.admin_post(&format!("/runs/{approving}/approve"), OPERATOR_TOKEN, None)
        .await
        .assert_problem(409);
    app.admin_post("/runs/987654/approve", OPERATOR_TOKEN, None)
        .await
        .assert_problem(404);
}

/// When a run started (the approval is recorded as it starts).
async fn held_started(app: &TestApp, run: i64) -> Value {
    app.admin_get(&format!("/runs/{run}"), &[]).await.body["startedAt"].clone()
}

/// No-op runs go after admin.noop_run_days (7), runs with changes after admin.run_days (90);
/// the tenant's newest run stays; a reader may not prune.
#[tokio::test]
async fn runs_are_pruned_on_request_no_op_runs_first() {
    let app = TestApp::start_syncing("").await;
    app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let changed = app.sync_now().await["id"].as_i64().unwrap();
    let noop = app.sync_now().await["id"].as_i64().unwrap();
    app.clock.advance(Duration::days(8));
    let newest = app.sync_now().await["id"].as_i64().unwrap();
    app.admin_post("/runs/prune", READER_TOKEN, None)
        .await
        .assert_problem(403);
    app.admin_post("/runs/prune?tenant=nobody", OPERATOR_TOKEN, None)
        .await
        .assert_problem(404);
    let ids = || async {
        let runs = app.admin_get("/runs", &[("tenant", ACME)]).await.body;
        runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let r = app.admin_post("/runs/prune", OPERATOR_TOKEN, None).await;
    r.assert_status(200);
    assert_eq!(r.body["deleted"], 1, "{}", r.text);
    assert_eq!(
        r.body["noopBefore"],
        fmt(app.clock_now() - Duration::days(7))
    );
    assert_eq!(r.body["before"], fmt(app.clock_now() - Duration::days(90)));
    assert_eq!(ids().await, [newest, changed]);
    app.admin_get(&format!("/runs/{noop}"), &[])
        .await
        .assert_problem(404);
    // Past 90 days the run with changes goes too, with its items; the newest stays.
    app.clock.advance(Duration::days(90));
    let r = app
        .admin_post(&format!("/runs/prune?tenant={ACME}"), OPERATOR_TOKEN, None)
        .await;
    assert_eq!(r.body["deleted"], 1, "{}", r.text);
    assert_eq!(ids().await, [newest]);
    app.admin_get(&format!("/runs/{changed}/items"), &[])
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn offboardings_list_deleted_users_with_their_due_time_and_pages() {
    let app = TestApp::start_syncing("retention_hours = 48").await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(
            app.scifeon_user(&format!("{n}@example.com"), "X", &[])
                .await,
        );
    }
    app.user("unlinked@example.com").await;
    app.sync_now().await;
    // a is deleted now, b deactivated an hour later; c stays; the unlinked user has no row.
    let t0 = app.clock_now();
    app.delete(&format!("/Users/{}", ids[0]))
        .await
        .assert_status(204);
    app.clock.advance(Duration::hours(1));
    app.patch(
        &format!("/Users/{}", ids[1]),
        &patch_ops(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await
    .assert_status(200);
    let r = app
        .admin_get(&format!("/tenants/{ACME}/offboardings"), &[])
        .await;
    assert_eq!(r.body["total"], 2, "{}", r.text);
    let first = &r.body["items"][0];
    assert_eq!(first["state"], "deleted");
    assert_eq!(first["userId"], ids[0].as_str());
    assert_eq!(first["deletedAt"], fmt(t0));
    assert_eq!(first["dueAt"], fmt(t0 + Duration::hours(48)));
    let second = &r.body["items"][1];
    assert_eq!(second["state"], "inactive");
    assert_eq!(second["dueAt"], fmt(t0 + Duration::hours(49)));
    let page = app
        .admin_get(
            &format!("/tenants/{ACME}/offboardings"),
            &[("limit", "1"), ("offset", "1")],
        )
        .await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["items"][0]["userId"], ids[1].as_str());
    assert_eq!(page.body["total"], 2);
}

#[tokio::test]
async fn preview_renders_staged_users_and_documents_and_shows_what_would_change() {
    let app = TestApp::start_syncing("").await;
    let ann = app
        .scifeon_user("ann@example.com", "Ann", &["Scifeon Lab Basel"])
        .await;
    let path = format!("/tenants/{ACME}/mapping/preview");
    // Before any run: rendered, no link.
    let r = app
        .admin_post(
            &path,
            OPERATOR_TOKEN,
            Some(json!({"userName": "ANN@example.com"})),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["source"], "staged");
    assert_eq!(r.body["userId"], ann.as_str());
    assert_eq!(r.body["key"], "ann@example.com");
    assert_eq!(r.body["keyColumn"], "UserName");
    assert_eq!(r.body["fields"]["FirstName"], "Ann");
    assert_eq!(r.body["fields"]["Initials"], "AT");
    assert_eq!(r.body["roles"], json!(["LabTechnician", "User"]));
    assert_eq!(r.body["link"], Value::Null);
    assert_eq!(r.body["changes"], Value::Null);

    app.sync_now().await;
    app.patch(
        &format!("/Users/{ann}"),
        &patch_ops(json!([{"op": "replace", "path": "title", "value": "Lead"}])),
    )
    .await
    .assert_status(200);
    let r = app
        .admin_post(&path, OPERATOR_TOKEN, Some(json!({"userId": ann})))
        .await;
    r.assert_status(200);
    assert_eq!(r.body["link"]["appKey"], "ann@example.com");
    assert_eq!(r.body["link"]["state"], "active");
    assert_eq!(
        r.body["changes"],
        json!({"JobTitle": {"before": "Chemist", "after": "Lead"}})
    );
    assert_eq!(r.body["rolesAdded"], json!([]));
    assert_eq!(r.body["rolesRemoved"], json!([]));

    // A posted document with its groups (normalised as SCIM would: Entra's string booleans).
    let r = app
        .admin_post(
            &path,
            OPERATOR_TOKEN,
            Some(json!({
                "user": {
                    "schemas": [USER_SCHEMA, ENTERPRISE],
                    "userName": "Eve@Example.com",
                    "active": "False",
                    "name": {"givenName": "Eve", "familyName": "Smith"},
                    ENTERPRISE: {"department": "Quality Assurance", "employeeNumber": "77"},
                },
                "groups": [{"displayName": "Scifeon Admins"}],
            })),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["source"], "document");
    assert_eq!(r.body["userId"], Value::Null);
    assert_eq!(r.body["state"], "deactivated");
    assert_eq!(r.body["fields"]["Department"], "QA");
    assert_eq!(r.body["fields"]["EmployeeNumber"], 77);
    assert_eq!(r.body["fields"]["IsActive"], false);

    // Render errors: 422 naming the field.
    let r = app
        .admin_post(
            &path,
            OPERATOR_TOKEN,
            Some(json!({"user": {
                "schemas": [USER_SCHEMA, ENTERPRISE],
                "userName": "bad@example.com",
                ENTERPRISE: {"employeeNumber": "not a number"},
            }})),
        )
        .await;
    r.assert_problem(422);
    assert_eq!(r.body["field"], "fields.EmployeeNumber", "{}", r.text);
    assert!(r.body["reason"].is_string());
    // userId wins over userName.
    let r = app
        .admin_post(
            &path,
            OPERATOR_TOKEN,
            Some(json!({"userId": ann, "userName": "nobody@example.com"})),
        )
        .await;
    assert_eq!(r.body["userName"], "ann@example.com", "{}", r.text);
    // Bad requests: no selector, a document SCIM rejects, a document that is not an object.
    for body in [
        json!({}),
        json!({"user": {"schemas": [USER_SCHEMA]}}),
        json!({"user": "ann"}),
    ] {
        app.admin_post(&path, OPERATOR_TOKEN, Some(body))
            .await
            .assert_problem(400);
    }
    app.admin_post(&path, OPERATOR_TOKEN, Some(json!({"userId": "nobody"})))
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn a_broken_mapping_is_rejected_on_reload_and_a_good_one_is_picked_up() {
    let app = TestApp::start_syncing("").await;
    app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let file = app.dir().join(MAPPING_FILE);
    let good = std::fs::read_to_string(&file).unwrap();
    let preview = format!("/tenants/{ACME}/mapping/preview");
    let reload = format!("/tenants/{ACME}/mapping/reload");
    let department = || async {
        app.admin_post(
            &preview,
            OPERATOR_TOKEN,
            Some(json!({"userName": "ann@example.com"})),
        )
        .await
        .body["fields"]["Department"]
            .clone()
    };
    assert_eq!(department().await, "Unassigned");

    // A template that does not compile: rejected with file:line, the old mapping stays.
    let broken = good.replace(
        "FirstName = \"{{name.givenName}}\"",
        "FirstName = \"{{name.givenName\"",
    );
    assert_ne!(broken, good);
    std::fs::write(&file, &broken).unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_problem(422);
    let detail = r.body["detail"].as_str().unwrap();
    let line = good
        .lines()
        .position(|l| l.starts_with("FirstName"))
        .unwrap()
        + 1;
    assert!(
        detail.contains(&format!("{MAPPING_FILE}:{line}")),
        "{detail}"
    );
    assert_eq!(department().await, "Unassigned");
    // A target database that is not configured: rejected too.
    std::fs::write(
        &file,
        good.replace("database = \"scifeon\"", "database = \"nope\""),
    )
    .unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_problem(422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("nope"),
        "{}",
        r.text
    );
    let sync = app.sync_now().await;
    assert_eq!(
        sync["status"], "succeeded",
        "runs go on with the old mapping: {sync}"
    );

    // A change its own test cases contradict: rejected, naming the failing case.
    std::fs::write(
        &file,
        good.replace("default = \"Unassigned\"", "default = \"General\""),
    )
    .unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_problem(422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("test \""),
        "{}",
        r.text
    );
    assert_eq!(department().await, "Unassigned");

    // A good change (with its test cases) is picked up by the preview and the next run.
    std::fs::write(&file, good.replace("\"Unassigned\"", "\"General\"")).unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_status(200);
    assert_eq!(r.body["database"], "scifeon");
    assert_eq!(r.body["keyColumn"], "UserName");
    assert!(
        r.body["columns"]
            .as_array()
            .unwrap()
            .contains(&json!("scifeon_users.Department"))
    );
    assert_eq!(department().await, "General");
    // An incremental run reads changed users only; a full run applies the new mapping to all.
    let run = app.start_run(json!({"full": true})).await;
    let run = app.finished(run).await;
    assert_eq!(run["counts"]["updated"], 1, "{run}");
    let items = app
        .admin_get(&format!("/runs/{}/items", run["id"]), &[])
        .await;
    assert_eq!(
        items.body["items"][0]["changes"]["Department"],
        json!({"before": "Unassigned", "after": "General"})
    );
}

#[tokio::test]
async fn readiness_reports_the_mappings_and_the_scheduler() {
    let app = TestApp::start_syncing("schedule = \"@yearly\"").await;
    let r = app.get_root("/readyz").await;
    r.assert_status(200);
    let checks = r.body["checks"].as_array().unwrap();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {}", r.text))
    };
    assert_eq!(check("mappings_loaded")["ok"], true);
    assert_eq!(check("mappings_loaded")["detail"], "1 mapping(s) loaded");
    assert_eq!(check("scheduler_running")["ok"], true);
    assert_eq!(check("scheduler_running")["detail"], "running");
    let t = app.admin_get(&format!("/tenants/{ACME}"), &[]).await;
    assert_eq!(t.body["nextRunAt"], "2027-01-01T00:00:00.000Z");
    assert_eq!(t.body["lastRun"], Value::Null);
}

#[tokio::test]
async fn without_sync_readiness_says_so() {
    let app = TestApp::start().await;
    let r = app.get_root("/readyz").await;
    r.assert_status(200);
    for name in ["mappings_loaded", "scheduler_running"] {
        let c = r.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap();
        assert_eq!(c["detail"], "no tenant syncs", "{name}");
    }
}

fn fmt(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl TestApp {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use scim_bridge::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn concurrent_triggers_each_answer_with_their_own_run() {
    let app = TestApp::start_syncing("").await;
    app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let bodies = [
        json!({"dryRun": true}),
        json!({"dryRun": true, "full": true}),
        json!({"dryRun": true}),
        json!({}),
    ];
    let answers: Vec<i64> =
        futures_util::future::join_all(bodies.iter().map(|b| app.start_run(b.clone()))).await;
    let mut ids = answers.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), bodies.len(), "{answers:?}");
    for (id, body) in answers.iter().zip(&bodies) {
        let run = app.finished(*id).await;
        assert_eq!(run["trigger"], "api");
        assert_eq!(
            run["dryRun"],
            body.get("dryRun").cloned().unwrap_or(json!(false))
        );
        assert_eq!(
            run["full"],
            body.get("full").cloned().unwrap_or(json!(false))
        );
        assert_ne!(run["status"], "skipped", "{run}");
    }
}

/// A reload reads the tenant's whole sync section again: retention, guard, quarantine and
/// schedule are in force from then on, and the admin API shows them; a section that does not
/// load is rejected and the settings in force stay.
#[tokio::test]
async fn a_reload_rereads_the_sync_settings() {
    let app = TestApp::start_syncing("retention_hours = 24\n").await;
    let mapping = format!("/tenants/{ACME}/mapping");
    let reload = format!("/tenants/{ACME}/mapping/reload");
    let r = app.admin_get(&mapping, &[]).await;
    r.assert_status(200);
    assert_eq!(r.body["settings"]["retentionHours"], 24, "{}", r.text);
    assert_eq!(r.body["settings"]["schedule"], Value::Null);
    assert_eq!(r.body["settings"]["quarantineAfter"], 3);

    let file = app.dir().join(CONFIG_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    let section = format!("[tenants.{ACME}.sync]\n");
    assert!(text.contains(&section));
    let edited = text.replace(
        "retention_hours = 24\n",
        "retention_hours = 72\nguard_min = 7\nquarantine_after = 0\nschedule = \"* * * * * *\"\n",
    );
    assert_ne!(edited, text);
    std::fs::write(&file, &edited).unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_status(200);
    let settings = &r.body["settings"];
    assert_eq!(
        (
            settings["retentionHours"].clone(),
            settings["guardMin"].clone(),
            settings["quarantineAfter"].clone(),
            settings["schedule"].clone()
        ),
        (json!(72), json!(7), json!(0), json!("* * * * * *")),
        "{}",
        r.text
    );
    let r = app
        .admin_get(&format!("/tenants/{ACME}/offboardings"), &[])
        .await;
    assert_eq!(r.body["retentionHours"], 72, "{}", r.text);
    let r = app.admin_get(&format!("/tenants/{ACME}"), &[]).await;
    assert!(r.body["nextRunAt"].is_string(), "{}", r.text);

    // The new schedule ticks: a scheduled run appears within seconds.
    let mut scheduled = false;
    for _ in 0..100 {
        let r = app.admin_get("/runs", &[("tenant", ACME)]).await;
        r.assert_status(200);
        if r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|run| run["trigger"] == "schedule")
        {
            scheduled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(scheduled, "no scheduled run after the reload");

    // A section that no longer loads: rejected, naming the file; the settings in force stay.
    std::fs::write(
        &file,
        edited.replace("retention_hours = 72", "retention_hours = -1"),
    )
    .unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_problem(422);
    assert!(
        r.body["detail"].as_str().unwrap().contains(CONFIG_FILE),
        "{}",
        r.text
    );
    let r = app.admin_get(&mapping, &[]).await;
    assert_eq!(r.body["settings"]["retentionHours"], 72);
    // The schedule removed: the job goes with it.
    std::fs::write(&file, &text).unwrap();
    let r = app.admin_post(&reload, OPERATOR_TOKEN, None).await;
    r.assert_status(200);
    assert_eq!(r.body["settings"]["schedule"], Value::Null);
    assert_eq!(r.body["settings"]["retentionHours"], 24);
}
