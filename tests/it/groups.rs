//! Groups as Entra drives them: members in batches, removal in both dialects, nesting.

use serde_json::{Value, json};

use crate::helpers::*;

async fn users(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(app.user(&format!("{prefix}{i:03}@acme.example")).await);
    }
    ids
}

fn members(ids: &[String]) -> Value {
    Value::Array(ids.iter().map(|i| json!({"value": i})).collect())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn create_with_members_and_read_back() {
    let app = TestApp::start().await;
    let u = users(&app, "m", 3).await;
    let r = app
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "Sales", "externalId": "g-ext",
                "members": members(&u)}),
        )
        .await;
    r.assert_status(201);
    let gid = r.id();
    let location = format!("{}/Groups/{gid}", app.base(ACME));
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(r.header("etag"), Some(r.version().as_str()));
    assert_eq!(r.body["meta"]["resourceType"], "Group");
    assert_eq!(r.body["externalId"], "g-ext");
    let ms = r.body["members"].as_array().unwrap();
    assert_eq!(ms.len(), 3);
    for m in ms {
        assert_eq!(m["type"], "User");
        let id = m["value"].as_str().unwrap();
        assert_eq!(m["$ref"], json!(format!("{}/Users/{id}", app.base(ACME))));
        // Members are rows: their display name is not read with them.
        assert_eq!(m.get("display"), None, "{m}");
    }
    assert_eq!(app.member_ids(&gid).await, sorted(u.clone()));

    // The user shows the group.
    let r = app.get(&format!("/Users/{}", u[0])).await;
    assert_eq!(
        r.assert_status(200).body["groups"],
        json!([{"value": gid, "$ref": location, "display": "Sales", "type": "direct"}])
    );

    // Entra's look-up of groups by displayName (case-insensitive).
    let r = app
        .list(
            ACME,
            "/Groups",
            &[
                ("filter", "displayName eq \"sales\""),
                ("excludedAttributes", "members"),
            ],
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.ids(), vec![gid.clone()]);
    assert_eq!(r.resources()[0].get("members"), None);
}

/// Entra adds members in batches of up to 100 (E13) and gets 204 without a body.
#[tokio::test]
async fn add_members_in_batches_of_100() {
    let app = TestApp::start().await;
    let u = users(&app, "b", 250).await;
    let gid = app.group("Big", &[]).await;
    let before = app.get(&format!("/Groups/{gid}")).await.version();
    for chunk in u.chunks(100) {
        let r = app
            .patch(
                &format!("/Groups/{gid}"),
                &patch_ops(json!([{"op": "Add", "path": "members", "value": members(chunk)}])),
            )
            .await;
        r.assert_status(204);
        assert_eq!(r.text, "");
    }
    // Adding existing members again changes nothing and is not an error.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Add", "path": "members", "value": members(&u[..10])}])),
    )
    .await
    .assert_status(204);
    let r = app.get(&format!("/Groups/{gid}")).await;
    r.assert_status(200);
    assert_eq!(r.body["members"].as_array().unwrap().len(), 250);
    assert_ne!(r.version(), before);
    assert_eq!(app.member_ids(&gid).await, sorted(u.clone()));

    // With attributes, the PATCH answers 200 with the group.
    let r = app
        .patch(
            &format!("/Groups/{gid}?excludedAttributes=members"),
            &patch_ops(json!([{"op": "Replace", "path": "displayName", "value": "Bigger"}])),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["displayName"], "Bigger");
    assert_eq!(r.body.get("members"), None);

    // E7: excludedAttributes=members on a single read and on lists.
    let r = app
        .get(&format!("/Groups/{gid}?excludedAttributes=members"))
        .await;
    r.assert_status(200);
    assert_eq!(r.body.get("members"), None);
    assert_eq!(r.body["displayName"], "Bigger");
    assert_eq!(r.body["id"], json!(gid));
    let r = app
        .list(ACME, "/Groups", &[("excludedAttributes", "members")])
        .await;
    assert_eq!(r.total(), 1);
    assert_eq!(r.resources()[0].get("members"), None);
    let r = app
        .list(ACME, "/Groups", &[("attributes", "displayName")])
        .await;
    assert_eq!(r.resources()[0].get("members"), None);
    assert_eq!(r.resources()[0]["displayName"], "Bigger");
}

