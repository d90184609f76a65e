//! Connections to SQL Server: tiberius over tokio with rustls, pooled by bb8.
//!
//! [`TiberiusManager`] is the bb8 connection manager (written here because bb8-tiberius
//! pins an older tiberius). Every new connection runs [`CONNECTION_INIT`]; the pool checks a
//! connection before handing it out ([`CHECKOUT`]): one that fails, or that still has a
//! transaction open, is closed (the server rolls that transaction back) and another is taken.
//! Opening a pool makes one connection first, so a wrong host, port, password or database
//! fails at start-up, within the connect timeout, with an error that names the server and the
//! database (never the password).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::statements::{CHECKOUT, CONNECTION_INIT};
use crate::config::MssqlConfig;

pub type Client = tiberius::Client<Compat<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum MssqlError {
    #[error("cannot connect to SQL Server ({target}): {message}")]
    Connect { target: String, message: String },
    #[error("SQL Server error: {}", redact(.0))]
    Database(#[from] tiberius::error::Error),
    #[error("SQL Server migration failed: {0}")]
    Migration(String),
    #[error("no SQL Server connection to {target} became available within {timeout:?}")]
    PoolTimeout { target: String, timeout: Duration },
    #[error("a pooled SQL Server connection cannot be reused: {0}")]
    Unusable(String),
}

impl MssqlError {
    /// A unique index or constraint refused the write (2601, 2627).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, MssqlError::Database(e) if matches!(e.code(), Some(2601 | 2627)))
    }
}

/// An error's text without the data SQL Server quotes in some messages (the duplicate key
/// of 2601/2627, the truncated value of 2628): those are user data and must not be logged.
pub fn redact(e: &tiberius::error::Error) -> String {
    let text = e.to_string();
    for marker in ["The duplicate key value is", "Truncated value:"] {
        if let Some(at) = text.find(marker) {
            return format!("{}{marker} (redacted)", &text[..at]);
        }
    }
    text
}

pub struct TiberiusManager {
    config: MssqlConfig,
}

impl TiberiusManager {
    pub fn new(config: MssqlConfig) -> Self {
        TiberiusManager { config }
    }

    pub fn config(&self) -> &MssqlConfig {
        &self.config
    }

    fn failed(&self, message: impl std::fmt::Display) -> MssqlError {
        MssqlError::Connect {
            target: self.config.describe(),
            message: message.to_string(),
        }
    }

    /// One connection: TCP, TLS and login within the connect timeout, following one
    /// redirection (Azure SQL gateways answer with the address of the database's node).
    pub async fn open(&self) -> Result<Client, MssqlError> {
        let timeout = self.config.connect_timeout;
        let attempt = async {
            let mut config = self.config.tiberius();
            for _ in 0..2 {
                let addr = config.get_addr();
                let tcp = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| self.failed(format!("{addr}: {e}")))?;
                tcp.set_nodelay(true).map_err(|e| self.failed(e))?;
                match Client::connect(config.clone(), tcp.compat_write()).await {
                    Ok(mut client) => {
                        client
                            .simple_query(CONNECTION_INIT)
                            .await
                            .map_err(|e| self.failed(e))?
                            .into_results()
                            .await
                            .map_err(|e| self.failed(e))?;
                        return Ok(client);
                    }
                    Err(tiberius::error::Error::Routing { host, port }) => {
                        config.host(&host);
                        config.port(port);
                    }
                    Err(e) => return Err(self.failed(e)),
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
    type Error = MssqlError;

    async fn connect(&self) -> Result<Client, MssqlError> {
        self.open().await
    }

    async fn is_valid(&self, conn: &mut Client) -> Result<(), MssqlError> {
        let results = conn.simple_query(CHECKOUT).await?.into_results().await?;
        let open = match results.first().and_then(|rows| rows.first()) {
            Some(row) => row.try_get::<i32, _>(0)?,
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
fn reusable(open_transactions: Option<i32>) -> Result<(), MssqlError> {
    match open_transactions {
        Some(0) => Ok(()),
        Some(n) => Err(MssqlError::Unusable(format!(
            "{n} transaction(s) still open on it"
        ))),
        None => Err(MssqlError::Unusable(
            "its check-out test returned no transaction count".into(),
        )),
    }
}

/// A bb8 pool of tiberius connections, knowing which server it connects to.
#[derive(Clone)]
pub struct MssqlPool {
    pool: bb8::Pool<TiberiusManager>,
    config: std::sync::Arc<MssqlConfig>,
}

impl MssqlPool {
    /// Open a pool after proving one connection works (that connection joins the pool).
    pub async fn connect(config: &MssqlConfig) -> Result<MssqlPool, MssqlError> {
        let manager = TiberiusManager::new(config.clone());
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
            config: std::sync::Arc::new(config.clone()),
        })
    }

    /// A pooled connection; waiting longer than the connect timeout is an error naming the server.
    pub async fn get(&self) -> Result<bb8::PooledConnection<'_, TiberiusManager>, MssqlError> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => MssqlError::PoolTimeout {
                target: self.config.describe(),
                timeout: self.config.connect_timeout,
            },
        })
    }

    /// A pooled connection not tied to the pool's lifetime (to move it to another thread).
    pub async fn get_owned(
        &self,
    ) -> Result<bb8::PooledConnection<'static, TiberiusManager>, MssqlError> {
        self.pool.get_owned().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => MssqlError::PoolTimeout {
                target: self.config.describe(),
                timeout: self.config.connect_timeout,
            },
        })
    }

    pub fn config(&self) -> &MssqlConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn quoted_data_is_redacted_from_server_errors() {
        let e = tiberius::error::Error::Protocol(
            "Cannot insert duplicate key row in object 'scim.users' with unique index \
             'users_user_name'. The duplicate key value is (t1, ann@example.com)."
                .into(),
        );
        let shown = MssqlError::Database(e).to_string();
        assert!(shown.contains("users_user_name"), "{shown}");
        assert!(!shown.contains("ann@example.com"), "{shown}");
        let e = tiberius::error::Error::Protocol(
            "String or binary data would be truncated in table 'scim.users', column 'user_name'. Truncated value: 'secret'."
                .into(),
        );
        assert!(!MssqlError::Database(e).to_string().contains("secret"));
    }

    #[test]
    fn a_connection_with_a_transaction_left_open_is_not_handed_out() {
        assert!(reusable(Some(0)).is_ok());
        for open in [Some(1), Some(2), None] {
            let err = reusable(open).unwrap_err();
            assert!(matches!(err, MssqlError::Unusable(_)), "{err}");
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
        assert!(matches!(err, MssqlError::Connect { .. }));
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
