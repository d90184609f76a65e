//! Connections to SQL Server: tiberius over tokio with rustls, pooled by bb8, and the staging
//! code's transactions on them.
//!
//! [`TiberiusManager`] is the bb8 connection manager (written here because bb8-tiberius
//! pins an older tiberius). Every new connection runs [`CONNECTION_INIT`]; the pool checks a
//! connection before handing it out ([`CHECKOUT`]): one that fails, or that still has a
//! transaction open, is closed (the server rolls that transaction back) and another is taken.
//! Opening a pool makes one connection first, so a wrong host, port, password or database
//! fails at start-up, within the connect timeout, with an error that names the server and the
//! database (never the password). Pool failures reach callers as [`DbError::Unavailable`].

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::rows::{SqlError, redact, simple};
use crate::config::MssqlConfig;
use crate::config::sqlserver::Encrypt;
use crate::store::DbError;

pub type Client = tiberius::Client<Compat<TcpStream>>;

/// A pooled connection that may move to another thread.
pub type Pooled = bb8::PooledConnection<'static, TiberiusManager>;

/// Run on every new connection. Filtered indexes (users_user_name) refuse writes unless these
/// options are on; drivers differ in what they set at login, so the service sets them itself.
/// XACT_ABORT ON: a failed statement rolls its whole staging write back.
pub const CONNECTION_INIT: &str = "SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; \
     SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; \
     SET NUMERIC_ROUNDABORT OFF; SET XACT_ABORT ON;";

/// The pool's check-out test: how many transactions the connection has open. A connection
/// handed back with one still open (a cancelled request between BEGIN and COMMIT, a rollback
/// that failed) must not be reused: the next BEGIN would nest in it and its COMMIT commit
/// nothing, and the locks it holds would stay held.
pub const CHECKOUT: &str = "SELECT @@TRANCOUNT";

/// A staging transaction's statements (no parameters: sent as plain batches).
pub const BEGIN: &str = "BEGIN TRANSACTION";
pub const COMMIT: &str = "COMMIT TRANSACTION";
/// Roll back whatever is still open (nothing, when XACT_ABORT already rolled it back).
pub const ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION";

/// Why the pool could not hand out a connection (bb8's error type; callers see [`DbError`]).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to SQL Server ({target}): {message}")]
    Connect { target: String, message: String },
    #[error("a pooled SQL Server connection cannot be reused: {0}")]
    Unusable(String),
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

impl From<SqlError> for PoolError {
    fn from(e: SqlError) -> Self {
        PoolError::Unusable(e.to_string())
    }
}

/// The driver's configuration from the connection settings.
fn tiberius_config(s: &MssqlConfig) -> tiberius::Config {
    let mut c = tiberius::Config::new();
    c.host(&s.host);
    c.port(s.port);
    if let Some(i) = &s.instance {
        c.instance_name(i);
    }
    c.database(&s.database);
    c.application_name(&s.application_name);
    c.authentication(tiberius::AuthMethod::sql_server(
        &s.user,
        s.password.as_ref().map(|p| p.0.as_str()).unwrap_or(""),
    ));
    c.encryption(match s.encrypt {
        Encrypt::Off => tiberius::EncryptionLevel::Off,
        Encrypt::On => tiberius::EncryptionLevel::Required,
        Encrypt::Strict => tiberius::EncryptionLevel::Strict,
    });
    if s.trust_server_certificate {
        c.trust_cert();
    }
    c.command_timeout(s.command_timeout);
    c.handshake_timeout(Some(s.connect_timeout));
    c
}

pub struct TiberiusManager {
    config: MssqlConfig,
}

impl TiberiusManager {
    fn failed(&self, message: impl std::fmt::Display) -> PoolError {
        PoolError::Connect {
            target: self.config.describe(),
            message: message.to_string(),
        }
    }