#[tokio::test]
async fn remove_members_by_filter_path_and_by_value() {
    let app = TestApp::start().await;
    let u = users(&app, "r", 6).await;
    let gid = app
        .group("Team", &u.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // RFC form: members[value eq "id"], also joined with or.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", u[0])}])),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&gid).await, sorted(u[1..].to_vec()));
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "remove", "path": format!("members[value eq \"{}\" or value eq \"{}\"]", u[1], u[2])}])),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&gid).await, sorted(u[3..].to_vec()));
    // E2: Entra's remove with a value list removes only those.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Remove", "path": "members", "value": [{"value": u[3]}]}])),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&gid).await, sorted(u[4..].to_vec()));
    // Removing a member that is not there is not an error and changes nothing.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Remove", "path": "members", "value": [{"value": u[0]}]}])),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&gid).await, sorted(u[4..].to_vec()));
    // Replace members sets exactly the list.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Replace", "path": "members", "value": [{"value": u[0]}]}])),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&gid).await, vec![u[0].clone()]);
    // Remove without value removes all.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "remove", "path": "members"}])),
    )
    .await
    .assert_status(204);
    let r = app.get(&format!("/Groups/{gid}")).await;
    assert_eq!(r.assert_status(200).body.get("members"), None);
}

#[tokio::test]
async fn unknown_member_is_invalid_value_and_changes_nothing() {
    let app = TestApp::start().await;
    let u = users(&app, "x", 2).await;
    let gid = app.group("Strict", &[&u[0]]).await;
    let before = app.get(&format!("/Groups/{gid}")).await;
    let r = app
        .patch(
            &format!("/Groups/{gid}"),
            &patch_ops(json!([
                {"op": "Replace", "path": "displayName", "value": "Renamed"},
                {"op": "Add", "path": "members", "value": [{"value": u[1]}, {"value": "no-such-id"}]}
            ])),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    let after = app.get(&format!("/Groups/{gid}")).await;
    assert_eq!(after.body, before.body);
    assert_eq!(app.member_ids(&gid).await, vec![u[0].clone()]);
    // The same on create: no group is made.
    let r = app
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "Nope", "members": [{"value": "ghost"}]}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    let r = app
        .list(ACME, "/Groups", &[("filter", "displayName eq \"Nope\"")])
        .await;
    assert_eq!(r.total(), 0);
    // A user of another tenant is unknown here too.
    let r = app
        .call(
            reqwest::Method::POST,
            OTHER,
            "/Users",
            Some(&json!({"schemas": [USER_SCHEMA], "userName": "foreign"})),
        )
        .await;
    let foreign = r.assert_status(201).id();
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Add", "path": "members", "value": [{"value": foreign}]}])),
    )
    .await
    .assert_error(400, Some("invalidValue"));
    assert_eq!(app.member_ids(&gid).await, vec![u[0].clone()]);
}

#[tokio::test]
async fn nested_groups_and_member_filters() {
    let app = TestApp::start().await;
    let u = users(&app, "n", 2).await;
    let inner = app.group("Inner", &[&u[0]]).await;
    let outer = app.group("Outer", &[&inner, &u[1]]).await;
    let r = app.get(&format!("/Groups/{outer}")).await;
    r.assert_status(200);
    let mut ms: Vec<(String, String)> = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["value"].as_str().unwrap().to_string(),
                m["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ms.sort();
    let mut want = vec![
        (inner.clone(), "Group".to_string()),
        (u[1].clone(), "User".to_string()),
    ];
    want.sort();
    assert_eq!(ms, want);
    let inner_member = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["value"] == json!(inner))
        .unwrap()
        .clone();
    assert_eq!(
        inner_member["$ref"],
        json!(format!("{}/Groups/{inner}", app.base(ACME)))
    );

    // Which groups contain X.
    let f = format!("members[value eq \"{}\"]", u[0]);
    let r = app.list(ACME, "/Groups", &[("filter", f.as_str())]).await;
    assert_eq!(r.assert_status(200).ids(), vec![inner.clone()]);
    let f = format!("members.value eq \"{inner}\"");
    let r = app.list(ACME, "/Groups", &[("filter", f.as_str())]).await;
    assert_eq!(r.assert_status(200).ids(), vec![outer.clone()]);
    // By member type, in any case: type is not caseExact.
    for f in [
        "members[type eq \"Group\"]",
        "members[type eq \"group\"]",
        "members.type eq \"GROUP\"",
    ] {
        let r = app.list(ACME, "/Groups", &[("filter", f)]).await;
        assert_eq!(r.assert_status(200).ids(), vec![outer.clone()], "{f}");
    }
    let r = app
        .list(
            ACME,
            "/Groups",
            &[
                ("filter", "members[type eq \"User\"]"),
                ("sortBy", "displayName"),
            ],
        )
        .await;
    assert_eq!(
        r.assert_status(200).ids(),
        vec![inner.clone(), outer.clone()]
    );
    let f = format!("members[type eq \"user\" and value eq \"{}\"]", u[1]);
    let r = app.list(ACME, "/Groups", &[("filter", f.as_str())]).await;
    assert_eq!(r.assert_status(200).ids(), vec![outer.clone()]);
    // A user's groups (direct only) and a filter on them.
    let f = format!("groups.value eq \"{inner}\"");
    let r = app.list(ACME, "/Users", &[("filter", f.as_str())]).await;
    assert_eq!(r.assert_status(200).ids(), vec![u[0].clone()]);
    let r = app
        .list(
            ACME,
            "/Users",
            &[
                ("filter", "groups[type eq \"direct\"]"),
                ("sortBy", "userName"),
            ],
        )
        .await;
    assert_eq!(r.assert_status(200).ids(), u.clone());

    // Deleting the inner group removes it from the outer one.
    app.delete(&format!("/Groups/{inner}"))
        .await
        .assert_status(204);
    assert_eq!(app.member_ids(&outer).await, vec![u[1].clone()]);
    app.get(&format!("/Groups/{inner}"))
        .await
        .assert_error(404, None);
}

