//! The sync benchmark: measure the sync engine on temporary databases.
//!
//! For each size (`--users`, then `--big`) on new temporary databases (staging, and an empty
//! application database with sql/app/example_app.sql and mappings/scifeon.toml): bulk-load the
//! staged users (16 custom attributes and 3 group memberships each, rows as the SCIM store
//! writes them), then measure the full sync into the empty application database, a run with
//! nothing changed, and an incremental run after `--changed` users were updated through the
//! store's update path; then a full run with nothing to do (it compares every row with the
//! application), and the repair of an application database emptied behind the engine's back
//! (every row deleted, then a full run). Every step runs in a process of its own (this binary, a hidden
//! subcommand), so its peak RSS is its own: neither the load nor another size shows in it.
//! Run it with `cargo bench --bench sync` (options after `--`).

use scim_bridge::store::RequestLog;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use scim_bridge::clock::{Clock, SystemClock};
use scim_bridge::config::Config;
use scim_bridge::db::sqlite::{
    NewGroupRow, NewUserRow, insert_group_row, insert_member_row, insert_user_row, raise_seq,
};
use scim_bridge::db::{self, Connector};
use scim_bridge::scim::Limits;
use scim_bridge::scim::resource::normalize;
use scim_bridge::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA, ResourceType};
use scim_bridge::store::format_time;
use scim_bridge::sync::{RunOptions, RunStatus, RunSummary, SyncEngine, Trigger};

/// The allocator the product binary runs with, so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = include_str!("../mappings/scifeon.toml");
const SCHEMA: &str = include_str!("../sql/app/example_app.sql");
const TENANT: &str = "bench";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Users generated and inserted per staging transaction while loading.
const LOAD_CHUNK: usize = 20_000;
const SENIOR: &str = "Senior Lab Technician";

#[derive(clap::Parser)]
#[command(
    name = "bench-sync",
    about = "Measure the sync engine (full and incremental runs, peak RSS) on temporary databases"
)]
struct Cli {
    #[command(flatten)]
    args: BenchSyncArgs,
    /// One step, in a process of its own (the benchmark runs itself with it).
    #[command(subcommand)]
    child: Option<Child>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(clap::Subcommand)]
enum Child {
    #[command(hide = true)]
    Step(BenchSyncChildArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let r = match cli.child {
        Some(Child::Step(args)) => child(args).await,
        None => run(cli.args).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args, Clone)]
pub struct BenchSyncArgs {
    /// Staged users of the first size
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Staged users of the second size (0: skip it)
    #[arg(long, default_value_t = 1_000_000)]
    pub big: usize,
    /// Users changed before the incremental run
    #[arg(long, default_value_t = 1_000)]
    pub changed: usize,
    /// The tenant's sync batch_size
    #[arg(long, default_value_t = 500)]
    pub batch_size: u32,
    /// Staging durability: full (fsync per commit) or normal (survives a process crash)
    #[arg(long, default_value = "full")]
    pub durability: String,
}

/// One step of bench-sync, in a process of its own, on the databases in `dir`.
#[derive(clap::Args, Clone)]
pub struct BenchSyncChildArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, value_enum)]
    pub step: Step,
    #[arg(long)]
    pub users: usize,
    #[arg(long)]
    pub changed: usize,
    /// What the sync step expects: "created", "none" or "updated".
    #[arg(long, default_value = "none")]
    pub expect: String,
    /// The sync step is a full run.
    #[arg(long)]
    pub full: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create and bulk-load the staging database.
    Load,
    /// One sync run.
    Sync,
    /// Update `changed` users through the store's update path.
    Change,
    /// Delete every row of the application database, as a restore or an accident would.
    Empty,
}

#[derive(Serialize, Deserialize)]
struct Phase {
    name: String,
    staged: usize,
    /// Users the phase handled (loaded, written or changed).
    users: usize,
    seconds: f64,
    /// The process's peak RSS.
    rss_kib: Option<u64>,
}