    /// One connection: TCP, TLS and login within the connect timeout, following one
    /// redirection (Azure SQL gateways answer with the address of the database's node).
    async fn open(&self) -> Result<Client, PoolError> {
        let timeout = self.config.connect_timeout;
        let attempt = async {
            let mut config = tiberius_config(&self.config);
            for _ in 0..2 {
                let addr = config.get_addr();
                let tcp = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| self.failed(format!("{addr}: {e}")))?;
                tcp.set_nodelay(true).map_err(|e| self.failed(e))?;
                match Client::connect(config.clone(), tcp.compat_write()).await {
                    Ok(mut client) => {
                        simple(&mut client, CONNECTION_INIT)
                            .await
                            .map_err(|e| self.failed(e))?;
                        return Ok(client);
                    }
                    Err(tiberius::error::Error::Routing { host, port }) => {
                        config.host(&host);
                        config.port(port);
                    }
                    Err(e) => return Err(self.failed(redact(&e))),
                }
            }
            Err(self.failed("redirected more than once"))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(self.failed(format!(
                "no answer within the connect timeout ({} s)",
                timeout.as_secs()
            ))),
        }
    }
}

impl bb8::ManageConnection for TiberiusManager {
    type Connection = Client;
    type Error = PoolError;

    async fn connect(&self) -> Result<Client, PoolError> {
        self.open().await
    }

    async fn is_valid(&self, conn: &mut Client) -> Result<(), PoolError> {
        let results = conn
            .simple_query(CHECKOUT)
            .await
            .map_err(SqlError::from)?
            .into_results()
            .await
            .map_err(SqlError::from)?;
        let open = match results.first().and_then(|rows| rows.first()) {
            Some(row) => row.try_get::<i32, _>(0).map_err(SqlError::from)?,
            None => None,
        };
        reusable(open)
    }

    fn has_broken(&self, _conn: &mut Client) -> bool {
        // tiberius does not expose a closed flag; is_valid catches dead connections.
        false
    }
}

/// Whether a connection whose [`CHECKOUT`] answered `open_transactions` may be handed out:
/// only with none open. (Closing it is the rollback: the server ends the session's
/// transaction with the connection.)
fn reusable(open_transactions: Option<i32>) -> Result<(), PoolError> {
    match open_transactions {
        Some(0) => Ok(()),
        Some(n) => Err(PoolError::Unusable(format!(
            "{n} transaction(s) still open on it"
        ))),
        None => Err(PoolError::Unusable(
            "its check-out test returned no transaction count".into(),
        )),
    }
}

/// A bb8 pool of tiberius connections, knowing which server it connects to.
#[derive(Clone)]
pub struct MssqlPool {
    pool: bb8::Pool<TiberiusManager>,
    config: Arc<MssqlConfig>,
}

impl MssqlPool {
    /// Open a pool after proving one connection works (that connection joins the pool).
    pub async fn connect(config: &MssqlConfig) -> Result<MssqlPool, DbError> {
        let manager = TiberiusManager {
            config: config.clone(),
        };
        let first = manager.open().await?;
        let pool = bb8::Pool::builder()
            .max_size(config.max_pool_size)
            .min_idle(Some(config.min_pool_size))
            .connection_timeout(config.connect_timeout)
            .test_on_check_out(true)
            .build_unchecked(manager);
        // The pool may already hold its min_idle connections; then the extra one just goes.
        let _ = pool.add(first);
        Ok(MssqlPool {
            pool,
            config: Arc::new(config.clone()),
        })
    }

    fn run_error(&self, e: bb8::RunError<PoolError>) -> DbError {
        match e {
            bb8::RunError::User(e) => e.into(),
            bb8::RunError::TimedOut => DbError::Unavailable(format!(
                "no SQL Server connection to {} became available within {:?}",
                self.config.describe(),
                self.config.connect_timeout
            )),
        }
    }

    /// A pooled connection; waiting longer than the connect timeout is an error naming the server.
    pub async fn get(&self) -> Result<bb8::PooledConnection<'_, TiberiusManager>, DbError> {
        self.pool.get().await.map_err(|e| self.run_error(e))
    }

    /// A pooled connection not tied to the pool's lifetime (to move it to another thread).
    pub async fn get_owned(&self) -> Result<Pooled, DbError> {
        self.pool.get_owned().await.map_err(|e| self.run_error(e))
    }
}

