//! The console benchmark: how long each console page takes to render on the server with
//! `--users` staged users (1% inactive, each with an application row) and `--runs` runs in
//! the ledger (`--items` items each, some failed), and as many provisioning log entries as
//! users.
//!
//! It bulk-loads a temporary staging database with the row functions the SCIM store writes
//! with, starts the application on it (a free port), signs in to the console and requests
//! every page `--iterations` times, and prints the median and the slowest of the page's
//! `Server-Timing: render;dur=…` (the console's own time, from the request reaching it to
//! the answer built) and the median wall time the client saw. Run it with
//! `cargo bench --bench console` (options after `--`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use serde_json::{Map, Value, json};

use scim_bridge::app::Application;
use scim_bridge::clock::{Clock, SystemClock};
use scim_bridge::config::Config;
use scim_bridge::db::sqlite::{NewUserRow, insert_user_row, raise_seq};
use scim_bridge::scim::Limits;
use scim_bridge::scim::resource::normalize;
use scim_bridge::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA, ResourceType};
use scim_bridge::store::format_time;

/// The allocator the product binary runs with, so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = include_str!("../mappings/scifeon.toml");
const SCHEMA: &str = include_str!("../sql/app/example_app.sql");
const TENANT: &str = "bench";
const TOKEN: &str = "bench-console-operator-token-0123456789";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

#[derive(clap::Parser)]
#[command(
    name = "bench-console",
    about = "Measure the console's server-side render times"
)]
struct Args {
    /// Staged users
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Runs in the ledger
    #[arg(long, default_value_t = 1_000)]
    runs: usize,
    /// Items per run
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Requests per page
    #[arg(long, default_value_t = 21)]
    iterations: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(<Args as clap::Parser>::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.users >= 10 && args.runs >= 1 && args.iterations >= 1);
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("mapping.toml"), MAPPING)?;
    std::fs::write(dir.path().join("app.sql"), SCHEMA)?;
    let config_path = dir.path().join("bench.toml");
    std::fs::write(
        &config_path,
        format!(
            "[log]\nlevel = \"warn\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\n\
             [staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"normal\"\n\
             [applications.scifeon]\ndatabase = \"sqlite://app.db\"\nschema = \"app.sql\"\n\
             [tenants.{TENANT}]\ntoken = \"bench-scim-token-0123456789\"\n\
             [tenants.{TENANT}.sync]\nmapping = \"mapping.toml\"\n\
             [admin.tokens.bench]\ntoken = \"{TOKEN}\"\nrole = \"operator\"\n"
        ),
    )?;
    let config = Config::load(&config_path, [])?;
    let staging = config
        .staging_sqlite_path()
        .context("the bench runs on SQLite")?
        .to_path_buf();
    // Migrate, then load on a connection of the load's own.
    drop(scim_bridge::db::open_staging(&config.staging_db, config.staging.durability).await?);
    let started = Instant::now();
    let (users, runs, items) = (args.users, args.runs, args.items);
    let path = staging.clone();
    let some_user = tokio::task::spawn_blocking(move || load(&path, users, runs, items)).await??;
    println!(
        "loaded {users} staged users, {runs} runs with {items} items each and {users} \
         provisioning log entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let app = Application::build(config, Arc::new(SystemClock), None).await?;
    let addr = app.addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = format!("http://{addr}/console");
    let signed_in = client
        .post(format!("{base}/sign-in"))
        .form(&[("token", TOKEN)])
        .send()
        .await?;
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_string();
    let run_id = runs / 2;
    let pages = [
        ("overview", String::new()),
        ("runs", "/runs".to_string()),
        (
            "runs, filtered",
            format!("/runs?tenant={TENANT}&status=completed_with_errors&trigger=schedule"),
        ),
        (
            "runs, last page",
            format!("/runs?offset={}", runs.saturating_sub(20)),
        ),
        ("a run", format!("/runs/{run_id}")),
        (
            "a run, failed items",
            format!("/runs/{run_id}?outcome=failed"),
        ),
        (
            "user (story)",
            format!("/user?tenant={TENANT}&by=userName&q={some_user}"),
        ),
        ("failing now", "/failing".into()),
        ("pending offboardings", "/offboardings".into()),
        ("provisioning log", "/log".into()),
        ("provisioning log, 4xx", "/log?status=4xx".into()),
        (
            "provisioning log, one user",
            format!("/log?user={some_user}"),
        ),
        ("mapping", "/mapping".into()),
        (
            "mapping + preview",
            format!("/mapping?by=userName&q={some_user}"),
        ),
        ("runs CSV (1000 rows)", "/runs?format=csv".into()),
    ];
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>10}",
        "page", "median ms", "slowest ms", "wall ms", "bytes"
    );
    for (name, path) in &pages {
        let mut render = Vec::new();
        let mut wall = Vec::new();
        let mut bytes = 0;
        for _ in 0..args.iterations {
            let t = Instant::now();
            let r = client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            ensure!(r.status() == 200, "{name}: {}", r.status());
            let timing = r
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("render;dur="))
                .and_then(|v| v.parse::<f64>().ok())
                .context("no Server-Timing")?;
            bytes = r.bytes().await?.len();
            wall.push(t.elapsed().as_secs_f64() * 1000.0);
            render.push(timing);
        }
        render.sort_by(f64::total_cmp);
        wall.sort_by(f64::total_cmp);
        println!(
            "{name:<28} {:>12.2} {:>12.2} {:>12.2} {bytes:>10}",
            render[render.len() / 2],
            render[render.len() - 1],
            wall[wall.len() / 2]
        );
    }
    let _ = tx.send(());
    server.await??;
    Ok(())
}

