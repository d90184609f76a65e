//! An application database on SQLite.
//!
//! Upsert is update-then-insert: `UPDATE … WHERE key = ?`, and an `INSERT` when no row was
//! updated. That works whether or not the key column has a unique index (many application
//! schemas have none), and it is race-free because the batch holds SQLite's write lock from its
//! first statement (`BEGIN IMMEDIATE`). Role rows are added with `INSERT … WHERE NOT EXISTS`,
//! so a role table without a unique (user, role) index gets no duplicates either.
//!
//! The file's one writer is the database's one connection: a batch runs synchronously on a
//! blocking thread, with its statements prepared once: one hand-over per batch instead of one
//! per statement. How a batch writes is [`crate::target::writer`]; this is its SQLite spelling.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, ToSql, TransactionBehavior};

use crate::mapping::Target;
use crate::store::format_time;
use crate::target::row::{AppRow, AppValue};
use crate::target::schema::{ColumnInfo, TableInfo};
use crate::target::writer::{self, Dialect, Exec, Param, QuotedRoles, Scope, Stmt};
use crate::target::{AppDatabase, BatchFn, TargetError, UserApplied, quote_parts};

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
}

/// `table`'s columns and unique keys (None: no such table).
fn describe(c: &Connection, table: &str) -> Result<Option<TableInfo>, TargetError> {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    let mut stmt = c.prepare_cached(
        "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1, ?2) \
         ORDER BY cid",
    )?;
    let cols: Vec<(String, String, bool, bool, i64)> = stmt
        .query_map([name, schema], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Ok(None);
    }
    let mut pk: Vec<(i64, String)> = cols
        .iter()
        .filter(|c| c.4 > 0)
        .map(|c| (c.4, c.0.clone()))
        .collect();
    pk.sort();
    // An INTEGER PRIMARY KEY is the rowid: SQLite fills it in.
    let rowid = (pk.len() == 1)
        .then(|| {
            cols.iter()
                .find(|c| c.4 == 1 && c.1.eq_ignore_ascii_case("INTEGER"))
        })
        .flatten()
        .map(|c| c.0.clone());
    let mut unique: Vec<Vec<String>> = Vec::new();
    if !pk.is_empty() {
        unique.push(pk.into_iter().map(|(_, n)| n).collect());
    }
    let indexes: Vec<String> = c
        .prepare_cached(
            "SELECT name FROM pragma_index_list(?1, ?2) WHERE \"unique\" = 1 AND partial = 0",
        )?
        .query_map([name, schema], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for index in indexes {
        let cols: Vec<String> = c
            .prepare_cached("SELECT name FROM pragma_index_info(?1, ?2) ORDER BY seqno")?
            .query_map([index.as_str(), schema], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        unique.push(cols);
    }
    Ok(Some(TableInfo {
        columns: cols
            .into_iter()
            .map(|(name, declared, not_null, has_default, _)| ColumnInfo {
                defaulted: has_default || rowid.as_deref() == Some(name.as_str()),
                name,
                declared,
                not_null,
            })
            .collect(),
        unique,
    }))
}

/// A column's value as SQLite holds it.
fn app_value(v: rusqlite::types::ValueRef<'_>) -> AppValue {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => AppValue::Null,
        ValueRef::Integer(i) => AppValue::Int(i),
        ValueRef::Real(f) => AppValue::Real(f),
        ValueRef::Text(t) => AppValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(_) => AppValue::Other,
    }
}

fn read_rows(
    c: &Connection,
    target: &Target,
    tenant: &str,
    columns: &[String],
    keys: &[String],
) -> Result<HashMap<String, AppRow>, TargetError> {
    let q = |i: &str| {
        SQLITE
            .quote(i)
            .ok_or_else(|| TargetError::Identifier(i.to_string()))
    };
    let (table, key) = (q(&target.user_table)?, q(&target.key_column)?);
    let cols = columns
        .iter()
        .map(|c| q(c))
        .collect::<Result<Vec<_>, _>>()?;
    let list = serde_json::to_string(keys)?;
    let select: Vec<&str> = std::iter::once(key.as_str())
        .chain(cols.iter().map(String::as_str))
        .collect();
    let scope = target
        .tenant_column
        .as_deref()
        .map(|tc| q(tc).map(|tc| format!(" AND {tc} = ?2")))
        .transpose()?
        .unwrap_or_default();
    let sql = format!(
        "SELECT {} FROM {table} WHERE {key} IN (SELECT value FROM json_each(?1)){scope}",
        select.join(", ")
    );
    let mut out: HashMap<String, AppRow> = HashMap::new();
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = if scope.is_empty() {
        stmt.query([&list])?
    } else {
        stmt.query([list.as_str(), tenant])?
    };
    while let Some(r) = rows.next()? {
        let k: String = r.get(0)?;
        let mut row = AppRow::default();
        for (i, name) in columns.iter().enumerate() {
            row.fields
                .insert(name.clone(), app_value(r.get_ref(i + 1)?));
        }
        out.insert(k, row);
    }
    if let Some(roles) = &target.roles {
        let scope = roles
            .tenant_column
            .as_deref()
            .map(|tc| q(tc).map(|tc| format!(" AND {tc} = ?2")))
            .transpose()?
            .unwrap_or_default();
        let sql = format!(
            "SELECT {u}, {r} FROM {t} WHERE {u} IN (SELECT value FROM json_each(?1)){scope}",
            t = q(&roles.table)?,
            u = q(&roles.user_column)?,
            r = q(&roles.role_column)?
        );
        let mut stmt = c.prepare_cached(&sql)?;
        let mut rows = if scope.is_empty() {
            stmt.query([&list])?
        } else {
            stmt.query([list.as_str(), tenant])?
        };
        while let Some(r) = rows.next()? {
            let (k, role): (String, String) = (r.get(0)?, r.get(1)?);
            if let Some(row) = out.get_mut(&k) {
                row.roles.insert(role);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl AppDatabase for SqliteApp {
    async fn read_rows(
        &self,
        target: &Target,
        tenant: &str,
        columns: &[String],
        keys: &[String],
    ) -> Result<HashMap<String, AppRow>, TargetError> {
        let (conn, target, tenant, columns, keys) = (
            self.conn.clone(),
            target.clone(),
            tenant.to_string(),
            columns.to_vec(),
            keys.to_vec(),
        );
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| TargetError::Task("the connection's lock is poisoned".into()))?;
            read_rows(&guard, &target, &tenant, &columns, &keys)
        })
        .await
        .map_err(|e| TargetError::Task(e.to_string()))?
    }

    async fn describe(&self, table: &str) -> Result<Option<TableInfo>, TargetError> {
        let (conn, table) = (self.conn.clone(), table.to_string());
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| TargetError::Task("the connection's lock is poisoned".into()))?;
            describe(&guard, &table)
        })
        .await
        .map_err(|e| TargetError::Task(e.to_string()))?
    }

    async fn batch(&self, mut f: BatchFn) -> Result<Vec<Result<UserApplied, String>>, TargetError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| TargetError::Task("the connection's lock is poisoned".into()))?;
            writer::run_batch(&mut Conn(&guard), &SQLITE, &mut |b| f(b))
        })
        .await
        .map_err(|e| TargetError::Task(e.to_string()))?
    }
}