#[tokio::test]
async fn deleting_a_user_removes_its_memberships() {
    let app = TestApp::start().await;
    let u = users(&app, "d", 3).await;
    let g1 = app.group("G1", &[&u[0], &u[1]]).await;
    let g2 = app.group("G2", &[&u[0], &u[2]]).await;
    app.delete(&format!("/Users/{}", u[0]))
        .await
        .assert_status(204);
    assert_eq!(app.member_ids(&g1).await, vec![u[1].clone()]);
    assert_eq!(app.member_ids(&g2).await, vec![u[2].clone()]);
    let f = format!("members[value eq \"{}\"]", u[0]);
    let r = app.list(ACME, "/Groups", &[("filter", f.as_str())]).await;
    assert_eq!(r.total(), 0);
    let n = app.db().scalar(
        "SELECT count(*) FROM group_members WHERE member_id = ?",
        &[&u[0]],
    );
    assert_eq!(n, 0);
    // The deleted user cannot be added back.
    app.patch(
        &format!("/Groups/{g1}"),
        &patch_ops(json!([{"op": "Add", "path": "members", "value": [{"value": u[0]}]}])),
    )
    .await
    .assert_error(400, Some("invalidValue"));
}

/// The sync engine reads "what changed since N": a membership change must advance the
/// member's change_seq.
#[tokio::test]
async fn membership_changes_advance_the_users_change_seq() {
    let app = TestApp::start().await;
    let u = users(&app, "s", 2).await;
    let file = app.db();
    let seq = |id: String| {
        let s = file.scalar("SELECT change_seq FROM users WHERE id = ?", &[&id]);
        async move { s }
    };
    let s0 = seq(u[0].clone()).await;
    let other0 = seq(u[1].clone()).await;
    let gid = app.group("Seq", &[&u[0]]).await;
    let s1 = seq(u[0].clone()).await;
    assert!(s1 > s0, "added at creation: {s0} -> {s1}");
    assert_eq!(seq(u[1].clone()).await, other0, "not a member: unchanged");
    // The user's ETag follows (the version is the change sequence).
    let r = app.get(&format!("/Users/{}", u[0])).await;
    assert_eq!(r.version(), format!("W/\"{s1}\""));

    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Add", "path": "members", "value": [{"value": u[1]}]}])),
    )
    .await
    .assert_status(204);
    let other1 = seq(u[1].clone()).await;
    assert!(other1 > other0);
    assert_eq!(
        seq(u[0].clone()).await,
        s1,
        "an unchanged member keeps its seq"
    );

    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Remove", "path": "members", "value": [{"value": u[0]}]}])),
    )
    .await
    .assert_status(204);
    let s2 = seq(u[0].clone()).await;
    assert!(s2 > s1, "removed: {s1} -> {s2}");

    // Renaming the group changes every member's groups[].display: their seq advances too.
    app.patch(
        &format!("/Groups/{gid}"),
        &patch_ops(json!([{"op": "Replace", "path": "displayName", "value": "Seq2"}])),
    )
    .await
    .assert_status(204);
    let other2 = seq(u[1].clone()).await;
    assert!(other2 > other1, "renamed group: {other1} -> {other2}");

    // Deleting the group: its last member changes.
    app.delete(&format!("/Groups/{gid}"))
        .await
        .assert_status(204);
    assert!(seq(u[1].clone()).await > other2);
}

/// A user's groups are rendered from the group rows whatever the groups are called, also
/// "User" or "Group".
#[tokio::test]
async fn groups_named_like_member_types() {
    let app = TestApp::start().await;
    let u = app.user("named@acme.example").await;
    let g1 = app.group("User", &[&u]).await;
    let g2 = app.group("Group", &[&u]).await;
    let r = app.get(&format!("/Users/{u}")).await;
    r.assert_status(200);
    let mut groups: Vec<(String, String, String)> = r.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["value"].as_str().unwrap().to_string(),
                g["display"].as_str().unwrap_or("<none>").to_string(),
                g["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    groups.sort();
    let mut want = vec![
        (g1, "User".to_string(), "direct".to_string()),
        (g2, "Group".to_string(), "direct".to_string()),
    ];
    want.sort();
    assert_eq!(groups, want);
}
