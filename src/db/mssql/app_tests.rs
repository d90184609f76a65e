//! The statements the shared writer issues in T-SQL for each batch, and its attempts, recorded
//! without a server (a recorder stands in for the connection and answers counts and upserts
//! from a fixed set of keys), and the connection failure against a closed port. The same
//! writer against a live SQL Server is tests/it/app_target_mssql.rs (with
//! SCIM_BRIDGE_TEST_MSSQL).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use super::*;
use crate::config::DbLocation;
use crate::db::mssql::rows;
use crate::db::mssql::tsql::{UNPARSEABLE, parse};
use crate::mapping::{Adopt, FieldValue, Offboarding, RoleTable, Target};
use crate::store::DbError;
use crate::target::writer::Param;
use crate::target::{AppConnector, Existing, UserWrite};

/// Records every statement; fails the ones listed.
#[derive(Default)]
struct Recorder {
    log: Vec<Stmt>,
    /// Keys that have a row (answers count_key, and whether an upsert creates).
    existing: BTreeSet<String>,
    /// A statement whose SQL contains `.0` with a parameter equal to `.1` fails; the
    /// transaction state is then `.2` (1: goes on, -1 doomed, 0 rolled back).
    fail: Vec<(String, Param, i64)>,
    state: i64,
}

impl Recorder {
    fn run(&mut self, s: &Stmt) -> Result<(), TargetError> {
        self.log.push(s.clone());
        if s.sql == APP_BEGIN {
            self.state = 1;
        } else if s.sql == APP_COMMIT || s.sql == APP_ROLLBACK {
            self.state = 0;
        }
        if let Some((_, _, after)) = self
            .fail
            .iter()
            .find(|(sql, p, _)| s.sql.contains(sql.as_str()) && s.params.contains(p))
        {
            self.state = *after;
            return Err(TargetError::Db(DbError::Failed(
                "refused by the recorder".into(),
            )));
        }
        Ok(())
    }
}

impl Exec for Recorder {
    fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError> {
        self.run(s)?;
        Ok(1)
    }

    fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError> {
        self.run(s)?;
        if s.sql == XACT_STATE {
            return Ok(self.state);
        }
        let key = match s.params.first() {
            Some(Param::Text(k)) => k.clone(),
            other => panic!("no key: {other:?}"),
        };
        let exists = self.existing.contains(&key);
        Ok(if s.sql.starts_with("SELECT COUNT(*)") {
            i64::from(exists)
        } else {
            // The upsert answers `created`.
            i64::from(!exists)
        })
    }
}

fn target(roles: bool) -> Target {
    Target {
        database: "app".into(),
        user_table: "dbo.app_users".into(),
        key_column: "UserName".into(),
        key_source: "userName".into(),
        roles: roles.then(|| RoleTable {
            table: "dbo.user_roles".into(),
            user_column: "user_key".into(),
            role_column: "role".into(),
            tenant_column: None,
        }),
        adopt: Adopt::Never,
        tenant_column: None,
    }
}

/// The same tables with a tenant column in each (rows of tenants sharing them told apart).
fn scoped_target() -> Target {
    let mut t = target(true);
    t.tenant_column = Some("TenantName".into());
    if let Some(r) = &mut t.roles {
        r.tenant_column = Some("tenant".into());
    }
    t
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn t(s: &str) -> Param {
    Param::Text(s.into())
}

fn stmt(sql: impl Into<String>, params: Vec<Param>) -> Stmt {
    Stmt::new(sql, params)
}

/// The statements of the tests' schema, quoted.
fn upsert_sql(cols: &[&str]) -> String {
    let cols: Vec<String> = cols.iter().map(|c| format!("[{c}]")).collect();
    upsert_user("[dbo].[app_users]", "[UserName]", &cols, None)
}
const ROLES: (&str, &str, &str) = ("[dbo].[user_roles]", "[user_key]", "[role]");

fn assert_parses(log: &[Stmt]) {
    for s in log {
        if !UNPARSEABLE.contains(&s.sql.as_str()) {
            parse(&s.sql).unwrap_or_else(|e| panic!("{e}\n    {}", s.sql));
        }
    }
}

/// Users `keys` with one field and the roles `ok` (plus `bad` for the key `bad_for`).
fn write_users(
    rec: &mut Recorder,
    keys: &'static [&'static str],
) -> (usize, Result<Vec<Result<bool, String>>, TargetError>) {
    let target = target(true);
    let mut calls = 0;
    let r = writer::run_batch(rec, &TSQL, &mut |b| {
        calls += 1;
        Ok(keys
            .iter()
            .map(|k| {
                let fields = vec![("Name".to_string(), FieldValue::Text(k.to_uppercase()))];
                b.apply_user(
                    &target,
                    &UserWrite {
                        key: k,
                        previous_key: None,
                        fields: &fields,
                        roles_to_add: &set(&["ok"]),
                        roles_to_remove: &set(&[]),
                        tenant: "t1",
                        existing: Existing::Owned,
                    },
                )
                .map(|a| a.created)
                .map_err(|e| e.to_string())
            })
            .collect())
    });
    (calls, r)
}

