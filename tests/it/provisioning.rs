//! An Entra provisioning cycle replayed request by request (ENTRA.md E1–E14).

use chrono::Duration;
use serde_json::{Value, json};

use crate::helpers::*;

/// E12: test connection, E6: look-up before create, create, Entra-style updates, disable,
/// re-enable, delete.
#[tokio::test]
async fn entra_provisioning_cycle() {
    let app = TestApp::start().await;

    // Test connection: a random userName; 200 and an empty list.
    let r = app
        .list(
            ACME,
            "/Users",
            &[(
                "filter",
                "userName eq \"7f3a0e44-96b1-4c53-a0f6-4b7e3de1d2a1\"",
            )],
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["schemas"], json!([LIST_RESPONSE]));
    assert_eq!(r.total(), 0);
    assert_eq!(r.resources().len(), 0);

    // Look-up before create, by each of Entra's matching attributes: nothing yet.
    for f in [
        "userName eq \"ann.lee@acme.example\"",
        "externalId eq \"0a8e-objectid\"",
        "externalId eq 0a8e-objectid",
        "emails[type eq \"work\"].value eq \"ann.lee@acme.example\"",
    ] {
        let r = app.list(ACME, "/Users", &[("filter", f)]).await;
        r.assert_status(200);
        assert_eq!(r.total(), 0, "{f}");
    }

    // Create, as Entra sends it.
    let r = app
        .post(
            "/Users",
            &json!({
                "schemas": [USER_SCHEMA, ENTERPRISE],
                "externalId": "0a8e-objectid",
                "userName": "Ann.Lee@acme.example",
                "active": true,
                "displayName": "Ann Lee",
                "emails": [{"primary": true, "type": "work", "value": "ann.lee@acme.example"}],
                "meta": {"resourceType": "User"},
                "name": {"formatted": "Ann Lee", "familyName": "Lee", "givenName": "Ann"},
                ENTERPRISE: {"department": "Sales"}
            }),
        )
        .await;
    r.assert_status(201);
    let id = r.id();
    assert!(!id.is_empty());
    let location = format!("{}/Users/{id}", app.base(ACME));
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(r.body["meta"]["location"], json!(location));
    assert_eq!(r.header("etag"), Some(r.version().as_str()));
    assert!(r.version().starts_with("W/\""));
    assert_eq!(r.header("content-type"), Some("application/scim+json"));
    assert_eq!(r.body["userName"], "Ann.Lee@acme.example");
    assert_eq!(r.body["externalId"], "0a8e-objectid");
    assert_eq!(r.body["meta"]["resourceType"], "User");
    let created = start_time().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(r.body["meta"]["created"], json!(created));
    assert_eq!(r.body["meta"]["lastModified"], json!(created));
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA, ENTERPRISE]));

    // The look-ups now find exactly this user (userName case-insensitively).
    for f in [
        "userName eq \"ann.lee@ACME.example\"",
        "externalId eq \"0a8e-objectid\"",
        "externalId eq 0a8e-objectid",
        "emails[type eq \"work\"].value eq \"Ann.Lee@acme.example\"",
    ] {
        let r = app.list(ACME, "/Users", &[("filter", f)]).await;
        r.assert_status(200);
        assert_eq!(r.ids(), vec![id.clone()], "{f}");
    }
    // externalId is caseExact.
    let r = app
        .list(
            ACME,
            "/Users",
            &[("filter", "externalId eq \"0A8E-OBJECTID\"")],
        )
        .await;
    assert_eq!(r.total(), 0);

    // Incremental cycle: an update in Entra's dialect.
    let manager = app.user("boss@acme.example").await;
    app.clock.advance(Duration::minutes(40));
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([
                {"op": "Replace", "path": "displayName", "value": "Ann Lee-Smith"},
                {"op": "Add", "value": {
                    "name.givenName": "Annie",
                    "name.familyName": "Lee-Smith",
                    "title": "Lead",
                    format!("{ENTERPRISE}:department"): "Marketing",
                    format!("{ENTERPRISE}:employeeNumber"): "E-42",
                    format!("{CUSTOM}:customAttribute05"): "cost-center-7",
                }},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ann.smith@acme.example"},
                {"op": "Add", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+41 79 000 00 00"},
                {"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": manager},
                {"op": "Replace", "path": "active", "value": "True"},
            ])),
        )
        .await;
    r.assert_status(200);
    let updated = start_time() + Duration::minutes(40);
    assert_eq!(
        r.body["meta"]["lastModified"],
        json!(updated.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    );
    assert_eq!(r.body["meta"]["created"], json!(created));
    let user = app.get(&format!("/Users/{id}")).await;
    user.assert_status(200);
    let u = &user.body;
    assert_eq!(u["displayName"], "Ann Lee-Smith");
    assert_eq!(
        u["name"],
        json!({"formatted": "Ann Lee", "familyName": "Lee-Smith", "givenName": "Annie"})
    );
    assert_eq!(u["title"], "Lead");
    assert_eq!(
        u["emails"],
        json!([{"primary": true, "type": "work", "value": "ann.smith@acme.example"}])
    );
    assert_eq!(
        u["phoneNumbers"],
        json!([{"type": "mobile", "value": "+41 79 000 00 00"}])
    );
    assert_eq!(
        u[ENTERPRISE],
        json!({"department": "Marketing", "employeeNumber": "E-42", "manager": {"value": manager}})
    );
    assert_eq!(u[CUSTOM], json!({"customAttribute05": "cost-center-7"}));
    assert_eq!(u["schemas"], json!([USER_SCHEMA, ENTERPRISE, CUSTOM]));
    assert_eq!(u["active"], true);

    // The old work email no longer finds the user; the new one does (from the email index).
    let r = app
        .list(
            ACME,
            "/Users",
            &[(
                "filter",
                "emails[type eq \"work\"].value eq \"ann.lee@acme.example\"",
            )],
        )
        .await;
    assert_eq!(r.total(), 0);
    let r = app
        .list(
            ACME,
            "/Users",
            &[(
                "filter",
                "emails[type eq \"work\"].value eq \"ann.smith@acme.example\"",
            )],
        )
        .await;
    assert_eq!(r.ids(), vec![id.clone()]);

    // Manager as {"value": id}, then cleared with "" (E5).
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "Replace", "path": format!("{ENTERPRISE}:manager"), "value": {"value": "other-manager"}}])),
        )
        .await;
    assert_eq!(
        r.assert_status(200).body[ENTERPRISE]["manager"],
        json!({"value": "other-manager"})
    );
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(
                json!([{"op": "Replace", "path": format!("{ENTERPRISE}:manager"), "value": ""}]),
            ),
        )
        .await;
    r.assert_status(200);
    assert_eq!(
        r.body[ENTERPRISE],
        json!({"department": "Marketing", "employeeNumber": "E-42"})
    );

    // Disable (E8): string boolean "False"; deactivation is stamped with the clock.
    app.clock.advance(Duration::hours(1));
    let disabled_at = start_time() + Duration::minutes(100);
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    assert_eq!(r.assert_status(200).body["active"], false);
    let r = app.get(&format!("/Users/{id}")).await;
    assert_eq!(r.assert_status(200).body["active"], false);
    let (active, deactivated): (i64, Option<String>) = app.db().one(
        "SELECT active, deactivated_at FROM users WHERE id = ?",
        &[&id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(active, 0);
    assert_eq!(
        deactivated.as_deref(),
        Some(
            disabled_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .as_str()
        )
    );
    // A second active=false keeps the first deactivation instant.
    app.clock.advance(Duration::hours(1));
    app.patch(
        &format!("/Users/{id}"),
        &patch_ops(json!([{"op": "replace", "value": {"active": false}}])),
    )
    .await
    .assert_status(200);
    let d2: Option<String> = app.db().one(
        "SELECT deactivated_at FROM users WHERE id = ?",
        &[&id],
        |r| r.get(0),
    );
    assert_eq!(d2, deactivated);
    let r = app
        .list(ACME, "/Users", &[("filter", "active eq false")])
        .await;
    assert_eq!(r.ids(), vec![id.clone()]);

    // Re-enable: the deactivation is cleared.
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "Replace", "path": "active", "value": "True"}])),
        )
        .await;
    assert_eq!(r.assert_status(200).body["active"], true);
    let (active, deactivated): (i64, Option<String>) = app.db().one(
        "SELECT active, deactivated_at FROM users WHERE id = ?",
        &[&id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!((active, deactivated), (1, None));

    // Delete: 204 and empty, then 404, then the userName is free again.
    let r = app.delete(&format!("/Users/{id}")).await;
    r.assert_status(204);
    assert_eq!(r.text, "");
    app.get(&format!("/Users/{id}"))
        .await
        .assert_error(404, None);
    app.delete(&format!("/Users/{id}"))
        .await
        .assert_error(404, None);
    app.patch(
        &format!("/Users/{id}"),
        &patch_ops(json!([{"op": "replace", "path": "title", "value": "x"}])),
    )
    .await
    .assert_error(404, None);
    let r = app
        .list(
            ACME,
            "/Users",
            &[("filter", "userName eq \"ann.lee@acme.example\"")],
        )
        .await;
    assert_eq!(r.total(), 0);
    let again = app
        .create_user(json!({"schemas": [USER_SCHEMA], "userName": "ann.lee@acme.example"}))
        .await;
    assert_ne!(again["id"], json!(id));
}

/// E10: the ?aadOptscim062020 flag changes nothing.
#[tokio::test]
async fn feature_flag_query_changes_nothing() {
    let app = TestApp::start().await;
    let id = app.user("flag@acme.example").await;
    let r = app
        .patch(
            &format!("/Users/{id}?aadOptscim062020"),
            &patch_ops(json!([{"op": "Replace", "path": "active", "value": false}])),
        )
        .await;
    assert_eq!(r.assert_status(200).body["active"], false);
    let r = app
        .list(
            ACME,
            "/Users?aadOptscim062020",
            &[("filter", "userName eq \"flag@acme.example\"")],
        )
        .await;
    assert_eq!(r.assert_status(200).ids(), vec![id]);
}

/// RFC 7644 §3.5.2.3: replacing a singular complex attribute with a value object replaces
/// the sub-attributes given and leaves the others unchanged.
#[tokio::test]
async fn patch_replace_of_a_complex_attribute_keeps_other_sub_attributes() {
    let app = TestApp::start().await;
    let u = app
        .create_user(json!({"schemas": [USER_SCHEMA], "userName": "cx",
            "name": {"givenName": "Old", "familyName": "Keep", "formatted": "Old Keep"}}))
        .await;
    let id = u["id"].as_str().unwrap();
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "replace", "path": "name", "value": {"givenName": "New"}}])),
        )
        .await;
    r.assert_status(200);
    assert_eq!(
        r.body["name"],
        json!({"givenName": "New", "familyName": "Keep", "formatted": "Old Keep"})
    );
    // Path-less replace with a complex value: the same.
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "Replace", "value": {"name": {"familyName": "Other"}}}])),
        )
        .await;
    r.assert_status(200);
    assert_eq!(
        r.body["name"],
        json!({"givenName": "New", "familyName": "Other", "formatted": "Old Keep"})
    );
    // A multi-valued attribute is replaced as a whole.
    app.patch(
        &format!("/Users/{id}"),
        &patch_ops(json!([{"op": "add", "path": "emails", "value": [{"value": "a@x", "type": "work"}, {"value": "b@x", "type": "home"}]}])),
    )
    .await
    .assert_status(200);
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "replace", "path": "emails", "value": [{"value": "c@x", "type": "work"}]}])),
        )
        .await;
    assert_eq!(
        r.assert_status(200).body["emails"],
        json!([{"value": "c@x", "type": "work"}])
    );
}