fn user_doc(rt: &ResourceType, i: usize) -> anyhow::Result<Map<String, Value>> {
    let body = json!({
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
        "userName": format!("user{i:07}@bench.example"),
        "externalId": format!("{:08x}-0000-4000-8000-{i:012x}", i),
        "displayName": format!("Bench User {i}"),
        "active": !i.is_multiple_of(100),
        "name": {"givenName": format!("Given{}", i % 1000), "familyName": format!("Family{i}")},
        "title": "Lab Technician",
        "emails": [{"value": format!("user{i:07}@bench.example"), "type": "work", "primary": true}],
        ENTERPRISE_SCHEMA: {"department": "Production", "employeeNumber": (10_000 + i).to_string()},
    });
    Ok(normalize(rt, &body, &Limits::default())?.doc)
}

/// Load the users (with links, as after a sync), the runs with their items, the failing
/// users and the provisioning log; answers one user's userName.
fn load(path: &Path, users: usize, runs: usize, items: usize) -> anyhow::Result<String> {
    let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
    let mut c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let now = SystemClock.now();
    let at = |minutes_ago: i64| format_time(now - chrono::Duration::minutes(minutes_ago));
    let stamp = at(0);
    let tx = c.transaction()?;
    let mut ids = Vec::with_capacity(users);
    {
        let mut link = tx.prepare(
            "INSERT INTO sync_links (tenant, user_id, app_key, fingerprint, applied_roles, \
             fields, state, updated_at) VALUES (?1, ?2, ?3, 'x', '[]', ?4, ?5, ?6)",
        )?;
        let mut log = tx.prepare(
            "INSERT INTO provisioning_log (tenant, at, request_id, method, path, resource_id, \
             status, duration_ms, error, user_name, external_id) \
             VALUES (?1, ?2, ?3, ?4, '/Users/{id}', ?5, ?6, 1.5, ?7, ?8, NULL)",
        )?;
        for i in 0..users {
            let id = uuid::Uuid::now_v7().to_string();
            let row = NewUserRow::of(&rt, &user_doc(&rt, i)?)?;
            insert_user_row(&tx, TENANT, &id, &row, i as i64 + 1, &stamp)?;
            let name = format!("user{i:07}@bench.example");
            link.execute(rusqlite::params![
                TENANT,
                id,
                name,
                json!({"FirstName": format!("Given{}", i % 1000)}).to_string(),
                if i.is_multiple_of(100) {
                    "deactivated"
                } else {
                    "active"
                },
                stamp
            ])?;
            let status = if i.is_multiple_of(50) { 409 } else { 200 };
            log.execute(rusqlite::params![
                TENANT,
                at((users - i) as i64 / 10),
                format!("req-{i}"),
                if i.is_multiple_of(3) { "PATCH" } else { "GET" },
                id,
                status,
                (status == 409).then_some("uniqueness: userName is taken"),
                name
            ])?;
            ids.push(id);
        }
        raise_seq(&tx, users as i64 + 1)?;
        let mut run = tx.prepare(
            "INSERT INTO sync_runs (id, tenant, trigger, dry_run, full, status, started_at, \
             ended_at, created, updated, unchanged, failed) \
             VALUES (?1, ?2, ?3, 0, 0, ?4, ?5, ?6, 0, ?7, 0, ?8)",
        )?;
        let mut item = tx.prepare(
            "INSERT INTO sync_run_items (run_id, user_id, user_name, app_key, outcome, changes, \
             roles_added, roles_removed, error) VALUES (?1, ?2, ?3, ?3, ?4, ?5, '[]', '[]', ?6)",
        )?;
        for r in 1..=runs {
            let failed = items / 20;
            let start = (runs - r) as i64 * 15;
            run.execute(rusqlite::params![
                r as i64,
                TENANT,
                if r.is_multiple_of(10) {
                    "api"
                } else {
                    "schedule"
                },
                if failed > 0 {
                    "completed_with_errors"
                } else {
                    "succeeded"
                },
                at(start),
                at(start - 1),
                (items - failed) as i64,
                failed as i64
            ])?;
            for k in 0..items {
                let u = (r * items + k) % users;
                let bad = k < failed;
                item.execute(rusqlite::params![
                    r as i64,
                    ids[u],
                    format!("user{u:07}@bench.example"),
                    if bad { "failed" } else { "updated" },
                    (!bad).then(|| json!({"JobTitle": {"before": "Lab Technician", "after": "Senior Lab Technician"}}).to_string()),
                    bad.then_some("fields.EmployeeNumber: `x` is not an integer")
                ])?;
            }
        }
        let mut retry = tx.prepare(
            "INSERT INTO sync_retry (tenant, user_id, attempts, last_error, first_failed_at, \
             last_failed_at) VALUES (?1, ?2, 2, 'fields.EmployeeNumber: `x` is not an integer', ?3, ?4)",
        )?;
        for u in (0..users).step_by(users / 10).take(10) {
            retry.execute(rusqlite::params![TENANT, ids[u], at(600), at(15)])?;
        }
    }
    tx.commit()?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    Ok(format!("user{:07}@bench.example", users / 2))
}
