//! Operations: /readyz, /metrics (parsed strictly as Prometheus text), the OpenAPI document
//! and its UI.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::helpers::*;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the text exposition format 0.0.4: every line is a comment (HELP/TYPE
/// before the family's samples, each family declared once) or a well-formed sample of a
/// declared family; label values are quoted with \\, \" and \n escapes.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = vec![];
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let arg = parts.next().ok_or_else(|| err("comment without text"))?;
            if !valid_name(name) {
                return Err(err("bad metric name"));
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(err("unknown type"));
                    }
                    if types.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(err("family declared twice"));
                    }
                }
                _ => return Err(err("unknown comment")),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end = loop {
                let Some(&(i, c)) = chars.peek() else {
                    return Err(err("unterminated labels"));
                };
                if c == '}' {
                    break i;
                }
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                if !valid_name(&key) || key.contains(':') {
                    return Err(err("bad label name"));
                }
                chars.next(); // '='
                if chars.next().map(|x| x.1) != Some('"') {
                    return Err(err("label value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|x| x.1) {
                        Some('\\') => match chars.next().map(|x| x.1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            _ => return Err(err("bad escape")),
                        },
                        Some('"') => break,
                        Some('\n') | None => return Err(err("unterminated label value")),
                        Some(c) => value.push(c),
                    }
                }
                if labels.insert(key, value).is_some() {
                    return Err(err("label repeated"));
                }
                match chars.peek().map(|x| x.1) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    _ => return Err(err("expected , or }")),
                }
            };
            rest = &r[end + 1..];
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err("sample of an undeclared family"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[test]
fn the_parser_rejects_malformed_text() {
    assert!(parse_exposition("# TYPE a counter\na 1\n").is_ok());
    for bad in [
        "a 1\n",                                // undeclared
        "# TYPE a counter\na{b=\"1} 1\n",       // unterminated
        "# TYPE a counter\na{b=1} 1\n",         // unquoted
        "# TYPE a counter\na x\n",              // bad value
        "# TYPE a counter\n# TYPE a counter\n", // twice
        "# TYPE a counter\na{b=\"1\",b=\"2\"} 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad}");
    }
}

async fn metrics(app: &TestApp) -> Vec<Sample> {
    let r = app.get_root("/metrics").await;
    r.assert_status(200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_exposition(&r.text).unwrap_or_else(|e| panic!("{e}\n{}", r.text))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[tokio::test]
async fn metrics_count_scim_requests_and_latency() {
    let app = TestApp::start().await;
    let before = metrics(&app).await;
    let e1 = |s: &[Sample]| {
        value(
            s,
            "scim_bridge_entra_normalisations_total",
            &[("kind", "E1_capitalised_op")],
        )
        .unwrap_or(-1.0)
    };
    let a = app.user("a@example.com").await;
    app.user("b@example.com").await;
    app.get(&format!("/Users/{a}")).await.assert_status(200);
    app.get("/Users/nope").await.assert_status(404);
    app.list(ACME, "/Users", &[]).await.assert_status(200);
    // Entra's capitalised op (E1).
    app.patch(
        &format!("/Users/{a}"),
        &patch_ops(json!([{"op": "Replace", "path": "displayName", "value": "A"}])),
    )
    .await
    .assert_status(200);
    app.list(OTHER, "/Groups", &[]).await.assert_status(200);

    let m = metrics(&app).await;
    let requests = |tenant: &str, resource: &str, operation: &str, status: &str| {
        value(
            &m,
            "scim_bridge_scim_requests_total",
            &[
                ("tenant", tenant),
                ("resource", resource),
                ("operation", operation),
                ("status", status),
            ],
        )
    };
    assert_eq!(requests(ACME, "Users", "create", "201"), Some(2.0));
    assert_eq!(requests(ACME, "Users", "get", "200"), Some(1.0));
    assert_eq!(requests(ACME, "Users", "get", "404"), Some(1.0));
    assert_eq!(requests(ACME, "Users", "list", "200"), Some(1.0));
    assert_eq!(requests(ACME, "Users", "patch", "200"), Some(1.0));
    assert_eq!(requests(OTHER, "Groups", "list", "200"), Some(1.0));
    assert_eq!(requests(OTHER, "Users", "create", "201"), None);
    // Latency histograms: count per route, cumulative buckets ending in +Inf = count.
    let lat = "scim_bridge_scim_request_duration_seconds";
    let route = [
        ("tenant", ACME),
        ("resource", "Users"),
        ("operation", "get"),
    ];
    assert_eq!(value(&m, &format!("{lat}_count"), &route), Some(2.0));
    assert!(value(&m, &format!("{lat}_sum"), &route).is_some_and(|s| s > 0.0));
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter(|s| {
            s.name == format!("{lat}_bucket")
                && route
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| {
            let le = s.labels["le"].as_str();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 5);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2.0)));
    // Entra normalisations: a process-wide count, so at least this test's one.
    assert!(e1(&m) >= e1(&before) + 1.0, "{} {}", e1(&m), e1(&before));
    // The sync families are declared, ready for the engine.
    let r = app.get_root("/metrics").await;
    for family in [
        "scim_bridge_sync_runs_total counter",
        "scim_bridge_sync_run_duration_seconds histogram",
        "scim_bridge_sync_items_total counter",
        "scim_bridge_sync_pending_offboardings gauge",
        "scim_bridge_provisioning_log_dropped_total counter",
    ] {
        assert!(r.text.contains(&format!("# TYPE {family}\n")), "{family}");
    }
    assert_eq!(
        value(&m, "scim_bridge_provisioning_log_dropped_total", &[]),
        Some(0.0)
    );
}

#[tokio::test]
async fn readyz_lists_named_checks() {
    let app = TestApp::start().await;
    let r = app.get_root("/readyz").await;
    r.assert_status(200);
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["checks"][0]["name"], "staging_database");
    assert_eq!(r.body["checks"][0]["ok"], true);
    app.get_root("/healthz").await.assert_status(200);
}

