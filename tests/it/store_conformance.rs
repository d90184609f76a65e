//! Backend conformance: the same staging-store behaviour on every database. Each test runs on
//! a fresh SQLite file, and also on SQL Server when SCIM_BRIDGE_TEST_MSSQL holds a connection
//! string (ADO.NET or mssql://; see docs/sqlserver.md). On SQL Server every test works in its
//! own tenant, so runs can share one database.

use chrono::{DateTime, TimeZone, Utc};
use scim_bridge::config::Durability;
use scim_bridge::config::{DbLocation, resolve_database};
use scim_bridge::scim::Limits;
use scim_bridge::scim::filter::parse_filter;
use scim_bridge::scim::patch::MemberOp;
use scim_bridge::scim::resource::{MemberRef, normalize};
use scim_bridge::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ResourceType};
use scim_bridge::store::RequestLog;
use std::sync::Arc;

use scim_bridge::db::{Staging, open_staging};
use scim_bridge::store::{GroupChange, ListQuery, Page, StoreError};
use serde_json::{Map, Value, json};

pub struct Backend {
    pub store: Arc<dyn Staging>,
    pub tenant: String,
    /// The staging database as the configuration names it.
    pub database: String,
    pub _dir: Option<tempfile::TempDir>,
}

/// SQLite always; SQL Server when configured.
pub async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.db");
    let sqlite = open_staging(&DbLocation::Sqlite(path.clone()), Durability::Normal)
        .await
        .unwrap();
    let mut out = vec![Backend {
        store: sqlite,
        tenant: "t1".into(),
        database: format!("sqlite://{}", path.display()),
        _dir: Some(dir),
    }];
    if let Ok(conn) = std::env::var("SCIM_BRIDGE_TEST_MSSQL")
        && !conn.trim().is_empty()
    {
        let db = resolve_database(&conn, None, std::path::Path::new("."))
            .expect("SCIM_BRIDGE_TEST_MSSQL is not a valid SQL Server connection string");
        let store = open_staging(&db, Durability::Normal).await.unwrap();
        assert_eq!(store.backend_name(), "sqlserver");
        out.push(Backend {
            store,
            tenant: format!("conformance-{}", uuid::Uuid::now_v7().simple()),
            database: conn,
            _dir: None,
        });
    }
    out
}

pub fn rt() -> ResourceType {
    ResourceType::user(DEFAULT_CUSTOM_SCHEMA)
}

pub fn t(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, h, 0, 0).unwrap()
}

fn user_doc(name: &str, email: &str) -> Map<String, Value> {
    normalize(
        &rt(),
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": name,
            "displayName": format!("Display {name}"),
            "emails": [{"type": "work", "value": email, "primary": true}],
            "active": true,
        }),
        &Limits::default(),
    )
    .unwrap()
    .doc
}

pub fn group_change(name: &str, members: &[&str]) -> GroupChange {
    let doc = normalize(
        &ResourceType::group(),
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": name,
        }),
        &Limits::default(),
    )
    .unwrap()
    .doc;
    GroupChange {
        doc,
        members: vec![MemberOp::Add(
            members
                .iter()
                .map(|m| MemberRef {
                    value: m.to_string(),
                })
                .collect(),
        )],
    }
}

pub fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn list_names(
    b: &Backend,
    filter: Option<&str>,
    page: Page,
    desc: bool,
) -> (i64, Vec<String>) {
    let parsed = filter.map(|f| parse_filter(f, &Limits::default()).unwrap());
    let (total, items) = b
        .store
        .list(
            &b.tenant,
            &rt(),
            ListQuery {
                filter: parsed.as_ref(),
                sort_by: Some("userName"),
                descending: desc,
            },
            &page,
            false,
        )
        .await
        .unwrap();
    let names = items
        .iter()
        .map(|s| {
            let v: Value = serde_json::from_str(&s.doc).unwrap();
            v["userName"].as_str().unwrap().to_string()
        })
        .collect();
    (total, names)
}

