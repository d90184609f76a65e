//! The SQL Server application writer against a live server: runs only when
//! SCIM_BRIDGE_TEST_MSSQL holds a connection string (see docs/sqlserver.md); otherwise it
//! returns at once. It creates two tables of its own (named for the run) in that database and
//! drops them at the end.

use std::collections::BTreeSet;

use scim_bridge::config::{ApplicationConfig, DbLocation, resolve_database};
use scim_bridge::db::Connector;
use scim_bridge::db::mssql::pool::{MssqlPool, TiberiusManager};
use scim_bridge::mapping::{FieldValue, Offboarding, RoleTable, Target};
use scim_bridge::target::{AppConnector, UserApplied, UserWrite};

type Conn<'a> = bb8::PooledConnection<'a, TiberiusManager>;

async fn exec(c: &mut Conn<'_>, sql: &str) {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
}

/// (key, FirstName, IsActive) of every row, and (key, role) of every role row.
async fn contents(
    c: &mut Conn<'_>,
    users: &str,
    roles: &str,
) -> (Vec<(String, Option<String>, bool)>, Vec<(String, String)>) {
    let rows = c
        .simple_query(format!(
            "SELECT UserName, FirstName, IsActive FROM dbo.{users} ORDER BY UserName"
        ))
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let users = rows
        .iter()
        .map(|r| {
            (
                r.get::<&str, _>(0).unwrap().to_string(),
                r.get::<&str, _>(1).map(str::to_string),
                r.get::<bool, _>(2).unwrap(),
            )
        })
        .collect();
    let rows = c
        .simple_query(format!(
            "SELECT user_key, role FROM dbo.{roles} ORDER BY user_key, role"
        ))
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let roles = rows
        .iter()
        .map(|r| {
            (
                r.get::<&str, _>(0).unwrap().to_string(),
                r.get::<&str, _>(1).unwrap().to_string(),
            )
        })
        .collect();
    (users, roles)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_application_writes_upserts_roles_key_moves_and_offboarding() {
    let Some(conn) = std::env::var("SCIM_BRIDGE_TEST_MSSQL")
        .ok()
        .filter(|c| !c.trim().is_empty())
    else {
        return;
    };
    let DbLocation::SqlServer(server) = resolve_database(&conn, None, std::path::Path::new("."))
        .expect("SCIM_BRIDGE_TEST_MSSQL is not a valid SQL Server connection string")
    else {
        panic!("SCIM_BRIDGE_TEST_MSSQL is not a SQL Server connection string");
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (users, roles) = (format!("app_users_{run}"), format!("app_roles_{run}"));
    let pool = MssqlPool::connect(&server).await.unwrap();
    let mut c = pool.get().await.unwrap();
    exec(
        &mut c,
        &format!(
            "CREATE TABLE dbo.{users} (UserName NVARCHAR(256) NOT NULL PRIMARY KEY, \
             FirstName NVARCHAR(128) NULL, IsActive BIT NOT NULL DEFAULT 1, \
             EmployeeNumber INT NULL, HireDate DATETIME2(3) NULL); \
             CREATE TABLE dbo.{roles} (user_key NVARCHAR(256) NOT NULL, \
             role NVARCHAR(128) NOT NULL CHECK (role <> N'bad'), PRIMARY KEY (user_key, role));"
        ),
    )
    .await;
    // An error raised in a trigger ends the whole transaction, whatever XACT_ABORT says.
    exec(
        &mut c,
        &format!(
            "CREATE TRIGGER dbo.{roles}_doom ON dbo.{roles} AFTER INSERT AS \
             IF EXISTS (SELECT 1 FROM inserted WHERE role = N'doom') \
             THROW 50000, N'doomed by the trigger', 1;"
        ),
    )
    .await;
    let app = Connector
        .open(&ApplicationConfig {
            name: "it".into(),
            database: "(from SCIM_BRIDGE_TEST_MSSQL)".into(),
            location: DbLocation::SqlServer(server.clone()),
            schema: None,
        })
        .await
        .unwrap();
    let target = Target {
        database: "it".into(),
        user_table: format!("dbo.{users}"),
        key_column: "UserName".into(),
        key_source: "userName".into(),
        roles: Some(RoleTable {
            table: format!("dbo.{roles}"),
            user_column: "user_key".into(),
            role_column: "role".into(),
        }),
    };
    let hired = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
        .unwrap()
        .with_timezone(&chrono::Utc);

    // a and d are written; b (a CHECK violation: its statement fails) and c (the trigger ends
    // the transaction) leave nothing behind.
    let t = target.clone();
    let results = app
        .batch(Box::new(move |b| {
            Ok([("a", "ok"), ("b", "bad"), ("c", "doom"), ("d", "ok")]
                .iter()
                .map(|(k, extra)| {
                    let fields = vec![
                        ("FirstName".to_string(), FieldValue::Text(k.to_uppercase())),
                        ("IsActive".to_string(), FieldValue::Boolean(true)),
                        ("EmployeeNumber".to_string(), FieldValue::Integer(7)),
                        ("HireDate".to_string(), FieldValue::Timestamp(hired)),
                    ];
                    b.apply_user(
                        &t,
                        &UserWrite {
                            key: k,
                            previous_key: None,
                            fields: &fields,
                            roles_to_add: &set(&["user", extra]),
                            roles_to_remove: &set(&[]),
                        },
                    )
                    .map_err(|e| e.to_string())
                })
                .collect::<Vec<_>>())
        }))
        .await
        .unwrap();
    let results: Vec<Result<bool, String>> =
        results.into_iter().map(|r| r.map(|a| a.created)).collect();
    assert_eq!(results[0], Ok(true));
    assert!(results[1].is_err(), "{results:?}");
    assert!(
        results[2].as_ref().unwrap_err().contains("doomed"),
        "{results:?}"
    );
    assert_eq!(results[3], Ok(true));
    let (rows, role_rows) = contents(&mut c, &users, &roles).await;
    assert_eq!(
        rows,
        [
            ("a".into(), Some("A".into()), true),
            ("d".into(), Some("D".into()), true)
        ]
    );
    assert_eq!(
        role_rows,
        [
            ("a".into(), "ok".into()),
            ("a".into(), "user".into()),
            ("d".into(), "ok".into()),
            ("d".into(), "user".into())
        ]
    );

    // An update with a role diff, and a key move (row and roles).
    let t = target.clone();
    let results = app
        .batch(Box::new(move |b| {
            let a = b.apply_user(
                &t,
                &UserWrite {
                    key: "a",
                    previous_key: None,
                    fields: &[
                        ("FirstName".to_string(), FieldValue::Null),
                        ("IsActive".to_string(), FieldValue::Boolean(false)),
                    ],
                    roles_to_add: &set(&["user", "admin"]),
                    roles_to_remove: &set(&["ok"]),
                },
            )?;
            let d = b.apply_user(
                &t,
                &UserWrite {
                    key: "d2",
                    previous_key: Some("d"),
                    fields: &[],
                    roles_to_add: &set(&["user"]),
                    roles_to_remove: &set(&[]),
                },
            )?;
            Ok(vec![Ok(a), Ok(d)])
        }))
        .await
        .unwrap();
    let not_created = UserApplied { created: false };
    assert_eq!(results, [Ok(not_created), Ok(not_created)]);
    let (rows, role_rows) = contents(&mut c, &users, &roles).await;
    assert_eq!(
        rows,
        [
            ("a".into(), None, false),
            ("d2".into(), Some("D".into()), true)
        ]
    );
    assert_eq!(
        role_rows,
        [
            ("a".into(), "admin".into()),
            ("a".into(), "user".into()),
            ("d2".into(), "ok".into()),
            ("d2".into(), "user".into())
        ]
    );

    // Offboarding: a is deactivated and keeps no engine role; d2 is deleted.
    let t = target.clone();
    app.batch(Box::new(move |b| {
        b.offboard(
            &t,
            "a",
            &Offboarding::Update(vec![("IsActive".into(), FieldValue::Boolean(false))]),
            &set(&["admin", "user"]),
        )?;
        b.offboard(&t, "d2", &Offboarding::Delete, &set(&["ok", "user"]))?;
        Ok(vec![])
    }))
    .await
    .unwrap();
    let (rows, role_rows) = contents(&mut c, &users, &roles).await;
    assert_eq!(rows, [("a".into(), None, false)]);
    assert!(role_rows.is_empty(), "{role_rows:?}");

    exec(
        &mut c,
        &format!("DROP TABLE dbo.{users}; DROP TABLE dbo.{roles};"),
    )
    .await;
}