#[test]
fn parameters_are_typed_from_field_values() {
    let at = Utc.with_ymd_and_hms(2030, 5, 6, 7, 8, 9).unwrap();
    assert_eq!(Param::of(&FieldValue::Null), Param::Null);
    assert_eq!(Param::of(&FieldValue::Text("Ann".into())), t("Ann"));
    assert_eq!(Param::of(&FieldValue::Integer(-42)), Param::Int(-42));
    assert_eq!(Param::of(&FieldValue::Boolean(true)), Param::Bool(true));
    assert_eq!(Param::of(&FieldValue::Timestamp(at)), Param::Time(at));
    // Bound as the types SQL Server receives: NVARCHAR NULL, NVARCHAR, BIGINT, BIT, DATETIME2.
    let typed: Vec<rows::Param> = [
        Param::Null,
        t("x"),
        Param::Int(1),
        Param::Bool(false),
        Param::Time(at),
    ]
    .iter()
    .map(rows::Param::from)
    .collect();
    assert_eq!(
        typed,
        [
            rows::Param::Null,
            rows::Param::Text("x".into()),
            rows::Param::Int(1),
            rows::Param::Bool(false),
            rows::Param::Time(at.naive_utc()),
        ]
    );
    let mut q = Query::new("SELECT @P1, @P2, @P3, @P4, @P5");
    for p in &typed {
        p.bind(&mut q);
    }
}

#[test]
fn a_user_write_is_one_upsert_then_its_role_diff_in_one_transaction() {
    let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    let fields = vec![
        ("FirstName".to_string(), FieldValue::Text("Ann".into())),
        ("IsActive".to_string(), FieldValue::Boolean(true)),
        ("EmployeeNumber".to_string(), FieldValue::Integer(7)),
        ("HireDate".to_string(), FieldValue::Timestamp(at)),
        ("Phone".to_string(), FieldValue::Null),
    ];
    let mut rec = Recorder::default();
    let target = target(true);
    let created = writer::run_batch(&mut rec, &TSQL, &mut |b| {
        b.apply_user(
            &target,
            &UserWrite {
                key: "ann@example.com",
                previous_key: None,
                fields: &fields,
                roles_to_add: &set(&["Admin", "User"]),
                roles_to_remove: &set(&["Guest"]),
                tenant: "t1",
                existing: Existing::Owned,
            },
        )
    })
    .unwrap();
    assert!(created.created);
    let key = t("ann@example.com");
    assert_eq!(
        rec.log,
        vec![
            stmt(APP_BEGIN, vec![]),
            stmt(
                upsert_sql(&[
                    "FirstName",
                    "IsActive",
                    "EmployeeNumber",
                    "HireDate",
                    "Phone"
                ]),
                vec![
                    key.clone(),
                    t("Ann"),
                    Param::Bool(true),
                    Param::Int(7),
                    Param::Time(at),
                    Param::Null
                ]
            ),
            stmt(
                remove_role(ROLES.0, ROLES.1, ROLES.2, None),
                vec![key.clone(), t("Guest")]
            ),
            stmt(
                add_role(ROLES.0, ROLES.1, ROLES.2, None),
                vec![key.clone(), t("Admin")]
            ),
            stmt(
                add_role(ROLES.0, ROLES.1, ROLES.2, None),
                vec![key, t("User")]
            ),
            stmt(APP_COMMIT, vec![]),
        ]
    );
    assert_parses(&rec.log);
    // An existing row is updated, not created.
    let mut rec = Recorder {
        existing: set(&["ann@example.com"]),
        ..Recorder::default()
    };
    let target = Target {
        roles: None,
        ..target
    };
    let applied = writer::run_batch(&mut rec, &TSQL, &mut |b| {
        b.apply_user(
            &target,
            &UserWrite {
                key: "ann@example.com",
                previous_key: None,
                fields: &[],
                roles_to_add: &set(&["Admin"]),
                roles_to_remove: &set(&[]),
                tenant: "t1",
                existing: Existing::Owned,
            },
        )
    })
    .unwrap();
    assert!(!applied.created);
    assert_eq!(rec.log.len(), 3, "no role statements without a role table");
    assert_eq!(rec.log[1].sql, upsert_sql(&[]));
    assert_parses(&rec.log);
}

