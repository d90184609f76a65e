//! Microsoft's own examples of what Entra sends, as written: "Tutorial: Develop and plan
//! provisioning for a SCIM endpoint in Microsoft Entra ID" (section "SCIM protocol requests and
//! responses") and "Known issues and resolutions with SCIM 2.0 protocol compliance of the
//! Microsoft Entra user provisioning service" (the requests with and without the
//! aadOptscim062020 flag), from MicrosoftDocs/entra-docs,
//! docs/identity/app-provisioning/use-scim-to-provision-users-and-groups.md and
//! application-provisioning-config-problem-scim-compatibility.md.
//!
//! Only resource ids differ: they are server-assigned, so the requests use the ids this server
//! gave (the examples' member id "f648f8d5ea4e4cd38e9c" is a user created here).

use serde_json::{Value, json};

use crate::helpers::*;

/// Parse a request body copied from the documentation.
fn body(text: &str) -> Value {
    serde_json::from_str(text).expect("the documented request is JSON")
}

const CREATE_USER: &str = r#"{
    "schemas": [
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
    "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
    "userName": "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
    "active": true,
    "emails": [{
        "primary": true,
        "type": "work",
        "value": "Test_User_11bb11bb-cc22-dd33-ee44-55ff55ff55ff@testuser.com"
    }],
    "meta": {
        "resourceType": "User"
    },
    "name": {
        "formatted": "givenName familyName",
        "familyName": "familyName",
        "givenName": "givenName"
    },
    "roles": []
}"#;

const UPDATE_USER_MULTI_VALUED: &str = r#"{
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [
            {
            "op": "Replace",
            "path": "emails[type eq \"work\"].value",
            "value": "updatedEmail@microsoft.com"
            },
            {
            "op": "Replace",
            "path": "name.familyName",
            "value": "updatedFamilyName"
            }
    ]
}"#;

const UPDATE_USER_SINGLE_VALUED: &str = r#"{
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{
        "op": "Replace",
        "path": "userName",
        "value": "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"
    }]
}"#;

const DISABLE_USER: &str = r#"{
    "Operations": [
        {
            "op": "Replace",
            "path": "active",
            "value": false
        }
    ],
    "schemas": [
        "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    ]
}"#;

const CREATE_GROUP: &str = r#"{
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
    "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
    "displayName": "displayName",
    "meta": {
        "resourceType": "Group"
    }
}"#;

const UPDATE_GROUP_NON_MEMBER: &str = r#"{
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{
        "op": "Replace",
        "path": "displayName",
        "value": "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"
    }]
}"#;

const UPDATE_GROUP_ADD_MEMBERS: &str = r#"{
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{
        "op": "Add",
        "path": "members",
        "value": [{
            "$ref": null,
            "value": "f648f8d5ea4e4cd38e9c"
        }]
    }]
}"#;

const UPDATE_GROUP_REMOVE_MEMBERS: &str = r#"{
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{
        "op": "Remove",
        "path": "members",
        "value": [{
            "$ref": null,
            "value": "f648f8d5ea4e4cd38e9c"
        }]
    }]
}"#;