#[tokio::test]
async fn users_round_trip_with_case_insensitive_unique_names() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let a = id();
        let created = s
            .create_user(
                tn,
                &rt,
                &a,
                &user_doc("Ann@Example.com", "ann@example.com"),
                t(1),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        let got = s.get_user(tn, &a, true).await.unwrap();
        assert_eq!(got.version, created.version, "{}", s.backend_name());
        assert_eq!(
            got.created,
            "2030-01-01T01:00:00.000Z",
            "{}",
            s.backend_name()
        );
        assert_eq!(got.related, Some(vec![]), "{}", s.backend_name());
        let e = s
            .create_user(
                tn,
                &rt,
                &id(),
                &user_doc("ANN@example.COM", "x@example.com"),
                t(2),
                &RequestLog::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(_)),
            "{}: {e}",
            s.backend_name()
        );
        // Deleted: gone from SCIM, and the name is free again.
        s.delete_user(
            tn,
            &a,
            Some(&[created.version]),
            t(3),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        assert!(matches!(
            s.get_user(tn, &a, false).await,
            Err(StoreError::NotFound)
        ));
        s.create_user(
            tn,
            &rt,
            &id(),
            &user_doc("ann@example.com", "ann@example.com"),
            t(4),
            &RequestLog::default(),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn updates_compare_and_swap_on_the_version() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let a = id();
        let v1 = s
            .create_user(
                tn,
                &rt,
                &a,
                &user_doc("bob", "bob@example.com"),
                t(1),
                &RequestLog::default(),
            )
            .await
            .unwrap()
            .version;
        let e = s
            .update_user(
                tn,
                &rt,
                &a,
                Some(&[v1 + 1000]),
                t(2),
                &Ok,
                &RequestLog::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::VersionMismatch),
            "{}",
            s.backend_name()
        );
        let deactivate = |mut d: Map<String, Value>| {
            d.insert("active".into(), json!(false));
            Ok(d)
        };
        let v2 = s
            .update_user(
                tn,
                &rt,
                &a,
                Some(&[v1]),
                t(2),
                &deactivate,
                &RequestLog::default(),
            )
            .await
            .unwrap();
        assert!(v2.version > v1, "{}", s.backend_name());
        assert_eq!(v2.last_modified, "2030-01-01T02:00:00.000Z");
        // No change: same version.
        let v3 = s
            .update_user(tn, &rt, &a, None, t(3), &Ok, &RequestLog::default())
            .await
            .unwrap();
        assert_eq!(v3.version, v2.version, "{}", s.backend_name());
        let (_, names) = list_names(
            &b,
            Some("active eq false"),
            Page {
                start_index: 1,
                count: 10,
            },
            false,
        )
        .await;
        assert_eq!(names, vec!["bob"], "{}", s.backend_name());
    }
}

