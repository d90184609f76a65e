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
use crate::config::Config;
use crate::store::SqliteStore;
use crate::sync::SyncEngine;
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
        let store = SqliteStore::open(&config.staging_path, config.staging.durability)
            .await
            .with_context(|| {
                format!(
                    "opening the staging database {}",
                    config.staging_path.display()
                )
            })?;
        let sync = if config.tenants.values().any(|t| t.sync.is_some()) {
            Some(
                SyncEngine::new(&config, store.clone(), clock.clone())
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
