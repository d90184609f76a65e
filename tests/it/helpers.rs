//! A running scim-bridge for one test: its own temp dir, database, port and fake clock.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

use scim_bridge::api::AppState;
use scim_bridge::app::Application;
use scim_bridge::clock::FakeClock;
use scim_bridge::config::Config;

pub const ACME: &str = "acme";
pub const OTHER: &str = "other";
pub const ACME_TOKEN: &str = "acme-secret-token-0123456789";
pub const OTHER_TOKEN: &str = "other-secret-token-9876543210";
pub const OPERATOR_TOKEN: &str = "admin-operator-token-0123456789";
pub const READER_TOKEN: &str = "admin-reader-token-0123456789";
pub const MAX_PAGE: i64 = 50;
pub const MAX_BODY: usize = 64 * 1024;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const CUSTOM: &str = "urn:ietf:params:scim:schemas:extension:primedocs:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 9, 0, 0)
        .single()
        .unwrap_or_default()
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// The operations listener's address, with `[server] ops_listen`.
    pub ops_addr: Option<std::net::SocketAddr>,
    pub client: reqwest::Client,
    pub clock: Arc<FakeClock>,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: TempDir,
}

/// An HTTP answer, read completely.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON, or Null when it is empty or not JSON.
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Assert a SCIM error answer: status, media type and error document.
    #[track_caller]
    pub fn assert_error(&self, status: u16, scim_type: Option<&str>) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/scim+json"),
            "{status} must be application/scim+json"
        );
        assert_eq!(self.body["schemas"], json!([ERROR_SCHEMA]), "{}", self.text);
        assert_eq!(
            self.body["status"],
            json!(status.to_string()),
            "{}",
            self.text
        );
        assert_eq!(
            self.body.get("scimType").and_then(Value::as_str),
            scim_type,
            "{}",
            self.text
        );
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
    }

    /// Assert an admin API error: status and RFC 9457 problem document.
    #[track_caller]
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], json!(status), "{}", self.text);
        assert!(self.body["type"].is_string(), "{}", self.text);
        assert!(
            self.body["title"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
    }

    /// Assert a status, showing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_default().to_string()
    }

    pub fn version(&self) -> String {
        self.body["meta"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `Resources` of a list response.
    pub fn resources(&self) -> &Vec<Value> {
        static EMPTY: Vec<Value> = Vec::new();
        self.body["Resources"].as_array().unwrap_or(&EMPTY)
    }

    /// The ids in a list response, in order.
    pub fn ids(&self) -> Vec<String> {
        self.resources()
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn total(&self) -> i64 {
        self.body["totalResults"].as_i64().unwrap_or(-1)
    }
}

pub fn config_text(db: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = {MAX_BODY}
default_page_size = 20
max_page_size = {MAX_PAGE}

[staging]
database = "sqlite://{}"
durability = "normal"

[tenants.{ACME}]
token = "{ACME_TOKEN}"

[tenants.{OTHER}]
token = "{OTHER_TOKEN}"

[admin]
provisioning_log_days = 14

[admin.tokens.ops]
token = "{OPERATOR_TOKEN}"
role = "operator"

[admin.tokens.audit]
token = "{READER_TOKEN}"
role = "reader"
"#,
        db.display()
    )
}

/// The configuration file of a test app, in its temp dir.
pub const CONFIG_FILE: &str = "scim-bridge.toml";

/// The mapping file of a syncing test app (a copy of mappings/scifeon.toml), in its temp dir.
pub const MAPPING_FILE: &str = "mapping.toml";

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(|_| String::new()).await
    }

    /// A server with more `[server]` settings (`key = value` lines).
    pub async fn start_with_server(lines: &str) -> TestApp {
        let lines = lines.to_string();
        Self::start_configured(&lines, |_| String::new()).await
    }

    /// A server whose acme tenant syncs into an application database (sql/app/example_app.sql)
    /// with a copy of mappings/scifeon.toml; `settings` go into `[tenants.acme.sync]`.
    pub async fn start_syncing(settings: &str) -> TestApp {
        let settings = settings.to_string();
        Self::start_with(move |dir| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mapping = dir.join(MAPPING_FILE);
            std::fs::copy(root.join("mappings/scifeon.toml"), &mapping).unwrap();
            format!(
                "\n[applications.scifeon]\ndatabase = \"sqlite://{}\"\nschema = \"{}\"\n\
                 [tenants.{ACME}.sync]\nmapping = \"{}\"\n{settings}\n",
                dir.join("app.db").display(),
                root.join("sql/app/example_app.sql").display(),
                mapping.display(),
            )
        })
        .await
    }

    /// A server with more `[staging]` settings (`key = value` lines) and `[admin]` lines
    /// replacing the provisioning log's retention line.
    pub async fn start_with_staging(staging: &str, admin: &str) -> TestApp {
        let (staging, admin) = (staging.to_string(), admin.to_string());
        Self::start_edited(move |text| {
            text.replacen(
                "durability = \"normal\"\n",
                &format!("durability = \"normal\"\n{staging}\n"),
                1,
            )
            .replacen("provisioning_log_days = 14\n", &format!("{admin}\n"), 1)
        })
        .await
    }

    /// A server whose configuration has `extra` appended (whole sections).
    pub async fn start_with_sections(extra: &str) -> TestApp {
        let extra = extra.to_string();
        Self::start_with(move |_| extra).await
    }

    async fn start_with(extra: impl FnOnce(&Path) -> String) -> TestApp {
        Self::start_configured("", extra).await
    }

    async fn start_configured(server: &str, extra: impl FnOnce(&Path) -> String) -> TestApp {
        let server = server.to_string();
        Self::start_in(move |dir, text| {
            text.replacen("[server]\n", &format!("[server]\n{server}\n"), 1) + &extra(dir)
        })
        .await
    }

    async fn start_edited(edit: impl FnOnce(String) -> String) -> TestApp {
        Self::start_in(move |_, text| edit(text)).await
    }

    /// A server on the configuration `edit` makes of the default one.
    async fn start_in(edit: impl FnOnce(&Path, String) -> String) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("staging.db");
        let text = edit(dir.path(), config_text(&db));
        // Written out, as an operator's would be: a reload reads it again.
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(&file, &text).unwrap();
        let config = Config::load(&file, std::iter::empty()).unwrap();
        let clock = Arc::new(FakeClock::new(start_time()));
        let app = Application::build(config, clock.clone(), Some("127.0.0.1:0"))
            .await
            .unwrap();
        let addr = app.addr;
        let ops_addr = app.ops_addr;
        let state = app.state.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            ops_addr,
            client: reqwest::Client::new(),
            clock,
            state,
            shutdown: Some(tx),
            server: Some(server),
            dir,
        }
    }

    /// Stop the server as a SIGTERM would and wait until it has finished; the state and the
    /// files stay.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// A request to the admin API with `token` (None: no Authorization header).
    pub fn admin_request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let rb = self
            .client
            .request(method, format!("http://{}/admin/v1{path}", self.addr));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// GET an admin endpoint with the reader token.
    pub async fn admin_get(&self, path: &str, query: &[(&str, &str)]) -> Resp {
        self.send(
            self.admin_request(Method::GET, path, Some(READER_TOKEN))
                .query(query),
        )
        .await
    }

    /// GET a path outside the APIs (/metrics, /readyz, /docs, /openapi.json).
    pub async fn get_root(&self, path: &str) -> Resp {
        self.send(self.client.get(format!("http://{}{path}", self.addr)))
            .await
    }

    /// Wait until every SCIM request so far is in the provisioning log.
    pub async fn flush_log(&self) {
        self.state.provlog.flush().await;
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("staging.db")
    }

    /// The app's temp dir (the mapping file and the application database of `start_syncing`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tenant's SCIM base URL.
    pub fn base(&self, tenant: &str) -> String {
        format!("http://{}/scim-api/v1/{tenant}/scim", self.addr)
    }

    pub fn url(&self, tenant: &str, path: &str) -> String {
        format!("{}{path}", self.base(tenant))
    }

    pub fn token(tenant: &str) -> &'static str {
        if tenant == OTHER {
            OTHER_TOKEN
        } else {
            ACME_TOKEN
        }
    }

    /// A request to `tenant` with its own token and an optional SCIM JSON body.
    pub fn request(&self, method: Method, tenant: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(tenant, path))
            .bearer_auth(Self::token(tenant))
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        read(rb.send().await.unwrap()).await
    }

    pub async fn call(
        &self,
        method: Method,
        tenant: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Resp {
        let mut rb = self.request(method, tenant, path);
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/scim+json")
                .body(b.to_string());
        }
        self.send(rb).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, ACME, path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::POST, ACME, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PUT, ACME, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PATCH, ACME, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, ACME, path, None).await
    }

    /// GET a list with query parameters (encoded properly).
    pub async fn list(&self, tenant: &str, endpoint: &str, query: &[(&str, &str)]) -> Resp {
        self.send(self.request(Method::GET, tenant, endpoint).query(query))
            .await
    }

    /// Create a user in acme; panics unless 201.
    pub async fn create_user(&self, body: Value) -> Value {
        let r = self.post("/Users", &body).await;
        r.assert_status(201);
        r.body
    }

    pub async fn user(&self, user_name: &str) -> String {
        let b = self
            .create_user(json!({"schemas": [USER_SCHEMA], "userName": user_name}))
            .await;
        b["id"].as_str().unwrap_or_default().to_string()
    }

    pub async fn group(&self, display_name: &str, members: &[&str]) -> String {
        let members: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
        let r = self
            .post(
                "/Groups",
                &json!({"schemas": [GROUP_SCHEMA], "displayName": display_name, "members": members}),
            )
            .await;
        r.assert_status(201);
        r.id()
    }

    /// The member ids of an acme group, sorted.
    pub async fn member_ids(&self, group: &str) -> Vec<String> {
        let r = self.get(&format!("/Groups/{group}")).await;
        r.assert_status(200);
        let mut ids: Vec<String> = r.body["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["value"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Raw SQL on the staging file, from a connection of the test's own.
    pub fn db(&self) -> Sql {
        Sql(self.db_path())
    }
}

/// Raw SQL on an SQLite file, for set-up and assertions: a connection per call.
pub struct Sql(pub std::path::PathBuf);

impl Sql {
    fn conn(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.0).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    }

    pub fn exec(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) {
        self.conn().execute(sql, params).unwrap();
    }

    pub fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        let c = self.conn();
        let mut stmt = c.prepare(sql).unwrap();
        stmt.query_map(params, f)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// The one row `sql` returns.
    pub fn one<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> T {
        self.conn().query_row(sql, params, f).unwrap()
    }

    pub fn scalar(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) -> i64 {
        self.one(sql, params, |r| r.get(0))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn read(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        body,
    }
}

pub fn patch_ops(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

/// A free TCP port on the loopback interface, for a server run as a child process.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The configuration of a `serve` child process, written to `dir`: listening on `port`,
/// logging at `level`, SQLite staging in `dir` (durability normal) and one tenant.
pub fn child_config(
    dir: &Path,
    port: u16,
    level: &str,
    tenant: &str,
    token: &str,
) -> std::path::PathBuf {
    let path = dir.join("scim-bridge.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"{level}\"\n\
             [staging]\ndatabase = \"sqlite://staging.db\"\ndurability = \"normal\"\n\
             [tenants.{tenant}]\ntoken = \"{token}\"\n"
        ),
    )
    .unwrap();
    path
}

/// A raw HTTP/1.1 exchange, for requests reqwest will not make (chunked bodies).
pub async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before the whole body is written.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}