#[tokio::test]
async fn memberships_are_rows_and_follow_deletes() {
    for b in backends().await {
        let (s, tn, rt, grt) = (&b.store, b.tenant.as_str(), rt(), ResourceType::group());
        let (u1, u2, g) = (id(), id(), id());
        for (u, n) in [(&u1, "m1"), (&u2, "m2")] {
            s.create_user(
                tn,
                &rt,
                u,
                &user_doc(n, &format!("{n}@example.com")),
                t(1),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        }
        s.create_group(
            tn,
            &grt,
            &g,
            group_change("Sales", &[&u1, &u2]),
            t(2),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let members = s.get_group(tn, &g, true).await.unwrap().related.unwrap();
        let mut ids: Vec<_> = members
            .iter()
            .map(|m| (m.id.clone(), m.kind.clone()))
            .collect();
        ids.sort();
        let mut want = vec![
            (u1.clone(), "User".to_string()),
            (u2.clone(), "User".to_string()),
        ];
        want.sort();
        assert_eq!(ids, want, "{}", s.backend_name());
        let groups = s.get_user(tn, &u1, true).await.unwrap().related.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].display.as_deref(),
            Some("Sales"),
            "{}",
            s.backend_name()
        );
        // Remove one, add an unknown one (rejected, nothing changes), add itself (rejected).
        s.update_group(
            tn,
            &grt,
            &g,
            None,
            t(3),
            &|doc| {
                Ok(GroupChange {
                    doc,
                    members: vec![MemberOp::Remove(vec![u2.clone()])],
                })
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let e = s
            .update_group(
                tn,
                &grt,
                &g,
                None,
                t(4),
                &|doc| {
                    Ok(GroupChange {
                        doc,
                        members: vec![MemberOp::Add(vec![MemberRef {
                            value: "nobody".into(),
                        }])],
                    })
                },
                &RequestLog::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Rejected(_)),
            "{}: {e}",
            s.backend_name()
        );
        let g_id = g.clone();
        let e = s
            .update_group(
                tn,
                &grt,
                &g,
                None,
                t(4),
                &move |doc| {
                    Ok(GroupChange {
                        doc,
                        members: vec![MemberOp::Add(vec![MemberRef {
                            value: g_id.clone(),
                        }])],
                    })
                },
                &RequestLog::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Rejected(_)),
            "{}: {e}",
            s.backend_name()
        );
        let members = s.get_group(tn, &g, true).await.unwrap().related.unwrap();
        assert_eq!(members.len(), 1, "{}", s.backend_name());
        // Filters over memberships.
        let parsed =
            parse_filter(&format!("members[value eq \"{u1}\"]"), &Limits::default()).unwrap();
        let (total, _) = s
            .list(
                tn,
                &grt,
                ListQuery {
                    filter: Some(&parsed),
                    ..Default::default()
                },
                &Page {
                    start_index: 1,
                    count: 10,
                },
                false,
            )
            .await
            .unwrap();
        assert_eq!(total, 1, "{}", s.backend_name());
        // Deleting the user takes it out of the group; deleting the group leaves the user.
        s.delete_user(tn, &u1, None, t(5), &RequestLog::default())
            .await
            .unwrap();
        assert_eq!(
            s.get_group(tn, &g, true).await.unwrap().related.unwrap(),
            vec![]
        );
        s.delete_group(tn, &g, None, t(6), &RequestLog::default())
            .await
            .unwrap();
        assert!(matches!(
            s.get_group(tn, &g, false).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            s.get_user(tn, &u2, true).await.unwrap().related.unwrap(),
            vec![]
        );
    }
}

#[tokio::test]
async fn filters_sorting_and_paging() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        for (n, e) in [
            ("carol", "Carol@Work.example"),
            ("a_b", "ab@example.com"),
            ("axb", "axb@example.com"),
            ("dave ", "dave@example.com"),
        ] {
            // The SCIM API refuses a userName that ends in whitespace; users stored before that
            // rule can have one, and the store still compares it exactly.
            let mut doc = user_doc(n.trim_end(), e);
            doc.insert("userName".into(), json!(n));
            s.create_user(tn, &rt, &id(), &doc, t(1), &RequestLog::default())
                .await
                .unwrap();
        }
        let all = Page {
            start_index: 1,
            count: 10,
        };
        let name = &b.store.backend_name();
        let check = |f: &'static str, want: Vec<&'static str>| {
            let b = &b;
            let all = all.clone();
            async move {
                let (_, got) = list_names(b, Some(f), all, false).await;
                assert_eq!(got, want, "{name}: {f}");
            }
        };
        check("userName eq \"CAROL\"", vec!["carol"]).await;
        check(
            "emails[type eq \"work\"].value eq \"carol@work.example\"",
            vec!["carol"],
        )
        .await;
        check("userName sw \"a_\"", vec!["a_b"]).await; // '_' is not a wildcard
        check("userName co \"X\"", vec!["axb"]).await;
        check("userName ew \"b\"", vec!["a_b", "axb"]).await;
        check("userName eq \"dave\"", vec![]).await; // trailing spaces count
        check("userName eq \"dave \"", vec!["dave "]).await;
        check("not (userName pr)", vec![]).await;
        check(
            "displayName co \"display c\" or userName eq \"axb\"",
            vec!["axb", "carol"],
        )
        .await;
        let (total, page) = list_names(
            &b,
            None,
            Page {
                start_index: 2,
                count: 2,
            },
            true,
        )
        .await;
        assert_eq!(total, 4, "{name}");
        assert_eq!(page, vec!["carol", "axb"], "{name}");
        let (total, page) = list_names(
            &b,
            None,
            Page {
                start_index: 1,
                count: 0,
            },
            false,
        )
        .await;
        assert_eq!((total, page.len()), (4, 0), "{name}");
    }
}

#[tokio::test]
async fn concurrent_creates_of_one_name_give_one_user_and_one_conflict() {
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let doc = user_doc("race@example.com", "race@example.com");
        let (id1, id2) = (id(), id());
        let no_log = RequestLog::default();
        let (r1, r2) = tokio::join!(
            s.create_user(tn, &rt, &id1, &doc, t(1), &no_log),
            s.create_user(tn, &rt, &id2, &doc, t(1), &no_log),
        );
        let oks = [r1.is_ok(), r2.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(oks, 1, "{}", s.backend_name());
        let err = r1.err().or(r2.err()).unwrap();
        assert!(
            matches!(err, StoreError::Conflict(_)),
            "{}: {err}",
            s.backend_name()
        );
        let (total, _) = list_names(
            &b,
            Some("userName eq \"race@example.com\""),
            Page {
                start_index: 1,
                count: 10,
            },
            false,
        )
        .await;
        assert_eq!(total, 1, "{}", s.backend_name());
    }
}

