//! The SCIM benchmark: start the server (the product binary, `serve`) on a temporary SQLite
//! database, drive it over HTTP from this process, and print throughput, latency and the
//! server's peak RSS. Run it with `cargo bench --bench scim` (options after `--`).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Value, json};

#[derive(clap::Parser, Clone)]
#[command(
    name = "bench-scim",
    about = "Measure the SCIM server on a temporary SQLite database"
)]
pub struct BenchArgs {
    /// Users to load (each with 16 custom attributes)
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Members to add to one group, 100 per PATCH
    #[arg(long, default_value_t = 100_000)]
    pub members: usize,
    /// Requests in flight at once
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Staging durability: full (fsync per commit) or normal (survives a process crash)
    #[arg(long, default_value = "full")]
    pub durability: String,
    /// `standard`: the SCIM operations; `abuse`: heavy requests against one tenant while
    /// another tenant's look-ups and /healthz are timed
    #[arg(long, default_value = "standard")]
    pub workload: String,
    /// abuse: seconds of heavy requests
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// The server binary to measure (default: the one `cargo bench` built), so that two
    /// builds can be compared with the same client
    #[arg(long)]
    pub server: Option<std::path::PathBuf>,
    /// Compare with this other build's binary: alternate the two, `--rounds` times each, and
    /// print the medians side by side
    #[arg(long)]
    pub against: Option<std::path::PathBuf>,
    /// Rounds of each binary with `--against`
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = <BenchArgs as clap::Parser>::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

const TOKEN: &str = "bench-token-0123456789";
/// The abuse workload's other tenant, whose requests are timed.
const VICTIM_TOKEN: &str = "victim-token-0123456789";
const CUSTOM_URN: &str = scim_bridge::scim::schema::DEFAULT_CUSTOM_SCHEMA;

struct Row {
    name: String,
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The server's CPU time (all its threads) during the phase, where it ran alone.
    cpu: Option<Duration>,
}

/// The server process, whose CPU time the phases read (0: none).
static SERVER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// CPU time (user + system) the server has used so far, from /proc (Linux).
fn server_cpu() -> Option<Duration> {
    let pid = SERVER_PID.load(std::sync::atomic::Ordering::Relaxed);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(server_cpu()?.saturating_sub(before?))
}

impl Row {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i.min(l.len() - 1)].as_secs_f64() * 1000.0
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: &'static str,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        want: u16,
    ) -> anyhow::Result<(Duration, Vec<u8>)> {
        let start = Instant::now();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?.to_vec();
        let took = start.elapsed();
        if status != want {
            bail!(
                "{path}: expected {want}, got {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok((took, bytes))
    }
}

/// Run `n` requests built by `make` with `concurrency` in flight; collect latencies.
async fn phase<F, Fut>(
    name: &str,
    n: usize,
    concurrency: usize,
    make: F,
) -> anyhow::Result<(Row, Vec<Vec<u8>>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Duration, Vec<u8>)>>,
{
    let start = Instant::now();
    let cpu = server_cpu();
    let results: Vec<anyhow::Result<(Duration, Vec<u8>)>> = stream::iter(0..n)
        .map(make)
        .buffered(concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let cpu = cpu_since(cpu);
    let mut latencies = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for r in results {
        let (l, b) = r?;
        latencies.push(l);
        bodies.push(b);
    }
    Ok((
        Row {
            name: name.to_string(),
            requests: n,
            elapsed,
            latencies,
            cpu,
        },
        bodies,
    ))
}

fn user_body(i: usize) -> Vec<u8> {
    let mut custom = serde_json::Map::new();
    for (k, name) in scim_bridge::scim::schema::CUSTOM_ATTR_NAMES
        .iter()
        .enumerate()
    {
        custom.insert((*name).to_string(), json!(format!("value-{k}-{i}")));
    }
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", CUSTOM_URN],
        "userName": format!("user{i:07}@bench.example"),
        "externalId": format!("ext-{i:07}"),
        "displayName": format!("Bench User {i}"),
        "active": true,
        "name": {"givenName": "Bench", "familyName": format!("User{i}")},
        "emails": [{"value": format!("user{i:07}@bench.example"), "type": "work", "primary": true}],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D", "employeeNumber": i.to_string()},
        CUSTOM_URN: custom,
    })
    .to_string()
    .into_bytes()
}

