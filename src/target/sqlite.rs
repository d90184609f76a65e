//! The SQLite application database.
//!
//! Upsert is update-then-insert: `UPDATE … WHERE key = ?`, and an `INSERT` when no row was
//! updated. That works whether or not the key column has a unique index (many application
//! schemas have none), and it is race-free because the batch holds SQLite's write lock from its
//! first statement (`BEGIN IMMEDIATE`). Role rows are added with `INSERT … WHERE NOT EXISTS`,
//! so a role table without a unique (user, role) index gets no duplicates either.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::{TargetError, UserApplied, UserWrite, quote_ident};
use crate::config::ApplicationConfig;
use crate::mapping::{FieldValue, Offboarding, RoleTable, Target};
use crate::store::format_time;

#[derive(Clone)]
pub struct SqliteApp {
    pool: SqlitePool,
}

impl SqliteApp {
    pub async fn open(config: &ApplicationConfig) -> Result<SqliteApp, TargetError> {
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // One connection: the engine writes one batch at a time per application database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts)
            .await?;
        if let Some(schema) = &config.schema {
            let tables: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_one(&pool)
            .await?;
            if tables == 0 {
                let ddl = std::fs::read_to_string(schema).map_err(|e| TargetError::Schema {
                    path: schema.display().to_string(),
                    message: e.to_string(),
                })?;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::raw_sql(&ddl)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| TargetError::Schema {
                        path: schema.display().to_string(),
                        message: e.to_string(),
                    })?;
                tx.commit().await?;
            }
        }
        Ok(SqliteApp { pool })
    }

    /// The connection pool, for tests and checks.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn begin(&self) -> Result<SqliteBatch, TargetError> {
        Ok(SqliteBatch {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
        })
    }
}

pub struct SqliteBatch {
    tx: Transaction<'static, Sqlite>,
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

fn bind_value<'q>(q: Query<'q>, v: &'q FieldValue) -> Query<'q> {
    match v {
        FieldValue::Null => q.bind(None::<String>),
        FieldValue::Text(s) => q.bind(s.as_str()),
        FieldValue::Integer(i) => q.bind(*i),
        FieldValue::Boolean(b) => q.bind(*b),
        FieldValue::Timestamp(t) => q.bind(format_time(*t)),
    }
}

impl SqliteBatch {
    pub async fn apply_user(
        &mut self,
        target: &Target,
        write: &UserWrite<'_>,
    ) -> Result<UserApplied, TargetError> {
        let mut sp = sqlx::Acquire::begin(&mut *self.tx).await?;
        match apply_user(&mut sp, target, write).await {
            Ok(r) => {
                sp.commit().await?;
                Ok(r)
            }
            Err(e) => {
                sp.rollback().await?;
                Err(e)
            }
        }
    }

    pub async fn offboard(
        &mut self,
        target: &Target,
        key: &str,
        action: &Offboarding,
        roles: &BTreeSet<String>,
    ) -> Result<(), TargetError> {
        let mut sp = sqlx::Acquire::begin(&mut *self.tx).await?;
        match offboard(&mut sp, target, key, action, roles).await {
            Ok(()) => {
                sp.commit().await?;
                Ok(())
            }
            Err(e) => {
                sp.rollback().await?;
                Err(e)
            }
        }
    }

