//! The configuration file's shape, as TOML deserialises it (unknown keys are errors). The
//! sections that need no validation beyond their types are used as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::AdminRole;
use super::location::{Durability, MssqlConfig, SqliteSettings};
use super::secret::RawSecret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: ServerConfig,
    #[serde(default)]
    pub(super) log: LogConfig,
    #[serde(default)]
    pub(super) staging: StagingConfig,
    #[serde(default)]
    pub(super) tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    pub(super) applications: BTreeMap<String, RawApplication>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) limits: crate::scim::limits::Limits,
}

/// `[applications.NAME]`: an application database the sync engine writes to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApplication {
    pub(super) database: String,
    pub(super) schema: Option<PathBuf>,
    /// SQL Server only, as for `[staging]`.
    pub(super) password: Option<RawSecret>,
}

/// `[tenants.NAME.sync]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) mapping: PathBuf,
    pub(super) schedule: Option<String>,
    /// Default: the tenant's `retention_hours`.
    pub(super) retention_hours: Option<u32>,
    #[serde(default = "default_guard_share")]
    pub(super) guard_share: f64,
    #[serde(default = "default_guard_min")]
    pub(super) guard_min: u32,
    #[serde(default = "default_batch_size")]
    pub(super) batch_size: u32,
    #[serde(default = "default_lease_seconds")]
    pub(super) lease_seconds: u32,
    #[serde(default = "default_quarantine_after")]
    pub(super) quarantine_after: u32,
}

pub(super) fn default_retention_hours() -> u32 {
    48
}
fn default_guard_share() -> f64 {
    0.10
}
fn default_guard_min() -> u32 {
    10
}
fn default_batch_size() -> u32 {
    500
}
fn default_lease_seconds() -> u32 {
    30
}
fn default_quarantine_after() -> u32 {
    3
}

/// `[admin]`: the admin API's tokens, the provisioning log's and the run ledger's retention.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_log_days")]
    pub(super) provisioning_log_days: u32,
    #[serde(default = "default_noop_run_days")]
    pub(super) noop_run_days: u32,
    #[serde(default = "default_run_days")]
    pub(super) run_days: u32,
    #[serde(default = "default_admin_body_bytes")]
    pub(super) max_body_bytes: usize,
    #[serde(default)]
    pub(super) tokens: BTreeMap<String, RawAdminToken>,
    /// The console's sessions end after this many minutes without a request.
    #[serde(default = "default_console_idle_minutes")]
    pub(super) console_idle_minutes: u32,
    /// … and this many hours after sign-in, however busy.
    #[serde(default = "default_console_session_hours")]
    pub(super) console_session_hours: u32,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            provisioning_log_days: default_log_days(),
            noop_run_days: default_noop_run_days(),
            run_days: default_run_days(),
            max_body_bytes: default_admin_body_bytes(),
            tokens: BTreeMap::new(),
            console_idle_minutes: default_console_idle_minutes(),
            console_session_hours: default_console_session_hours(),
        }
    }
}

pub(super) fn default_log_days() -> u32 {
    14
}

pub(super) fn default_noop_run_days() -> u32 {
    7
}

pub(super) fn default_run_days() -> u32 {
    90
}

pub(super) fn default_console_idle_minutes() -> u32 {
    30
}

pub(super) fn default_console_session_hours() -> u32 {
    8
}

/// Admin bodies are small (a run request, a user to preview).
pub(super) fn default_admin_body_bytes() -> usize {
    256 * 1024
}

impl fmt::Debug for RawAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAdmin").finish_non_exhaustive()
    }
}

/// `[admin.tokens.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminToken {
    pub(super) token: RawSecret,
    pub(super) role: AdminRole,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    /// The bearer token (inline, { env = "VAR" } or { file = "path" }).
    pub(super) token: RawSecret,
    /// A second valid token, so a token can be rotated without downtime.
    pub(super) next_token: Option<RawSecret>,
    pub(super) custom_schema: Option<String>,
    /// How long an inactive or deleted user stays staged (and, with a sync section, keeps
    /// its application row) before it is purged.
    #[serde(default = "default_retention_hours")]
    pub(super) retention_hours: u32,
    pub(super) sync: Option<RawSync>,
}

impl fmt::Debug for RawTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTenant").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Base URL clients use to reach this server, for meta.location and Location headers.
    /// Without it, the request's Host header is used when it is trusted (see `allowed_hosts`).
    pub public_url: Option<String>,
    /// Host names (optionally with a port) a Host header may name for meta.location, besides
    /// localhost, loopback addresses and the address a connection came in on.
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub default_page_size: i64,
    pub max_page_size: i64,
    /// From a request head's first byte to its last; a slower client is disconnected.
    pub header_read_timeout_seconds: u64,
    /// From a request's head to the end of its body; slower is 408 and the connection closes.
    pub body_read_timeout_seconds: u64,
    /// A keep-alive connection with no request and no traffic for this long is closed.
    pub idle_timeout_seconds: u64,
    /// The whole request, body and work included: longer is stopped and answers 503.
    pub request_timeout_seconds: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// SCIM requests of one tenant in progress at once; more are 429 with Retry-After.
    pub max_requests_per_tenant: usize,
    /// When set, /readyz and /metrics need this bearer token (/healthz never does).
    pub ops_token: Option<RawSecret>,
    /// When set, a second listener at this socket address serves /readyz, /metrics and
    /// /healthz, and `listen` no longer serves /readyz and /metrics (validated into
    /// `Config::ops_listen`).
    pub ops_listen: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            allowed_hosts: Vec::new(),
            max_body_bytes: 1024 * 1024,
            default_page_size: 100,
            max_page_size: 1000,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            idle_timeout_seconds: 60,
            request_timeout_seconds: 60,
            max_connections: 1024,
            max_requests_per_tenant: 32,
            ops_token: None,
            ops_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "scim_bridge=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagingConfig {
    /// `sqlite://PATH` or a plain path to the SQLite file; or SQL Server: `mssql://…` or an
    /// ADO.NET connection string (`Server=…;Database=…;…`).
    pub database: String,
    /// SQLite only.
    pub durability: Durability,
    /// SQLite only: the most the file may grow to, in MiB; at the cap writes answer 503 (as
    /// on a full disk) and readiness fails until space is freed. None: no cap.
    pub max_size_mb: Option<u32>,
    /// SQL Server only: the password, instead of `Password=` in the connection string
    /// (inline, { env = "VAR" } or { file = "path" }).
    pub password: Option<RawSecret>,
}

/// A SQL Server connection string may hold a password: Debug shows SQLite paths only.
impl fmt::Debug for StagingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let database = if MssqlConfig::is_sql_server(&self.database) {
            "<SQL Server connection string>"
        } else {
            self.database.as_str()
        };
        f.debug_struct("StagingConfig")
            .field("database", &database)
            .field("durability", &self.durability)
            .field("max_size_mb", &self.max_size_mb)
            .field("password", &self.password)
            .finish()
    }
}

impl Default for StagingConfig {
    fn default() -> Self {
        StagingConfig {
            database: "sqlite://data/staging.db".into(),
            durability: Durability::Full,
            max_size_mb: None,
            password: None,
        }
    }
}

impl StagingConfig {
    /// How the SQLite staging file is written (ignored on SQL Server, where validation has
    /// refused a size cap).
    pub fn sqlite_settings(&self) -> SqliteSettings {
        SqliteSettings {
            durability: self.durability,
            max_size_mb: self.max_size_mb,
        }
    }
}