#[tokio::test]
async fn openapi_document_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = scim_bridge::api::openapi_spec();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is out of date; regenerate it with\n\n    \
         cargo run -- openapi > docs/openapi.json\n"
    );
    // The served document is the same one.
    let app = TestApp::start().await;
    let r = app.get_root("/openapi.json").await;
    r.assert_status(200);
    assert_eq!(r.text.trim_end(), generated.trim_end());
    let paths = r.body["paths"].as_object().unwrap();
    for p in [
        "/admin/v1/tenants",
        "/admin/v1/tenants/{tenant}/requests",
        "/scim-api/v1/{tenant}/scim/Users",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }
    let schemes = &r.body["components"]["securitySchemes"];
    assert_eq!(schemes["AdminAuth"]["scheme"], "bearer");
    assert_eq!(schemes["ScimToken"]["scheme"], "bearer");
}

#[tokio::test]
async fn docs_ui_is_served_from_the_binary() {
    let app = TestApp::start().await;
    let r = app.get_root("/docs").await;
    r.assert_status(200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text.contains("SwaggerUIBundle"));
    assert!(r.text.contains("/admin/v1/tenants"), "the spec is embedded");
    assert!(
        !r.text.contains("<script src=\"http") && !r.text.contains("<link href=\"http"),
        "no assets from elsewhere"
    );
    assert!(
        r.text.contains("persistAuthorization: true"),
        "a reload keeps the token"
    );
    // The root points there.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = read(
        plain
            .get(format!("http://{}/", app.addr))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/docs")));
    let r = app.get_root("/").await;
    assert!(r.text.contains("SwaggerUIBundle"), "followed: the UI");
}

/// Log lines of the whole test process, as JSON objects, one per line.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut l) = LOGS.lock() {
            l.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id() {
    // As `log.format = "json"` configures it; this is the only test that installs a subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(|| LogSink)
        .with_env_filter("info")
        .try_init();
    let app = TestApp::start().await;
    let id = format!("log-check-{}", std::process::id());
    let r = app
        .send(
            app.admin_request(
                reqwest::Method::POST,
                "/provisioning-log/prune",
                Some(OPERATOR_TOKEN),
            )
            .header("x-request-id", &id),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    let scim_id = format!("{id}-scim");
    app.send(
        app.request(reqwest::Method::GET, ACME, "/Users")
            .query(&[("filter", "userName eq \"log-secret@example.com\"")])
            .header("x-request-id", &scim_id),
    )
    .await
    .assert_status(200);
    let text = String::from_utf8(LOGS.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |rid: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l.to_string().contains(&format!("\"request_id\":\"{rid}\"")))
            .collect()
    };
    // The handler's own line and the access line both carry the id (from the request span).
    let mine = of(&id);
    let messages: Vec<&str> = mine.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(
        messages.contains(&"provisioning log pruned on request") && messages.contains(&"request"),
        "{messages:?}\n{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["message"] != "provisioning log pruned on request"
                || l.to_string().contains("request_id")),
        "a handler line without a request id"
    );
    assert_eq!(of(&scim_id).len(), 1, "{text}");
    assert!(!text.contains("log-secret"), "no filter values in logs");
    assert!(
        !text.contains(OPERATOR_TOKEN) && !text.contains(ACME_TOKEN),
        "no tokens in logs"
    );
}

/// The check named `name` in a /readyz answer.
fn readiness_check<'a>(r: &'a Resp, name: &str) -> &'a Value {
    r.body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn readyz_fails_while_the_staging_folder_cannot_be_written() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::start().await;
    let r = app.get_root("/readyz").await;
    r.assert_status(200);
    assert_eq!(readiness_check(&r, "staging_writable")["ok"], true);

    // Read-only, or (where permissions do not bind, as for root) gone from its place.
    let dir = app.dir().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let bound = std::fs::File::create(dir.join("try")).is_err();
    let moved = dir.with_extension("moved");
    if !bound {
        let _ = std::fs::remove_file(dir.join("try"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&dir, &moved).unwrap();
    }
    let r = app.get_root("/readyz").await;
    r.assert_status(503);
    let check = readiness_check(&r, "staging_writable");
    assert_eq!(check["ok"], false, "{}", r.text);
    assert_eq!(check["detail"], "the staging database cannot be written");
    assert!(
        !r.text.contains(&dir.display().to_string()),
        "no path: {}",
        r.text
    );
    // The health check is not readiness.
    app.get_root("/healthz").await.assert_status(200);

    if bound {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        std::fs::rename(&moved, &dir).unwrap();
    }
    let r = app.get_root("/readyz").await;
    r.assert_status(200);
}

