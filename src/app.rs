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
use crate::store::Store;

pub struct Application {
    acceptor: TcpAcceptor,
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
}

impl Application {
    /// Open the databases and bind `listen` (or the configured address; port 0 picks a free port).
    pub async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        listen: Option<&str>,
    ) -> anyhow::Result<Application> {
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
        let listen = listen.unwrap_or(&config.server.listen).to_string();
        let state = Arc::new(AppState::new(config, store, clock));
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

    /// Serve until `shutdown` resolves, then finish in-flight requests (up to 30 s).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                api::app(self.state),
                shutdown,
                Some(Duration::from_secs(30)),
            )
            .await
    }
}