async fn run(args: BenchSyncArgs) -> anyhow::Result<()> {
    ensure!(args.users > 0, "--users must be at least 1");
    ensure!(
        args.durability == "full" || args.durability == "normal",
        "--durability must be full or normal"
    );
    let load_before = load_average();
    let mut phases = Vec::new();
    for users in [args.users, args.big] {
        if users == 0 {
            continue;
        }
        let dir = tempfile::tempdir()?;
        write_config(dir.path(), &args)?;
        let changed = args.changed.min(users);
        let steps = [
            (
                Step::Load,
                "load staging (bulk insert)",
                users,
                "none",
                false,
            ),
            (
                Step::Sync,
                "full sync into an empty app DB",
                users,
                "created",
                false,
            ),
            (Step::Sync, "sync, nothing changed", 0, "none", false),
            (
                Step::Change,
                "stage changes (the store's update_user)",
                changed,
                "none",
                false,
            ),
            (
                Step::Sync,
                "incremental sync of the changed users",
                changed,
                "updated",
                false,
            ),
            (
                Step::Sync,
                "--full, app DB as the links say",
                users,
                "none",
                true,
            ),
            (
                Step::Empty,
                "app DB emptied (every row deleted)",
                0,
                "none",
                false,
            ),
            (
                Step::Sync,
                "--full repairs the emptied app DB",
                users,
                "created",
                true,
            ),
        ];
        for (step, name, handled, expect, full) in steps {
            let (seconds, rss_kib) =
                step_process(dir.path(), step, users, changed, expect, full).await?;
            phases.push(Phase {
                name: name.into(),
                staged: users,
                users: handled,
                seconds,
                rss_kib,
            });
        }
    }
    println!(
        "scim-bridge bench-sync: mapping scifeon.toml, 16 custom attributes and 3 group memberships \
         per user, batch_size {}, durability {}",
        args.batch_size, args.durability
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>11} {:>13}",
        "phase", "staged", "users", "seconds", "users/s", "peak RSS MiB"
    );
    for p in &phases {
        println!(
            "{:<42} {:>9} {:>9} {:>9.3} {:>11.0} {:>13}",
            p.name,
            p.staged,
            p.users,
            p.seconds,
            if p.seconds > 0.0 {
                p.users as f64 / p.seconds
            } else {
                0.0
            },
            p.rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!("peak RSS: of the process that ran the phase (each phase runs in its own)");
    println!(
        "load average: {} before, {} after",
        load_before,
        load_average()
    );
    Ok(())
}

fn write_config(dir: &Path, args: &BenchSyncArgs) -> anyhow::Result<()> {
    std::fs::write(dir.join("mapping.toml"), MAPPING)?;
    std::fs::write(dir.join("app.sql"), SCHEMA)?;
    std::fs::write(
        dir.join("bench.toml"),
        format!(
            "[log]\nlevel = \"warn\"\n\
             [staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"{}\"\n\
             [applications.scifeon]\ndatabase = \"sqlite://app.db\"\nschema = \"app.sql\"\n\
             [tenants.{TENANT}]\ntoken = \"bench-token-0123456789\"\n\
             [tenants.{TENANT}.sync]\nmapping = \"mapping.toml\"\nbatch_size = {}\n",
            args.durability, args.batch_size
        ),
    )?;
    Ok(())
}

/// Run one step in a child process; its seconds and peak RSS.
async fn step_process(
    dir: &Path,
    step: Step,
    users: usize,
    changed: usize,
    expect: &str,
    full: bool,
) -> anyhow::Result<(f64, Option<u64>)> {
    let exe = std::env::current_exe()?;
    let step_name = match step {
        Step::Load => "load",
        Step::Sync => "sync",
        Step::Change => "change",
        Step::Empty => "empty",
    };
    let out = tokio::process::Command::new(exe)
        .arg("step")
        .arg("--dir")
        .arg(dir)
        .args(["--step", step_name])
        .args(["--users", &users.to_string()])
        .args(["--changed", &changed.to_string()])
        .args(["--expect", expect])
        .args(full.then_some("--full"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .context("running a measurement process")?;
    if !out.status.success() {
        bail!(
            "bench-sync step {step_name} ({users} users) failed ({})",
            out.status
        );
    }
    let (seconds, rss): (f64, Option<u64>) = serde_json::from_slice(&out.stdout)
        .context("reading the figures of a measurement process")?;
    Ok((seconds, rss))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unavailable".into())
}

/// This process's peak RSS.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn child(args: BenchSyncChildArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.dir.join("bench.toml"), [])?;
    let staging_path = config
        .staging_sqlite_path()
        .context("bench-sync runs on a SQLite staging database")?
        .to_path_buf();
    let store = db::open_staging(&config.staging_db, config.staging.durability).await?;
    let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
    let ids_file = args.dir.join("changed-ids.json");
    let started = Instant::now();
    match args.step {
        Step::Load => {
            let path = staging_path.clone();
            let (n, changed) = (args.users, args.changed);
            let ids = tokio::task::spawn_blocking(move || load(&path, &rt, n, changed)).await??;
            std::fs::write(&ids_file, serde_json::to_string(&ids)?)?;
        }
        Step::Change => {
            let ids: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&ids_file)?)?;
            let now = SystemClock.now();
            // As a SCIM PATCH or PUT would: read, change, compare-and-swap, new change_seq.
            for id in &ids {
                store
                    .update_user(
                        TENANT,
                        &rt,
                        id,
                        None,
                        now,
                        &|mut doc| {
                            // A promotion, or back again: every step changes every user.
                            let title = match doc.get("title").and_then(Value::as_str) {
                                Some(SENIOR) => "Lab Technician",
                                _ => SENIOR,
                            };
                            doc.insert("title".into(), json!(title));
                            Ok(doc)
                        },
                        &RequestLog::default(),
                    )
                    .await?;
            }
        }
        Step::Empty => {
            let c = rusqlite::Connection::open(args.dir.join("app.db"))?;
            c.execute_batch("DELETE FROM user_roles; DELETE FROM scifeon_users;")?;
        }
        Step::Sync => {
            let engine =
                SyncEngine::new(&config, store.clone(), &Connector, Arc::new(SystemClock)).await?;
            let started = Instant::now();
            let options = RunOptions {
                full: args.full,
                ..RunOptions::default()
            };
            let s = engine.run(TENANT, Trigger::Cli, options).await?;
            let seconds = started.elapsed().as_secs_f64();
            check(&s, &args)?;
            println!("{}", serde_json::to_string(&(seconds, peak_rss_kib()))?);
            return Ok(());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string(&(seconds, peak_rss_kib()))?);
    Ok(())
}

/// A sync step must succeed and write what the bench expects of it.
fn check(s: &RunSummary, args: &BenchSyncChildArgs) -> anyhow::Result<()> {
    ensure!(
        s.status == RunStatus::Succeeded,
        "the run ended {} ({})",
        s.status.as_str(),
        s.error.as_deref().unwrap_or("no error")
    );
    let c = &s.counts;
    let (created, updated) = match args.expect.as_str() {
        "created" => (args.users as u64, 0),
        "updated" => (0, args.changed as u64),
        _ => (0, 0),
    };
    ensure!(
        (c.created, c.updated) == (created, updated),
        "the run created {} and updated {} users; expected {created} and {updated}",
        c.created,
        c.updated
    );
    Ok(())
}

/// The groups: 20 labs (role LabTechnician, User), admins (Administrator, User), the QA
/// reviewers (Reviewer, by object id), everyone, and 36 departments without roles.
fn groups() -> Vec<(String, Option<String>)> {
    let mut g: Vec<(String, Option<String>)> = (0..20)
        .map(|k| (format!("Scifeon Lab Site {k:02}"), None))
        .collect();
    g.push(("Scifeon Admins".into(), None));
    g.push((
        "QA Reviewers".into(),
        Some("6f1c2a8e-0d4b-4a51-9e53-8a4c3b2d1e0f".into()),
    ));
    g.push(("All Staff".into(), None));
    g.extend((0..36).map(|k| (format!("Department {k:02}"), None)));
    g
}

/// The three groups of user `i` (indexes into `groups()`).
fn memberships(i: usize) -> [usize; 3] {
    let third = match i % 10 {
        0 => 20,
        1 => 21,
        _ => 22,
    };
    [i % 20, third, 23 + i % 36]
}

const DEPARTMENTS: [&str; 6] = [
    "Research & Development",
    "Quality Assurance",
    "Quality Control",
    "Production",
    "Sales",
    "R&D",
];

fn user_doc(rt: &ResourceType, i: usize) -> anyhow::Result<Map<String, Value>> {
    let mut custom = Map::new();
    for (k, name) in scim_bridge::scim::schema::CUSTOM_ATTR_NAMES
        .iter()
        .enumerate()
    {
        let v = if k == 0 {
            // customAttribute01 is the hire date in the mapping.
            format!("20{:02}-{:02}-{:02}", 10 + i % 15, 1 + i % 12, 1 + i % 28)
        } else {
            format!("attribute {k} value {}", i % 997)
        };
        custom.insert((*name).to_string(), json!(v));
    }
    let body = json!({
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA, DEFAULT_CUSTOM_SCHEMA],
        "userName": format!("user{i:07}@bench.example"),
        "externalId": format!("{:08x}-0000-4000-8000-{i:012x}", i),
        "displayName": format!("Bench User {i}"),
        "active": true,
        "name": {"givenName": format!("Given{}", i % 1000), "familyName": format!("Family{i}")},
        "title": "Lab Technician",
        "emails": [{"value": format!("User{i:07}@Bench.Example"), "type": "work", "primary": true}],
        "phoneNumbers": [{"value": format!("+45 20 {:06}", i % 1_000_000), "type": "mobile"}],
        ENTERPRISE_SCHEMA: {"department": DEPARTMENTS[i % DEPARTMENTS.len()], "employeeNumber": (10_000 + i).to_string()},
        DEFAULT_CUSTOM_SCHEMA: custom,
    });
    Ok(normalize(rt, &body, &Limits::default())?.doc)
}