#[tokio::test]
async fn admin_counts_and_the_provisioning_log() {
    use scim_bridge::store::{
        About, ProvisioningEntry, ProvisioningQuery, StatusFilter, TenantCounts, UserKey,
    };
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        assert_eq!(
            s.tenant_counts(tn).await.unwrap(),
            TenantCounts::default(),
            "{}",
            s.backend_name()
        );
        let (u1, u2, g1, g2) = (id(), id(), id(), id());
        for (u, n) in [(&u1, "c1"), (&u2, "c2")] {
            s.create_user(
                tn,
                &rt,
                u,
                &user_doc(n, &format!("{n}@example.com")),
                t(1),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        }
        s.update_user(
            tn,
            &rt,
            &u2,
            None,
            t(2),
            &|mut doc| {
                doc.insert("active".into(), Value::Bool(false));
                Ok(doc)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let grt = ResourceType::group();
        s.create_group(
            tn,
            &grt,
            &g1,
            group_change("Two", &[&u1, &u2]),
            t(3),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        s.create_group(
            tn,
            &grt,
            &g2,
            group_change("None", &[]),
            t(3),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            s.tenant_counts(tn).await.unwrap(),
            TenantCounts {
                active_users: 1,
                inactive_users: 1,
                groups: 2,
                memberships: 2,
            },
            "{}",
            s.backend_name()
        );
        assert_eq!(
            s.member_counts(tn, &[g1.clone(), g2.clone(), id()])
                .await
                .unwrap(),
            [2, 0, 0]
        );
        // A userName's users, case-insensitively and deleted ones too; an externalId's.
        let named = |k: UserKey| {
            let s = s.clone();
            async move { s.user_ids(tn, &k).await.unwrap() }
        };
        assert_eq!(
            named(UserKey::UserName("C1".into())).await,
            vec![u1.clone()]
        );
        s.delete_user(tn, &u1, None, t(4), &RequestLog::default())
            .await
            .unwrap();
        assert_eq!(
            named(UserKey::UserName("c1".into())).await,
            vec![u1.clone()]
        );
        let x = id();
        s.update_user(
            tn,
            &rt,
            &u2,
            None,
            t(5),
            &|mut doc| {
                doc.insert("externalId".into(), Value::String(x.clone()));
                Ok(doc)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            named(UserKey::ExternalId(x.clone())).await,
            vec![u2.clone()]
        );
        assert!(
            named(UserKey::ExternalId(x.to_uppercase()))
                .await
                .is_empty(),
            "externalId is case-exact"
        );
        assert!(named(UserKey::UserName("nobody".into())).await.is_empty());

        let entry = |minute: u32, status: u16| ProvisioningEntry {
            tenant: tn.to_string(),
            at: Utc
                .with_ymd_and_hms(2030, 1, 1, 10, minute, 0)
                .unwrap()
                .checked_add_signed(chrono::Duration::milliseconds(250))
                .unwrap(),
            request_id: format!("r{minute}"),
            method: if minute == 4 { "POST" } else { "PATCH" }.into(),
            path: "/Users/{id}".into(),
            resource_id: minute.is_multiple_of(2).then(|| format!("u{minute}")),
            status,
            duration_ms: 1.25,
            error: (status >= 400).then(|| "nope".to_string()),
            user_name: (minute == 1 || minute == 4).then(|| "ann@example.com".to_string()),
            external_id: (minute == 3).then(|| "X-3".to_string()),
        };
        let entries: Vec<_> = [(0, 200), (1, 404), (2, 201), (3, 500), (4, 409)]
            .iter()
            .map(|(m, st)| entry(*m, *st))
            .collect();
        s.insert_provisioning_log(&entries).await.unwrap();
        let all = ProvisioningQuery {
            limit: 10,
            ..Default::default()
        };
        let (total, rows) = s.provisioning_log(tn, &all).await.unwrap();
        assert_eq!(total, 5, "{}", s.backend_name());
        let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["r4", "r3", "r2", "r1", "r0"], "newest first");
        let r1 = &rows[3];
        assert_eq!(
            (
                r1.at.as_str(),
                r1.method.as_str(),
                r1.path.as_str(),
                r1.resource_id.as_deref(),
                r1.status,
                r1.duration_ms,
                r1.error.as_deref()
            ),
            (
                "2030-01-01T10:01:00.250Z",
                "PATCH",
                "/Users/{id}",
                None,
                404,
                1.25,
                Some("nope")
            ),
            "{}",
            s.backend_name()
        );
        assert_eq!(rows[2].resource_id.as_deref(), Some("u2"));
        let q = ProvisioningQuery {
            status: Some(StatusFilter::Class(4)),
            limit: 1,
            offset: 1,
            ..Default::default()
        };
        let (total, rows) = s.provisioning_log(tn, &q).await.unwrap();
        assert_eq!((total, rows[0].request_id.as_str()), (2, "r1"));
        let q = ProvisioningQuery {
            since: Some(entries[1].at),
            until: Some(entries[3].at),
            limit: 10,
            ..Default::default()
        };
        let (total, rows) = s.provisioning_log(tn, &q).await.unwrap();
        assert_eq!(total, 2, "since is inclusive, until exclusive");
        assert_eq!(rows.len(), 2);
        // The entries about a resource: any of its ids, its userName or its externalId.
        let about =
            |ids: &[&str], user_name: Option<&str>, external_id: Option<&str>| ProvisioningQuery {
                about: Some(About {
                    ids: ids.iter().map(|s| s.to_string()).collect(),
                    user_name: user_name.map(str::to_string),
                    external_id: external_id.map(str::to_string),
                }),
                limit: 10,
                ..Default::default()
            };
        let request_ids = |q: ProvisioningQuery| {
            let s = s.clone();
            async move {
                let (total, rows) = s.provisioning_log(tn, &q).await.unwrap();
                let ids: Vec<String> = rows.into_iter().map(|r| r.request_id).collect();
                assert_eq!(total as usize, ids.len());
                ids
            }
        };
        assert_eq!(request_ids(about(&["u2"], None, None)).await, ["r2"]);
        assert_eq!(
            request_ids(about(&["u0", "u2"], Some("ann@example.com"), Some("X-3"))).await,
            ["r4", "r3", "r2", "r1", "r0"],
            "{}",
            s.backend_name()
        );
        assert_eq!(
            request_ids(about(&[], Some("ann@example.com"), None)).await,
            ["r4", "r1"]
        );
        assert_eq!(request_ids(about(&[], None, Some("X-3"))).await, ["r3"]);
        assert!(request_ids(about(&["nobody"], None, None)).await.is_empty());
        let by = |method: Option<&str>, request: Option<&str>| ProvisioningQuery {
            method: method.map(str::to_string),
            request_id: request.map(str::to_string),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(request_ids(by(Some("POST"), None)).await, ["r4"]);
        assert_eq!(request_ids(by(None, Some("r3"))).await, ["r3"]);
        assert!(request_ids(by(Some("DELETE"), None)).await.is_empty());
        let (_, rows) = s.provisioning_log(tn, &by(None, Some("r4"))).await.unwrap();
        assert_eq!(
            (rows[0].user_name.as_deref(), rows[0].external_id.as_deref()),
            (Some("ann@example.com"), None)
        );
        // Other tenants' entries may share a SQL Server database: at least this tenant's two.
        assert!(s.prune_provisioning_log(entries[2].at).await.unwrap() >= 2);
        let (total, _) = s.provisioning_log(tn, &all).await.unwrap();
        assert_eq!(total, 3, "{}", s.backend_name());
    }
}

/// The sync ledger's reads on the staging database: a staged user as the engine would read it
/// (groups included, by id or case-insensitive userName, a live user before a deleted one of
/// the same name), and the reads of a tenant that has not synced yet.
#[tokio::test]
async fn the_sync_ledger_reads_staged_users_and_an_empty_ledger() {
    use scim_bridge::sync::ledger::{RunQuery, UserRef};
    for b in backends().await {
        let (s, tn, rt) = (&b.store, b.tenant.as_str(), rt());
        let db = s.clone();
        let name = s.backend_name();
        let (ann, old_bob, bob, g) = (id(), id(), id(), id());
        s.create_user(
            tn,
            &rt,
            &ann,
            &user_doc("Ledger.Ann", "ann@example.com"),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        s.create_group(
            tn,
            &ResourceType::group(),
            &g,
            group_change("Ledger Group", &[&ann]),
            t(2),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        s.create_user(
            tn,
            &rt,
            &old_bob,
            &user_doc("Ledger.Bob", "bob@example.com"),
            t(1),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        s.delete_user(tn, &old_bob, None, t(2), &RequestLog::default())
            .await
            .unwrap();
        s.create_user(
            tn,
            &rt,
            &bob,
            &user_doc("ledger.bob", "bob@example.com"),
            t(3),
            &RequestLog::default(),
        )
        .await
        .unwrap();

        let row = db
            .staged_user(tn, UserRef::UserName("LEDGER.ann"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: Ann by name"));
        assert_eq!(
            (
                row.user.id.as_str(),
                row.user_name.as_str(),
                row.active,
                row.deleted
            ),
            (ann.as_str(), "Ledger.Ann", true, false),
            "{name}"
        );
        assert_eq!(
            row.user.doc.get("userName"),
            Some(&json!("Ledger.Ann")),
            "{name}"
        );
        let groups: Vec<_> = row
            .user
            .groups
            .iter()
            .map(|x| {
                (
                    x.id.as_str(),
                    x.display_name.as_str(),
                    x.external_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(groups, [(g.as_str(), "Ledger Group", None)], "{name}");

        let live = db
            .staged_user(tn, UserRef::UserName("Ledger.Bob"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (live.user.id.as_str(), live.deleted),
            (bob.as_str(), false),
            "{name}"
        );
        assert!(live.user.groups.is_empty(), "{name}");
        let gone = db
            .staged_user(tn, UserRef::Id(&old_bob))
            .await
            .unwrap()
            .unwrap();
        assert!(
            gone.deleted,
            "{name}: a deleted user is read until it is purged"
        );
        assert!(
            db.staged_user(tn, UserRef::Id(&id()))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            db.staged_user("another-tenant", UserRef::Id(&ann))
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );

        let q = RunQuery {
            tenant: Some(tn.to_string()),
            status: Some("running".into()),
            trigger: Some("cli".into()),
            since: Some(t(0)),
            until: Some(t(5)),
            limit: 10,
            offset: 0,
        };
        let (total, runs) = db.runs(&q).await.unwrap();
        assert_eq!((total, runs.len()), (0, 0), "{name}");
        assert!(db.last_run(tn).await.unwrap().is_none());
        assert!(db.run(i64::MAX).await.unwrap().is_none());
        assert!(db.run_state(i64::MAX).await.unwrap().is_none());
        assert_eq!(db.count_links(tn).await.unwrap(), 0, "{name}");
        let (total, items) = db.items(i64::MAX, Some("created"), 10, 0).await.unwrap();
        assert_eq!((total, items.len()), (0, 0), "{name}");
        assert_eq!(db.lease(tn, t(1)).await.unwrap(), None, "{name}");
        assert!(db.link(tn, &ann).await.unwrap().is_none());
        // Inactive and deleted users count only once the engine has written them (a link).
        assert_eq!(db.count_pending(tn, 24).await.unwrap(), 0, "{name}");
        let (total, pending) = db.pending_offboardings(tn, 24, 10, 0).await.unwrap();
        assert_eq!((total, pending.len()), (0, 0), "{name}");
    }
}

/// A write that changes something commits its provisioning log entry in its own transaction;
/// a refused write, or one that changes nothing, writes none (the request's observer queues
/// those); a written entry can be corrected.
#[tokio::test]
async fn a_write_and_its_log_entry_commit_together() {
    use scim_bridge::store::request_log::Finished;
    use scim_bridge::store::{ProvisioningEntry, ProvisioningQuery};
    for b in backends().await {
        let (s, tn, rt, grt) = (&b.store, b.tenant.as_str(), rt(), ResourceType::group());
        let open = |request_id: &str, method: &str, success: u16, id: &str| {
            let log = RequestLog::open(
                ProvisioningEntry {
                    tenant: tn.to_string(),
                    at: t(1),
                    request_id: request_id.to_string(),
                    method: method.to_string(),
                    path: "/Users".into(),
                    resource_id: None,
                    status: 0,
                    duration_ms: 0.0,
                    error: None,
                    user_name: Some("ann@example.com".into()),
                    external_id: None,
                },
                std::time::Instant::now(),
            );
            log.on_success(success, id);
            log
        };
        let logged = |request_id: &str| {
            let q = ProvisioningQuery {
                request_id: Some(request_id.to_string()),
                limit: 10,
                ..Default::default()
            };
            async move {
                s.settle_provisioning_log().await.unwrap();
                let (_, rows) = s.provisioning_log(tn, &q).await.unwrap();
                rows.iter()
                    .map(|r| (r.status, r.resource_id.clone(), r.error.clone()))
                    .collect::<Vec<_>>()
            }
        };
        let name = s.backend_name();
        let (u, g) = (id(), id());
        let doc = user_doc("ann@example.com", "ann@example.com");

        let log = open("create", "POST", 201, &u);
        s.create_user(tn, &rt, &u, &doc, t(1), &log).await.unwrap();
        assert_eq!(log.finish(201, None, None), Finished::Written, "{name}");
        assert_eq!(
            logged("create").await,
            [(201, Some(u.clone()), None)],
            "{name}"
        );

        // Refused: the entry is rolled back with the write, and left to the observer.
        let taken = id();
        let log = open("taken", "POST", 201, &taken);
        let e = s.create_user(tn, &rt, &taken, &doc, t(1), &log).await;
        assert!(matches!(e, Err(StoreError::Conflict(_))), "{name}: {e:?}");
        assert!(
            matches!(
                log.finish(409, Some("taken".into()), None),
                Finished::Record(_)
            ),
            "{name}"
        );
        assert_eq!(logged("taken").await, [], "{name}");

        // Nothing to change: nothing written.
        let log = open("same", "PUT", 200, &u);
        s.update_user(tn, &rt, &u, None, t(1), &|_| Ok(doc.clone()), &log)
            .await
            .unwrap();
        assert!(
            matches!(log.finish(200, None, None), Finished::Record(_)),
            "{name}"
        );
        assert_eq!(logged("same").await, [], "{name}");

        // The wrong version: refused, nothing written.
        let log = open("stale", "PATCH", 200, &u);
        let e = s
            .update_user(tn, &rt, &u, Some(&[-1]), t(1), &Ok, &log)
            .await;
        assert!(
            matches!(e, Err(StoreError::VersionMismatch)),
            "{name}: {e:?}"
        );
        assert_eq!(logged("stale").await, [], "{name}");

        let log = open("patch", "PATCH", 200, &u);
        let renamed = user_doc("ann@example.com", "ann.lee@example.com");
        s.update_user(tn, &rt, &u, None, t(1), &|_| Ok(renamed.clone()), &log)
            .await
            .unwrap();
        // Answered otherwise after the commit (a deadline): corrected, before it settled into
        // the log and after.
        let Finished::Amend(amended) = log.finish(503, Some("too slow".into()), None) else {
            panic!("{name}: a written entry answered otherwise is amended");
        };
        s.amend_provisioning_log(&[amended]).await.unwrap();
        assert_eq!(
            logged("patch").await,
            [(503, Some(u.clone()), Some("too slow".into()))],
            "{name}"
        );
        let lost = ProvisioningEntry {
            status: 500,
            error: Some("lost".into()),
            ..open("create", "POST", 201, &u).for_write().unwrap()
        };
        s.amend_provisioning_log(&[lost]).await.unwrap();
        assert_eq!(
            logged("create").await,
            [(500, Some(u.clone()), Some("lost".into()))],
            "{name}"
        );

        let log = open("group", "POST", 201, &g);
        s.create_group(tn, &grt, &g, group_change("Sales", &[&u]), t(1), &log)
            .await
            .unwrap();
        let log = open("group-same", "PATCH", 204, &g);
        s.update_group(
            tn,
            &grt,
            &g,
            None,
            t(1),
            &|doc| {
                Ok(GroupChange {
                    doc,
                    members: vec![],
                })
            },
            &log,
        )
        .await
        .unwrap();
        let log = open("group-delete", "DELETE", 204, &g);
        s.delete_group(tn, &g, None, t(1), &log).await.unwrap();
        let log = open("delete", "DELETE", 204, &u);
        s.delete_user(tn, &u, None, t(1), &log).await.unwrap();
        assert_eq!(
            logged("group").await,
            [(201, Some(g.clone()), None)],
            "{name}"
        );
        assert_eq!(logged("group-same").await, [], "{name}");
        assert_eq!(
            logged("group-delete").await,
            [(204, Some(g.clone()), None)],
            "{name}"
        );
        assert_eq!(
            logged("delete").await,
            [(204, Some(u.clone()), None)],
            "{name}"
        );
    }
}