fn id_of(body: &[u8]) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(body)?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("response without id")
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn write_config(dir: &Path, port: u16, durability: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_page_size = 1000\n\
             [log]\nlevel = \"warn\"\n\
             [staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"{durability}\"\n\
             [tenants.bench]\ntoken = \"{TOKEN}\"\n\
             [tenants.victim]\ntoken = \"{VICTIM_TOKEN}\"\n"
        ),
    )?;
    Ok(path)
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // The product binary, built by `cargo bench` with the same profile, unless told otherwise.
    let exe = args
        .server
        .clone()
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_scim-bridge").into());
    match &args.against {
        None => {
            let (rows, rss) = measure(&args, &exe).await?;
            print_table(&args, &rows, rss);
        }
        Some(other) => compare(&args, &exe, other).await?,
    }
    Ok(())
}

/// Start `exe` on a fresh database, run the workload against it, stop it: the rows and the
/// server's peak RSS.
async fn measure(args: &BenchArgs, exe: &Path) -> anyhow::Result<(Vec<Row>, Option<u64>)> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = write_config(dir.path(), port, &args.durability)?;
    let mut server = tokio::process::Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = server.id().context("server pid")?;
    SERVER_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?,
        base: format!("http://127.0.0.1:{port}/scim-api/v1/bench/scim"),
        token: TOKEN,
    });
    for _ in 0..100 {
        if client
            .send(reqwest::Method::GET, "/ServiceProviderConfig", None, 200)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = if args.workload == "abuse" {
        abuse(&client, port, args).await
    } else {
        drive(&client, args).await
    };
    let rss = peak_rss_kib(pid);
    let _ = server.kill().await;
    Ok((result?, rss))
}

