//! The application writer, written once: how a batch of users (or offboardings) is written in
//! one transaction, over an [`Exec`] (where statements run) and a [`Dialect`] (how they are
//! spelled).
//!
//! - A user write re-keys the row and its role rows when the key changed, upserts the row by
//!   key (created or updated: whether a row had the key), then applies the role diff.
//! - An offboarding removes the roles the engine applied, then deletes the row, updates its
//!   fields, or leaves it.
//! - Attempts: the first runs every user without a savepoint (a savepoint costs, on SQLite it
//!   copies every page it changes). When a user fails in it, the attempt is rolled back and
//!   the batch runs again with a savepoint per user, so the failure leaves nothing behind and
//!   the others are written. An error that ends the transaction anyway (SQL Server: raised in
//!   a trigger, a deadlock) is remembered with its user, and the batch runs once more without
//!   trying that user again. On any error the transaction is rolled back before the
//!   connection is given back.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::{Existing, TargetError, UserApplied, UserWrite};
use crate::mapping::{FieldValue, Offboarding, RoleTable, Target};

/// A statement's parameter; each backend binds it in its own types.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Text(String),
    Int(i64),
    Bool(bool),
    /// UTC.
    Time(DateTime<Utc>),
}

impl Param {
    pub fn of(v: &FieldValue) -> Param {
        match v {
            FieldValue::Null => Param::Null,
            FieldValue::Text(s) => Param::Text(s.clone()),
            FieldValue::Integer(i) => Param::Int(*i),
            FieldValue::Boolean(b) => Param::Bool(*b),
            FieldValue::Timestamp(t) => Param::Time(*t),
        }
    }
}

fn text(s: &str) -> Param {
    Param::Text(s.to_string())
}

/// One statement with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params,
        }
    }

    pub fn plain(sql: &str) -> Stmt {
        Stmt::new(sql, vec![])
    }
}

/// Where a batch's statements run: a connection (on a blocking thread), or a recorder in tests.
pub trait Exec {
    /// Run a statement; the rows it affected.
    fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError>;
    /// Run a statement; the first column of its first row (an integer or a boolean).
    fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError>;
    /// Whether a transaction is open on the connection.
    fn in_transaction(&mut self) -> bool {
        true
    }
}

/// How a dialect spells the writer's statements. Identifiers reach it quoted.
pub trait Dialect: Sync {
    /// An identifier (`name` or `schema.name`) quoted, or None when it is not a plain one.
    fn quote(&self, ident: &str) -> Option<String>;
    fn begin(&self) -> &'static str;
    fn commit(&self) -> &'static str;
    /// Roll back whatever is still open (harmless when nothing is).
    fn rollback(&self) -> &'static str;
    fn savepoint(&self) -> &'static str;
    fn rollback_to_savepoint(&self) -> &'static str;
    /// Ends a savepoint, where the dialect needs it.
    fn release_savepoint(&self) -> Option<&'static str>;
    /// Whether the transaction survived a failed statement, so the user can be rolled back
    /// to its savepoint and the batch go on.
    fn usable(&self, ex: &mut dyn Exec) -> Result<bool, TargetError>;
    /// Upsert the row of `key` (`values` in `columns` order, and the tenant into `scope`'s
    /// column, which also narrows the match); whether it was created.
    #[allow(clippy::too_many_arguments)]
    fn upsert(
        &self,
        ex: &mut dyn Exec,
        table: &str,
        key_column: &str,
        columns: &[String],
        key: &str,
        values: Vec<Param>,
        scope: Option<Scope<'_>>,
    ) -> Result<bool, TargetError>;
    /// Rows under a key: @1 key (@2 the tenant, with a scope column).
    fn count_key(&self, table: &str, key_column: &str, scope: Option<&str>) -> String;
    /// Move a row, or role rows, to a new key: @1 new key, @2 old key (@3 the tenant).
    fn rekey(&self, table: &str, key_column: &str, scope: Option<&str>) -> String;
    /// Assign `roles` to `key` (those it has are left alone; with a tenant column, the tenant
    /// is written into it and narrows the match).
    fn add_roles(
        &self,
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
    ) -> Result<(), TargetError>;
    /// Take `roles` from `key`.
    fn remove_roles(
        &self,
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
    ) -> Result<(), TargetError>;
    /// Offboarding by deletion: @1 key (@2 the tenant).
    fn delete_row(&self, table: &str, key_column: &str, scope: Option<&str>) -> String;
    /// Offboarding by update: the values in `columns` order, then the key (then the tenant).
    fn update_row(
        &self,
        table: &str,
        key_column: &str,
        columns: &[String],
        scope: Option<&str>,
    ) -> String;
}

/// A tenant column (quoted) and the tenant's name it holds.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub column: &'a str,
    pub tenant: &'a str,
}

/// A role table's identifiers, quoted.
pub struct QuotedRoles {
    pub table: String,
    pub user_column: String,
    pub role_column: String,
    pub tenant_column: Option<String>,
}

