//! An application database on SQL Server: the shared writer ([`crate::target::writer`]) in
//! T-SQL, on a pool of its own.
//!
//! The spelling: upsert by key in one round trip that answers whether it created the row
//! (`UPDATE … WITH (UPDLOCK, HOLDLOCK)`, then `INSERT` when no row was updated), one statement
//! per role added or removed, key moves, offboarding by delete or update; with a tenant column
//! every statement matches by key and tenant and the inserts write the tenant. Identifiers are
//! bracket-quoted after validation; every value is a typed parameter (`@P1…`, typed by
//! [`super::rows::Param`]). Rows are read back ([`AppDatabase::read_rows`]: a full run's
//! comparison, `sync --verify`, whether a new user's key is taken) by key, each key a
//! parameter, and their values in the terms the engine compares (`app_value`).
//!
//! A batch is one transaction on one pooled connection. The writer is synchronous: it runs on
//! a blocking thread, and each statement is driven to completion on the runtime from there
//! (`Handle::block_on`). XACT_ABORT is off in these transactions so that an error fails its
//! statement only and the user can be rolled back to its savepoint (`SAVE TRANSACTION`; T-SQL
//! has no savepoint release). Some errors end the transaction anyway (raised in a trigger, a
//! deadlock): `XACT_STATE()` tells the writer, which then leaves that user out.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use tiberius::{ColumnData, FromSql, Query, Row};
use tokio::runtime::Handle;

use super::migrate;
use super::pool::{Client, MssqlPool, Pooled};
use super::rows::{self, Param, SqlError, any_int, bit, int32, params, rows, simple};
use crate::config::{ApplicationConfig, MssqlConfig};
use crate::mapping::Target;
use crate::target::row::{AppRow, AppValue};
use crate::target::schema::{ColumnInfo, TableInfo};
use crate::target::writer::{self, Dialect, Exec, QuotedRoles, Scope, Stmt};
use crate::target::{AppDatabase, BatchFn, TargetError, UserApplied, quote_parts};

// ---- statements ---------------------------------------------------------------------------

/// Savepoints: a failed user rolls back to its own savepoint, not the batch. The name is a
/// constant.
const SAVEPOINT: &str = "SAVE TRANSACTION scim_bridge_user";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TRANSACTION scim_bridge_user";

/// An application batch's transaction. XACT_ABORT is off on these connections for the batch:
/// an error then fails its statement, not the whole transaction.
const APP_BEGIN: &str = "SET XACT_ABORT OFF; BEGIN TRANSACTION";
const APP_COMMIT: &str = "COMMIT TRANSACTION";
/// Roll back whatever is still open (nothing, when an error already ended the transaction).
const APP_ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION";
/// 1: the transaction can go on; -1: an error doomed it (only a rollback is possible);
/// 0: there is none (an error rolled it back).
const XACT_STATE: &str = "SELECT CAST(XACT_STATE() AS INT)";

/// How many user tables the application database has (an empty one gets the schema).
const COUNT_APP_TABLES: &str = "SELECT COUNT(*) FROM sys.tables WHERE is_ms_shipped = 0";
/// The schema script runs in one transaction that any error ends.
const SCHEMA_BEGIN: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION";

/// The columns of table or view @P1 (a quoted `[name]` or `[schema].[name]`, resolved like
/// the writer's statements resolve it), in order: name, type (an alias type's base type, so
/// `sysname` reads `nvarchar`), max_length (bytes; -1: max), precision, scale, nullable, and
/// whether the server fills it in (a default, an identity, a computed column).
const DESCRIBE_COLUMNS: &str = "SELECT c.name, \
     CASE WHEN t.is_assembly_type = 0 AND t.user_type_id <> t.system_type_id \
     THEN bt.name ELSE t.name END AS type_name, \
     CAST(c.max_length AS INT), CAST(c.[precision] AS INT), CAST(c.scale AS INT), c.is_nullable, \
     CAST(CASE WHEN c.default_object_id <> 0 OR c.is_identity = 1 OR c.is_computed = 1 \
     THEN 1 ELSE 0 END AS BIT) AS filled \
     FROM sys.columns c JOIN sys.objects o ON o.object_id = c.object_id AND o.type IN ('U', 'V') \
     JOIN sys.types t ON t.user_type_id = c.user_type_id \
     LEFT JOIN sys.types bt ON bt.user_type_id = t.system_type_id \
     WHERE c.object_id = OBJECT_ID(@P1) ORDER BY c.column_id";