/// Load `n` users and their memberships in transactions of LOAD_CHUNK users; return the ids
/// of `changed` users spread over the whole range.
fn load(path: &Path, rt: &ResourceType, n: usize, changed: usize) -> anyhow::Result<Vec<String>> {
    // Rows as the API writes them, on a connection of the load's own.
    let c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    c.pragma_update(None, "cache_size", -262_144)?;
    let now = format_time(SystemClock.now());
    let gt = ResourceType::group();
    let group_ids: Vec<String> = groups()
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut seq = 0i64;
    c.execute_batch("BEGIN")?;
    for ((name, external_id), id) in groups().iter().zip(&group_ids) {
        let mut body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name});
        if let Some(x) = external_id {
            body["externalId"] = json!(x);
        }
        seq += 1;
        let row = NewGroupRow::of(&gt, &normalize(&gt, &body, &Limits::default())?.doc)?;
        insert_group_row(&c, TENANT, id, &row, seq, &now)?;
    }
    c.execute_batch("COMMIT")?;
    let every = (n / changed.max(1)).max(1);
    let mut to_change = Vec::with_capacity(changed);
    let mut start = 0;
    while start < n {
        let end = (start + LOAD_CHUNK).min(n);
        c.execute_batch("BEGIN")?;
        for i in start..end {
            let id = uuid::Uuid::now_v7().to_string();
            seq += 1;
            let row = NewUserRow::of(rt, &user_doc(rt, i)?)?;
            insert_user_row(&c, TENANT, &id, &row, seq, &now)?;
            for g in memberships(i) {
                insert_member_row(&c, TENANT, &group_ids[g], &id)?;
            }
            if i % every == 0 && to_change.len() < changed {
                to_change.push(id);
            }
        }
        c.execute_batch("COMMIT")?;
        start = end;
    }
    raise_seq(&c, seq)?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(to_change)
}