/// A connection the writer runs its statements on.
struct Conn<'a>(&'a Connection);

fn bind(p: &Param) -> ToSqlOutput<'_> {
    match p {
        Param::Null => ToSqlOutput::Owned(SqlValue::Null),
        Param::Text(s) => ToSqlOutput::Borrowed(s.as_str().into()),
        Param::Int(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
        Param::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        Param::Time(t) => ToSqlOutput::Owned(SqlValue::Text(format_time(*t))),
    }
}

impl Exec for Conn<'_> {
    fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError> {
        let values: Vec<ToSqlOutput<'_>> = s.params.iter().map(bind).collect();
        let p: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        Ok(self.0.prepare_cached(&s.sql)?.execute(&p[..])? as u64)
    }

    fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError> {
        let values: Vec<ToSqlOutput<'_>> = s.params.iter().map(bind).collect();
        let p: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        Ok(self
            .0
            .prepare_cached(&s.sql)?
            .query_row(&p[..], |r| r.get(0))?)
    }

    fn in_transaction(&mut self) -> bool {
        !self.0.is_autocommit()
    }
}

/// SQLite's spelling of the application writer.
struct Sqlite;

const SQLITE: Sqlite = Sqlite;

impl Dialect for Sqlite {
    fn quote(&self, ident: &str) -> Option<String> {
        quote_parts(ident, '"', '"')
    }

