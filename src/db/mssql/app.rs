//! The SQL Server application database.
//!
//! The same writes as [`super::sqlite`], in T-SQL from [`crate::store::mssql::statements`]:
//! upsert by key (`UPDATE … WITH (UPDLOCK, HOLDLOCK)`, then `INSERT` when no row was updated,
//! in one round trip that answers whether it created the row), role rows inserted when
//! missing and deleted one by one, key moves, offboarding by delete or update. Identifiers are
//! bracket-quoted after validation; every value is a typed parameter (`@P1…`).
//!
//! A batch is one transaction on one pooled connection. The batch closure is synchronous (the
//! [`super::AppDb`] API): it runs on a blocking thread, and each statement is driven to
//! completion on the runtime from there (`Handle::block_on`), so the SQLite path is unchanged.
//! As on SQLite the first attempt is optimistic; when a user fails, the transaction is rolled
//! back and the batch runs again with a savepoint per user (`SAVE TRANSACTION`, and
//! `ROLLBACK TRANSACTION` to it when the user fails). XACT_ABORT is off in these transactions so
//! that an error fails its statement only; an error that ends the transaction anyway (raised in
//! a trigger, a deadlock) is remembered with its user, and the batch runs once more without
//! trying that user again.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDateTime;
use tiberius::{Query, Row};
use tokio::runtime::Handle;

use super::{TargetError, UserApplied, UserWrite};
use crate::config::ApplicationConfig;
use crate::config::MssqlConfig;
use crate::mapping::{FieldValue, Offboarding, RoleTable, Target};
use crate::store::mssql::pool::{Client, MssqlPool, TiberiusManager, redact};
use crate::store::mssql::{migrate, statements as st};

impl From<tiberius::error::Error> for TargetError {
    fn from(e: tiberius::error::Error) -> Self {
        TargetError::SqlServer(redact(&e))
    }
}

/// A statement's parameter, typed as SQL Server receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// A NULL (sent as NVARCHAR, which converts to any column type but binary ones).
    Null,
    /// NVARCHAR.
    Text(String),
    /// BIGINT.
    BigInt(i64),
    /// BIT.
    Bit(bool),
    /// DATETIME2, in UTC (converts to DATE, DATETIME and DATETIMEOFFSET columns).
    DateTime2(NaiveDateTime),
}

impl Param {
    pub fn of(v: &FieldValue) -> Param {
        match v {
            FieldValue::Null => Param::Null,
            FieldValue::Text(s) => Param::Text(s.clone()),
            FieldValue::Integer(i) => Param::BigInt(*i),
            FieldValue::Boolean(b) => Param::Bit(*b),
            FieldValue::Timestamp(t) => Param::DateTime2(t.naive_utc()),
        }
    }

    fn bind(&self, q: &mut Query<'_>) {
        match self {
            Param::Null => q.bind(Option::<String>::None),
            Param::Text(s) => q.bind(s.clone()),
            Param::BigInt(i) => q.bind(*i),
            Param::Bit(b) => q.bind(*b),
            Param::DateTime2(t) => q.bind(*t),
        }
    }
}

/// One statement with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Stmt {
    fn new(sql: impl Into<String>, params: Vec<Param>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params,
        }
    }

    fn plain(sql: &str) -> Stmt {
        Stmt::new(sql, vec![])
    }
}

/// Where a batch's statements run: the server (on a blocking thread), or a recorder in tests.
pub trait Exec {
    /// Run a statement; the rows it affected.
    fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError>;
    /// Run a statement; the first column of its first row (INT, BIGINT or BIT).
    fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError>;
}

/// The first column of a row as an integer, whichever integer type the server sent.
fn int_column(r: &Row) -> Result<i64, TargetError> {
    let v = if let Ok(v) = r.try_get::<i32, _>(0) {
        v.map(i64::from)
    } else if let Ok(v) = r.try_get::<i64, _>(0) {
        v
    } else {
        r.try_get::<bool, _>(0)?.map(i64::from)
    };
    v.ok_or_else(|| TargetError::SqlServer("the statement returned NULL".into()))
}