/// Run `f` as one batch on `ex`: the attempts of the module documentation, committed when an
/// attempt succeeds; rolled back on any error.
pub fn run_batch<R>(
    ex: &mut dyn Exec,
    dialect: &dyn Dialect,
    f: &mut dyn FnMut(&mut AppBatch<'_>) -> Result<R, TargetError>,
) -> Result<R, TargetError> {
    let r = attempts(ex, dialect, f);
    if r.is_err() {
        // The error wins over a failure to roll back.
        let _ = ex.execute(&Stmt::plain(dialect.rollback()));
    }
    r
}

fn attempts<R>(
    ex: &mut dyn Exec,
    dialect: &dyn Dialect,
    f: &mut dyn FnMut(&mut AppBatch<'_>) -> Result<R, TargetError>,
) -> Result<R, TargetError> {
    let mut ended: HashMap<usize, String> = HashMap::new();
    let mut savepoints = false;
    loop {
        ex.execute(&Stmt::plain(dialect.begin()))?;
        let mut b = AppBatch {
            ex: &mut *ex,
            dialect,
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
            ex.execute(&Stmt::plain(dialect.commit()))?;
            return Ok(r);
        }
        ex.execute(&Stmt::plain(dialect.rollback()))?;
        if savepoints && ended.len() > calls {
            return Err(TargetError::Task(
                "a batch kept failing with a savepoint per user".into(),
            ));
        }
        savepoints = true;
    }
}

/// One open transaction on an application database.
pub struct AppBatch<'a> {
    ex: &'a mut dyn Exec,
    dialect: &'a dyn Dialect,
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

impl AppBatch<'_> {
    /// Run one user's statements: an error leaves the batch as it was before the call.
    fn one<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Exec, &dyn Dialect) -> Result<T, TargetError>,
    ) -> Result<T, TargetError> {
        let call = self.call;
        self.call += 1;
        if let Some(e) = self.ended.get(&call) {
            return Err(TargetError::Ended(e.clone()));
        }
        if self.failed || self.restart || self.broken.is_some() {
            return Err(TargetError::Task(
                "not tried: the attempt is rolled back".into(),
            ));
        }
        let d = self.dialect;
        if !self.savepoints {
            let r = f(&mut *self.ex, d);
            self.failed = r.is_err();
            return r;
        }
        if let Err(e) = self.ex.execute(&Stmt::plain(d.savepoint())) {
            self.broken = Some(e);
            return Err(TargetError::Task("the savepoint failed".into()));
        }
        let e = match f(&mut *self.ex, d) {
            Ok(r) => {
                if let Some(release) = d.release_savepoint()
                    && let Err(e) = self.ex.execute(&Stmt::plain(release))
                {
                    self.broken = Some(e);
                }
                return Ok(r);
            }
            Err(e) => e,
        };
        let undone = match d.usable(&mut *self.ex) {
            Ok(true) => self
                .ex
                .execute(&Stmt::plain(d.rollback_to_savepoint()))
                .and_then(|_| match d.release_savepoint() {
                    Some(release) => self.ex.execute(&Stmt::plain(release)).map(|_| ()),
                    None => Ok(()),
                }),
            Ok(false) => {
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

    /// Upsert one user's row and apply its role diff.
    pub fn apply_user(
        &mut self,
        target: &Target,
        write: &UserWrite<'_>,
    ) -> Result<UserApplied, TargetError> {
        self.one(|ex, d| apply_user(ex, d, target, write))
    }

    /// Offboard one user of `tenant`: remove `roles` (the ones the engine applied), then
    /// delete the row, update its fields, or leave it.
    pub fn offboard(
        &mut self,
        target: &Target,
        tenant: &str,
        key: &str,
        action: &Offboarding,
        roles: &BTreeSet<String>,
    ) -> Result<(), TargetError> {
        self.one(|ex, d| offboard(ex, d, target, tenant, key, action, roles))
    }
}

fn quote(d: &dyn Dialect, ident: &str) -> Result<String, TargetError> {
    d.quote(ident)
        .ok_or_else(|| TargetError::Identifier(ident.to_string()))
}

fn quote_roles(d: &dyn Dialect, r: &RoleTable) -> Result<QuotedRoles, TargetError> {
    Ok(QuotedRoles {
        table: quote(d, &r.table)?,
        user_column: quote(d, &r.user_column)?,
        role_column: quote(d, &r.role_column)?,
        tenant_column: r
            .tenant_column
            .as_deref()
            .map(|c| quote(d, c))
            .transpose()?,
    })
}

/// Why a row the engine did not create is left alone.
pub fn not_ours(key_column: &str) -> String {
    format!(
        "the application has a row with this {key_column} that this tenant's sync did not \
         create; set [target] adopt = \"match-by-key\" in the mapping to take such rows over"
    )
}

/// A key's parameters: the key, then the tenant when the table has a tenant column.
fn key_params(key: &str, scope: Option<&str>, tenant: &str) -> Vec<Param> {
    let mut p = vec![text(key)];
    if scope.is_some() {
        p.push(text(tenant));
    }
    p
}

fn apply_user(
    ex: &mut dyn Exec,
    d: &dyn Dialect,
    target: &Target,
    w: &UserWrite<'_>,
) -> Result<UserApplied, TargetError> {
    let table = quote(d, &target.user_table)?;
    let key_col = quote(d, &target.key_column)?;
    let scope_col = target
        .tenant_column
        .as_deref()
        .map(|c| quote(d, c))
        .transpose()?;
    let scope = scope_col.as_deref();
    let cols = w
        .fields
        .iter()
        .map(|(c, _)| quote(d, c))
        .collect::<Result<Vec<_>, _>>()?;
    let roles = target
        .roles
        .as_ref()
        .map(|r| quote_roles(d, r))
        .transpose()?;
    if let Some(old) = w.previous_key.filter(|old| *old != w.key) {
        rekey(
            ex,
            d,
            target,
            &table,
            &key_col,
            scope,
            roles.as_ref(),
            w,
            old,
        )?;
    }
    if w.existing == Existing::Create
        && ex.scalar(&Stmt::new(
            d.count_key(&table, &key_col, scope),
            key_params(w.key, scope, w.tenant),
        ))? > 0
    {
        return Err(TargetError::NotOwned(not_ours(&target.key_column)));
    }
    let values = w.fields.iter().map(|(_, v)| Param::of(v)).collect();
    let created = d.upsert(
        ex,
        &table,
        &key_col,
        &cols,
        w.key,
        values,
        scope.map(|column| Scope {
            column,
            tenant: w.tenant,
        }),
    )?;
    if let Some(roles) = &roles {
        if !w.roles_to_remove.is_empty() {
            d.remove_roles(ex, roles, w.key, w.roles_to_remove, w.tenant)?;
        }
        if !w.roles_to_add.is_empty() {
            d.add_roles(ex, roles, w.key, w.roles_to_add, w.tenant)?;
        }
    }
    Ok(UserApplied { created })
}

/// Move the row (and its role rows) from `old` to the write's key; nothing to do when there is
/// no row under `old` (e.g. it was moved by a run that did not get to record it).
#[allow(clippy::too_many_arguments)]
fn rekey(
    ex: &mut dyn Exec,
    d: &dyn Dialect,
    target: &Target,
    table: &str,
    key_col: &str,
    scope: Option<&str>,
    roles: Option<&QuotedRoles>,
    w: &UserWrite<'_>,
    old: &str,
) -> Result<(), TargetError> {
    let count = d.count_key(table, key_col, scope);
    if ex.scalar(&Stmt::new(count.clone(), key_params(old, scope, w.tenant)))? == 0 {
        return Ok(());
    }
    if ex.scalar(&Stmt::new(count, key_params(w.key, scope, w.tenant)))? > 0 {
        return Err(TargetError::Conflict(format!(
            "the key changed to a value another row already has ({})",
            target.key_column
        )));
    }
    let mut p = vec![text(w.key), text(old)];
    if scope.is_some() {
        p.push(text(w.tenant));
    }
    ex.execute(&Stmt::new(d.rekey(table, key_col, scope), p))?;
    if let Some(r) = roles {
        let rs = r.tenant_column.as_deref();
        let mut p = vec![text(w.key), text(old)];
        if rs.is_some() {
            p.push(text(w.tenant));
        }
        ex.execute(&Stmt::new(d.rekey(&r.table, &r.user_column, rs), p))?;
    }
    Ok(())
}

fn offboard(
    ex: &mut dyn Exec,
    d: &dyn Dialect,
    target: &Target,
    tenant: &str,
    key: &str,
    action: &Offboarding,
    roles: &BTreeSet<String>,
) -> Result<(), TargetError> {
    let table = quote(d, &target.user_table)?;
    let key_col = quote(d, &target.key_column)?;
    let scope_col = target
        .tenant_column
        .as_deref()
        .map(|c| quote(d, c))
        .transpose()?;
    let scope = scope_col.as_deref();
    if let Some(r) = &target.roles
        && !roles.is_empty()
    {
        d.remove_roles(ex, &quote_roles(d, r)?, key, roles, tenant)?;
    }
    match action {
        Offboarding::None => {}
        Offboarding::Delete => {
            ex.execute(&Stmt::new(
                d.delete_row(&table, &key_col, scope),
                key_params(key, scope, tenant),
            ))?;
        }
        Offboarding::Update(fields) if fields.is_empty() => {}
        Offboarding::Update(fields) => {
            let cols = fields
                .iter()
                .map(|(c, _)| quote(d, c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut params: Vec<Param> = fields.iter().map(|(_, v)| Param::of(v)).collect();
            params.extend(key_params(key, scope, tenant));
            ex.execute(&Stmt::new(
                d.update_row(&table, &key_col, &cols, scope),
                params,
            ))?;
        }
    }
    Ok(())
}