#[test]
fn a_key_move_rekeys_the_row_and_its_roles_before_the_upsert() {
    let target = target(true);
    // The user's result, inside a batch that commits.
    let move_to = |rec: &mut Recorder, new: &'static str| {
        writer::run_batch(rec, &TSQL, &mut |b| {
            Ok(b.apply_user(
                &target,
                &UserWrite {
                    key: new,
                    previous_key: Some("old@example.com"),
                    fields: &[],
                    roles_to_add: &set(&[]),
                    roles_to_remove: &set(&[]),
                    tenant: "t1",
                    existing: Existing::Owned,
                },
            ))
        })
        .unwrap()
    };
    let count = count_key("[dbo].[app_users]", "[UserName]", None);
    let mut rec = Recorder {
        existing: set(&["old@example.com"]),
        ..Recorder::default()
    };
    move_to(&mut rec, "new@example.com").unwrap();
    let (new, old) = (t("new@example.com"), t("old@example.com"));
    assert_eq!(
        rec.log[1..6],
        [
            stmt(count.clone(), vec![old.clone()]),
            stmt(count.clone(), vec![new.clone()]),
            stmt(
                rekey("[dbo].[app_users]", "[UserName]", None),
                vec![new.clone(), old.clone()]
            ),
            stmt(
                rekey(ROLES.0, ROLES.1, None),
                vec![new.clone(), old.clone()]
            ),
            stmt(upsert_sql(&[]), vec![new.clone()]),
        ]
    );
    assert_parses(&rec.log);
    // No row under the old key: nothing to move.
    let mut rec = Recorder::default();
    move_to(&mut rec, "new@example.com").unwrap();
    assert_eq!(rec.log[1], stmt(count.clone(), vec![old.clone()]));
    assert_eq!(rec.log[2].sql, upsert_sql(&[]));
    // The new key is taken: a conflict, and nothing is moved (the batch retries with a
    // savepoint and rolls the user back to it).
    let mut rec = Recorder {
        existing: set(&["old@example.com", "taken@example.com"]),
        ..Recorder::default()
    };
    let e = move_to(&mut rec, "taken@example.com").unwrap_err();
    assert!(matches!(e, TargetError::Conflict(_)), "{e}");
    assert!(!rec.log.iter().any(|s| s.sql.starts_with("UPDATE")));
    assert!(rec.log.iter().any(|s| s.sql == ROLLBACK_TO_SAVEPOINT));
}

#[test]
fn a_failed_user_is_retried_in_a_savepoint_and_the_others_are_written() {
    let mut rec = Recorder {
        fail: vec![("INSERT INTO [dbo].[user_roles]".into(), t("b"), 1)],
        ..Recorder::default()
    };
    let (calls, results) = write_users(&mut rec, &["a", "b", "c"]);
    let results = results.unwrap();
    assert_eq!(calls, 2, "optimistic, then a savepoint per user");
    assert_eq!(results[0], Ok(true));
    assert!(results[1].as_ref().unwrap_err().contains("refused"));
    assert_eq!(results[2], Ok(true));
    let sqls: Vec<&str> = rec.log.iter().map(|s| s.sql.as_str()).collect();
    let n = |sql: &str| sqls.iter().filter(|s| **s == sql).count();
    assert_eq!(
        (
            n(APP_BEGIN),
            n(APP_ROLLBACK),
            n(APP_COMMIT),
            n(SAVEPOINT),
            n(XACT_STATE),
            n(ROLLBACK_TO_SAVEPOINT)
        ),
        (2, 1, 1, 3, 1, 1)
    );
    // The optimistic attempt stopped at b; c was written in the second attempt only.
    let first_rollback = sqls.iter().position(|s| *s == APP_ROLLBACK).unwrap();
    assert!(
        !rec.log[..first_rollback]
            .iter()
            .any(|s| s.params.contains(&t("c")))
    );
    assert_eq!(sqls.last(), Some(&APP_COMMIT));
    // In the second attempt, b is rolled back to its savepoint right after its error.
    let state = sqls.iter().position(|s| *s == XACT_STATE).unwrap();
    assert_eq!(sqls[state + 1], ROLLBACK_TO_SAVEPOINT);
    assert_eq!(sqls[state + 2], SAVEPOINT);
    assert_parses(&rec.log);
}

