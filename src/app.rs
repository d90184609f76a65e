//! The application: open the staging store, bind the listener, serve until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::Server;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};

use crate::api::{self, AppState};
use crate::clock::Clock;
use crate::config::{Config, StagingDb};
use crate::store::{SqliteStore, Store};
use crate::sync::SyncEngine;
use crate::sync::db::SyncDb;
use crate::sync::scheduler::Scheduler;

pub struct Application {
    acceptor: TcpAcceptor,
    pub addr: SocketAddr,
    /// Everything requests need, the sync engine (`state.sync`) included.
    pub state: Arc<AppState>,
}

impl Application {
    /// Open the databases and bind `listen` (or the configured address; port 0 picks a free port).
    pub async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        listen: Option<&str>,
    ) -> anyhow::Result<Application> {
        check_sync_staging(&config)?;
        let store = Store::open(&config.staging_db, config.staging.durability)
            .await
            .with_context(|| match &config.staging_db {
                StagingDb::Sqlite(path) => {
                    format!("opening the staging database {}", path.display())
                }
                StagingDb::SqlServer(c) => {
                    format!(
                        "opening the staging database on SQL Server ({})",
                        c.describe()
                    )
                }
            })?;
        let sync = if config.tenants.values().any(|t| t.sync.is_some()) {
            Some(
                SyncEngine::new(&config, SyncDb::of(&store), clock.clone())
                    .await
                    .context("opening the application databases")?,
            )
        } else {
            None
        };
        let listen = listen.unwrap_or(&config.server.listen).to_string();
        let state = Arc::new(AppState::new(config, store, clock, sync));
        let acceptor = TcpListener::bind(listen.clone())
            .into_acceptor()
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("the listener has no socket address")?;
        Ok(Application {
            acceptor,
            addr,
            state,
        })
    }

    /// Run the sync schedules and serve until `shutdown` resolves, then finish in-flight
    /// requests and sync runs (up to 30 s each) and write the provisioning log entries still
    /// queued.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let scheduler = match &self.state.sync {
            Some(handle) => Some(Scheduler::start(handle.clone()).await?),
            None => None,
        };
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                api::app(self.state),
                shutdown,
                Some(Duration::from_secs(30)),
            )
            .await;
        if let Some(s) = scheduler {
            s.shutdown(Duration::from_secs(30)).await;
        }
        state.provlog.close().await;
        Ok(served?)
    }
}

/// The sync engine works on the SQLite staging store only (for now): with SQL Server staging,
/// a configuration in which a tenant syncs is refused before anything starts.
pub fn check_sync_staging(config: &Config) -> anyhow::Result<()> {
    let StagingDb::SqlServer(c) = &config.staging_db else {
        return Ok(());
    };
    let syncing: Vec<&str> = config
        .tenants
        .values()
        .filter(|t| t.sync.is_some())
        .map(|t| t.name.as_str())
        .collect();
    if syncing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "sync needs the SQLite staging backend for now: the staging database is SQL Server ({}) \
         and tenant(s) {} have a [tenants.NAME.sync] table; remove the sync tables or stage in \
         SQLite",
        c.describe(),
        syncing.join(", ")
    )
}

/// The SQLite staging store the sync engine runs on.
pub fn sync_store(store: &Store) -> anyhow::Result<SqliteStore> {
    match store.as_sqlite() {
        Some(s) => Ok(s.clone()),
        None => anyhow::bail!(
            "sync needs the SQLite staging backend for now; the staging database is {}",
            store.backend_name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use std::path::Path;

    fn config(database: &str, sync: bool) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.toml"),
            "[target]\ndatabase = \"app\"\nuser_table = \"users\"\nkey_column = \"ExternalId\"\n\
             key = \"externalId\"\n[fields]\nName = \"{{userName}}\"\n",
        )
        .unwrap();
        let sync = if sync {
            "[tenants.demo.sync]\nmapping = \"m.toml\"\n"
        } else {
            ""
        };
        Config::parse(
            &format!(
                "[staging]\ndatabase = \"{database}\"\n\
                 [applications.app]\ndatabase = \"sqlite://app.db\"\n\
                 [tenants.demo]\ntoken = \"0123456789abcdef\"\n\
                 [tenants.other]\ntoken = \"fedcba9876543210\"\n{sync}"
            ),
            Path::new("test.toml"),
            dir.path(),
            [],
        )
        .unwrap()
    }

    const SQL_SERVER: &str = "Server=db.invalid,1433;Database=scim;User Id=u;Password=p";

    #[tokio::test]
    async fn sync_on_sql_server_staging_is_refused_before_connecting() {
        let c = config(SQL_SERVER, true);
        let e = check_sync_staging(&c).unwrap_err().to_string();
        assert!(
            e.contains("sync needs the SQLite staging backend")
                && e.contains("db.invalid")
                && e.contains("demo")
                && !e.contains("other"),
            "{e}"
        );
        // serve stops there too, without reaching the server.
        let e = match Application::build(c, Arc::new(SystemClock), Some("127.0.0.1:0")).await {
            Ok(_) => panic!("started"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("sync needs the SQLite staging backend"), "{e}");
        // Without a sync table SQL Server staging is fine; SQLite staging always is.
        assert!(check_sync_staging(&config(SQL_SERVER, false)).is_ok());
        assert!(check_sync_staging(&config("sqlite://staging.db", true)).is_ok());
    }
}