/// A pooled connection driven from a blocking thread.
struct Blocking {
    rt: Handle,
    client: bb8::PooledConnection<'static, TiberiusManager>,
}

impl Blocking {
    /// Statements without parameters go as a plain batch: BEGIN and COMMIT must not run inside
    /// sp_executesql (a procedure may not change the transaction count).
    async fn rows(c: &mut Client, s: &Stmt) -> Result<Vec<Row>, tiberius::error::Error> {
        let stream = if s.params.is_empty() {
            c.simple_query(s.sql.as_str()).await?
        } else {
            let mut q = Query::new(s.sql.as_str());
            for p in &s.params {
                p.bind(&mut q);
            }
            q.query(c).await?
        };
        Ok(stream
            .into_results()
            .await?
            .into_iter()
            .find(|r| !r.is_empty())
            .unwrap_or_default())
    }
}

impl Exec for Blocking {
    fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError> {
        let c: &mut Client = &mut self.client;
        self.rt.block_on(async {
            if s.params.is_empty() {
                c.simple_query(s.sql.as_str()).await?.into_results().await?;
                return Ok(0);
            }
            let mut q = Query::new(s.sql.as_str());
            for p in &s.params {
                p.bind(&mut q);
            }
            Ok(q.execute(c).await?.total())
        })
    }

    fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError> {
        let c: &mut Client = &mut self.client;
        let rows = self.rt.block_on(Self::rows(c, s))?;
        let row = rows
            .first()
            .ok_or_else(|| TargetError::SqlServer("the statement returned no row".into()))?;
        int_column(row)
    }
}

#[derive(Clone)]
pub struct MssqlApp {
    pool: MssqlPool,
}

impl MssqlApp {
    /// Connect (failing within the connect timeout, naming the application, server and
    /// database), and apply the configured T-SQL schema when the database has no user tables.
    pub async fn open(
        config: &ApplicationConfig,
        server: &MssqlConfig,
    ) -> Result<MssqlApp, TargetError> {
        let pool = MssqlPool::connect(server)
            .await
            .map_err(|source| TargetError::Connect {
                application: config.name.clone(),
                source,
            })?;
        if let Some(schema) = &config.schema {
            let failed = |message: String| TargetError::Schema {
                path: schema.display().to_string(),
                message,
            };
            let mut c = pool.get().await.map_err(|e| failed(e.to_string()))?;
            let rows = Blocking::rows(&mut c, &Stmt::plain(st::COUNT_APP_TABLES)).await?;
            let tables = rows.first().map(int_column).transpose()?.unwrap_or(0);
            if tables == 0 {
                let ddl = std::fs::read_to_string(schema).map_err(|e| failed(e.to_string()))?;
                let r = async {
                    c.simple_query("SET XACT_ABORT ON; BEGIN TRANSACTION")
                        .await?
                        .into_results()
                        .await?;
                    for b in migrate::batches(&ddl) {
                        c.simple_query(b).await?.into_results().await?;
                    }
                    c.simple_query(st::APP_COMMIT).await?.into_results().await?;
                    Ok::<(), tiberius::error::Error>(())
                }
                .await;
                if let Err(e) = r {
                    // The connection is dropped if even this fails.
                    let _ = c.simple_query(st::APP_ROLLBACK).await;
                    return Err(failed(redact(&e)));
                }
            }
        }
        Ok(MssqlApp { pool })
    }

    /// Run `f` in one transaction on a pooled connection, on a blocking thread; committed when
    /// `f` returns Ok (see the module documentation for the attempts).
    pub async fn batch<R, F>(&self, mut f: F) -> Result<R, TargetError>
    where
        R: Send + 'static,
        F: FnMut(&mut MssqlBatch<'_>) -> Result<R, TargetError> + Send + 'static,
    {
        let client = self
            .pool
            .get_owned()
            .await
            .map_err(|e| TargetError::SqlServer(e.to_string()))?;
        let rt = Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut ex = Blocking { rt, client };
            run_batch(&mut ex, &mut f)
        })
        .await
        .map_err(|e| TargetError::Task(e.to_string()))?
    }
}