/// A staging transaction on a pooled connection (XACT_ABORT is on: an error rolls it all
/// back on the server). Dropped without [`Tx::commit`] or [`Tx::rollback`] (a cancelled
/// request), it is rolled back off the caller's path before the connection is used again; if
/// that rollback cannot run, the pool's check-out test finds the transaction still open and
/// closes the connection.
pub struct Tx {
    conn: Option<Pooled>,
}

impl Tx {
    pub async fn begin(pool: &MssqlPool) -> Result<Tx, SqlError> {
        let mut conn = pool.get_owned().await?;
        simple(&mut conn, BEGIN).await?;
        Ok(Tx { conn: Some(conn) })
    }

    pub fn client(&mut self) -> Result<&mut Client, SqlError> {
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(SqlError::Failed("the transaction has ended".into())),
        }
    }

    pub async fn commit(mut self) -> Result<(), SqlError> {
        simple(self.client()?, COMMIT).await?;
        // Committed: the connection goes back to the pool as it is.
        self.conn = None;
        Ok(())
    }

    /// Roll back now; a failure is logged (the check-out test keeps the connection out).
    pub async fn rollback(mut self) {
        if let Some(mut conn) = self.conn.take()
            && let Err(e) = simple(&mut conn, ROLLBACK).await
        {
            tracing::warn!(error = %e, "rolling back a staging transaction");
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = simple(&mut conn, ROLLBACK).await {
                    tracing::warn!(error = %e, "rolling back an abandoned staging transaction");
                }
            });
        }
    }
}

/// Run `f` in one staging transaction: committed when it returns Ok, rolled back otherwise.
pub async fn transaction<T, E>(
    pool: &MssqlPool,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<SqlError>,
{
    let mut tx = Tx::begin(pool).await?;
    match f(tx.client()?).await {
        Ok(v) => {
            tx.commit().await?;
            Ok(v)
        }
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}

#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    [
        ("CONNECTION_INIT", CONNECTION_INIT),
        ("CHECKOUT", CHECKOUT),
        ("BEGIN", BEGIN),
        ("COMMIT", COMMIT),
        ("ROLLBACK", ROLLBACK),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_connection_with_a_transaction_left_open_is_not_handed_out() {
        assert!(reusable(Some(0)).is_ok());
        for open in [Some(1), Some(2), None] {
            let err = reusable(open).unwrap_err();
            assert!(matches!(err, PoolError::Unusable(_)), "{err}");
        }
        assert!(
            reusable(Some(1))
                .unwrap_err()
                .to_string()
                .contains("1 transaction")
        );
    }

    /// A port nothing listens on: bind one, note it, close it.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_fast_naming_server_and_database() {
        let port = closed_port();
        let config = MssqlConfig::parse(&format!(
            "Server=127.0.0.1,{port};Database=scim_staging;User Id=bridge;Password=do-not-print-me;\
             Encrypt=true;TrustServerCertificate=true;Connect Timeout=5"
        ))
        .unwrap();
        let started = Instant::now();
        let err = MssqlPool::connect(&config).await.err().unwrap();
        let msg = err.to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1,{port}")), "{msg}");
        assert!(msg.contains("database scim_staging"), "{msg}");
        assert!(!msg.contains("do-not-print-me"), "{msg}");
        assert!(msg.contains("cannot connect to SQL Server"), "{msg}");
        assert!(matches!(err, DbError::Unavailable(_)));
    }

    #[tokio::test]
    async fn a_silent_server_fails_within_the_connect_timeout() {
        // Accepts TCP and never answers the TDS pre-login.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let config = MssqlConfig::parse(&format!(
            "Server=127.0.0.1,{port};Database=d;User Id=u;Password=p;Connect Timeout=1"
        ))
        .unwrap();
        let started = Instant::now();
        let msg = MssqlPool::connect(&config).await.err().unwrap().to_string();
        assert!(started.elapsed() < Duration::from_secs(3), "{msg}");
        // tiberius's handshake bound and ours are both the connect timeout; either may fire.
        assert!(msg.contains("1s") || msg.contains("(1 s)"), "{msg}");
        assert!(msg.contains("database d"), "{msg}");
        hold.abort();
    }
}