#[test]
fn an_error_that_ends_the_transaction_is_not_tried_again() {
    for after in [0, -1] {
        let mut rec = Recorder {
            fail: vec![("INSERT INTO [dbo].[user_roles]".into(), t("b"), after)],
            ..Recorder::default()
        };
        let (calls, results) = write_users(&mut rec, &["a", "b", "c"]);
        let results = results.unwrap();
        assert_eq!(calls, 3, "state {after}");
        assert_eq!(results[0], Ok(true));
        assert!(results[1].as_ref().unwrap_err().contains("refused"));
        assert_eq!(results[2], Ok(true));
        // The last attempt: nothing for b, then a commit.
        let begins: Vec<usize> = rec
            .log
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sql == APP_BEGIN)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(begins.len(), 3);
        let last = &rec.log[begins[2]..];
        assert!(!last.iter().any(|s| s.params.contains(&t("b"))));
        assert!(last.iter().any(|s| s.params.contains(&t("c"))));
        assert_eq!(last.last().unwrap().sql, APP_COMMIT);
        assert!(!last.iter().any(|s| s.sql == ROLLBACK_TO_SAVEPOINT));
    }
}

#[test]
fn a_batch_whose_closure_fails_is_rolled_back() {
    let mut rec = Recorder::default();
    let target = target(false);
    let e = writer::run_batch(&mut rec, &TSQL, &mut |b| -> Result<(), TargetError> {
        b.offboard(&target, "t1", "k", &Offboarding::Delete, &set(&[]))?;
        Err(TargetError::Task("stop".into()))
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "application database task failed: stop");
    assert_eq!(rec.log.last().unwrap().sql, APP_ROLLBACK);
    assert!(!rec.log.iter().any(|s| s.sql == APP_COMMIT));
}

#[test]
fn a_failed_commit_is_rolled_back_before_the_connection_is_returned() {
    // The recorder fails statements by parameter; a commit has none, so fail it here.
    struct FailCommit(Recorder);
    impl Exec for FailCommit {
        fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError> {
            let n = self.0.execute(s)?;
            if s.sql == APP_COMMIT {
                return Err(TargetError::Db(DbError::Failed("commit refused".into())));
            }
            Ok(n)
        }
        fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError> {
            self.0.scalar(s)
        }
    }
    let mut ex = FailCommit(Recorder::default());
    let target = target(false);
    let e = writer::run_batch(&mut ex, &TSQL, &mut |b| {
        b.offboard(&target, "t1", "k", &Offboarding::Delete, &set(&[]))
    })
    .unwrap_err();
    assert!(e.to_string().contains("commit refused"), "{e}");
    let sqls: Vec<&str> = ex.0.log.iter().map(|s| s.sql.as_str()).collect();
    assert_eq!(sqls[sqls.len() - 2..], [APP_COMMIT, APP_ROLLBACK]);
}

#[test]
fn offboarding_removes_the_applied_roles_then_deletes_or_updates_the_row() {
    let target = target(true);
    let at = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let update = Offboarding::Update(vec![
        ("IsActive".to_string(), FieldValue::Boolean(false)),
        ("LeftAt".to_string(), FieldValue::Timestamp(at)),
    ]);
    let mut rec = Recorder::default();
    writer::run_batch(&mut rec, &TSQL, &mut |b| {
        b.offboard(&target, "t1", "k1", &Offboarding::Delete, &set(&["Admin"]))?;
        b.offboard(&target, "t1", "k2", &update, &set(&[]))?;
        b.offboard(&target, "t1", "k3", &Offboarding::None, &set(&["User"]))
    })
    .unwrap();
    let (tbl, key) = ("[dbo].[app_users]", "[UserName]");
    assert_eq!(
        rec.log,
        vec![
            stmt(APP_BEGIN, vec![]),
            stmt(
                remove_role(ROLES.0, ROLES.1, ROLES.2, None),
                vec![t("k1"), t("Admin")]
            ),
            stmt(delete_row(tbl, key, None), vec![t("k1")]),
            stmt(
                update_row(tbl, key, &["[IsActive]".into(), "[LeftAt]".into()], None),
                vec![Param::Bool(false), Param::Time(at), t("k2")]
            ),
            stmt(
                remove_role(ROLES.0, ROLES.1, ROLES.2, None),
                vec![t("k3"), t("User")]
            ),
            stmt(APP_COMMIT, vec![]),
        ]
    );
    assert_parses(&rec.log);
}

/// With tenant columns, every statement matches the row by key and tenant and the inserts write
/// the tenant: the upsert takes it after the key (@P2), the key statements after the key(s)
/// (the writer's order), the role statements after the role (@P3).
#[test]
fn scoped_writes_match_by_key_and_tenant_and_write_the_tenant() {
    let target = scoped_target();
    let (tbl, key, tc) = ("[dbo].[app_users]", "[UserName]", "[TenantName]");
    let roles = (
        "[dbo].[user_roles]",
        "[user_key]",
        "[role]",
        Some("[tenant]"),
    );
    let fields = vec![("FirstName".to_string(), FieldValue::Text("Ann".into()))];
    let mut rec = Recorder {
        existing: set(&["old@example.com"]),
        ..Recorder::default()
    };
    writer::run_batch(&mut rec, &TSQL, &mut |b| {
        b.apply_user(
            &target,
            &UserWrite {
                key: "ann@example.com",
                previous_key: Some("old@example.com"),
                fields: &fields,
                roles_to_add: &set(&["Admin"]),
                roles_to_remove: &set(&["Guest"]),
                tenant: "t1",
                existing: Existing::Owned,
            },
        )
    })
    .unwrap();
    let (new, old, tenant) = (t("ann@example.com"), t("old@example.com"), t("t1"));
    let count = count_key(tbl, key, Some(tc));
    assert_eq!(
        count,
        "SELECT COUNT(*) FROM [dbo].[app_users] WITH (UPDLOCK, HOLDLOCK) \
         WHERE [UserName] = @P1 AND [TenantName] = @P2"
    );
    assert_eq!(
        rec.log,
        vec![
            stmt(APP_BEGIN, vec![]),
            stmt(count.clone(), vec![old.clone(), tenant.clone()]),
            stmt(count, vec![new.clone(), tenant.clone()]),
            stmt(
                rekey(tbl, key, Some(tc)),
                vec![new.clone(), old.clone(), tenant.clone()]
            ),
            stmt(
                rekey(roles.0, roles.1, roles.3),
                vec![new.clone(), old, tenant.clone()]
            ),
            stmt(
                upsert_user(tbl, key, &["[FirstName]".into()], Some(tc)),
                vec![new.clone(), tenant.clone(), t("Ann")]
            ),
            stmt(
                remove_role(roles.0, roles.1, roles.2, roles.3),
                vec![new.clone(), t("Guest"), tenant.clone()]
            ),
            stmt(
                add_role(roles.0, roles.1, roles.2, roles.3),
                vec![new, t("Admin"), tenant]
            ),
            stmt(APP_COMMIT, vec![]),
        ]
    );
    // The tenant narrows the UPDATE and the INSERT writes it, after the key.
    let upsert = &rec.log[5].sql;
    assert!(
        upsert.contains("SET [FirstName] = @P3 WHERE [UserName] = @P1 AND [TenantName] = @P2"),
        "{upsert}"
    );
    assert!(
        upsert.contains("([UserName], [TenantName], [FirstName]) VALUES (@P1, @P2, @P3)"),
        "{upsert}"
    );
    assert!(
        rec.log[7]
            .sql
            .contains("([user_key], [role], [tenant]) SELECT @P1, @P2, @P3 WHERE NOT EXISTS"),
        "{}",
        rec.log[7].sql
    );
    assert_parses(&rec.log);

    // Without fields the upsert counts the tenant's row, and inserts it with the tenant.
    let mut rec = Recorder::default();
    writer::run_batch(&mut rec, &TSQL, &mut |b| {
        b.apply_user(
            &Target {
                roles: None,
                ..scoped_target()
            },
            &UserWrite {
                key: "k",
                previous_key: None,
                fields: &[],
                roles_to_add: &set(&[]),
                roles_to_remove: &set(&[]),
                tenant: "t1",
                existing: Existing::Adopt,
            },
        )
    })
    .unwrap();
    assert_eq!(
        rec.log[1],
        stmt(upsert_user(tbl, key, &[], Some(tc)), vec![t("k"), t("t1")])
    );
    assert!(
        rec.log[1]
            .sql
            .contains("WHERE [UserName] = @P1 AND [TenantName] = @P2;"),
        "{}",
        rec.log[1].sql
    );
    assert_parses(&rec.log);

    // Offboarding: the tenant's role rows, then its row, deleted or updated.
    let at = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let update = Offboarding::Update(vec![("LeftAt".to_string(), FieldValue::Timestamp(at))]);
    let mut rec = Recorder::default();
    writer::run_batch(&mut rec, &TSQL, &mut |b| {
        b.offboard(&target, "t1", "k1", &Offboarding::Delete, &set(&["Admin"]))?;
        b.offboard(&target, "t1", "k2", &update, &set(&[]))
    })
    .unwrap();
    assert_eq!(
        rec.log[1..4],
        [
            stmt(
                remove_role(roles.0, roles.1, roles.2, roles.3),
                vec![t("k1"), t("Admin"), t("t1")]
            ),
            stmt(delete_row(tbl, key, Some(tc)), vec![t("k1"), t("t1")]),
            stmt(
                update_row(tbl, key, &["[LeftAt]".into()], Some(tc)),
                vec![Param::Time(at), t("k2"), t("t1")]
            ),
        ]
    );
    assert_eq!(
        rec.log[3].sql,
        "UPDATE [dbo].[app_users] SET [LeftAt] = @P1 WHERE [UserName] = @P2 AND [TenantName] = @P3"
    );
    assert_parses(&rec.log);
}

/// A write for a user whose row does not exist yet (`Existing::Create`) first counts the key
/// (locked until the batch ends); a row that has appeared meanwhile is the application's, and
/// the user fails without a write.
#[test]
fn a_create_finds_a_row_that_appeared_and_leaves_it_alone() {
    let target = target(false);
    let create = |rec: &mut Recorder| {
        writer::run_batch(rec, &TSQL, &mut |b| {
            Ok(b.apply_user(
                &target,
                &UserWrite {
                    key: "ann@example.com",
                    previous_key: None,
                    fields: &[],
                    roles_to_add: &set(&[]),
                    roles_to_remove: &set(&[]),
                    tenant: "t1",
                    existing: Existing::Create,
                },
            ))
        })
        .unwrap()
    };
    let count = count_key("[dbo].[app_users]", "[UserName]", None);
    let mut rec = Recorder::default();
    assert!(create(&mut rec).unwrap().created);
    assert_eq!(
        rec.log[1..3],
        [
            stmt(count.clone(), vec![t("ann@example.com")]),
            stmt(upsert_sql(&[]), vec![t("ann@example.com")]),
        ]
    );
    let mut rec = Recorder {
        existing: set(&["ann@example.com"]),
        ..Recorder::default()
    };
    let e = create(&mut rec).unwrap_err();
    assert!(matches!(e, TargetError::NotOwned(_)), "{e}");
    assert!(e.to_string().contains("adopt = \"match-by-key\""), "{e}");
    assert!(!rec.log.iter().any(|s| s.sql.contains("INSERT")));
    assert_parses(&rec.log);
}

/// Reads bind each key (at most KEYS_PER_READ a statement) and pad to a power of two, so a
/// few texts serve every batch size; the tenant follows the keys.
#[test]
fn reads_bind_keys_in_padded_chunks() {
    let keys: Vec<String> = (0..1030).map(|i| format!("k{i}")).collect();
    let chunks = key_chunks(&keys);
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        [1024, 8],
        "1024 keys, then 6 padded to 8"
    );
    assert_eq!(chunks[1][5..], ["k1029", "k1029", "k1029"]);
    assert_eq!(key_chunks(&keys[..3])[0], ["k0", "k1", "k2", "k2"]);
    assert!(key_chunks(&[]).is_empty());
    assert_eq!(
        read_rows_sql(
            "[dbo].[app_users]",
            "[UserName]",
            &["[FirstName]".into()],
            2,
            Some("[TenantName]")
        ),
        "SELECT [UserName], [FirstName] FROM [dbo].[app_users] \
         WHERE [UserName] IN (@P1, @P2) AND [TenantName] = @P3"
    );
    assert_eq!(
        read_roles_sql(ROLES.0, ROLES.1, ROLES.2, 1, None),
        "SELECT [user_key], [role] FROM [dbo].[user_roles] WHERE [user_key] IN (@P1)"
    );
    // The most parameters one read binds stays under SQL Server's 2100.
    let most = read_rows_sql("[t]", "[k]", &[], KEYS_PER_READ, Some("[tc]"));
    assert_eq!(
        crate::db::mssql::tsql::param_numbers(&most).len(),
        KEYS_PER_READ + 1
    );
    const { assert!(KEYS_PER_READ < 2100) };
}