/// The attempts of one batch on `ex`: optimistic, then with a savepoint per user, then again
/// for every user whose error ended the transaction (that user is not tried again).
///
/// On any error the transaction is rolled back before the connection goes back to the pool.
pub fn run_batch<R>(
    ex: &mut dyn Exec,
    f: &mut dyn FnMut(&mut MssqlBatch<'_>) -> Result<R, TargetError>,
) -> Result<R, TargetError> {
    let r = attempts(ex, f);
    if r.is_err() {
        // The error wins over a failure to roll back.
        let _ = ex.execute(&Stmt::plain(st::APP_ROLLBACK));
    }
    r
}

fn attempts<R>(
    ex: &mut dyn Exec,
    f: &mut dyn FnMut(&mut MssqlBatch<'_>) -> Result<R, TargetError>,
) -> Result<R, TargetError> {
    let mut ended: HashMap<usize, String> = HashMap::new();
    let mut savepoints = false;
    loop {
        ex.execute(&Stmt::plain(st::APP_BEGIN))?;
        let mut b = MssqlBatch {
            ex: &mut *ex,
            savepoints,
            failed: false,
            restart: false,
            broken: None,
            call: 0,
            ended: &mut ended,
        };
        let r = f(&mut b);
        let (failed, restart, broken, calls) = (b.failed, b.restart, b.broken.take(), b.call);
        let r = match (r, broken) {
            (Ok(r), None) => r,
            (Err(e), _) | (Ok(_), Some(e)) => return Err(e),
        };
        if !failed && !restart {
            ex.execute(&Stmt::plain(st::APP_COMMIT))?;
            return Ok(r);
        }
        ex.execute(&Stmt::plain(st::APP_ROLLBACK))?;
        if savepoints && ended.len() > calls {
            return Err(TargetError::Task(
                "a batch kept failing with a savepoint per user".into(),
            ));
        }
        savepoints = true;
    }
}

/// One open transaction.
pub struct MssqlBatch<'a> {
    ex: &'a mut dyn Exec,
    /// Each user in a savepoint of its own.
    savepoints: bool,
    /// A user failed without a savepoint: this attempt is rolled back.
    failed: bool,
    /// A user's error ended the transaction: this attempt is rolled back.
    restart: bool,
    /// A savepoint statement itself failed: the batch fails with this error.
    broken: Option<TargetError>,
    /// Users tried so far in this attempt (the closure makes the same calls in every attempt).
    call: usize,
    /// The users (by call) whose error ended the transaction in an earlier attempt.
    ended: &'a mut HashMap<usize, String>,
}

impl MssqlBatch<'_> {
    fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Exec) -> Result<T, TargetError>,
    ) -> Result<T, TargetError> {
        let call = self.call;
        self.call += 1;
        if let Some(e) = self.ended.get(&call) {
            return Err(TargetError::SqlServer(e.clone()));
        }
        if self.failed || self.restart || self.broken.is_some() {
            return Err(TargetError::Task(
                "not tried: the attempt is rolled back".into(),
            ));
        }
        if !self.savepoints {
            let r = f(&mut *self.ex);
            self.failed = r.is_err();
            return r;
        }
        if let Err(e) = self.ex.execute(&Stmt::plain(st::SAVEPOINT)) {
            self.broken = Some(e);
            return Err(TargetError::Task("the savepoint failed".into()));
        }
        let e = match f(&mut *self.ex) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let state = self.ex.scalar(&Stmt::plain(st::XACT_STATE));
        let undone = match state {
            Ok(1) => self
                .ex
                .execute(&Stmt::plain(st::ROLLBACK_TO_SAVEPOINT))
                .map(|_| ()),
            Ok(_) => {
                self.ended.insert(call, e.to_string());
                self.restart = true;
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(broken) = undone {
            self.broken = Some(broken);
        }
        Err(e)
    }

    pub fn apply_user(
        &mut self,
        target: &Target,
        write: &UserWrite<'_>,
    ) -> Result<UserApplied, TargetError> {
        self.savepoint(|ex| apply_user(ex, target, write))
    }

    pub fn offboard(
        &mut self,
        target: &Target,
        key: &str,
        action: &Offboarding,
        roles: &BTreeSet<String>,
    ) -> Result<(), TargetError> {
        self.savepoint(|ex| offboard(ex, target, key, action, roles))
    }
}

fn quote(ident: &str) -> Result<String, TargetError> {
    st::quote_ident(ident).ok_or_else(|| TargetError::Identifier(ident.to_string()))
}

fn text(s: &str) -> Param {
    Param::Text(s.to_string())
}

fn apply_user(
    ex: &mut dyn Exec,
    target: &Target,
    w: &UserWrite<'_>,
) -> Result<UserApplied, TargetError> {
    let table = quote(&target.user_table)?;
    let key_col = quote(&target.key_column)?;
    if let Some(old) = w.previous_key.filter(|old| *old != w.key) {
        rekey(ex, target, &table, &key_col, old, w.key)?;
    }
    let cols = w
        .fields
        .iter()
        .map(|(c, _)| quote(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = vec![text(w.key)];
    params.extend(w.fields.iter().map(|(_, v)| Param::of(v)));
    let created = ex.scalar(&Stmt::new(st::upsert_user(&table, &key_col, &cols), params))? != 0;
    if let Some(roles) = &target.roles {
        role_rows(ex, roles, w.key, w.roles_to_remove, st::remove_role)?;
        role_rows(ex, roles, w.key, w.roles_to_add, st::add_role)?;
    }
    Ok(UserApplied { created })
}

/// Move the row (and its role rows) from `old` to `new`; nothing to do when there is no row
/// under `old`.
fn rekey(
    ex: &mut dyn Exec,
    target: &Target,
    table: &str,
    key_col: &str,
    old: &str,
    new: &str,
) -> Result<(), TargetError> {
    let count = st::count_key(table, key_col);
    if ex.scalar(&Stmt::new(count.clone(), vec![text(old)]))? == 0 {
        return Ok(());
    }
    if ex.scalar(&Stmt::new(count, vec![text(new)]))? > 0 {
        return Err(TargetError::Conflict(format!(
            "the key changed to a value another row already has ({})",
            target.key_column
        )));
    }
    ex.execute(&Stmt::new(
        st::rekey(table, key_col),
        vec![text(new), text(old)],
    ))?;
    if let Some(r) = &target.roles {
        ex.execute(&Stmt::new(
            st::rekey(&quote(&r.table)?, &quote(&r.user_column)?),
            vec![text(new), text(old)],
        ))?;
    }
    Ok(())
}

/// Run `statement` (st::add_role or st::remove_role) once per role of `key`.
fn role_rows(
    ex: &mut dyn Exec,
    r: &RoleTable,
    key: &str,
    roles: &BTreeSet<String>,
    statement: fn(&str, &str, &str) -> String,
) -> Result<(), TargetError> {
    if roles.is_empty() {
        return Ok(());
    }
    let sql = statement(
        &quote(&r.table)?,
        &quote(&r.user_column)?,
        &quote(&r.role_column)?,
    );
    for role in roles {
        ex.execute(&Stmt::new(sql.clone(), vec![text(key), text(role)]))?;
    }
    Ok(())
}

fn offboard(
    ex: &mut dyn Exec,
    target: &Target,
    key: &str,
    action: &Offboarding,
    roles: &BTreeSet<String>,
) -> Result<(), TargetError> {
    if let Some(r) = &target.roles {
        role_rows(ex, r, key, roles, st::remove_role)?;
    }
    let table = quote(&target.user_table)?;
    let key_col = quote(&target.key_column)?;
    match action {
        Offboarding::None => {}
        Offboarding::Delete => {
            ex.execute(&Stmt::new(
                st::delete_row(&table, &key_col),
                vec![text(key)],
            ))?;
        }
        Offboarding::Update(fields) if fields.is_empty() => {}
        Offboarding::Update(fields) => {
            let cols = fields
                .iter()
                .map(|(c, _)| quote(c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut params: Vec<Param> = fields.iter().map(|(_, v)| Param::of(v)).collect();
            params.push(text(key));
            ex.execute(&Stmt::new(st::update_row(&table, &key_col, &cols), params))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
