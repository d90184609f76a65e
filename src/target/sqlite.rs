//! The SQLite application database.
//!
//! Upsert is update-then-insert: `UPDATE … WHERE key = ?`, and an `INSERT` when no row was
//! updated. That works whether or not the key column has a unique index (many application
//! schemas have none), and it is race-free because the batch holds SQLite's write lock from its
//! first statement (`BEGIN IMMEDIATE`). Role rows are added with `INSERT … WHERE NOT EXISTS`,
//! so a role table without a unique (user, role) index gets no duplicates either.
//!
//! A batch runs synchronously on a blocking thread, on a connection of its own, with its
//! statements prepared once: one hand-over per batch instead of one per statement.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, ToSql, TransactionBehavior};

use super::{TargetError, UserApplied, UserWrite, quote_ident};
use crate::mapping::{FieldValue, Offboarding, RoleTable, Target};
use crate::store::format_time;

/// Statements kept prepared on the connection.
const STATEMENT_CACHE: usize = 64;

#[derive(Clone)]
pub struct SqliteApp {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteApp {
    /// Open (creating it with its folder) the file `path`; `schema` is applied when the
    /// database has no tables.
    pub async fn open(path: &Path, schema: Option<&Path>) -> Result<SqliteApp, TargetError> {
        let (path, schema) = (path.to_path_buf(), schema.map(Path::to_path_buf));
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, schema.as_deref()))
            .await
            .map_err(|e| TargetError::Task(e.to_string()))?
    }

    fn open_blocking(path: &Path, schema: Option<&Path>) -> Result<SqliteApp, TargetError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        if let Some(schema) = schema {
            let tables: i64 = conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )?;
            if tables == 0 {
                let failed = |message: String| TargetError::Schema {
                    path: schema.display().to_string(),
                    message,
                };
                let ddl = std::fs::read_to_string(schema).map_err(|e| failed(e.to_string()))?;
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(&ddl).map_err(|e| failed(e.to_string()))?;
                tx.commit()?;
            }
        }
        Ok(SqliteApp {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` in one transaction (`BEGIN IMMEDIATE`) on a blocking thread; committed when
    /// `f` returns Ok, rolled back otherwise.
    ///
    /// Writes are optimistic: the first attempt runs without a savepoint per user (a savepoint
    /// copies every page it changes). When a user fails in it, the whole attempt is rolled
    /// back and `f` runs again with a savepoint per user, so the failure leaves nothing
    /// behind and the others are written.
    pub async fn batch<R, F>(&self, mut f: F) -> Result<R, TargetError>
    where
        R: Send + 'static,
        F: FnMut(&mut SqliteBatch<'_>) -> Result<R, TargetError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| TargetError::Task("the connection's lock is poisoned".into()))?;
            for savepoints in [false, true] {
                let tx = guard.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut batch = SqliteBatch {
                    c: &tx,
                    savepoints,
                    failed: false,
                };
                let r = f(&mut batch)?;
                if !batch.failed {
                    tx.commit()?;
                    return Ok(r);
                }
                // Dropping the transaction rolls it back.
            }
            Err(TargetError::Task(
                "a batch failed with a savepoint per user".into(),
            ))
        })
        .await
        .map_err(|e| TargetError::Task(e.to_string()))?
    }
}

/// One open transaction.
pub struct SqliteBatch<'a> {
    c: &'a Connection,
    /// Each user in a savepoint of its own.
    savepoints: bool,
    /// A user failed without a savepoint: this attempt is rolled back.
    failed: bool,
}

/// A statement without results, prepared once.
fn exec(c: &Connection, sql: &str) -> Result<(), TargetError> {
    c.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn sql_value(v: &FieldValue) -> ToSqlOutput<'_> {
    match v {
        FieldValue::Null => ToSqlOutput::Owned(SqlValue::Null),
        FieldValue::Text(s) => ToSqlOutput::Borrowed(s.as_str().into()),
        FieldValue::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
        FieldValue::Boolean(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        FieldValue::Timestamp(t) => ToSqlOutput::Owned(SqlValue::Text(format_time(*t))),
    }
}

impl<'a> SqliteBatch<'a> {
    /// Run `f` inside a savepoint: an error leaves the transaction as it was before. Without
    /// savepoints, an error marks the attempt failed (it is rolled back and run again with
    /// them) and the users after it are not tried.
    fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T, TargetError>,
    ) -> Result<T, TargetError> {
        if !self.savepoints {
            if self.failed {
                return Err(TargetError::Task(
                    "not tried: the attempt is rolled back".into(),
                ));
            }
            let r = f(self.c);
            self.failed = r.is_err();
            return r;
        }
        exec(self.c, "SAVEPOINT write_one")?;
        match f(self.c) {
            Ok(r) => {
                exec(self.c, "RELEASE write_one")?;
                Ok(r)
            }
            Err(e) => {
                exec(self.c, "ROLLBACK TO write_one")?;
                exec(self.c, "RELEASE write_one")?;
                Err(e)
            }
        }
    }

    pub fn apply_user(
        &mut self,
        target: &Target,
        write: &UserWrite<'_>,
    ) -> Result<UserApplied, TargetError> {
        self.savepoint(|c| apply_user(c, target, write))
    }

    pub fn offboard(
        &mut self,
        target: &Target,
        key: &str,
        action: &Offboarding,
        roles: &BTreeSet<String>,
    ) -> Result<(), TargetError> {
        self.savepoint(|c| offboard(c, target, key, action, roles))
    }
}

fn count_by_key(c: &Connection, table: &str, key_col: &str, key: &str) -> Result<i64, TargetError> {
    let sql = format!("SELECT count(*) FROM {table} WHERE {key_col} = ?");
    Ok(c.prepare_cached(&sql)?.query_row([key], |r| r.get(0))?)
}

fn apply_user(
    c: &Connection,
    target: &Target,
    w: &UserWrite<'_>,
) -> Result<UserApplied, TargetError> {
    let table = quote_ident(&target.user_table)?;
    let key_col = quote_ident(&target.key_column)?;
    if let Some(old) = w.previous_key.filter(|old| *old != w.key) {
        rekey(c, target, &table, &key_col, old, w.key)?;
    }
    let cols = w
        .fields
        .iter()
        .map(|(c, _)| quote_ident(c))
        .collect::<Result<Vec<_>, _>>()?;
    let values: Vec<ToSqlOutput<'_>> = w.fields.iter().map(|(_, v)| sql_value(v)).collect();
    let updated = if cols.is_empty() {
        count_by_key(c, &table, &key_col, w.key)? > 0
    } else {
        let sets: Vec<String> = cols.iter().map(|c| format!("{c} = ?")).collect();
        let sql = format!("UPDATE {table} SET {} WHERE {key_col} = ?", sets.join(", "));
        let mut p: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        p.push(&w.key);
        c.prepare_cached(&sql)?.execute(&p[..])? > 0
    };
    if !updated {
        let mut names = vec![key_col.clone()];
        names.extend(cols.iter().cloned());
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        );
        let mut p: Vec<&dyn ToSql> = vec![&w.key];
        p.extend(values.iter().map(|v| v as &dyn ToSql));
        c.prepare_cached(&sql)?.execute(&p[..])?;
    }
    if let Some(roles) = &target.roles {
        remove_roles(c, roles, w.key, w.roles_to_remove)?;
        add_roles(c, roles, w.key, w.roles_to_add)?;
    }
    Ok(UserApplied { created: !updated })
}

/// Move the row (and its role rows) from `old` to `new`; nothing to do when there is no row
/// under `old` (e.g. it was moved by a run that did not get to record it).
fn rekey(
    c: &Connection,
    target: &Target,
    table: &str,
    key_col: &str,
    old: &str,
    new: &str,
) -> Result<(), TargetError> {
    if count_by_key(c, table, key_col, old)? == 0 {
        return Ok(());
    }
    if count_by_key(c, table, key_col, new)? > 0 {
        return Err(TargetError::Conflict(format!(
            "the key changed to a value another row already has ({})",
            target.key_column
        )));
    }
    let sql = format!("UPDATE {table} SET {key_col} = ? WHERE {key_col} = ?");
    c.prepare_cached(&sql)?.execute([new, old])?;
    if let Some(r) = &target.roles {
        let sql = format!(
            "UPDATE {} SET {user} = ? WHERE {user} = ?",
            quote_ident(&r.table)?,
            user = quote_ident(&r.user_column)?
        );
        c.prepare_cached(&sql)?.execute([new, old])?;
    }
    Ok(())
}

fn add_roles(
    c: &Connection,
    r: &RoleTable,
    key: &str,
    roles: &BTreeSet<String>,
) -> Result<(), TargetError> {
    if roles.is_empty() {
        return Ok(());
    }
    let (t, u, ro) = (
        quote_ident(&r.table)?,
        quote_ident(&r.user_column)?,
        quote_ident(&r.role_column)?,
    );
    // One statement for all of the user's roles.
    let sql = format!(
        "INSERT INTO {t} ({u}, {ro}) SELECT ?1, r.value FROM json_each(?2) r \
         WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {u} = ?1 AND {ro} = r.value)"
    );
    let list = serde_json::to_string(roles)?;
    c.prepare_cached(&sql)?.execute([key, list.as_str()])?;
    Ok(())
}

fn remove_roles(
    c: &Connection,
    r: &RoleTable,
    key: &str,
    roles: &BTreeSet<String>,
) -> Result<(), TargetError> {
    if roles.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM {} WHERE {} = ? AND {} = ?",
        quote_ident(&r.table)?,
        quote_ident(&r.user_column)?,
        quote_ident(&r.role_column)?
    );
    let mut stmt = c.prepare_cached(&sql)?;
    for role in roles {
        stmt.execute([key, role.as_str()])?;
    }
    Ok(())
}

fn offboard(
    c: &Connection,
    target: &Target,
    key: &str,
    action: &Offboarding,
    roles: &BTreeSet<String>,
) -> Result<(), TargetError> {
    if let Some(r) = &target.roles {
        remove_roles(c, r, key, roles)?;
    }
    let table = quote_ident(&target.user_table)?;
    let key_col = quote_ident(&target.key_column)?;
    match action {
        Offboarding::None => {}
        Offboarding::Delete => {
            let sql = format!("DELETE FROM {table} WHERE {key_col} = ?");
            c.prepare_cached(&sql)?.execute([key])?;
        }
        Offboarding::Update(fields) if fields.is_empty() => {}
        Offboarding::Update(fields) => {
            let sets = fields
                .iter()
                .map(|(c, _)| Ok(format!("{} = ?", quote_ident(c)?)))
                .collect::<Result<Vec<_>, TargetError>>()?;
            let sql = format!("UPDATE {table} SET {} WHERE {key_col} = ?", sets.join(", "));
            let values: Vec<ToSqlOutput<'_>> = fields.iter().map(|(_, v)| sql_value(v)).collect();
            let mut p: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
            p.push(&key);
            c.prepare_cached(&sql)?.execute(&p[..])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user refused after part of its writes (its row went in, a role did not) leaves
    /// nothing behind, and the users before and after it are written: the optimistic attempt
    /// is rolled back and the batch runs again with a savepoint per user.
    #[tokio::test]
    async fn a_user_refused_mid_way_leaves_nothing_and_the_others_are_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.sql"),
            "CREATE TABLE u (k TEXT NOT NULL UNIQUE, name TEXT);
             CREATE TABLE r (k TEXT NOT NULL, role TEXT NOT NULL);
             CREATE TRIGGER refuse BEFORE INSERT ON r WHEN NEW.role = 'bad'
             BEGIN SELECT RAISE(ABORT, 'role refused'); END;",
        )
        .unwrap();
        let app = SqliteApp::open(
            &dir.path().join("app.db"),
            Some(&dir.path().join("app.sql")),
        )
        .await
        .unwrap();
        let target = Target {
            database: "app".into(),
            user_table: "u".into(),
            key_column: "k".into(),
            key_source: "userName".into(),
            roles: Some(RoleTable {
                table: "r".into(),
                user_column: "k".into(),
                role_column: "role".into(),
            }),
        };
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let results = app
            .batch(move |b| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let none = BTreeSet::new();
                Ok(["a", "b", "c"]
                    .iter()
                    .map(|k| {
                        let fields = vec![("name".to_string(), FieldValue::Text(k.to_uppercase()))];
                        let roles: BTreeSet<String> = if *k == "b" {
                            ["ok".to_string(), "bad".to_string()].into()
                        } else {
                            ["ok".to_string()].into()
                        };
                        b.apply_user(
                            &target,
                            &UserWrite {
                                key: k,
                                previous_key: None,
                                fields: &fields,
                                roles_to_add: &roles,
                                roles_to_remove: &none,
                            },
                        )
                        .map(|a| a.created)
                        .map_err(|e| e.to_string())
                    })
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap();
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "tried twice"
        );
        assert_eq!(results[0], Ok(true));
        assert!(results[1].as_ref().unwrap_err().contains("role refused"));
        assert_eq!(results[2], Ok(true));
        let c = Connection::open(dir.path().join("app.db")).unwrap();
        let rows: Vec<(String, String)> = c
            .prepare("SELECT k, name FROM u ORDER BY k")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("a".into(), "A".into()), ("c".into(), "C".into())]);
        let roles: Vec<(String, String)> = c
            .prepare("SELECT k, role FROM r ORDER BY k, role")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            roles,
            [("a".into(), "ok".into()), ("c".into(), "ok".into())]
        );
    }
}