/// The key columns of @P1's unique keys (primary key first, then unique constraints and
/// indexes without a filter; disabled ones enforce nothing): index id, column, in key order.
const DESCRIBE_UNIQUE: &str = "SELECT i.index_id, c.name FROM sys.indexes i \
     JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
     AND ic.is_included_column = 0 \
     JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
     WHERE i.object_id = OBJECT_ID(@P1) AND i.is_unique = 1 AND i.has_filter = 0 \
     AND i.is_disabled = 0 AND i.is_hypothetical = 0 \
     ORDER BY i.is_primary_key DESC, i.index_id, ic.key_ordinal";

/// A column's type as T-SQL spells it: lengths of the character and binary types (in
/// characters for the N types), precision and scale of the exact numerics, the bare name
/// otherwise. `timestamp` is rowversion (binary, filled by the server), not a time.
fn spell_type(name: &str, max_length: i32, precision: i32, scale: i32) -> String {
    let name = name.to_ascii_lowercase();
    let length = |chars: i32| {
        if max_length < 0 {
            "max".to_string()
        } else {
            chars.to_string()
        }
    };
    match name.as_str() {
        "char" | "varchar" | "binary" | "varbinary" => format!("{name}({})", length(max_length)),
        "nchar" | "nvarchar" => format!("{name}({})", length(max_length / 2)),
        "decimal" | "numeric" => format!("{name}({precision},{scale})"),
        "timestamp" => "rowversion".to_string(),
        _ => name,
    }
}

/// `key = @Pn`, and `AND tenant = @Pn+1` with a tenant column (`scope`, quoted): how every
/// statement of a user's row finds it.
fn key_match(key: &str, scope: Option<&str>, n: usize) -> String {
    match scope {
        None => format!("{key} = @P{n}"),
        Some(tc) => format!("{key} = @P{n} AND {tc} = @P{}", n + 1),
    }
}

/// Upsert one application row by key, as one batch: @P1 the key, with a tenant column
/// (`scope`) @P2 the tenant, then the field values in `columns` order. Returns one row,
/// `created` (BIT). The tenant narrows the UPDATE's match and is written by the INSERT.
/// UPDATE WITH (UPDLOCK, HOLDLOCK) locks the key — or, when there is no row yet, the key range
/// where it would go — until the transaction ends, so of two concurrent upserts of one key the
/// second waits and then updates: one insert, one update, never two inserts or a key
/// violation. `table`, `key`, `columns` and `scope` are quoted.
fn upsert_user(table: &str, key: &str, columns: &[String], scope: Option<&str>) -> String {
    let matched = key_match(key, scope, 1);
    let first_value = if scope.is_some() { 3 } else { 2 };
    let first = if columns.is_empty() {
        format!("SELECT @updated = COUNT(*) FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE {matched};")
    } else {
        let sets = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = @P{}", i + first_value))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {table} WITH (UPDLOCK, HOLDLOCK) SET {sets} WHERE {matched}; SET @updated = @@ROWCOUNT;"
        )
    };
    let mut names = vec![key.to_string()];
    names.extend(scope.map(str::to_string));
    names.extend(columns.iter().cloned());
    format!(
        "DECLARE @updated INT; {first} \
         IF @updated = 0 INSERT INTO {table} ({}) VALUES ({}); \
         SELECT CAST(CASE WHEN @updated = 0 THEN 1 ELSE 0 END AS BIT) AS created",
        names.join(", "),
        params(1, names.len())
    )
}

/// Rows under a key (locked, so a row cannot appear before the write that counted none):
/// @P1 key (@P2 the tenant, with a tenant column).
fn count_key(table: &str, key: &str, scope: Option<&str>) -> String {
    format!(
        "SELECT COUNT(*) FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE {}",
        key_match(key, scope, 1)
    )
}

