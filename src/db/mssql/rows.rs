//! What every SQL Server module shares below its statements: the one place driver errors
//! become domain errors ([`SqlError`], then [`DbError`], [`StoreError`], [`SyncError`] or
//! [`TargetError`]), the redaction of user data from server messages, typed parameters and
//! their binding, and reading rows.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use tiberius::{ColumnData, IntoSql, Query, Row};

use super::pool::Client;
use crate::scim::ScimError;
use crate::store::{DbError, StoreError, format_time};
use crate::sync::SyncError;
use crate::target::TargetError;
use crate::target::writer;

/// A SQL Server failure, classified once; each caller's error type takes it from here.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// Chosen as a deadlock victim (1205) or a lock wait timed out (1222): worth retrying.
    #[error("the database is busy")]
    Busy,
    /// The connection failed or the server cannot take the session.
    #[error("{0}")]
    Unavailable(String),
    /// The database's data or log files are full (1105, 9002).
    #[error("the database is full")]
    Full,
    /// A unique index or constraint refused the write (2601, 2627); the text is redacted.
    #[error("{0}")]
    Unique(String),
    /// A value is longer than its column (2628, 8152); the text is redacted.
    #[error("{0}")]
    TooLong(String),
    /// Anything else, redacted; also a row that lacks what its statement promised.
    #[error("{0}")]
    Failed(String),
}

/// Server errors that mean the session is gone or cannot start (database offline, login
/// refused, Azure SQL reconfiguring or out of resources), not that the statement was wrong.
const UNAVAILABLE: &[u32] = &[
    233, 4060, 10928, 10929, 18456, 40197, 40501, 40613, 49918, 49919, 49920,
];

impl SqlError {
    /// The classification of an error with this server code (None: not from the server) and
    /// text; `connection` for failures of the connection itself (I/O, TLS, routing).
    fn classify(code: Option<u32>, connection: bool, text: String) -> SqlError {
        if connection {
            return SqlError::Unavailable(text);
        }
        match code {
            Some(1205 | 1222) => SqlError::Busy,
            Some(1105 | 9002) => SqlError::Full,
            Some(2601 | 2627) => SqlError::Unique(text),
            Some(2628 | 8152) => SqlError::TooLong(text),
            Some(c) if UNAVAILABLE.contains(&c) => SqlError::Unavailable(text),
            _ => SqlError::Failed(text),
        }
    }

    /// A unique violation as the caller's conflict (`what` names it without the values).
    pub fn or_conflict(self, what: &str) -> StoreError {
        match self {
            SqlError::Unique(_) => StoreError::Conflict(what.to_string()),
            other => other.into(),
        }
    }

    /// A value the statement promised that is not there.
    pub fn missing(what: &str) -> SqlError {
        SqlError::Failed(format!("SQL Server returned no {what}"))
    }
}

impl From<tiberius::error::Error> for SqlError {
    fn from(e: tiberius::error::Error) -> Self {
        use tiberius::error::Error as E;
        let connection = matches!(e, E::Io { .. } | E::Tls(_) | E::Routing { .. });
        SqlError::classify(e.code(), connection, redact(&e))
    }
}

impl From<SqlError> for DbError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Busy => DbError::Busy,
            SqlError::Unavailable(t) => DbError::Unavailable(t),
            SqlError::Full => DbError::Full,
            SqlError::Unique(t) | SqlError::TooLong(t) | SqlError::Failed(t) => DbError::Failed(t),
        }
    }
}

impl From<DbError> for SqlError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy => SqlError::Busy,
            DbError::Unavailable(t) => SqlError::Unavailable(t),
            DbError::Full => SqlError::Full,
            DbError::Failed(t) => SqlError::Failed(t),
        }
    }
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::TooLong(_) => StoreError::Rejected(ScimError::invalid_value(
                "a value is longer than the staging database allows",
            )),
            other => StoreError::Db(other.into()),
        }
    }
}

impl From<SqlError> for SyncError {
    fn from(e: SqlError) -> Self {
        SyncError::Db(e.into())
    }
}

impl From<SqlError> for TargetError {
    fn from(e: SqlError) -> Self {
        TargetError::Db(e.into())
    }
}

