//! The SQL Server application writer against a live server: runs only when
//! SCIM_BRIDGE_TEST_MSSQL holds a connection string (see docs/sqlserver.md); otherwise it
//! returns at once. It creates two tables of its own (named for the run) in that database and
//! drops them at the end.

use std::collections::BTreeSet;

use scim_bridge::config::{ApplicationConfig, DbLocation, resolve_database};
use scim_bridge::db::Connector;
use scim_bridge::db::mssql::pool::{MssqlPool, TiberiusManager};
use scim_bridge::mapping::{Adopt, FieldValue, Offboarding, RoleTable, Target};
use scim_bridge::target::row::{AppRow, AppValue};
use scim_bridge::target::{AppConnector, Existing, TargetError, UserApplied, UserWrite};

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
            tenant_column: None,
        }),
        adopt: Adopt::Never,
        tenant_column: None,
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
                            tenant: "it",
                            existing: Existing::Owned,
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
                    tenant: "it",
                    existing: Existing::Owned,
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
                    tenant: "it",
                    existing: Existing::Owned,
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

    // The rows as they are now, read back in their SQL types: a key without a row is absent.
    let read = app
        .read_rows(
            &target,
            "it",
            &[
                "FirstName".into(),
                "IsActive".into(),
                "EmployeeNumber".into(),
                "HireDate".into(),
            ],
            &["a".into(), "d2".into(), "gone".into()],
        )
        .await
        .unwrap();
    let row = |first: AppValue, active: bool, roles: &[&str]| AppRow {
        fields: [
            ("FirstName".to_string(), first),
            ("IsActive".to_string(), AppValue::Bool(active)),
            ("EmployeeNumber".to_string(), AppValue::Int(7)),
            ("HireDate".to_string(), AppValue::Time(hired)),
        ]
        .into(),
        roles: set(roles),
    };
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(read["a"], row(AppValue::Null, false, &["admin", "user"]));
    assert_eq!(
        read["d2"],
        row(AppValue::Text("D".into()), true, &["ok", "user"])
    );
    // No columns: which keys have a row.
    let keys = app
        .read_rows(&target, "it", &[], &["gone".into(), "d2".into()])
        .await
        .unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["d2"]);

    // Offboarding: a is deactivated and keeps no engine role; d2 is deleted.
    let t = target.clone();
    app.batch(Box::new(move |b| {
        b.offboard(
            &t,
            "it",
            "a",
            &Offboarding::Update(vec![("IsActive".into(), FieldValue::Boolean(false))]),
            &set(&["admin", "user"]),
        )?;
        b.offboard(&t, "it", "d2", &Offboarding::Delete, &set(&["ok", "user"]))?;
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

/// Two tenants sharing tables with tenant columns: each write and read matches by key and
/// tenant, so one tenant's row (or role rows) under a key is never another's. The key column
/// is declared with a collation other than the database's, which the reads must not compare
/// against another collation; the other columns are read back in their SQL types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_application_scopes_rows_by_tenant_and_reads_them_back() {
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
            "CREATE TABLE dbo.{users} (UserName NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL, \
             TenantName NVARCHAR(64) NOT NULL, FirstName NVARCHAR(128) NULL, \
             IsActive BIT NOT NULL DEFAULT 1, Badge BIGINT NULL, Salary DECIMAL(10,2) NULL, \
             HireDate DATE NULL, SeenAt DATETIMEOFFSET NULL, Photo VARBINARY(MAX) NULL, \
             CONSTRAINT {users}_key UNIQUE (UserName, TenantName)); \
             CREATE TABLE dbo.{roles} (user_key NVARCHAR(256) NOT NULL, tenant NVARCHAR(64) NOT NULL, \
             role NVARCHAR(128) NOT NULL, PRIMARY KEY (user_key, tenant, role));"
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
            tenant_column: Some("tenant".into()),
        }),
        adopt: Adopt::Never,
        tenant_column: Some("TenantName".into()),
    };
    let hired = chrono::DateTime::parse_from_rfc3339("2030-01-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    // One write of `key` for `tenant`, as the engine makes it.
    let write = |tenant: &'static str, key: &'static str, first: &'static str, existing| {
        let (t, app) = (target.clone(), app.clone());
        async move {
            app.batch(Box::new(move |b| {
                let fields = vec![
                    ("FirstName".to_string(), FieldValue::Text(first.into())),
                    ("Badge".to_string(), FieldValue::Integer(1 << 40)),
                    ("HireDate".to_string(), FieldValue::Timestamp(hired)),
                ];
                Ok(vec![
                    b.apply_user(
                        &t,
                        &UserWrite {
                            key,
                            previous_key: None,
                            fields: &fields,
                            roles_to_add: &set(&["user"]),
                            roles_to_remove: &set(&[]),
                            tenant,
                            existing,
                        },
                    )
                    .map_err(|e| e.to_string()),
                ])
            }))
            .await
            .unwrap()
            .remove(0)
            .map(|a| a.created)
        }
    };
    // Both tenants create "ann": a row each, with a role row each.
    assert_eq!(
        write("ta", "ann", "Ann of A", Existing::Create).await,
        Ok(true)
    );
    assert_eq!(
        write("tb", "ann", "Ann of B", Existing::Create).await,
        Ok(true)
    );
    // Creating it again finds the tenant's own row: not the engine's to write.
    let again = write("ta", "ann", "again", Existing::Create).await;
    assert!(again.as_ref().unwrap_err().contains("adopt"), "{again:?}");
    // An update of ta's row leaves tb's alone.
    assert_eq!(
        write("ta", "ann", "Ann A.", Existing::Owned).await,
        Ok(false)
    );
    exec(
        &mut c,
        &format!(
            "UPDATE dbo.{users} SET Salary = 1234.50, \
             SeenAt = '2030-01-02T05:04:05+02:00', Photo = 0x0102 WHERE TenantName = N'ta'"
        ),
    )
    .await;
    let columns: Vec<String> = [
        "FirstName",
        "IsActive",
        "Badge",
        "Salary",
        "HireDate",
        "SeenAt",
        "Photo",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let keys = ["ann".to_string(), "bob".to_string()];
    let read = app.read_rows(&target, "ta", &columns, &keys).await.unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    let ann = &read["ann"];
    let seen = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(
        ann.fields,
        [
            ("FirstName".to_string(), AppValue::Text("Ann A.".into())),
            ("IsActive".to_string(), AppValue::Bool(true)),
            ("Badge".to_string(), AppValue::Int(1 << 40)),
            ("Salary".to_string(), AppValue::Real(1234.5)),
            ("HireDate".to_string(), AppValue::Time(hired)),
            ("SeenAt".to_string(), AppValue::Time(seen)),
            ("Photo".to_string(), AppValue::Other),
        ]
        .into()
    );
    assert_eq!(ann.roles, set(&["user"]));
    let b_read = app
        .read_rows(&target, "tb", &columns[..1], &keys)
        .await
        .unwrap();
    assert_eq!(
        b_read["ann"].fields["FirstName"],
        AppValue::Text("Ann of B".into())
    );
    // Offboarding ta's user deletes ta's row and role rows only.
    let t = target.clone();
    app.batch(Box::new(move |b| {
        b.offboard(&t, "ta", "ann", &Offboarding::Delete, &set(&["user"]))?;
        Ok::<_, TargetError>(vec![])
    }))
    .await
    .unwrap();
    assert!(
        app.read_rows(&target, "ta", &[], &keys)
            .await
            .unwrap()
            .is_empty()
    );
    let b_read = app.read_rows(&target, "tb", &[], &keys).await.unwrap();
    assert_eq!(b_read["ann"].roles, set(&["user"]));

    exec(
        &mut c,
        &format!("DROP TABLE dbo.{users}; DROP TABLE dbo.{roles};"),
    )
    .await;
}