/// Move a row, or role rows, to a new key: @P1 new key, @P2 old key (@P3 the tenant).
fn rekey(table: &str, key: &str, scope: Option<&str>) -> String {
    format!(
        "UPDATE {table} SET {key} = @P1 WHERE {}",
        key_match(key, scope, 2)
    )
}

/// Assign one role unless assigned: @P1 user key, @P2 role (@P3 the tenant, written into the
/// tenant column and matched on it).
fn add_role(table: &str, user: &str, role: &str, scope: Option<&str>) -> String {
    let (column, value, matched) = match scope {
        None => (String::new(), "", String::new()),
        Some(tc) => (format!(", {tc}"), ", @P3", format!(" AND {tc} = @P3")),
    };
    format!(
        "INSERT INTO {table} ({user}, {role}{column}) SELECT @P1, @P2{value} WHERE NOT EXISTS \
         (SELECT 1 FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE {user} = @P1 AND {role} = @P2{matched})"
    )
}

/// Remove one role: @P1 user key, @P2 role (@P3 the tenant).
fn remove_role(table: &str, user: &str, role: &str, scope: Option<&str>) -> String {
    let matched = scope
        .map(|tc| format!(" AND {tc} = @P3"))
        .unwrap_or_default();
    format!("DELETE FROM {table} WHERE {user} = @P1 AND {role} = @P2{matched}")
}

/// Offboarding by deletion: @P1 key (@P2 the tenant).
fn delete_row(table: &str, key: &str, scope: Option<&str>) -> String {
    format!("DELETE FROM {table} WHERE {}", key_match(key, scope, 1))
}

/// Offboarding by update: @P1… the values in `columns` order, then the key (then the tenant).
fn update_row(table: &str, key: &str, columns: &[String], scope: Option<&str>) -> String {
    let sets = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = @P{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE {table} SET {sets} WHERE {}",
        key_match(key, scope, columns.len() + 1)
    )
}

/// The most keys one read binds: SQL Server takes at most 2100 parameters a statement.
const KEYS_PER_READ: usize = 1024;

/// The key and `columns` of the rows of @P1…@Pn (`n` keys), narrowed to the tenant @Pn+1 with a
/// tenant column. The keys are parameters, not one JSON array read with OPENJSON: OPENJSON's
/// values have the database's default collation, which a key column declared with another
/// collation refuses to be compared with (error 468); a parameter takes the column's, as the
/// writer's statements do.
fn read_rows_sql(
    table: &str,
    key: &str,
    columns: &[String],
    n: usize,
    scope: Option<&str>,
) -> String {
    let select: Vec<&str> = std::iter::once(key)
        .chain(columns.iter().map(String::as_str))
        .collect();
    let narrow = scope
        .map(|tc| format!(" AND {tc} = @P{}", n + 1))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM {table} WHERE {key} IN ({}){narrow}",
        select.join(", "),
        params(1, n)
    )
}

/// The role rows of @P1…@Pn (`n` user keys): user key, role; narrowed to the tenant @Pn+1 with
/// a tenant column.
fn read_roles_sql(table: &str, user: &str, role: &str, n: usize, scope: Option<&str>) -> String {
    let narrow = scope
        .map(|tc| format!(" AND {tc} = @P{}", n + 1))
        .unwrap_or_default();
    format!(
        "SELECT {user}, {role} FROM {table} WHERE {user} IN ({}){narrow}",
        params(1, n)
    )
}

/// `keys` in reads of at most [`KEYS_PER_READ`], each padded to a power of two by repeating
/// its last key (a key twice in IN is harmless): a handful of statement texts, so of cached
/// plans, whatever the batches' sizes.
fn key_chunks(keys: &[String]) -> Vec<Vec<&str>> {
    keys.chunks(KEYS_PER_READ)
        .map(|chunk| {
            let mut out: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let padded = out.len().next_power_of_two();
            if let Some(last) = out.last().copied() {
                out.resize(padded, last);
            }
            out
        })
        .collect()
}