/// Where SQL Server quotes the data a statement carried: the duplicate key (2601, 2627), the
/// truncated value (2628), the value that failed a conversion (245, 248). That is user data,
/// never shown or logged: the message is cut there.
const QUOTES_DATA: &[&str] = &["The duplicate key value is", "Truncated value:", "value '"];

/// An error's text without the data SQL Server quotes in some messages.
pub fn redact(e: &tiberius::error::Error) -> String {
    redact_text(e.to_string())
}

fn redact_text(text: String) -> String {
    let cut = QUOTES_DATA
        .iter()
        .filter_map(|marker| text.find(marker).map(|at| (at, *marker)))
        .min();
    match cut {
        Some((at, marker)) => format!("{}{marker} (redacted)", &text[..at]),
        None => text,
    }
}

// ---- parameters ---------------------------------------------------------------------------

/// `@Pfrom, @Pfrom+1, …` (n names): parameters are numbered, tiberius binds them in order.
pub fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bound parameter, in the SQL Server type it is sent as.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// NVARCHAR
    Text(String),
    /// BIGINT
    Int(i64),
    /// FLOAT
    Real(f64),
    /// BIT
    Bool(bool),
    /// DATETIME2, UTC (converts to DATE, DATETIME and DATETIMEOFFSET columns)
    Time(NaiveDateTime),
    /// A NULL NVARCHAR: converts to any column type but binary ones.
    Null,
}

impl Param {
    pub fn opt_text(v: &Option<String>) -> Param {
        v.clone().map_or(Param::Null, Param::Text)
    }

    /// The value as the driver sends it.
    pub fn sql(&self) -> ColumnData<'static> {
        match self {
            Param::Text(s) => ColumnData::String(Some(Cow::Owned(s.clone()))),
            Param::Int(i) => ColumnData::I64(Some(*i)),
            Param::Real(f) => ColumnData::F64(Some(*f)),
            Param::Bool(b) => ColumnData::Bit(Some(*b)),
            Param::Time(t) => t.into_sql(),
            Param::Null => ColumnData::String(None),
        }
    }

    pub fn bind(&self, q: &mut Query<'_>) {
        q.bind(self.sql());
    }
}

/// The application writer's parameters in T-SQL types: integers as BIGINT, booleans as BIT,
/// timestamps as DATETIME2 in UTC, NULL as a typed NULL.
impl From<&writer::Param> for Param {
    fn from(p: &writer::Param) -> Param {
        match p {
            writer::Param::Null => Param::Null,
            writer::Param::Text(s) => Param::Text(s.clone()),
            writer::Param::Int(i) => Param::Int(*i),
            writer::Param::Bool(b) => Param::Bool(*b),
            writer::Param::Time(t) => Param::Time(naive(*t)),
        }
    }
}

/// DATETIME2 columns hold UTC without an offset.
pub fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

/// A DATETIME2 read back as the store's text (RFC 3339, milliseconds, Z), as SQLite keeps it.
pub fn time_text(t: NaiveDateTime) -> String {
    format_time(Utc.from_utc_datetime(&t))
}