#[tokio::test]
async fn an_ops_token_guards_readiness_and_metrics_but_not_health() {
    let token = "ops-token-for-this-test-0123";
    let app = TestApp::start_with_server(&format!("ops_token = \"{token}\"")).await;
    for path in ["/readyz", "/metrics"] {
        let r = app.get_root(path).await;
        r.assert_problem(401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = app
            .send(
                app.client
                    .get(format!("http://{}{path}", app.addr))
                    .bearer_auth(ACME_TOKEN),
            )
            .await;
        r.assert_problem(401);
        let r = app
            .send(
                app.client
                    .get(format!("http://{}{path}", app.addr))
                    .bearer_auth(token),
            )
            .await;
        r.assert_status(200);
    }
    app.get_root("/healthz").await.assert_status(200);
}

/// GET `path` on `addr`, with `token` as the bearer token when given.
async fn get_at(
    app: &TestApp,
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Resp {
    let rb = app.client.get(format!("http://{addr}{path}"));
    let rb = match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    };
    app.send(rb).await
}

#[tokio::test]
async fn ops_listen_serves_readiness_and_metrics_on_its_own_port_only() {
    let app = TestApp::start_with_server("ops_listen = \"127.0.0.1:0\"").await;
    let ops = app.ops_addr.expect("the ops listener's address");
    assert_ne!(ops, app.addr);
    let r = get_at(&app, ops, "/readyz", None).await;
    r.assert_status(200);
    assert_eq!(r.body["status"], "ready", "{}", r.text);
    let r = get_at(&app, ops, "/metrics", None).await;
    r.assert_status(200);
    parse_exposition(&r.text).unwrap();
    for path in ["/readyz", "/metrics"] {
        // The main port answers as it does any unknown path.
        get_at(&app, app.addr, path, None)
            .await
            .assert_error(404, None);
    }
    for addr in [app.addr, ops] {
        let r = get_at(&app, addr, "/healthz", None).await;
        r.assert_status(200);
        assert_eq!(r.text, "ok");
    }
    // The ops port serves nothing else.
    get_at(&app, ops, "/scim-api/v1/acme/scim/Users", Some(ACME_TOKEN))
        .await
        .assert_error(404, None);
    get_at(&app, ops, "/openapi.json", None)
        .await
        .assert_error(404, None);
    // SCIM is still on the main port.
    app.get("/Users").await.assert_status(200);
}

#[tokio::test]
async fn without_ops_listen_there_is_one_listener_serving_everything() {
    let app = TestApp::start().await;
    assert_eq!(app.ops_addr, None);
    for path in ["/readyz", "/metrics", "/healthz"] {
        app.get_root(path).await.assert_status(200);
    }
}

#[tokio::test]
async fn an_ops_token_guards_the_ops_listener() {
    let token = "ops-token-for-this-test-0123";
    let app = TestApp::start_with_server(&format!(
        "ops_listen = \"127.0.0.1:0\"\nops_token = \"{token}\""
    ))
    .await;
    let ops = app.ops_addr.expect("the ops listener's address");
    for path in ["/readyz", "/metrics"] {
        get_at(&app, ops, path, None).await.assert_problem(401);
        get_at(&app, ops, path, Some(ACME_TOKEN))
            .await
            .assert_problem(401);
        get_at(&app, ops, path, Some(token))
            .await
            .assert_status(200);
        // Not on the main port, token or not.
        get_at(&app, app.addr, path, Some(token))
            .await
            .assert_error(404, None);
    }
    get_at(&app, ops, "/healthz", None).await.assert_status(200);
}

#[tokio::test]
async fn stopping_the_server_closes_the_ops_listener_too() {
    let mut app = TestApp::start_with_server("ops_listen = \"127.0.0.1:0\"").await;
    let ops = app.ops_addr.expect("the ops listener's address");
    get_at(&app, ops, "/healthz", None).await.assert_status(200);
    app.stop().await;
    for addr in [app.addr, ops] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts connections"
        );
    }
}

#[tokio::test]
async fn an_ops_listen_address_in_use_is_a_startup_error_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("staging.db")).replacen(
        "[server]\n",
        &format!("[server]\nops_listen = \"127.0.0.1:{port}\"\n"),
        1,
    );
    let file = dir.path().join(CONFIG_FILE);
    std::fs::write(&file, text).unwrap();
    let config = scim_bridge::config::Config::load(&file, std::iter::empty()).unwrap();
    let clock = std::sync::Arc::new(scim_bridge::clock::FakeClock::new(start_time()));
    let e = match scim_bridge::app::Application::build(config, clock, Some("127.0.0.1:0")).await {
        Ok(_) => panic!("started with its ops_listen address taken"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("ops_listen") && e.contains(&port.to_string()),
        "{e}"
    );
}