/// A column's value as SQL Server sent it, in the terms the engine compares: character types
/// are text; integer types, integers; bit, a boolean; the date and time types that name an
/// instant, that instant in UTC (a date is its midnight); decimal, money and float, reals; a
/// uniqueidentifier, its text (lower case); binary, xml and a time of day, values the engine
/// does not write.
fn app_value(v: &ColumnData<'static>) -> Result<AppValue, SqlError> {
    fn or_null<T>(v: Option<T>, f: impl FnOnce(T) -> AppValue) -> AppValue {
        v.map_or(AppValue::Null, f)
    }
    Ok(match v {
        ColumnData::U8(x) => or_null(*x, |x| AppValue::Int(i64::from(x))),
        ColumnData::I16(x) => or_null(*x, |x| AppValue::Int(i64::from(x))),
        ColumnData::I32(x) => or_null(*x, |x| AppValue::Int(i64::from(x))),
        ColumnData::I64(x) => or_null(*x, AppValue::Int),
        ColumnData::F32(x) => or_null(*x, |x| AppValue::Real(f64::from(x))),
        ColumnData::F64(x) => or_null(*x, AppValue::Real),
        ColumnData::Numeric(x) => or_null(*x, |x| AppValue::Real(f64::from(x))),
        ColumnData::Bit(x) => or_null(*x, AppValue::Bool),
        ColumnData::String(x) => or_null(x.as_ref(), |x| AppValue::Text(x.to_string())),
        ColumnData::Guid(x) => or_null(*x, |x| AppValue::Text(x.to_string())),
        ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => {
            or_null(NaiveDateTime::from_sql(v)?, |t| {
                AppValue::Time(Utc.from_utc_datetime(&t))
            })
        }
        ColumnData::Date(_) => or_null(NaiveDate::from_sql(v)?, |d| {
            AppValue::Time(Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)))
        }),
        // The driver's DateTime<Utc> reading takes the offset off a time that is UTC already
        // (TDS sends a datetimeoffset's instant in UTC); its DateTime<FixedOffset> is right.
        ColumnData::DateTimeOffset(_) => or_null(DateTime::<FixedOffset>::from_sql(v)?, |t| {
            AppValue::Time(t.with_timezone(&Utc))
        }),
        ColumnData::Binary(x) => or_null(x.as_ref(), |_| AppValue::Other),
        ColumnData::Xml(x) => or_null(x.as_ref(), |_| AppValue::Other),
        ColumnData::Time(x) => or_null(x.as_ref(), |_| AppValue::Other),
    })
}

/// A key or a role as the engine spells it: text, or an integer column's number in decimal.
/// None for a NULL or a type no key of the engine's could be.
fn key_text(v: AppValue) -> Option<String> {
    match v {
        AppValue::Text(s) => Some(s),
        AppValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

// ---- the dialect --------------------------------------------------------------------------

/// T-SQL's spelling of the application writer.
struct TSql;

const TSQL: TSql = TSql;

fn text(s: &str) -> writer::Param {
    writer::Param::Text(s.to_string())
}

impl TSql {
    /// One statement per role (`statement` is [`add_role`] or [`remove_role`]): the key, the
    /// role, and the tenant when the role table has a tenant column.
    fn per_role(
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
        statement: fn(&str, &str, &str, Option<&str>) -> String,
    ) -> Result<(), TargetError> {
        let scope = r.tenant_column.as_deref();
        let sql = statement(&r.table, &r.user_column, &r.role_column, scope);
        for role in roles {
            let mut p = vec![text(key), text(role)];
            if scope.is_some() {
                p.push(text(tenant));
            }
            ex.execute(&Stmt::new(sql.clone(), p))?;
        }
        Ok(())
    }
}

impl Dialect for TSql {
    fn quote(&self, ident: &str) -> Option<String> {
        quote_parts(ident, '[', ']')
    }

    fn begin(&self) -> &'static str {
        APP_BEGIN
    }

    fn commit(&self) -> &'static str {
        APP_COMMIT
    }

    fn rollback(&self) -> &'static str {
        APP_ROLLBACK
    }

    fn savepoint(&self) -> &'static str {
        SAVEPOINT
    }

    fn rollback_to_savepoint(&self) -> &'static str {
        ROLLBACK_TO_SAVEPOINT
    }

    /// T-SQL savepoints end with the transaction.
    fn release_savepoint(&self) -> Option<&'static str> {
        None
    }

    fn usable(&self, ex: &mut dyn Exec) -> Result<bool, TargetError> {
        Ok(ex.scalar(&Stmt::plain(XACT_STATE))? == 1)
    }

    fn upsert(
        &self,
        ex: &mut dyn Exec,
        table: &str,
        key_column: &str,
        columns: &[String],
        key: &str,
        values: Vec<writer::Param>,
        scope: Option<Scope<'_>>,
    ) -> Result<bool, TargetError> {
        let mut p = vec![text(key)];
        p.extend(scope.map(|s| text(s.tenant)));
        p.extend(values);
        let sql = upsert_user(table, key_column, columns, scope.map(|s| s.column));
        Ok(ex.scalar(&Stmt::new(sql, p))? != 0)
    }

    fn count_key(&self, table: &str, key_column: &str, scope: Option<&str>) -> String {
        count_key(table, key_column, scope)
    }

    fn rekey(&self, table: &str, key_column: &str, scope: Option<&str>) -> String {
        rekey(table, key_column, scope)
    }

    fn add_roles(
        &self,
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
    ) -> Result<(), TargetError> {
        TSql::per_role(ex, r, key, roles, tenant, add_role)
    }

    fn remove_roles(
        &self,
        ex: &mut dyn Exec,
        r: &QuotedRoles,
        key: &str,
        roles: &BTreeSet<String>,
        tenant: &str,
    ) -> Result<(), TargetError> {
        TSql::per_role(ex, r, key, roles, tenant, remove_role)
    }

    fn delete_row(&self, table: &str, key_column: &str, scope: Option<&str>) -> String {
        delete_row(table, key_column, scope)
    }

    fn update_row(
        &self,
        table: &str,
        key_column: &str,
        columns: &[String],
        scope: Option<&str>,
    ) -> String {
        update_row(table, key_column, columns, scope)
    }
}