/// Alternate `a` and `b` (a b, b a, a b, …: neither always runs on a warmer machine) and
/// print each phase's median requests/s and server CPU per request, with b's ratio to a's.
async fn compare(args: &BenchArgs, a: &Path, b: &Path) -> anyhow::Result<()> {
    let mut runs: [Vec<Vec<Row>>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let exe = if i == 0 { a } else { b };
            eprintln!("round {} of {}: {}", round + 1, args.rounds, exe.display());
            runs[i].push(measure(args, exe).await?.0);
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    // A figure, or "-" where there is none (a phase without requests, or without CPU time).
    let show = |x: f64, digits: usize| {
        if x.is_finite() {
            format!("{x:.digits$}")
        } else {
            "-".into()
        }
    };
    let per_second = |r: &Row| r.requests as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let cpu = |r: &Row| {
        r.cpu
            .filter(|_| r.requests > 0)
            .map(|c| c.as_secs_f64() * 1e6 / r.requests as f64)
    };
    println!(
        "scim-bridge bench: medians of {} alternated rounds; a = {}, b = {}",
        args.rounds,
        a.display(),
        b.display()
    );
    println!(
        "{:<52} {:>9} {:>9} {:>6} {:>10} {:>10} {:>6}",
        "operation", "a req/s", "b req/s", "b/a", "a CPU µs", "b CPU µs", "b/a"
    );
    let names: Vec<String> = runs[0]
        .first()
        .map(|rows| rows.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default();
    for (k, name) in names.iter().enumerate() {
        let column = |i: usize, f: &dyn Fn(&Row) -> Option<f64>| {
            median(
                runs[i]
                    .iter()
                    .filter_map(|rows| rows.get(k))
                    .filter_map(f)
                    .collect(),
            )
        };
        let (ta, tb) = (
            column(0, &|r| Some(per_second(r))),
            column(1, &|r| Some(per_second(r))),
        );
        let (ca, cb) = (column(0, &cpu), column(1, &cpu));
        println!(
            "{name:<52} {:>9} {:>9} {:>6} {:>10} {:>10} {:>6}",
            show(ta, 0),
            show(tb, 0),
            show(tb / ta, 3),
            show(ca, 0),
            show(cb, 0),
            show(cb / ca, 3)
        );
    }
    Ok(())
}

async fn drive(client: &Arc<Client>, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    use reqwest::Method;
    let c = args.concurrency;
    let n = args.users;
    let mut rows = Vec::new();
    let bodies: Vec<Vec<u8>> = (0..n).map(user_body).collect();

    let (row, created) = phase("POST /Users", n, c, |i| {
        let client = client.clone();
        let body = bodies[i].clone();
        async move { client.send(Method::POST, "/Users", Some(body), 201).await }
    })
    .await?;
    rows.push(row);
    let ids: Vec<String> = created.iter().map(|b| id_of(b)).collect::<Result<_, _>>()?;

    let (row, _) = phase("GET /Users?filter=userName eq", n, c, |i| {
        let client = client.clone();
        async move {
            let path = format!("/Users?filter=userName%20eq%20%22user{i:07}%40bench.example%22");
            let (l, b) = client.send(Method::GET, &path, None, 200).await?;
            let pattern = b"\"totalResults\":1";
            if !b.windows(pattern.len()).any(|w| w == pattern) {
                bail!("filter did not find exactly one user");
            }
            Ok((l, b))
        }
    })
    .await?;
    rows.push(row);

    let (row, _) = phase("GET /Users/{id}", n, c, |i| {
        let client = client.clone();
        let path = format!("/Users/{}", ids[i]);
        async move { client.send(Method::GET, &path, None, 200).await }
    })
    .await?;
    rows.push(row);

    let (row, _) = phase("PATCH /Users/{id}", n, c, |i| {
        let client = client.clone();
        let path = format!("/Users/{}", ids[i]);
        let body = json!({"schemas": [scim_bridge::scim::schema::PATCH_OP], "Operations": [
            {"op": "Replace", "path": "displayName", "value": format!("Patched {i}")},
            {"op": "Replace", "value": {format!("{CUSTOM_URN}:customAttribute05"): "patched"}}]})
        .to_string()
        .into_bytes();
        async move { client.send(Method::PATCH, &path, Some(body), 200).await }
    })
    .await?;
    rows.push(row);

    // Paging through all users by 100, sequentially, as Entra's initial cycle does.
    let pages = n.div_ceil(100);
    let start = Instant::now();
    let cpu = server_cpu();
    let mut latencies = Vec::new();
    for p in 0..pages {
        let path = format!("/Users?startIndex={}&count=100", p * 100 + 1);
        let (l, _) = client.send(Method::GET, &path, None, 200).await?;
        latencies.push(l);
    }
    rows.push(Row {
        name: format!("page all {n} users by 100 (sequential)"),
        requests: pages,
        elapsed: start.elapsed(),
        latencies,
        cpu: cpu_since(cpu),
    });

    // Enough users to fill the big group.
    let extra = args.members.saturating_sub(n);
    let more: Vec<Vec<u8>> = (n..n + extra).map(user_body).collect();
    let (row, created) = phase("POST /Users (load for members)", extra, c, |i| {
        let client = client.clone();
        let body = more[i].clone();
        async move { client.send(Method::POST, "/Users", Some(body), 201).await }
    })
    .await?;
    rows.push(row);
    let mut member_ids = ids.clone();
    for b in &created {
        member_ids.push(id_of(b)?);
    }
    member_ids.truncate(args.members);

    let group = client
        .send(
            Method::POST,
            "/Groups",
            Some(
                json!({"displayName": "Bench Group"})
                    .to_string()
                    .into_bytes(),
            ),
            201,
        )
        .await?;
    let gpath = format!("/Groups/{}", id_of(&group.1)?);
    let start = Instant::now();
    let mut latencies = Vec::new();
    for chunk in member_ids.chunks(100) {
        let members: Vec<Value> = chunk.iter().map(|id| json!({"value": id})).collect();
        let body = json!({"schemas": [scim_bridge::scim::schema::PATCH_OP],
            "Operations": [{"op": "Add", "path": "members", "value": members}]})
        .to_string()
        .into_bytes();
        let (l, _) = client.send(Method::PATCH, &gpath, Some(body), 204).await?;
        latencies.push(l);
    }
    let batches = latencies.len();
    let k = 10.min(batches);
    rows.push(Row {
        name: format!("PATCH add 100 members, first {k} batches"),
        requests: k,
        elapsed: latencies[..k].iter().sum(),
        latencies: latencies[..k].to_vec(),
        cpu: None,
    });
    rows.push(Row {
        name: format!(
            "PATCH add 100 members, last {k} batches (to {})",
            member_ids.len()
        ),
        requests: k,
        elapsed: latencies[batches - k..].iter().sum(),
        latencies: latencies[batches - k..].to_vec(),
        cpu: None,
    });
    rows.push(Row {
        name: format!("PATCH add 100 members, all {batches} batches"),
        requests: batches,
        elapsed: start.elapsed(),
        latencies,
        cpu: None,
    });

    let mut latencies = Vec::new();
    for id in member_ids.iter().rev().take(20) {
        let body = json!({"schemas": [scim_bridge::scim::schema::PATCH_OP],
            "Operations": [{"op": "Remove", "path": "members", "value": [{"value": id}]}]})
        .to_string()
        .into_bytes();
        let (l, _) = client.send(Method::PATCH, &gpath, Some(body), 204).await?;
        latencies.push(l);
    }
    rows.push(Row {
        name: format!("PATCH remove 1 member of {}", member_ids.len()),
        requests: latencies.len(),
        elapsed: latencies.iter().sum(),
        latencies,
        cpu: None,
    });
    Ok(rows)
}

/// What the abuse workload's heavy requests were answered.
#[derive(Default)]
struct Answers {
    by_status: std::collections::BTreeMap<u16, usize>,
    failed: usize,
}

/// One heavy request of the abuse workload, `i`-th of its kind: a 90-term substring filter,
/// a PATCH adding 1 000 emails, or a search excluding one path many times.
async fn heavy(client: &Client, ids: &[String], i: usize) -> Option<u16> {
    use reqwest::Method;
    let (method, path, body) = match i % 3 {
        0 => {
            let filter = (0..90)
                .map(|k| format!("userName co \"{k:02}{i}\""))
                .collect::<Vec<_>>()
                .join(" or ");
            let q: String = form_urlencoded::byte_serialize(filter.as_bytes()).collect();
            (Method::GET, format!("/Users?filter={q}"), None)
        }
        1 => {
            let emails: Vec<Value> = (0..1000)
                .map(|k| json!({"value": format!("e{i}-{k}@abuse.example"), "type": "other"}))
                .collect();
            let body = json!({"schemas": [scim_bridge::scim::schema::PATCH_OP],
                "Operations": [{"op": "add", "path": "emails", "value": emails}]});
            (
                Method::PATCH,
                format!("/Users/{}", ids[i % ids.len()]),
                Some(body.to_string().into_bytes()),
            )
        }
        _ => {
            let excluded = vec!["name.givenName"; 500].join(",");
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": "displayName co \"User\"", "excludedAttributes": excluded});
            (
                Method::POST,
                "/Users/.search".to_string(),
                Some(body.to_string().into_bytes()),
            )
        }
    };
    let mut req = client
        .http
        .request(method, format!("{}{path}", client.base))
        .bearer_auth(client.token);
    if let Some(b) = body {
        req = req.header("content-type", "application/scim+json").body(b);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    Some(status)
}

/// Time the victim tenant's look-ups and /healthz, one after the other, until `until`.
async fn observe_victim(
    victim: &Client,
    health: &Client,
    users: usize,
    until: Instant,
) -> (Row, Row, usize) {
    let (mut looks, mut checks, mut unanswered) = (Vec::new(), Vec::new(), 0);
    let start = Instant::now();
    let mut i = 0;
    while Instant::now() < until {
        let path = format!(
            "/Users?filter=userName%20eq%20%22user{:07}%40bench.example%22",
            i % users
        );
        match victim.send(reqwest::Method::GET, &path, None, 200).await {
            Ok((l, _)) => looks.push(l),
            Err(_) => unanswered += 1,
        }
        match health
            .send(reqwest::Method::GET, "/healthz", None, 200)
            .await
        {
            Ok((l, _)) => checks.push(l),
            Err(_) => unanswered += 1,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let row = |name: &str, latencies: Vec<Duration>| Row {
        name: name.to_string(),
        requests: latencies.len(),
        elapsed,
        latencies,
        cpu: None,
    };
    (
        row("victim GET /Users?filter=userName eq", looks),
        row("GET /healthz", checks),
        unanswered,
    )
}

/// The abuse workload: load both tenants, time the victim quietly, then again while the
/// `bench` tenant sends heavy requests with `concurrency` in flight for `seconds`.
async fn abuse(client: &Arc<Client>, port: u16, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    use reqwest::Method;
    let c = args.concurrency;
    let n = args.users.min(5_000);
    let victim = Arc::new(Client {
        http: client.http.clone(),
        base: format!("http://127.0.0.1:{port}/scim-api/v1/victim/scim"),
        token: VICTIM_TOKEN,
    });
    let health = Client {
        http: client.http.clone(),
        base: format!("http://127.0.0.1:{port}"),
        token: "",
    };
    let bodies: Vec<Vec<u8>> = (0..n).map(user_body).collect();
    let (_, created) = phase("load attacker", n, c, |i| {
        let client = client.clone();
        let body = bodies[i].clone();
        async move { client.send(Method::POST, "/Users", Some(body), 201).await }
    })
    .await?;
    let ids: Vec<String> = created.iter().map(|b| id_of(b)).collect::<Result<_, _>>()?;
    let vn = 1_000.min(n);
    phase("load victim", vn, c, |i| {
        let victim = victim.clone();
        let body = bodies[i].clone();
        async move { victim.send(Method::POST, "/Users", Some(body), 201).await }
    })
    .await?;

    let mut rows = Vec::new();
    let quiet = Instant::now() + Duration::from_secs(args.seconds.min(10));
    let (mut look, mut check, _) = observe_victim(&victim, &health, vn, quiet).await;
    look.name = format!("quiet: {}", look.name);
    check.name = format!("quiet: {}", check.name);
    rows.extend([look, check]);

    let until = Instant::now() + Duration::from_secs(args.seconds);
    let answers = Arc::new(std::sync::Mutex::new(Answers::default()));
    let attackers = (0..c).map(|w| {
        let (client, ids, answers) = (client.clone(), ids.clone(), answers.clone());
        tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < until {
                let status = heavy(&client, &ids, i).await;
                if let Ok(mut a) = answers.lock() {
                    match status {
                        Some(s) => *a.by_status.entry(s).or_default() += 1,
                        None => a.failed += 1,
                    }
                }
                i += c;
            }
        })
    });
    let attackers: Vec<_> = attackers.collect();
    let (mut look, mut check, unanswered) = observe_victim(&victim, &health, vn, until).await;
    for a in attackers {
        let _ = a.await;
    }
    look.name = format!("under abuse: {}", look.name);
    check.name = format!("under abuse: {}", check.name);
    rows.extend([look, check]);
    if let Ok(a) = answers.lock() {
        let statuses: Vec<String> = a
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        println!(
            "heavy requests of the bench tenant: {} (no answer: {})",
            statuses.join(", "),
            a.failed
        );
    }
    println!("victim requests or health checks not answered 200: {unanswered}");
    Ok(rows)
}

fn print_table(args: &BenchArgs, rows: &[Row], rss_kib: Option<u64>) {
    println!(
        "scim-bridge bench: {} users, {} members, {} in flight, durability {}",
        args.users, args.members, args.concurrency, args.durability
    );
    println!(
        "{:<52} {:>8} {:>10} {:>12} {:>9} {:>9} {:>11}",
        "operation", "requests", "seconds", "per second", "p50 ms", "p99 ms", "CPU µs/req"
    );
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        let cpu = match r.cpu {
            Some(c) if r.requests > 0 => {
                format!("{:.0}", c.as_secs_f64() * 1e6 / r.requests as f64)
            }
            _ => "-".into(),
        };
        println!(
            "{:<52} {:>8} {:>10.3} {:>12.0} {:>9.3} {:>9.3} {:>11}",
            r.name,
            r.requests,
            secs,
            if secs > 0.0 {
                r.requests as f64 / secs
            } else {
                0.0
            },
            r.percentile(0.5),
            r.percentile(0.99),
            cpu
        );
    }
    match rss_kib {
        Some(k) => println!("server peak RSS: {:.1} MiB", k as f64 / 1024.0),
        None => println!("server peak RSS: unavailable"),
    }
}