    pub async fn commit(self) -> Result<(), TargetError> {
        self.tx.commit().await?;
        Ok(())
    }
}

async fn apply_user(
    c: &mut SqliteConnection,
    target: &Target,
    w: &UserWrite<'_>,
) -> Result<UserApplied, TargetError> {
    let table = quote_ident(&target.user_table)?;
    let key_col = quote_ident(&target.key_column)?;
    if let Some(old) = w.previous_key.filter(|old| *old != w.key) {
        rekey(c, target, &table, &key_col, old, w.key).await?;
    }
    let cols = w
        .fields
        .iter()
        .map(|(c, _)| quote_ident(c))
        .collect::<Result<Vec<_>, _>>()?;
    let updated = if cols.is_empty() {
        let sql = format!("SELECT count(*) FROM {table} WHERE {key_col} = ?");
        sqlx::query_scalar::<_, i64>(&sql)
            .bind(w.key)
            .fetch_one(&mut *c)
            .await?
            > 0
    } else {
        let sets: Vec<String> = cols.iter().map(|c| format!("{c} = ?")).collect();
        let sql = format!("UPDATE {table} SET {} WHERE {key_col} = ?", sets.join(", "));
        let mut q = sqlx::query(&sql);
        for (_, v) in w.fields {
            q = bind_value(q, v);
        }
        q.bind(w.key).execute(&mut *c).await?.rows_affected() > 0
    };
    if !updated {
        let mut names = vec![key_col.clone()];
        names.extend(cols.iter().cloned());
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        );
        let mut q = sqlx::query(&sql).bind(w.key);
        for (_, v) in w.fields {
            q = bind_value(q, v);
        }
        q.execute(&mut *c).await?;
    }
    if let Some(roles) = &target.roles {
        remove_roles(c, roles, w.key, w.roles_to_remove).await?;
        add_roles(c, roles, w.key, w.roles_to_add).await?;
    }
    Ok(UserApplied { created: !updated })
}

/// Move the row (and its role rows) from `old` to `new`; nothing to do when there is no row
/// under `old` (e.g. it was moved by a run that did not get to record it).
async fn rekey(
    c: &mut SqliteConnection,
    target: &Target,
    table: &str,
    key_col: &str,
    old: &str,
    new: &str,
) -> Result<(), TargetError> {
    let count = format!("SELECT count(*) FROM {table} WHERE {key_col} = ?");
    let old_rows: i64 = sqlx::query_scalar(&count)
        .bind(old)
        .fetch_one(&mut *c)
        .await?;
    if old_rows == 0 {
        return Ok(());
    }
    let new_rows: i64 = sqlx::query_scalar(&count)
        .bind(new)
        .fetch_one(&mut *c)
        .await?;
    if new_rows > 0 {
        return Err(TargetError::Conflict(format!(
            "the key changed to a value another row already has ({})",
            target.key_column
        )));
    }
    let sql = format!("UPDATE {table} SET {key_col} = ? WHERE {key_col} = ?");
    sqlx::query(&sql)
        .bind(new)
        .bind(old)
        .execute(&mut *c)
        .await?;
    if let Some(r) = &target.roles {
        let sql = format!(
            "UPDATE {} SET {user} = ? WHERE {user} = ?",
            quote_ident(&r.table)?,
            user = quote_ident(&r.user_column)?
        );
        sqlx::query(&sql)
            .bind(new)
            .bind(old)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn add_roles(
    c: &mut SqliteConnection,
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
    let sql = format!(
        "INSERT INTO {t} ({u}, {ro}) SELECT ?, ? \
         WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {u} = ? AND {ro} = ?)"
    );
    for role in roles {
        sqlx::query(&sql)
            .bind(key)
            .bind(role)
            .bind(key)
            .bind(role)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn remove_roles(
    c: &mut SqliteConnection,
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
    for role in roles {
        sqlx::query(&sql)
            .bind(key)
            .bind(role)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn offboard(
    c: &mut SqliteConnection,
    target: &Target,
    key: &str,
    action: &Offboarding,
    roles: &BTreeSet<String>,
) -> Result<(), TargetError> {
    if let Some(r) = &target.roles {
        remove_roles(c, r, key, roles).await?;
    }
    let table = quote_ident(&target.user_table)?;
    let key_col = quote_ident(&target.key_column)?;
    match action {
        Offboarding::None => {}
        Offboarding::Delete => {
            let sql = format!("DELETE FROM {table} WHERE {key_col} = ?");
            sqlx::query(&sql).bind(key).execute(&mut *c).await?;
        }
        Offboarding::Update(fields) if fields.is_empty() => {}
        Offboarding::Update(fields) => {
            let sets = fields
                .iter()
                .map(|(c, _)| Ok(format!("{} = ?", quote_ident(c)?)))
                .collect::<Result<Vec<_>, TargetError>>()?;
            let sql = format!("UPDATE {table} SET {} WHERE {key_col} = ?", sets.join(", "));
            let mut q = sqlx::query(&sql);
            for (_, v) in fields {
                q = bind_value(q, v);
            }
            q.bind(key).execute(&mut *c).await?;
        }
    }
    Ok(())
}