/// E9: attributes absent from a PATCH are never removed; PUT replaces the whole user.
#[tokio::test]
async fn absence_is_not_removal_but_put_replaces() {
    let app = TestApp::start().await;
    let u = app
        .create_user(
            json!({"schemas": [USER_SCHEMA], "userName": "keep", "title": "T", "displayName": "K"}),
        )
        .await;
    let id = u["id"].as_str().unwrap();
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "Replace", "value": {"displayName": "K2"}}])),
        )
        .await;
    r.assert_status(200);
    assert_eq!(
        (&r.body["title"], &r.body["displayName"]),
        (&json!("T"), &json!("K2"))
    );
    let r = app
        .put(
            &format!("/Users/{id}"),
            &json!({"schemas": [USER_SCHEMA], "userName": "keep", "displayName": "K3"}),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body.get("title"), None::<&Value>);
    assert_eq!(r.body["displayName"], "K3");
    assert_eq!(r.body["id"], json!(id));
}

/// password is accepted and never stored or returned; roles may come as a JSON string (E5).
#[tokio::test]
async fn password_is_dropped_and_roles_as_json_strings() {
    let app = TestApp::start().await;
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": "pw", "password": "Secr3t!!"}),
        )
        .await;
    r.assert_status(201);
    assert!(!r.text.contains("Secr3t"));
    let id = r.id();
    let doc: String = app
        .db()
        .one("SELECT doc FROM users WHERE id = ?", &[&id], |r| r.get(0));
    assert!(
        !doc.contains("Secr3t") && !doc.contains("password"),
        "{doc}"
    );
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "Add", "path": "roles", "value": "[{\"value\":\"Admin\",\"primary\":\"True\"}]"}])),
        )
        .await;
    assert_eq!(
        r.assert_status(200).body["roles"],
        json!([{"value": "Admin", "primary": true}])
    );
}