// ---- the connection -----------------------------------------------------------------------

/// A pooled connection driven from a blocking thread.
struct Blocking {
    rt: Handle,
    client: Pooled,
}

/// Statements without parameters go as a plain batch: BEGIN and COMMIT must not run inside
/// sp_executesql (a procedure may not change the transaction count).
async fn run_rows(c: &mut Client, s: &Stmt) -> Result<Vec<Row>, SqlError> {
    let stream = if s.params.is_empty() {
        c.simple_query(s.sql.as_str()).await?
    } else {
        let mut q = Query::new(s.sql.as_str());
        for p in &s.params {
            Param::from(p).bind(&mut q);
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

async fn run_execute(c: &mut Client, s: &Stmt) -> Result<u64, SqlError> {
    if s.params.is_empty() {
        simple(c, &s.sql).await?;
        return Ok(0);
    }
    let mut q = Query::new(s.sql.as_str());
    for p in &s.params {
        Param::from(p).bind(&mut q);
    }
    Ok(q.execute(c).await?.total())
}

impl Exec for Blocking {
    fn execute(&mut self, s: &Stmt) -> Result<u64, TargetError> {
        let c: &mut Client = &mut self.client;
        Ok(self.rt.block_on(run_execute(c, s))?)
    }

    fn scalar(&mut self, s: &Stmt) -> Result<i64, TargetError> {
        let c: &mut Client = &mut self.client;
        let rows = self.rt.block_on(run_rows(c, s))?;
        let row = rows
            .first()
            .ok_or_else(|| SqlError::missing("row from the statement"))?;
        Ok(any_int(row)?)
    }
}

/// An application database on SQL Server.
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
            apply_schema(&pool, schema).await?;
        }
        Ok(MssqlApp { pool })
    }
}

/// `schema` (batches separated by `GO`) in one transaction, when the database has no tables.
async fn apply_schema(pool: &MssqlPool, schema: &Path) -> Result<(), TargetError> {
    let failed = |message: String| TargetError::Schema {
        path: schema.display().to_string(),
        message,
    };
    let mut c = pool.get().await.map_err(|e| failed(e.to_string()))?;
    let rows = run_rows(&mut c, &Stmt::plain(COUNT_APP_TABLES)).await?;
    let tables = rows.first().map(any_int).transpose()?.unwrap_or(0);
    if tables > 0 {
        return Ok(());
    }
    let ddl = std::fs::read_to_string(schema).map_err(|e| failed(e.to_string()))?;
    let applied = async {
        simple(&mut c, SCHEMA_BEGIN).await?;
        for b in migrate::batches(&ddl) {
            simple(&mut c, &b).await?;
        }
        simple(&mut c, APP_COMMIT).await
    }
    .await;
    if let Err(e) = applied {
        // The connection is dropped if even this fails.
        let _ = simple(&mut c, APP_ROLLBACK).await;
        return Err(failed(e.to_string()));
    }
    Ok(())
}