/// The tutorial's user operations, in its order: create, get, query, update, disable, delete.
#[tokio::test]
async fn tutorial_user_operations() {
    let app = TestApp::start().await;
    let r = app.post("/Users", &body(CREATE_USER)).await;
    r.assert_status(201);
    let id = r.id();
    // The documented response, less what the server assigns (id, meta times and location).
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA]));
    assert_eq!(r.body["externalId"], "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef");
    assert_eq!(r.body["meta"]["resourceType"], "User");
    assert_eq!(
        r.body["userName"],
        "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee"
    );
    assert_eq!(
        r.body["name"],
        json!({"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"})
    );
    assert_eq!(r.body["active"], true);
    assert_eq!(
        r.body["emails"],
        json!([{"value": "Test_User_11bb11bb-cc22-dd33-ee44-55ff55ff55ff@testuser.com",
                "type": "work", "primary": true}])
    );

    app.get(&format!("/Users/{id}")).await.assert_status(200);
    app.get("/Users/5171a35d82074e068ce2")
        .await
        .assert_error(404, None);
    let r = app
        .list(
            ACME,
            "/Users",
            &[(
                "filter",
                "userName eq \"Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee\"",
            )],
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.ids(), vec![id.clone()]);
    let r = app
        .list(
            ACME,
            "/Users",
            &[("filter", "userName eq \"non-existent user\"")],
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.total(), 0);
    assert_eq!(r.body["Resources"], json!([]));

    let r = app
        .patch(&format!("/Users/{id}"), &body(UPDATE_USER_MULTI_VALUED))
        .await;
    r.assert_status(200);
    assert_eq!(
        r.body["emails"],
        json!([{"value": "updatedEmail@microsoft.com", "type": "work", "primary": true}])
    );
    assert_eq!(r.body["name"]["familyName"], "updatedFamilyName");
    assert_eq!(r.body["name"]["givenName"], "givenName");

    let r = app
        .patch(&format!("/Users/{id}"), &body(UPDATE_USER_SINGLE_VALUED))
        .await;
    r.assert_status(200);
    assert_eq!(
        r.body["userName"],
        "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"
    );

    let r = app
        .patch(&format!("/Users/{id}"), &body(DISABLE_USER))
        .await;
    r.assert_status(200);
    assert_eq!(r.body["active"], false);

    app.delete(&format!("/Users/{id}")).await.assert_status(204);
    app.get(&format!("/Users/{id}"))
        .await
        .assert_error(404, None);
}

/// The tutorial's group operations: create with Microsoft's ADSCIM schema URN next to the core
/// one, get and query without members, rename, add and remove a member, delete.
#[tokio::test]
async fn tutorial_group_operations() {
    let app = TestApp::start().await;
    let r = app.post("/Groups", &body(CREATE_GROUP)).await;
    r.assert_status(201);
    let g = r.id();
    assert_eq!(r.body["schemas"], json!([GROUP_SCHEMA]));
    assert_eq!(r.body["externalId"], "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159");
    assert_eq!(r.body["displayName"], "displayName");
    assert_eq!(r.body["meta"]["resourceType"], "Group");

    let r = app
        .list(
            ACME,
            &format!("/Groups/{g}"),
            &[("excludedAttributes", "members")],
        )
        .await;
    r.assert_status(200);
    assert!(r.body.get("members").is_none());
    let r = app
        .list(
            ACME,
            "/Groups",
            &[
                ("excludedAttributes", "members"),
                ("filter", "displayName eq \"displayName\""),
            ],
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.ids(), vec![g.clone()]);

    app.patch(&format!("/Groups/{g}"), &body(UPDATE_GROUP_NON_MEMBER))
        .await
        .assert_status(204);
    let r = app.get(&format!("/Groups/{g}")).await;
    assert_eq!(
        r.body["displayName"],
        "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"
    );

    let member = app.user("member@testuser.com").await;
    let with_member = |text: &str| body(&text.replace("f648f8d5ea4e4cd38e9c", &member));
    app.patch(
        &format!("/Groups/{g}"),
        &with_member(UPDATE_GROUP_ADD_MEMBERS),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&g).await, vec![member.clone()]);
    app.patch(
        &format!("/Groups/{g}"),
        &with_member(UPDATE_GROUP_REMOVE_MEMBERS),
    )
    .await
    .assert_status(204);
    assert!(app.member_ids(&g).await.is_empty());

    app.delete(&format!("/Groups/{g}")).await.assert_status(204);
    app.get(&format!("/Groups/{g}"))
        .await
        .assert_error(404, None);
}

/// Unknown schema URNs are ignored on POST, PUT and PATCH: the ADSCIM URN also as ENTRA.md
/// quotes it (without "2.0/"), and any other URN next to the core schema.
#[tokio::test]
async fn unknown_schema_urns_are_ignored() {
    let app = TestApp::start().await;
    let adscim = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/Group";
    let r = app
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA, adscim], "displayName": "G"}),
        )
        .await;
    r.assert_status(201);
    let g = r.id();
    app.put(
        &format!("/Groups/{g}"),
        &json!({"schemas": [adscim, GROUP_SCHEMA], "displayName": "G2"}),
    )
    .await
    .assert_status(200);
    let r = app
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA, "urn:example:unknown:2.0:User"], "userName": "u"}),
        )
        .await;
    r.assert_status(201);
    let u = r.id();
    app.patch(
        &format!("/Users/{u}"),
        &json!({"schemas": [PATCH_OP, "urn:example:unknown"], "Operations": [
            {"op": "replace", "path": "title", "value": "T"}]}),
    )
    .await
    .assert_status(200);
    // A body of the other resource type is still refused.
    app.post(
        "/Users",
        &json!({"schemas": [GROUP_SCHEMA], "userName": "not-a-user"}),
    )
    .await
    .assert_error(400, Some("invalidValue"));
}

