//! The application: open the staging store, bind the listener (and the operations listener of
//! `[server] ops_listen`), serve until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::Endpoint;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::clock::Clock;
use crate::config::{Config, DbLocation};
use crate::db::{self, Connector, Staging};
use crate::metrics::Metrics;
use crate::server::{self, ConnectionLimits};
use crate::sync::scheduler::Scheduler;
use crate::sync::{SyncEngine, SyncService};

/// How often the retention of tenants without a sync section and the run ledger's retention
/// run (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// How long in-flight requests may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct Application {
    listener: TcpListener,
    pub addr: SocketAddr,
    /// `[server] ops_listen`'s listener, when set: /readyz, /metrics and /healthz.
    ops_listener: Option<TcpListener>,
    /// Its bound address (port 0 in the configuration picks a free port).
    pub ops_addr: Option<SocketAddr>,
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
        let store = open_staging(&config).await?;
        let metrics = Arc::new(Metrics::new());
        let sync = if config.tenants.values().any(|t| t.sync.is_some()) {
            let engine = SyncEngine::new(&config, store.clone(), &Connector, clock.clone())
                .await
                .context("opening the application databases")?;
            let service = SyncService::new(
                engine,
                store.clone(),
                Arc::new(Connector),
                config.applications.clone(),
                clock.clone(),
                metrics.clone(),
                config.source.clone(),
            );
            // Runs a stopped process left running will never finish: say so in the ledger.
            service
                .close_abandoned_runs()
                .await
                .context("closing abandoned sync runs")?;
            Some(Arc::new(service))
        } else {
            None
        };
        let listen = listen.unwrap_or(&config.server.listen).to_string();
        let ops_listen = config.ops_listen;
        let state = Arc::new(AppState::new(config, store, clock, metrics, sync));
        let listener = TcpListener::bind(listen.as_str())
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener
            .local_addr()
            .context("the listener has no socket address")?;
        let ops_listener = match ops_listen {
            None => None,
            Some(ops) => Some(
                TcpListener::bind(ops)
                    .await
                    .with_context(|| format!("binding [server] ops_listen {ops}"))?,
            ),
        };
        let ops_addr = match &ops_listener {
            None => None,
            Some(l) => Some(
                l.local_addr()
                    .context("the ops_listen listener has no socket address")?,
            ),
        };
        Ok(Application {
            listener,
            addr,
            ops_listener,
            ops_addr,
            state,
        })
    }

    /// Run the sync schedules and serve (on both listeners, with `ops_listen`) until
    /// `shutdown` resolves, then finish in-flight requests and sync runs (up to 30 s each) and
    /// write the provisioning log entries still queued.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let scheduler = match &self.state.sync {
            Some(handle) => Some(Scheduler::start(handle.clone()).await?),
            None => None,
        };
        // Retention: staged users of tenants that do not sync, and the run ledger.
        let retention = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(RETENTION_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    state.purge_unsynced().await;
                    prune_runs(&state).await;
                }
            })
        };
        let s = &state.config.server;
        let limits = ConnectionLimits {
            header_read: Duration::from_secs(s.header_read_timeout_seconds),
            idle: Duration::from_secs(s.idle_timeout_seconds),
            max_connections: s.max_connections,
        };
        // One stop for every listener: the signal, or a listener that stopped on its own.
        let stop = CancellationToken::new();
        let main = serve_until(self.listener, api::app(self.state.clone()), limits, &stop);
        let ops = async {
            match self.ops_listener {
                Some(l) => serve_until(l, api::ops_app(self.state.clone()), limits, &stop).await,
                None => Ok(()),
            }
        };
        let signal = async {
            tokio::select! {
                _ = shutdown => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        };
        let (main, ops, ()) = tokio::join!(main, ops, signal);
        let served = main.and(ops);
        retention.abort();
        if let Some(s) = scheduler {
            s.shutdown(Duration::from_secs(30)).await;
        }
        state.provlog.close().await;
        Ok(served?)
    }
}

/// Serve `ep` on `listener` until `stop` is cancelled; when serving ends (an error too), cancel
/// `stop`, so the other listener stops with it.
async fn serve_until<E: Endpoint + 'static>(
    listener: TcpListener,
    ep: E,
    limits: ConnectionLimits,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let served = server::serve(
        listener,
        ep,
        limits,
        stop.clone().cancelled_owned(),
        SHUTDOWN_GRACE,
    )
    .await;
    stop.cancel();
    served
}

/// The run ledger's retention (`[admin] noop_run_days`, `run_days`); a failure is logged and
/// tried again at the next tick.
async fn prune_runs(state: &AppState) {
    let admin = &state.config.admin;
    let now = state.clock.now();
    let store: &dyn crate::sync::store::SyncStore = state.store.as_ref();
    let prune = crate::sync::lifecycle::run_retention(admin.noop_run_days, admin.run_days, now);
    if let Err(e) = crate::sync::lifecycle::prune_runs(store, prune).await {
        tracing::warn!(error = %e, "run retention failed");
    }
}

/// Open (creating or migrating as needed) the configured staging database; an error names it.
pub async fn open_staging(config: &Config) -> anyhow::Result<Arc<dyn Staging>> {
    db::open_staging(&config.staging_db, config.staging.sqlite_settings())
        .await
        .with_context(|| match &config.staging_db {
            DbLocation::Sqlite(path) => {
                format!("opening the staging database {}", path.display())
            }
            DbLocation::SqlServer(c) => {
                format!(
                    "opening the staging database on SQL Server ({})",
                    c.describe()
                )
            }
        })
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

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn sync_on_sql_server_staging_starts_by_connecting_to_it() {
        let server = format!(
            "Server=127.0.0.1,{};Database=scim;User Id=u;Password=p;Connect Timeout=2",
            closed_port()
        );
        let e = match Application::build(
            config(&server, true),
            Arc::new(SystemClock),
            Some("127.0.0.1:0"),
        )
        .await
        {
            Ok(_) => panic!("started without a database"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("opening the staging database on SQL Server") && e.contains("scim"),
            "{e}"
        );
    }
}