/// `table`'s columns and unique keys (None: no such table or view, or a name the writer
/// would refuse too).
async fn describe(c: &mut Client, table: &str) -> Result<Option<TableInfo>, SqlError> {
    let Some(quoted) = quote_parts(table, '[', ']') else {
        return Ok(None);
    };
    let mut q = Query::new(DESCRIBE_COLUMNS);
    q.bind(quoted.clone());
    let columns = rows(c, q)
        .await?
        .iter()
        .map(|r| {
            let declared = spell_type(&rows::text(r, 1)?, int32(r, 2)?, int32(r, 3)?, int32(r, 4)?);
            Ok(ColumnInfo {
                name: rows::text(r, 0)?,
                // rowversion is written by the server alone.
                defaulted: bit(r, 6)? || declared == "rowversion",
                declared,
                not_null: !bit(r, 5)?,
            })
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    if columns.is_empty() {
        return Ok(None);
    }
    let mut q = Query::new(DESCRIBE_UNIQUE);
    q.bind(quoted);
    let mut unique: Vec<(i32, Vec<String>)> = Vec::new();
    for r in rows(c, q).await? {
        let (index, column) = (int32(&r, 0)?, rows::text(&r, 1)?);
        match unique.last_mut() {
            Some((last, cols)) if *last == index => cols.push(column),
            _ => unique.push((index, vec![column])),
        }
    }
    Ok(Some(TableInfo {
        columns,
        unique: unique.into_iter().map(|(_, cols)| cols).collect(),
    }))
}

/// A mapping identifier, quoted.
fn quoted(ident: &str) -> Result<String, TargetError> {
    TSQL.quote(ident)
        .ok_or_else(|| TargetError::Identifier(ident.to_string()))
}

/// The rows of `keys` (see [`AppDatabase::read_rows`]): one SELECT of key and columns per
/// [`KEYS_PER_READ`] keys, then the role rows the same way.
async fn read_rows(
    c: &mut Client,
    target: &Target,
    tenant: &str,
    columns: &[String],
    keys: &[String],
) -> Result<HashMap<String, AppRow>, TargetError> {
    let (table, key) = (quoted(&target.user_table)?, quoted(&target.key_column)?);
    let cols = columns
        .iter()
        .map(|c| quoted(c))
        .collect::<Result<Vec<_>, _>>()?;
    let scope = target.tenant_column.as_deref().map(quoted).transpose()?;
    let mut out: HashMap<String, AppRow> = HashMap::new();
    for chunk in key_chunks(keys) {
        let mut q = Query::new(read_rows_sql(
            &table,
            &key,
            &cols,
            chunk.len(),
            scope.as_deref(),
        ));
        bind_keys(&mut q, &chunk, scope.is_some().then_some(tenant));
        for r in rows(c, q).await? {
            let mut cells = r.cells().map(|(_, v)| app_value(v));
            let Some(k) = cells.next().transpose()?.and_then(key_text) else {
                continue;
            };
            let mut row = AppRow::default();
            for (name, v) in columns.iter().zip(cells) {
                row.fields.insert(name.clone(), v?);
            }
            out.insert(k, row);
        }
    }
    let Some(roles) = &target.roles else {
        return Ok(out);
    };
    let (rt, ru, rr) = (
        quoted(&roles.table)?,
        quoted(&roles.user_column)?,
        quoted(&roles.role_column)?,
    );
    let scope = roles.tenant_column.as_deref().map(quoted).transpose()?;
    for chunk in key_chunks(keys) {
        let mut q = Query::new(read_roles_sql(&rt, &ru, &rr, chunk.len(), scope.as_deref()));
        bind_keys(&mut q, &chunk, scope.is_some().then_some(tenant));
        for r in rows(c, q).await? {
            let mut cells = r.cells().map(|(_, v)| app_value(v));
            let (Some(k), Some(role)) = (
                cells.next().transpose()?.and_then(key_text),
                cells.next().transpose()?.and_then(key_text),
            ) else {
                continue;
            };
            if let Some(row) = out.get_mut(&k) {
                row.roles.insert(role);
            }
        }
    }
    Ok(out)
}

/// The keys of one read, then the tenant when the table has a tenant column.
fn bind_keys(q: &mut Query<'_>, keys: &[&str], tenant: Option<&str>) {
    for k in keys {
        q.bind(k.to_string());
    }
    if let Some(t) = tenant {
        q.bind(t.to_string());
    }
}

#[async_trait]
impl AppDatabase for MssqlApp {
    async fn read_rows(
        &self,
        target: &Target,
        tenant: &str,
        columns: &[String],
        keys: &[String],
    ) -> Result<HashMap<String, AppRow>, TargetError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut c = self.pool.get().await?;
        read_rows(&mut c, target, tenant, columns, keys).await
    }

    async fn describe(&self, table: &str) -> Result<Option<TableInfo>, TargetError> {
        let mut c = self.pool.get().await?;
        Ok(describe(&mut c, table).await?)
    }

    /// One pooled connection on a blocking thread for the whole batch.
    async fn batch(&self, mut f: BatchFn) -> Result<Vec<Result<UserApplied, String>>, TargetError> {
        let client = self.pool.get_owned().await?;
        let rt = Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut ex = Blocking { rt, client };
            writer::run_batch(&mut ex, &TSQL, &mut |b| f(b))
        })
        .await
        .map_err(|e| TargetError::Task(e.to_string()))?
    }
}