/// groups is read-only on a user: with a path it is refused, in a path-less value ignored.
#[tokio::test]
async fn user_groups_are_read_only() {
    let app = TestApp::start().await;
    let id = app.user("ro@acme.example").await;
    let g = app.group("RO", &[]).await;
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(json!([{"op": "add", "path": "groups", "value": [{"value": g}]}])),
        )
        .await;
    r.assert_error(400, Some("mutability"));
    let r = app
        .patch(
            &format!("/Users/{id}"),
            &patch_ops(
                json!([{"op": "replace", "value": {"groups": [{"value": g}], "title": "T"}}]),
            ),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["title"], "T");
    assert_eq!(r.body.get("groups"), None);
    assert!(app.member_ids(&g).await.is_empty());
    // excludedAttributes=groups on a member.
    app.patch(
        &format!("/Groups/{g}"),
        &patch_ops(json!([{"op": "add", "path": "members", "value": [{"value": id}]}])),
    )
    .await
    .assert_status(204);
    let r = app.get(&format!("/Users/{id}")).await;
    assert_eq!(r.body["groups"].as_array().map(Vec::len), Some(1));
    let r = app
        .get(&format!("/Users/{id}?excludedAttributes=groups"))
        .await;
    assert_eq!(r.assert_status(200).body.get("groups"), None);
}

/// RFC 7643 §2.4: at most one primary value, on create as on PATCH.
#[tokio::test]
async fn one_primary_email() {
    let app = TestApp::start().await;
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": "prim",
                "emails": [{"value": "a@x", "primary": "True"}, {"value": "b@x", "primary": true}]}),
        )
        .await;
    r.assert_status(201);
    assert_eq!(
        r.body["emails"],
        json!([{"value": "a@x", "primary": false}, {"value": "b@x", "primary": true}])
    );
    let r = app
        .patch(
            &format!("/Users/{}", r.id()),
            &patch_ops(json!([{"op": "Replace", "path": "emails[value eq \"a@x\"].primary", "value": "True"}])),
        )
        .await;
    assert_eq!(
        r.assert_status(200).body["emails"],
        json!([{"value": "a@x", "primary": true}, {"value": "b@x", "primary": false}])
    );
}
