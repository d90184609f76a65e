//! The command line: serve, migrate, bench.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "scim-bridge",
    version,
    about = "SCIM 2.0 staging server and sync engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SCIM server
    Serve {
        /// Configuration file
        #[arg(long, env = "SCIM_BRIDGE_CONFIG", default_value = "scim-bridge.toml")]
        config: PathBuf,
        /// Listen address, overriding server.listen
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create or upgrade the staging database (SQLite or SQL Server) and exit
    Migrate {
        /// Configuration file
        #[arg(long, env = "SCIM_BRIDGE_CONFIG", default_value = "scim-bridge.toml")]
        config: PathBuf,
    },
    /// Measure the SCIM server on a temporary SQLite database and print a table
    Bench(crate::bench::BenchArgs),
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Migrate { config } => migrate(config).await,
        Command::Bench(args) => crate::bench::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve(config_path: PathBuf, listen: Option<String>) -> anyhow::Result<()> {
    let config = load_config(&config_path)?;
    init_logging(config.log.format, &config.log.level);
    let tenants: Vec<String> = config.tenants.keys().cloned().collect();
    let app = Application::build(config, Arc::new(SystemClock), listen.as_deref()).await?;
    tracing::info!(addr = %app.addr, tenants = ?tenants, "scim-bridge listening");
    app.run(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(config_path: PathBuf) -> anyhow::Result<()> {
    use crate::config::StagingDb;
    use crate::store::mssql::{migrate, pool::MssqlPool};
    let config = load_config(&config_path)?;
    match &config.staging_db {
        StagingDb::Sqlite(path) => {
            crate::store::SqliteStore::open(path, config.staging.durability).await?;
            println!("{}: up to date", path.display());
        }
        StagingDb::SqlServer(c) => {
            let pool = MssqlPool::connect(c).await?;
            let report = migrate::run(&mut *pool.get().await?).await?;
            println!(
                "SQL Server {}: applied {:?}, already applied {:?}",
                c.describe(),
                report.applied,
                report.already_applied
            );
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
