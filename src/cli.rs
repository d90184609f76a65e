//! The command line: serve, sync, migrate, mapping check/test, openapi.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod report;

use crate::app::Application;
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};

/// Whom the ledger and the audit trail name for what the CLI does (releases, approvals).
const CLI_ACTOR: &str = "cli";

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
    /// Sync one tenant's staged users into its application database, once
    Sync(SyncArgs),
    /// Create or upgrade the staging database (SQLite or SQL Server) and exit
    Migrate {
        /// Configuration file
        #[arg(long, env = "SCIM_BRIDGE_CONFIG", default_value = "scim-bridge.toml")]
        config: PathBuf,
    },
    /// Print the OpenAPI document of the SCIM and admin APIs (JSON)
    Openapi,
    /// Validate a mapping file, or run its [[test]] cases
    #[command(subcommand)]
    Mapping(MappingCommand),
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Validate a mapping file and show what it reads and writes
    Check {
        file: PathBuf,
        /// The tenant's custom extension URN (where customAttribute01..16 live)
        #[arg(long, default_value = crate::scim::schema::DEFAULT_CUSTOM_SCHEMA)]
        custom_schema: String,
        /// Also check it against the live tables of its application database, as configured
        /// in this file
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a mapping file's [[test]] cases
    Test {
        file: PathBuf,
        /// The tenant's custom extension URN (where customAttribute01..16 live)
        #[arg(long, default_value = crate::scim::schema::DEFAULT_CUSTOM_SCHEMA)]
        custom_schema: String,
    },
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Sync(args) => match sync(args).await {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Migrate { config } => migrate(config).await,
        Command::Mapping(cmd) => mapping(cmd).await,
        Command::Openapi => print_stdout(&crate::api::openapi_spec()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn mapping(cmd: MappingCommand) -> anyhow::Result<()> {
    use crate::mapping::{Mapping, report};
    use crate::target::AppConnector;
    match cmd {
        MappingCommand::Check {
            file,
            custom_schema,
            config,
        } => {
            let m = Mapping::load(&file, &custom_schema)?;
            print!("{}", report::check_report(&m));
            if let Some(config) = config {
                let config = load_config(&config)?;
                let name = &m.target().database;
                let Some(app) = config.applications.get(name) else {
                    anyhow::bail!(
                        "{}: target.database {name:?} is not an [applications.NAME] of the configuration",
                        m.origin()
                    );
                };
                let db = crate::db::Connector.open(app).await?;
                crate::sync::engine::check_schema(&m, db.as_ref()).await?;
                println!("fits the live tables of application {name}");
            }
            Ok(())
        }
        MappingCommand::Test {
            file,
            custom_schema,
        } => {
            let m = Mapping::load(&file, &custom_schema)?;
            let outcomes = m.run_tests();
            let (text, passed) = report::test_report(&m, &outcomes);
            print!("{text}");
            let failed = outcomes.iter().filter(|o| !o.passed()).count();
            anyhow::ensure!(passed, "{failed} of {} test case(s) failed", outcomes.len());
            Ok(())
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

/// Libraries that would log personal data or secrets at debug or trace.
pub const QUIET_TARGETS: &[&str] = &[
    "handlebars",
    "rusqlite",
    "tiberius",
    "bb8",
    "hyper",
    "hyper_util",
    "h2",
];

/// Where log lines go: `serve` logs to stdout (its only output); a command with a report of its
/// own (`sync`) logs to stderr, so that the report can be piped alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

pub fn init_logging(format: LogFormat, level: &str, to: LogTo) {
    // The scheduler library narrates its own start-up at info; its warnings are enough.
    let directives = if level.contains("tokio_cron_scheduler") {
        level.to_string()
    } else {
        format!("{level},tokio_cron_scheduler=warn")
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    // Whatever the level asked for, these never log below WARN: at debug and trace they print
    // rendered templates (values), whole statements and headers (tokens).
    for quiet in QUIET_TARGETS {
        if let Ok(d) = format!("{quiet}=warn").parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colours only for a terminal: log files and collectors get plain lines.
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (ansi, writer) = match to {
        LogTo::Stdout => (
            std::io::stdout().is_terminal(),
            BoxMakeWriter::new(std::io::stdout),
        ),
        LogTo::Stderr => (
            std::io::stderr().is_terminal(),
            BoxMakeWriter::new(std::io::stderr),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve(config_path: PathBuf, listen: Option<String>) -> anyhow::Result<()> {
    let config = load_config(&config_path)?;
    init_logging(config.log.format, &config.log.level, LogTo::Stdout);
    let tenants: Vec<String> = config.tenants.keys().cloned().collect();
    let app = Application::build(config, Arc::new(SystemClock), listen.as_deref()).await?;
    tracing::info!(
        addr = %app.addr,
        ops_addr = app.ops_addr.map(tracing::field::display),
        tenants = ?tenants,
        "scim-bridge listening"
    );
    app.run(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

#[derive(clap::Args)]
struct SyncArgs {
    /// The tenant to sync (a [tenants.NAME] with a sync table)
    #[arg(long)]
    tenant: String,
    /// Configuration file
    #[arg(long, env = "SCIM_BRIDGE_CONFIG", default_value = "scim-bridge.toml")]
    config: PathBuf,
    /// Show what would change; write nothing (the run is still recorded in the ledger).
    /// Prints the counts, the first 10 users of each kind of change with the names of the
    /// columns that change (not their values), and every failure with its reason (the first
    /// 1000; the ledger has them all)
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: print every user it would change, each changed column with its value
    /// before -> after, instead of the summary (columns that do not change are never printed)
    #[arg(long, requires = "dry_run")]
    verbose: bool,
    /// Read every user of the tenant, not only those changed since the last run
    #[arg(long)]
    full: bool,
    /// Approve a run that is awaiting approval: perform the offboardings it held
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["dry_run", "full"])]
    approve: Option<i64>,
    /// Compare every linked user with its application row and report what drifted (a row gone,
    /// changed, or missing roles); reads only, records nothing
    #[arg(long, conflicts_with_all = ["dry_run", "full", "approve", "release_lease", "release_quarantine"])]
    verify: bool,
    /// Release the tenant's lease whoever holds it (a run whose process died), then exit
    #[arg(long, conflicts_with_all = ["dry_run", "full", "approve", "release_quarantine"])]
    release_lease: bool,
    /// Release a quarantined user (the next run tries it again), then exit
    #[arg(long, value_name = "USER_ID", conflicts_with_all = ["dry_run", "full", "approve"])]
    release_quarantine: Option<String>,
}

/// What `scim-bridge sync` exits with (docs/sync.md).
pub mod exit {
    /// The run succeeded (or the release was done).
    pub const OK: u8 = 0;
    /// The run failed, or could not start (configuration, databases, an unknown run).
    pub const FAILED: u8 = 1;
    /// (2 is a usage error: an unknown or missing option.)
    /// Another run holds the tenant's lease: this one was recorded as skipped.
    pub const SKIPPED: u8 = 3;
    /// The guard held offboardings: the run waits for an approval.
    pub const AWAITING_APPROVAL: u8 = 4;
    /// The run finished, but some users failed (quarantined users are not failures).
    pub const COMPLETED_WITH_ERRORS: u8 = 5;
    /// Nothing to release: no lease, or the user is not quarantined.
    pub const NOTHING_TO_RELEASE: u8 = 6;
    /// `--verify` found application rows that drifted from what the engine wrote.
    pub const DRIFT: u8 = 7;
}

async fn sync(args: SyncArgs) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let config = load_config(&args.config)?;
    let tty = std::io::stderr().is_terminal();
    // On a terminal the progress bar shows the progress; logs say only what needs attention.
    init_logging(
        config.log.format,
        if tty { "warn" } else { &config.log.level },
        LogTo::Stderr,
    );
    let Some(tenant) = config.tenants.get(&args.tenant) else {
        anyhow::bail!("unknown tenant {:?}", args.tenant);
    };
    if tenant.sync.is_none() {
        anyhow::bail!(
            "tenant {:?} has no [tenants.{}.sync] table in {}",
            args.tenant,
            args.tenant,
            args.config.display()
        );
    }
    let store = crate::app::open_staging(&config).await?;
    let engine =
        crate::sync::SyncEngine::new(&config, store, &crate::db::Connector, Arc::new(SystemClock))
            .await?;
    let now = crate::clock::Clock::now(&SystemClock);
    if args.release_lease {
        return Ok(
            match engine
                .store()
                .release_lease(&args.tenant, CLI_ACTOR, now)
                .await?
            {
                Some(l) => {
                    engine.close_abandoned_runs(Some(&args.tenant)).await?;
                    println!(
                        "released the lease of tenant {} (held by {}{}, expiring {})",
                        args.tenant,
                        l.holder,
                        l.run_id
                            .map(|r| format!(" for run {r}"))
                            .unwrap_or_default(),
                        crate::store::format_time(l.expires_at)
                    );
                    exit::OK
                }
                None => {
                    eprintln!("tenant {} holds no lease", args.tenant);
                    exit::NOTHING_TO_RELEASE
                }
            },
        );
    }
    if args.verify {
        let r = engine.verify(&args.tenant).await?;
        println!(
            "tenant {}: {} linked user(s) compared with the application: {} row(s) gone, {} differing, {} missing roles",
            r.tenant, r.linked, r.missing, r.differing, r.roles_missing
        );
        for d in &r.drifts {
            if d.missing {
                println!("  {} (key {}): the row is gone", d.user_id, d.app_key);
            }
            for (c, ch) in &d.changes {
                println!(
                    "  {} (key {}): {c} is {} in the application, the engine wrote {}",
                    d.user_id, d.app_key, ch.before, ch.after
                );
            }
            if !d.roles_missing.is_empty() {
                println!(
                    "  {} (key {}): roles missing: {}",
                    d.user_id,
                    d.app_key,
                    d.roles_missing.join(", ")
                );
            }
        }
        let shown = r.drifts.len() as u64;
        if shown < r.missing + r.differing + r.roles_missing {
            println!("  (the first {shown} users that drifted are listed)");
        }
        if r.is_clean() {
            return Ok(exit::OK);
        }
        eprintln!(
            "drift found: `scim-bridge sync --tenant {} --full` writes every row again that differs or is gone",
            r.tenant
        );
        return Ok(exit::DRIFT);
    }
    if let Some(user_id) = &args.release_quarantine {
        let released = engine
            .store()
            .release_quarantine(&args.tenant, user_id, CLI_ACTOR, now)
            .await?;
        return Ok(if released {
            println!("released user {user_id}: the next run tries it again");
            exit::OK
        } else {
            eprintln!(
                "user {user_id} of tenant {} is not quarantined",
                args.tenant
            );
            exit::NOTHING_TO_RELEASE
        });
    }
    let shown = match (args.dry_run, args.verbose) {
        (true, false) => Shown::Summary(Default::default()),
        (true, true) => Shown::Every,
        (false, _) => Shown::Failures,
    };
    let progress = Arc::new(SyncProgress::new(tty, shown));
    let summary = match args.approve {
        Some(run_id) => {
            match engine.store().run_state(run_id).await? {
                Some(r) if r.tenant != args.tenant => {
                    anyhow::bail!("run {run_id} belongs to tenant {:?}", r.tenant)
                }
                _ => {}
            }
            engine
                .approve(run_id, crate::sync::Trigger::Cli, CLI_ACTOR)
                .await?
        }
        None => {
            // Ctrl-C or SIGTERM: finish the batch in progress, record it, let go of the lease.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    shutdown_signal().await;
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
            let options = crate::sync::RunOptions {
                dry_run: args.dry_run,
                full: args.full,
                progress: Some(progress.clone()),
                stop: Some(stop),
            };
            engine
                .run(&args.tenant, crate::sync::Trigger::Cli, options)
                .await?
        }
    };
    progress.finish();
    print_stdout(progress.report(&summary).trim_end())?;
    use crate::sync::RunStatus;
    Ok(match summary.status {
        RunStatus::Failed => {
            eprintln!(
                "error: run {} failed: {}",
                summary.run_id,
                summary.error.as_deref().unwrap_or("unknown error")
            );
            exit::FAILED
        }
        RunStatus::Skipped => {
            eprintln!(
                "run {} skipped: another run of tenant {} holds the lease; try again later, or \
                 release a dead run's lease with --release-lease",
                summary.run_id, summary.tenant
            );
            exit::SKIPPED
        }
        RunStatus::AwaitingApproval => {
            eprintln!(
                "run {} awaits approval: it held {} offboarding(s); approve with --approve {}",
                summary.run_id, summary.held, summary.run_id
            );
            exit::AWAITING_APPROVAL
        }
        RunStatus::CompletedWithErrors => exit::COMPLETED_WITH_ERRORS,
        // A run ends with neither of these; only a held run becomes `approved`.
        RunStatus::Succeeded | RunStatus::Running | RunStatus::Approved => exit::OK,
    })
}

async fn migrate(config_path: PathBuf) -> anyhow::Result<()> {
    use crate::config::DbLocation;
    let config = load_config(&config_path)?;
    let report = crate::db::migrate(&config.staging_db, config.staging.sqlite_settings()).await?;
    match &config.staging_db {
        DbLocation::Sqlite(path) => println!("{}: up to date", path.display()),
        DbLocation::SqlServer(c) => println!(
            "SQL Server {}: applied {:?}, already applied {:?}",
            c.describe(),
            report.applied,
            report.already_applied
        ),
    }
    Ok(())
}

/// Which users a CLI sync prints.
enum Shown {
    /// A real run: the failures, with their reasons, as they come.
    Failures,
    /// A dry run: at the end, a summary of the users of each kind and every failure.
    Summary(Box<std::sync::Mutex<report::DryRunSummary>>),
    /// A dry run with --verbose: every user and each changed value, as they come.
    Every,
}

/// Progress of a CLI sync: a bar on a terminal, log lines otherwise; and the run's users as
/// [`Shown`] says.
struct SyncProgress {
    bar: Option<indicatif::ProgressBar>,
    shown: Shown,
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl SyncProgress {
    fn new(tty: bool, shown: Shown) -> Self {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} users ({per_sec}, eta {eta})",
            ) {
                b.set_style(style);
            }
            b
        });
        SyncProgress {
            bar,
            shown,
            done: Default::default(),
            total: Default::default(),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => println!("{text}"),
        }
    }

    /// What to print when the run has ended: its counts, and a dry run's summary.
    fn report(&self, summary: &crate::sync::RunSummary) -> String {
        match &self.shown {
            Shown::Summary(s) => s
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .text(summary),
            Shown::Failures | Shown::Every => report::run_text(summary),
        }
    }
}

impl crate::sync::Progress for SyncProgress {
    fn start(&self, users: u64) {
        self.total
            .store(users, std::sync::atomic::Ordering::Relaxed);
        match &self.bar {
            Some(b) => b.set_length(users),
            None => tracing::info!(users, "users to read"),
        }
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        match &self.bar {
            Some(b) => b.inc(n),
            None => tracing::info!(
                done,
                total = self.total.load(std::sync::atomic::Ordering::Relaxed),
                "users read"
            ),
        }
    }

    fn item(&self, item: &crate::sync::ItemReport) {
        match &self.shown {
            Shown::Summary(s) => s
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add(item),
            Shown::Every => self.line(&report::item_text(item)),
            Shown::Failures if item.outcome == crate::sync::Outcome::Failed => {
                self.line(&report::item_text(item))
            }
            Shown::Failures => {}
        }
    }
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

/// Write `text` to stdout; a reader that stopped early (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