/// Values read back as the engine compares them, whatever their SQL Server type.
#[test]
fn column_values_are_read_in_the_terms_the_engine_compares() {
    use std::borrow::Cow;
    use tiberius::IntoSql;
    let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    let midnight = Utc.with_ymd_and_hms(2030, 1, 2, 0, 0, 0).unwrap();
    let offset = at.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap());
    let guid = uuid::Uuid::parse_str("6F1C2A8E-0D4B-4A51-9E53-8A4C3B2D1E0F").unwrap();
    for (data, value) in [
        (
            ColumnData::String(Some(Cow::from("Ann"))),
            AppValue::Text("Ann".into()),
        ),
        (ColumnData::String(None), AppValue::Null),
        (ColumnData::U8(Some(3)), AppValue::Int(3)),
        (ColumnData::I16(Some(-4)), AppValue::Int(-4)),
        (ColumnData::I32(Some(1042)), AppValue::Int(1042)),
        (ColumnData::I64(Some(1 << 40)), AppValue::Int(1 << 40)),
        (ColumnData::I32(None), AppValue::Null),
        (ColumnData::Bit(Some(true)), AppValue::Bool(true)),
        (ColumnData::Bit(None), AppValue::Null),
        (ColumnData::F32(Some(0.5)), AppValue::Real(0.5)),
        (ColumnData::F64(Some(2.25)), AppValue::Real(2.25)),
        (
            ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(1234, 2))),
            AppValue::Real(12.34),
        ),
        (
            ColumnData::Guid(Some(guid)),
            AppValue::Text("6f1c2a8e-0d4b-4a51-9e53-8a4c3b2d1e0f".into()),
        ),
        (at.naive_utc().into_sql(), AppValue::Time(at)),
        (ColumnData::DateTime2(None), AppValue::Null),
        (at.date_naive().into_sql(), AppValue::Time(midnight)),
        (offset.into_sql(), AppValue::Time(at)),
        (
            ColumnData::Binary(Some(Cow::from(vec![1u8, 2]))),
            AppValue::Other,
        ),
        (ColumnData::Binary(None), AppValue::Null),
        (at.time().into_sql(), AppValue::Other),
    ] {
        assert_eq!(app_value(&data).unwrap(), value, "{data:?}");
    }
    // Keys (and roles) are text, or an integer column's number.
    assert_eq!(key_text(AppValue::Int(42)), Some("42".into()));
    assert_eq!(key_text(AppValue::Text("k".into())), Some("k".into()));
    assert_eq!(key_text(AppValue::Null), None);
    // A time the engine wrote is held by the row it reads back.
    assert!(
        app_value(&at.naive_utc().into_sql())
            .unwrap()
            .holds(&FieldValue::Timestamp(at))
    );
}

