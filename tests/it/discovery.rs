//! Discovery: ServiceProviderConfig, Schemas, ResourceTypes.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn service_provider_config() {
    let app = TestApp::start().await;
    let r = app.get("/ServiceProviderConfig").await;
    r.assert_status(200);
    assert_eq!(r.header("content-type"), Some("application/scim+json"));
    let b = &r.body;
    assert_eq!(
        b["schemas"],
        json!(["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"])
    );
    assert_eq!(b["patch"]["supported"], true);
    assert_eq!(b["bulk"]["supported"], false);
    assert_eq!(
        b["filter"],
        json!({"supported": true, "maxResults": MAX_PAGE})
    );
    assert_eq!(b["sort"]["supported"], true);
    assert_eq!(b["etag"]["supported"], true);
    assert_eq!(b["changePassword"]["supported"], false);
    assert_eq!(b["authenticationSchemes"][0]["type"], "oauthbearertoken");
    assert_eq!(
        b["meta"]["location"],
        json!(app.url(ACME, "/ServiceProviderConfig"))
    );
    // It needs the token like everything else.
    let r = app
        .send(app.client.get(app.url(ACME, "/ServiceProviderConfig")))
        .await;
    r.assert_error(401, None);
}

#[tokio::test]
async fn schemas_publish_the_custom_extension() {
    let app = TestApp::start().await;
    let r = app.get("/Schemas").await;
    r.assert_status(200);
    assert_eq!(r.body["schemas"], json!([LIST_RESPONSE]));
    let mut ids: Vec<&str> = r
        .resources()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![GROUP_SCHEMA, USER_SCHEMA, ENTERPRISE, CUSTOM]);
    assert_eq!(r.total(), 4);
    let custom = r.resources().iter().find(|s| s["id"] == CUSTOM).unwrap();
    let names: Vec<&str> = custom["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (1..=16).map(|i| format!("customAttribute{i:02}")).collect();
    assert_eq!(names, want);
    for a in custom["attributes"].as_array().unwrap() {
        assert_eq!(a["type"], "string");
        assert_eq!(a["multiValued"], false);
        assert_eq!(a["mutability"], "readWrite");
    }
    assert_eq!(custom["meta"]["resourceType"], "Schema");
    // One schema by URN, case-insensitively; unknown is 404.
    let r = app
        .get(&format!("/Schemas/{}", CUSTOM.to_uppercase()))
        .await;
    assert_eq!(r.assert_status(200).body["id"], CUSTOM);
    app.get("/Schemas/urn:nope").await.assert_error(404, None);
    // The core user schema describes the attributes the server validates with.
    let r = app.get(&format!("/Schemas/{USER_SCHEMA}")).await;
    let attrs = r.body["attributes"].as_array().unwrap();
    let user_name = attrs.iter().find(|a| a["name"] == "userName").unwrap();
    assert_eq!(user_name["uniqueness"], "server");
    assert_eq!(user_name["required"], true);
    assert_eq!(user_name["caseExact"], false);
    let groups = attrs.iter().find(|a| a["name"] == "groups").unwrap();
    assert_eq!(groups["mutability"], "readOnly");
}

#[tokio::test]
async fn resource_types() {
    let app = TestApp::start().await;
    let r = app.get("/ResourceTypes").await;
    r.assert_status(200);
    assert_eq!(r.total(), 2);
    let user = r
        .resources()
        .iter()
        .find(|t| t["id"] == "User")
        .unwrap()
        .clone();
    assert_eq!(user["endpoint"], "/Users");
    assert_eq!(user["schema"], USER_SCHEMA);
    let mut exts: Vec<(String, bool)> = user["schemaExtensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["schema"].as_str().unwrap().to_string(),
                e["required"].as_bool().unwrap(),
            )
        })
        .collect();
    exts.sort();
    assert_eq!(
        exts,
        vec![(ENTERPRISE.to_string(), false), (CUSTOM.to_string(), false)]
    );
    let group = app.get("/ResourceTypes/Group").await;
    group.assert_status(200);
    assert_eq!(group.body["endpoint"], "/Groups");
    assert_eq!(group.body["schema"], GROUP_SCHEMA);
    let group_exts = group
        .body
        .get("schemaExtensions")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(group_exts, 0);
    app.get("/ResourceTypes/Nope").await.assert_error(404, None);
}