    fn begin(&self) -> &'static str {
        "BEGIN IMMEDIATE"
    }

    fn commit(&self) -> &'static str {
        "COMMIT"
    }

    fn rollback(&self) -> &'static str {
        "ROLLBACK"
    }

    fn savepoint(&self) -> &'static str {
        "SAVEPOINT write_one"
    }

    fn rollback_to_savepoint(&self) -> &'static str {
        "ROLLBACK TO write_one"
    }

    fn release_savepoint(&self) -> Option<&'static str> {
        Some("RELEASE write_one")
    }

    /// A failed statement leaves SQLite's transaction open unless the error rolled it back
    /// (a trigger's RAISE(ROLLBACK), say).
    fn usable(&self, ex: &mut dyn Exec) -> Result<bool, TargetError> {
        Ok(ex.in_transaction())
    }

    fn upsert(
        &self,
        ex: &mut dyn Exec,
        table: &str,
        key_column: &str,
        columns: &[String],
        key: &str,
        values: Vec<Param>,
        scope: Option<Scope<'_>>,
    ) -> Result<bool, TargetError> {
        let key_params = || {
            let mut p = vec![Param::Text(key.to_string())];
            p.extend(scope.map(|s| Param::Text(s.tenant.to_string())));
            p
        };
        let updated = if columns.is_empty() {
            ex.scalar(&Stmt::new(
                self.count_key(table, key_column, scope.map(|s| s.column)),
                key_params(),
            ))? > 0
        } else {
            let sets: Vec<String> = columns.iter().map(|c| format!("{c} = ?")).collect();
            let sql = format!(
                "UPDATE {table} SET {} WHERE {}",
                sets.join(", "),
                key_match(key_column, scope.map(|s| s.column))
            );
            let mut p = values.clone();
            p.extend(key_params());
            ex.execute(&Stmt::new(sql, p))? > 0
        };
        if !updated {
            let mut names = vec![key_column.to_string()];
            names.extend(scope.map(|s| s.column.to_string()));
            names.extend(columns.iter().cloned());
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                vec!["?"; names.len()].join(", ")
            );
            let mut p = key_params();
            p.extend(values);
            ex.execute(&Stmt::new(sql, p))?;
        }
        Ok(!updated)
    }

    fn count_key(&self, table: &str, key_column: &str, scope: Option<&str>) -> String {
        format!(
            "SELECT count(*) FROM {table} WHERE {}",
            key_match(key_column, scope)
        )
    }

    fn rekey(&self, table: &str, key_column: &str, scope: Option<&str>) -> String {
        format!(
            "UPDATE {table} SET {key_column} = ? WHERE {}",
            key_match(key_column, scope)
        )
    }

    /// One statement for all of the user's roles.
    fn add_roles(
        &self,
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
    ) -> Result<(), TargetError> {
        let (t, u, ro) = (&r.table, &r.user_column, &r.role_column);
        let list = serde_json::to_string(roles)?;
        let (sql, params) = match &r.tenant_column {
            None => (
                format!(
                    "INSERT INTO {t} ({u}, {ro}) SELECT ?1, r.value FROM json_each(?2) r \
                     WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {u} = ?1 AND {ro} = r.value)"
                ),
                vec![Param::Text(key.to_string()), Param::Text(list)],
            ),
            Some(tc) => (
                format!(
                    "INSERT INTO {t} ({u}, {tc}, {ro}) SELECT ?1, ?3, r.value FROM json_each(?2) r \
                     WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {u} = ?1 AND {tc} = ?3 AND {ro} = r.value)"
                ),
                vec![
                    Param::Text(key.to_string()),
                    Param::Text(list),
                    Param::Text(tenant.to_string()),
                ],
            ),
        };
        ex.execute(&Stmt::new(sql, params))?;
        Ok(())
    }

    fn remove_roles(
        &self,
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
    ) -> Result<(), TargetError> {
        let scope = r
            .tenant_column
            .as_ref()
            .map(|tc| format!(" AND {tc} = ?"))
            .unwrap_or_default();
        let sql = format!(
            "DELETE FROM {} WHERE {} = ? AND {} = ?{scope}",
            r.table, r.user_column, r.role_column
        );
        for role in roles {
            let mut p = vec![Param::Text(key.to_string()), Param::Text(role.clone())];
            if r.tenant_column.is_some() {
                p.push(Param::Text(tenant.to_string()));
            }
            ex.execute(&Stmt::new(sql.clone(), p))?;
        }
        Ok(())
    }

    fn delete_row(&self, table: &str, key_column: &str, scope: Option<&str>) -> String {
        format!("DELETE FROM {table} WHERE {}", key_match(key_column, scope))
    }

    fn update_row(
        &self,
        table: &str,
        key_column: &str,
        columns: &[String],
        scope: Option<&str>,
    ) -> String {
        let sets: Vec<String> = columns.iter().map(|c| format!("{c} = ?")).collect();
        format!(
            "UPDATE {table} SET {} WHERE {}",
            sets.join(", "),
            key_match(key_column, scope)
        )
    }
}

/// `key = ?`, and `AND tenant = ?` with a tenant column.
fn key_match(key_column: &str, scope: Option<&str>) -> String {
    match scope {
        None => format!("{key_column} = ?"),
        Some(tc) => format!("{key_column} = ? AND {tc} = ?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{FieldValue, RoleTable, Target};
    use crate::target::UserWrite;

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
                tenant_column: None,
            }),
            adopt: crate::mapping::Adopt::Never,
            tenant_column: None,
        };
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let results = app
            .batch(Box::new(move |b| {
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
                                tenant: "t",
                                existing: crate::target::Existing::Owned,
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