/// The compliance article's requests, without and with the aadOptscim062020 flag.
#[tokio::test]
async fn compliance_article_requests() {
    let app = TestApp::start().await;
    let u = app
        .create_user(
            json!({"schemas": [USER_SCHEMA], "userName": "babs@testuser.com",
            "emails": [{"type": "work", "value": "babs@testuser.com"}]}),
        )
        .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let user = format!("/Users/{u}");

    // Disable: "False" as a string without the flag, false with it.
    for value in [json!("False"), json!(false)] {
        let r = app
            .patch(
                &user,
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Replace", "path": "active", "value": value}]}),
            )
            .await;
        r.assert_status(200);
        assert_eq!(r.body["active"], false);
    }
    // Add a single-value string attribute, "Add" and "add".
    for op in ["Add", "add"] {
        let r = app
            .patch(
                &user,
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": op, "path": "nickName", "value": "Babs"}]}),
            )
            .await;
        r.assert_status(200);
        assert_eq!(r.body["nickName"], "Babs");
    }
    // Replace multiple attributes: one operation each without the flag.
    let r = app
        .patch(
            &user,
            &body(
                r#"{
    "schemas": [
        "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    ],
    "Operations": [
        {
            "op": "Replace",
            "path": "displayName",
            "value": "Pvlo"
        },
        {
            "op": "Replace",
            "path": "emails[type eq \"work\"].value",
            "value": "TestBcwqnm@test.microsoft.com"
        },
        {
            "op": "Replace",
            "path": "name.givenName",
            "value": "Gtfd"
        },
        {
            "op": "Replace",
            "path": "name.familyName",
            "value": "Pkqf"
        },
        {
            "op": "Replace",
            "path": "externalId",
            "value": "Eqpj"
        },
        {
            "op": "Replace",
            "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
            "value": "Eqpj"
        }
    ]
}"#,
            ),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["displayName"], "Pvlo");
    assert_eq!(
        r.body["emails"][0]["value"],
        "TestBcwqnm@test.microsoft.com"
    );
    assert_eq!(
        r.body["name"],
        json!({"givenName": "Gtfd", "familyName": "Pkqf"})
    );
    assert_eq!(r.body["externalId"], "Eqpj");
    assert_eq!(r.body[ENTERPRISE]["employeeNumber"], "Eqpj");
    // … and a path-less value with dotted and URN-qualified keys with it.
    let r = app
        .patch(
            &user,
            &body(
                r#"{
    "schemas": [
        "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    ],
    "Operations": [
        {
            "op": "replace",
            "path": "emails[type eq \"work\"].value",
            "value": "TestMhvaes@test.microsoft.com"
        },
        {
            "op": "replace",
            "value": {
                "displayName": "Bjfe",
                "name.givenName": "Kkom",
                "name.familyName": "Unua",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "Aklq"
            }
        }
    ]
}"#,
            ),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.body["displayName"], "Bjfe");
    assert_eq!(
        r.body["emails"][0]["value"],
        "TestMhvaes@test.microsoft.com"
    );
    assert_eq!(
        r.body["name"],
        json!({"givenName": "Kkom", "familyName": "Unua"})
    );
    assert_eq!(r.body[ENTERPRISE]["employeeNumber"], "Aklq");

    // Remove a group member: a value list without the flag, a filtered path with it.
    let (m1, m2) = (app.user("m1").await, app.user("m2").await);
    let g = app.group("G", &[&m1, &m2]).await;
    app.patch(
        &format!("/Groups/{g}"),
        &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Remove", "path": "members", "value": [{"value": m1}]}]}),
    )
    .await
    .assert_status(204);
    assert_eq!(app.member_ids(&g).await, vec![m2.clone()]);
    app.patch(
        &format!("/Groups/{g}"),
        &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "remove", "path": format!("members[value eq \"{m2}\"]")}]}),
    )
    .await
    .assert_status(204);
    assert!(app.member_ids(&g).await.is_empty());
}