/// A time as bound in a comparison: DATETIME2 at the milliseconds the database keeps (SQLite
/// compares the millisecond text, so a finer part never counts there either).
pub fn at_ms(t: DateTime<Utc>) -> NaiveDateTime {
    let t = naive(t);
    t.with_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

// ---- running statements -------------------------------------------------------------------

/// A batch without parameters, results discarded (BEGIN and COMMIT go this way: not inside
/// sp_executesql).
pub async fn simple(c: &mut Client, sql: &str) -> Result<(), SqlError> {
    c.simple_query(sql).await?.into_results().await?;
    Ok(())
}

/// The rows of the first result set that has any.
pub async fn rows(c: &mut Client, q: Query<'_>) -> Result<Vec<Row>, SqlError> {
    Ok(q.query(c)
        .await?
        .into_results()
        .await?
        .into_iter()
        .find(|r| !r.is_empty())
        .unwrap_or_default())
}

/// Every result set of a batch, in order.
pub async fn results(c: &mut Client, q: Query<'_>) -> Result<Vec<Vec<Row>>, SqlError> {
    Ok(q.query(c).await?.into_results().await?)
}

pub async fn first(c: &mut Client, q: Query<'_>) -> Result<Option<Row>, SqlError> {
    Ok(rows(c, q).await?.into_iter().next())
}

/// The rows a statement affected.
pub async fn execute(c: &mut Client, q: Query<'_>) -> Result<u64, SqlError> {
    Ok(q.execute(c).await?.total())
}

/// The single integer a statement always returns (COUNT_BIG, an OUTPUT id, a BIT as INT…).
pub async fn scalar(c: &mut Client, q: Query<'_>) -> Result<i64, SqlError> {
    let row = first(c, q).await?.ok_or_else(|| SqlError::missing("row"))?;
    int(&row, 0)
}

// ---- reading rows -------------------------------------------------------------------------

fn null(i: usize) -> SqlError {
    SqlError::Failed(format!("SQL Server returned NULL in column {i}"))
}

pub fn text(r: &Row, i: usize) -> Result<String, SqlError> {
    opt_text(r, i)?.ok_or_else(|| null(i))
}

pub fn opt_text(r: &Row, i: usize) -> Result<Option<String>, SqlError> {
    Ok(r.try_get::<&str, _>(i)?.map(str::to_string))
}

/// A BIGINT column.
pub fn int(r: &Row, i: usize) -> Result<i64, SqlError> {
    opt_int(r, i)?.ok_or_else(|| null(i))
}

pub fn opt_int(r: &Row, i: usize) -> Result<Option<i64>, SqlError> {
    Ok(r.try_get::<i64, _>(i)?)
}

/// An INT column (the provisioning log's status).
pub fn int32(r: &Row, i: usize) -> Result<i32, SqlError> {
    r.try_get::<i32, _>(i)?.ok_or_else(|| null(i))
}

pub fn float(r: &Row, i: usize) -> Result<f64, SqlError> {
    r.try_get::<f64, _>(i)?.ok_or_else(|| null(i))
}

pub fn bit(r: &Row, i: usize) -> Result<bool, SqlError> {
    r.try_get::<bool, _>(i)?.ok_or_else(|| null(i))
}

/// A DATETIME2 as the store's text.
pub fn time(r: &Row, i: usize) -> Result<String, SqlError> {
    opt_time(r, i)?.ok_or_else(|| null(i))
}

pub fn opt_time(r: &Row, i: usize) -> Result<Option<String>, SqlError> {
    Ok(r.try_get::<NaiveDateTime, _>(i)?.map(time_text))
}

/// A DATETIME2 (UTC) as a time.
pub fn utc(r: &Row, i: usize) -> Result<DateTime<Utc>, SqlError> {
    opt_utc(r, i)?.ok_or_else(|| null(i))
}

pub fn opt_utc(r: &Row, i: usize) -> Result<Option<DateTime<Utc>>, SqlError> {
    Ok(r.try_get::<NaiveDateTime, _>(i)?
        .map(|t| Utc.from_utc_datetime(&t)))
}

/// The first column as an integer, whichever integer type (or BIT) the server sent: for
/// statements over application tables, whose types the mapping does not know.
pub fn any_int(r: &Row) -> Result<i64, SqlError> {
    let v = if let Ok(v) = r.try_get::<i32, _>(0) {
        v.map(i64::from)
    } else if let Ok(v) = r.try_get::<i64, _>(0) {
        v
    } else {
        r.try_get::<bool, _>(0)?.map(i64::from)
    };
    v.ok_or_else(|| null(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_become_domain_errors() {
        let c = |code: u32| SqlError::classify(Some(code), false, format!("error {code}"));
        assert_eq!(c(1205), SqlError::Busy);
        assert_eq!(c(1222), SqlError::Busy);
        assert!(matches!(DbError::from(c(1205)), DbError::Busy));
        for code in [2601, 2627] {
            assert!(matches!(c(code), SqlError::Unique(_)));
            let e = c(code).or_conflict("a user with this userName already exists");
            assert!(
                matches!(&e, StoreError::Conflict(w) if w == "a user with this userName already exists"),
                "{e}"
            );
            // Outside a write that names its conflict, just a failure.
            assert!(matches!(
                SyncError::from(c(code)),
                SyncError::Db(DbError::Failed(_))
            ));
        }
        for code in [2628, 8152] {
            let e = StoreError::from(c(code));
            let StoreError::Rejected(scim) = &e else {
                panic!("{e}");
            };
            assert_eq!(scim.status, 400);
            assert_eq!(
                scim.detail,
                "a value is longer than the staging database allows"
            );
            assert!(matches!(
                TargetError::from(c(code)),
                TargetError::Db(DbError::Failed(_))
            ));
        }
        for code in [4060, 18456, 40613] {
            assert!(matches!(DbError::from(c(code)), DbError::Unavailable(_)));
        }
        let io = SqlError::classify(None, true, "connection reset".into());
        assert!(matches!(
            StoreError::from(io),
            StoreError::Db(DbError::Unavailable(t)) if t == "connection reset"
        ));
        let other = StoreError::from(c(547));
        assert!(
            matches!(&other, StoreError::Db(DbError::Failed(t)) if t == "error 547"),
            "{other}"
        );
        // A Busy that goes through DbError and back stays Busy.
        assert_eq!(SqlError::from(DbError::Busy), SqlError::Busy);
    }

    #[test]
    fn quoted_data_is_redacted_from_server_errors() {
        let e = tiberius::error::Error::Protocol(
            "Cannot insert duplicate key row in object 'scim.users' with unique index \
             'users_user_name'. The duplicate key value is (t1, ann@example.com)."
                .into(),
        );
        let shown = SqlError::from(e).to_string();
        assert!(shown.contains("users_user_name"), "{shown}");
        assert!(!shown.contains("ann@example.com"), "{shown}");
        let e = tiberius::error::Error::Protocol(
            "String or binary data would be truncated in table 'scim.users', column 'user_name'. \
             Truncated value: 'secret'."
                .into(),
        );
        assert!(!redact(&e).contains("secret"));
        let e = tiberius::error::Error::Protocol(
            "Conversion failed when converting the nvarchar value 'secret' to data type int."
                .into(),
        );
        assert!(!redact(&e).contains("secret"), "{}", redact(&e));
        let plain = "Invalid object name 'dbo.nosuch'.".to_string();
        assert_eq!(redact_text(plain.clone()), plain);
    }

    #[test]
    fn parameters_are_sent_in_their_sql_server_types() {
        let at = Utc.with_ymd_and_hms(2030, 5, 6, 7, 8, 9).unwrap();
        assert!(matches!(Param::Null.sql(), ColumnData::String(None)));
        assert!(matches!(Param::Text("x".into()).sql(), ColumnData::String(Some(s)) if s == "x"));
        assert!(matches!(Param::Int(-4).sql(), ColumnData::I64(Some(-4))));
        assert!(matches!(Param::Real(0.5).sql(), ColumnData::F64(Some(f)) if f == 0.5));
        assert!(matches!(
            Param::Bool(true).sql(),
            ColumnData::Bit(Some(true))
        ));
        assert!(matches!(
            Param::Time(naive(at)).sql(),
            ColumnData::DateTime2(Some(_))
        ));
        // The application writer's values, typed.
        assert_eq!(Param::from(&writer::Param::Null), Param::Null);
        assert_eq!(Param::from(&writer::Param::Int(7)), Param::Int(7));
        assert_eq!(Param::from(&writer::Param::Bool(false)), Param::Bool(false));
        assert_eq!(
            Param::from(&writer::Param::Time(at)),
            Param::Time(at.naive_utc())
        );
        assert_eq!(
            Param::from(&writer::Param::Text("Ann".into())),
            Param::Text("Ann".into())
        );
    }

    #[test]
    fn bound_times_are_cut_to_the_millisecond() {
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 10, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(250_999_999);
        let cut = at_ms(t);
        assert_eq!(cut.nanosecond(), 250_000_000);
        // The same instant SQLite compares as text.
        assert_eq!(time_text(cut), format_time(t));
    }
}