#[test]
fn invalid_identifiers_are_refused_before_any_statement() {
    let mut target = target(false);
    target.user_table = "users]; DROP TABLE x; --".into();
    let mut rec = Recorder::default();
    let e = writer::run_batch(&mut rec, &TSQL, &mut |b| {
        Ok(b.offboard(&target, "t1", "k", &Offboarding::Delete, &set(&[])))
    })
    .unwrap()
    .unwrap_err();
    assert!(matches!(e, TargetError::Identifier(_)), "{e}");
    let with_values = rec.log.iter().filter(|s| !s.params.is_empty()).count();
    assert_eq!(with_values, 0, "{:?}", rec.log);
    assert_eq!(rec.log.last().unwrap().sql, APP_COMMIT);
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_naming_application_server_and_database() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = MssqlConfig::parse(&format!(
        "Server=127.0.0.1,{port};Database=crm_app;User Id=bridge;Password=do-not-print-me;\
         TrustServerCertificate=true;Connect Timeout=5"
    ))
    .unwrap();
    let config = ApplicationConfig {
        name: "crm".into(),
        database: "…".into(),
        location: DbLocation::SqlServer(server),
        schema: None,
    };
    let started = Instant::now();
    let msg = crate::db::Connector
        .open(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "{msg}");
    assert!(msg.starts_with("application database crm: "), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1,{port}")), "{msg}");
    assert!(msg.contains("database crm_app"), "{msg}");
    assert!(!msg.contains("do-not-print-me"), "{msg}");
}

/// Every system type as `describe` spells it, and the kind the schema check takes it for:
/// lengths in characters, `max` for -1, rowversion never a time.
#[test]
fn column_types_are_spelled_as_t_sql_declares_them_and_classified() {
    use crate::target::schema::Kind;
    for (name, max_length, precision, scale, spelled, kind) in [
        ("nvarchar", 510, 0, 0, "nvarchar(255)", Kind::Text),
        ("nvarchar", -1, 0, 0, "nvarchar(max)", Kind::Text),
        ("nchar", 20, 0, 0, "nchar(10)", Kind::Text),
        ("varchar", 200, 0, 0, "varchar(200)", Kind::Text),
        ("varchar", -1, 0, 0, "varchar(max)", Kind::Text),
        ("char", 1, 0, 0, "char(1)", Kind::Text),
        ("ntext", 16, 0, 0, "ntext", Kind::Text),
        ("text", 16, 0, 0, "text", Kind::Text),
        ("bigint", 8, 19, 0, "bigint", Kind::Integer),
        ("int", 4, 10, 0, "int", Kind::Integer),
        ("smallint", 2, 5, 0, "smallint", Kind::Integer),
        ("tinyint", 1, 3, 0, "tinyint", Kind::Integer),
        ("bit", 1, 1, 0, "bit", Kind::Boolean),
        ("decimal", 9, 10, 2, "decimal(10,2)", Kind::Real),
        ("numeric", 9, 18, 0, "numeric(18,0)", Kind::Real),
        ("money", 8, 19, 4, "money", Kind::Real),
        ("smallmoney", 4, 10, 4, "smallmoney", Kind::Real),
        ("float", 8, 53, 0, "float", Kind::Real),
        ("real", 4, 24, 0, "real", Kind::Real),
        ("datetime2", 8, 27, 7, "datetime2", Kind::Time),
        ("datetime", 8, 23, 3, "datetime", Kind::Time),
        ("smalldatetime", 4, 16, 0, "smalldatetime", Kind::Time),
        ("datetimeoffset", 10, 34, 7, "datetimeoffset", Kind::Time),
        ("date", 3, 10, 0, "date", Kind::Time),
        ("time", 5, 16, 7, "time", Kind::Time),
        ("timestamp", 8, 0, 0, "rowversion", Kind::Any),
        ("uniqueidentifier", 16, 0, 0, "uniqueidentifier", Kind::Any),
        ("varbinary", -1, 0, 0, "varbinary(max)", Kind::Any),
        ("binary", 16, 0, 0, "binary(16)", Kind::Any),
        ("image", 16, 0, 0, "image", Kind::Any),
        ("xml", -1, 0, 0, "xml", Kind::Any),
        ("sql_variant", 8016, 0, 0, "sql_variant", Kind::Any),
        ("hierarchyid", 892, 0, 0, "hierarchyid", Kind::Any),
        ("geography", -1, 0, 0, "geography", Kind::Any),
    ] {
        let declared = spell_type(name, max_length, precision, scale);
        assert_eq!(declared, spelled);
        assert_eq!(Kind::of(&declared), kind, "{declared}");
    }
}

/// Both describe statements take the quoted name, bound once.
#[test]
fn describe_statements_take_one_parameter() {
    assert_eq!(crate::db::mssql::tsql::param_numbers(DESCRIBE_COLUMNS), [1]);
    assert_eq!(crate::db::mssql::tsql::param_numbers(DESCRIBE_UNIQUE), [1]);
}