/// Every statement the writer can issue here, on a sample mapping's identifiers.
#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    let q = |s: &str| TSQL.quote(s).unwrap();
    let (t, k) = (q("dbo.scifeon_users"), q("UserName"));
    let cols = vec![q("FirstName"), q("IsActive")];
    let (rt, ru, rr) = (q("user_roles"), q("user_key"), q("role"));
    let mut out: Vec<(String, String)> = [
        ("SAVEPOINT", SAVEPOINT),
        ("ROLLBACK_TO_SAVEPOINT", ROLLBACK_TO_SAVEPOINT),
        ("COUNT_APP_TABLES", COUNT_APP_TABLES),
        ("SCHEMA_BEGIN", SCHEMA_BEGIN),
        ("APP_BEGIN", APP_BEGIN),
        ("APP_COMMIT", APP_COMMIT),
        ("APP_ROLLBACK", APP_ROLLBACK),
        ("XACT_STATE", XACT_STATE),
        ("DESCRIBE_COLUMNS", DESCRIBE_COLUMNS),
        ("DESCRIBE_UNIQUE", DESCRIBE_UNIQUE),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
    let tc = q("TenantName");
    for (name, scope) in [("", None), ("(scoped)", Some(tc.as_str()))] {
        out.extend([
            (
                format!("upsert_user{name}"),
                upsert_user(&t, &k, &cols, scope),
            ),
            (
                format!("upsert_user(no columns){name}"),
                upsert_user(&t, &k, &[], scope),
            ),
            (format!("count_key{name}"), count_key(&t, &k, scope)),
            (format!("rekey{name}"), rekey(&t, &k, scope)),
            (format!("add_role{name}"), add_role(&rt, &ru, &rr, scope)),
            (
                format!("remove_role{name}"),
                remove_role(&rt, &ru, &rr, scope),
            ),
            (format!("delete_row{name}"), delete_row(&t, &k, scope)),
            (
                format!("update_row{name}"),
                update_row(&t, &k, &cols, scope),
            ),
        ]);
        for n in [1, 4] {
            out.push((
                format!("read_rows_sql({n}){name}"),
                read_rows_sql(&t, &k, &cols, n, scope),
            ));
            out.push((
                format!("read_rows_sql(no columns, {n}){name}"),
                read_rows_sql(&t, &k, &[], n, scope),
            ));
            out.push((
                format!("read_roles_sql({n}){name}"),
                read_roles_sql(&rt, &ru, &rr, n, scope),
            ));
        }
    }
    out
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
