//! Configuration: a TOML file plus SCIM_BRIDGE_* environment overrides.
//!
//! `SCIM_BRIDGE_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen` (sections are separated by a
//! double underscore); a variable ending in `_FILE` reads its value from that file, so
//! `SCIM_BRIDGE_TENANTS__ACME__TOKEN_FILE=/run/secrets/acme` sets `tenants.acme.token`.
//! Unknown keys are errors that name the key. Relative paths resolve against the config file's folder.
//!
//! The file's shape is [`raw`], the environment overlay [`env`], secrets and token hashes
//! [`secret`], database locations [`location`] (SQL Server connection settings in
//! [`sqlserver`]) and schedules [`schedule`]; this module validates the whole into [`Config`].

mod env;
pub mod location;
mod raw;
pub mod schedule;
pub mod secret;
pub mod sqlserver;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::mapping::Mapping;
use crate::scim::limits::Limits;
use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;
pub use location::{
    DbLocation, Durability, MAX_STAGING_SIZE_MB, MssqlConfig, SqliteSettings, resolve_database,
    resolve_sqlite_path,
};
pub use raw::{LogConfig, LogFormat, ServerConfig, StagingConfig};
use raw::{
    RawConfig, RawSync, default_console_idle_minutes, default_console_session_hours,
    default_log_days, default_noop_run_days, default_run_days,
};
pub use schedule::Schedule;
use secret::resolve_secret;
pub use secret::{RawSecret, TokenHash};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What an admin token may do: a reader reads; an operator also triggers, approves and reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Reader,
    Operator,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Reader => "reader",
            AdminRole::Operator => "operator",
        }
    }
}

/// One admin bearer token: its name (for logs), its hash and its role.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub hash: TokenHash,
    pub role: AdminRole,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub tokens: Vec<AdminToken>,
    /// Days a provisioning log entry is kept; 0 keeps no log at all.
    pub provisioning_log_days: u32,
    /// Days a no-op sync run (nothing changed, nothing failed) is kept in the ledger; 0: as
    /// long as other runs.
    pub noop_run_days: u32,
    /// Days any other sync run is kept; 0: for ever.
    pub run_days: u32,
    /// The admin console's sessions: ended after this long without a request …
    pub console_idle: chrono::Duration,
    /// … and this long after sign-in.
    pub console_session: chrono::Duration,
    /// The largest admin request body.
    pub max_body_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            tokens: vec![],
            provisioning_log_days: default_log_days(),
            noop_run_days: default_noop_run_days(),
            run_days: default_run_days(),
            console_idle: chrono::Duration::minutes(i64::from(default_console_idle_minutes())),
            console_session: chrono::Duration::hours(i64::from(default_console_session_hours())),
            max_body_bytes: raw::default_admin_body_bytes(),
        }
    }
}

impl AdminConfig {
    /// The token `presented` is, if any. Every token is compared, so the time taken does not
    /// tell which one matched.
    pub fn authenticate(&self, presented: &str) -> Option<&AdminToken> {
        self.tokens.iter().fold(None, |found, t| {
            let m = t.hash.matches(presented);
            if m && found.is_none() { Some(t) } else { found }
        })
    }
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: String,
    pub tokens: Vec<TokenHash>,
    pub custom_schema: String,
    /// How long an inactive or deleted user stays staged before it is purged (a tenant that
    /// syncs: its sync section's retention, which defaults to this).
    pub retention_hours: u32,
    /// How the tenant's users reach an application; None: staging only.
    pub sync: Option<SyncConfig>,
}

/// An application database (`[applications.NAME]`).
#[derive(Clone)]
pub struct ApplicationConfig {
    pub name: String,
    /// The database URL as configured (may hold a SQL Server password: not in Debug).
    pub database: String,
    /// The SQLite file (resolved against the config file's folder), or the SQL Server.
    pub location: DbLocation,
    /// DDL applied when the database has no tables yet (resolved path): SQLite SQL for a
    /// SQLite file, T-SQL (batches separated by `GO`) for SQL Server.
    pub schema: Option<PathBuf>,
}

impl ApplicationConfig {
    /// An application database in the SQLite file `path`.
    pub fn sqlite(name: &str, path: PathBuf, schema: Option<PathBuf>) -> ApplicationConfig {
        ApplicationConfig {
            name: name.to_string(),
            database: format!("sqlite://{}", path.display()),
            location: DbLocation::Sqlite(path),
            schema,
        }
    }
}

/// A SQL Server connection string may hold a password: Debug shows the location only.
impl fmt::Debug for ApplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationConfig")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("schema", &self.schema)
            .finish()
    }
}

/// A mapping loaded and validated at start; shared by every run.
#[derive(Clone)]
pub struct LoadedMapping(pub Arc<Mapping>);

impl fmt::Debug for LoadedMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("database", &self.0.target().database)
            .field("user_table", &self.0.target().user_table)
            .finish_non_exhaustive()
    }
}

/// `[tenants.NAME.sync]`.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The mapping file, resolved against the config file's folder.
    pub mapping_path: PathBuf,
    pub mapping: LoadedMapping,
    /// When the scheduler runs the tenant; None: only on demand (CLI, API).
    pub schedule: Option<Schedule>,
    /// How long an inactive or deleted user keeps its application row before it is offboarded.
    pub retention_hours: u32,
    /// The guard: a run that would offboard more than max(guard_min, guard_share × linked
    /// users) waits for approval.
    pub guard_share: f64,
    pub guard_min: u32,
    /// Users per batch: one application transaction and one staging commit each.
    pub batch_size: u32,
    /// How long a run's lease lasts without a heartbeat (the run renews it a third of that
    /// apart): a run whose process died is taken over within this time (at once on its host).
    pub lease_seconds: u32,
    /// A user that failed this many runs in a row (on one staged version) is quarantined:
    /// skipped until its staged data changes or an operator releases it. 0: never.
    pub quarantine_after: u32,
}

impl SyncConfig {
    pub fn retention(&self) -> chrono::Duration {
        chrono::Duration::hours(i64::from(self.retention_hours))
    }

    /// How long a lease lasts without a heartbeat.
    pub fn lease(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.lease_seconds))
    }

    /// The same settings with the mapping file read and validated again (see `load_mapping`).
    pub fn reload_mapping(
        &self,
        custom_schema: &str,
        applications: &BTreeMap<String, ApplicationConfig>,
    ) -> Result<SyncConfig, String> {
        let mapping = load_mapping(&self.mapping_path, custom_schema, applications)?;
        Ok(SyncConfig {
            mapping: LoadedMapping(Arc::new(mapping)),
            ..self.clone()
        })
    }
}

impl TenantConfig {
    /// Whether `presented` is one of the tenant's tokens. Every token is compared, so the time
    /// taken does not tell which one matched.
    pub fn accepts(&self, presented: &str) -> bool {
        self.tokens
            .iter()
            .fold(false, |ok, t| t.matches(presented) | ok)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub staging: StagingConfig,
    pub staging_db: DbLocation,
    pub tenants: BTreeMap<String, TenantConfig>,
    pub applications: BTreeMap<String, ApplicationConfig>,
    pub admin: AdminConfig,
    /// `[limits]`: the bounds on what one SCIM request may ask for.
    pub limits: Limits,
    /// `[server] ops_token`, when set: the token /readyz and /metrics need.
    pub ops_token: Option<TokenHash>,
    /// `[server] ops_listen`, when set: the address /readyz, /metrics and /healthz are served
    /// on instead of `listen` (which keeps /healthz).
    pub ops_listen: Option<SocketAddr>,
    /// The folder relative paths resolve against.
    pub base_dir: PathBuf,
    /// The file and overrides it was loaded from (None: parsed from text), so a reload can
    /// read a tenant's sync section again.
    pub source: Option<ConfigSource>,
}

/// Where a configuration came from: its file and the SCIM_BRIDGE_* overrides applied to it.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    env: Vec<(String, String)>,
}

impl ConfigSource {
    /// Read the file again with the same overrides: `tenant`'s sync settings as they are now
    /// (its mapping loaded). Applications and tenants themselves are read at start only.
    pub fn reload_sync(&self, tenant: &str) -> Result<SyncConfig, String> {
        let config = Config::load(&self.path, self.env.clone()).map_err(|e| e.to_string())?;
        config
            .tenants
            .get(tenant)
            .and_then(|t| t.sync.clone())
            .ok_or_else(|| {
                format!(
                    "{}: tenant {tenant:?} has no sync section now; a tenant stops syncing at a restart",
                    self.path.display()
                )
            })
    }
}

impl Config {
    /// The SQLite staging file, when the staging database is SQLite.
    pub fn staging_sqlite_path(&self) -> Option<&Path> {
        match &self.staging_db {
            DbLocation::Sqlite(p) => Some(p),
            DbLocation::SqlServer(_) => None,
        }
    }

    /// Load `path` and apply the SCIM_BRIDGE_* variables of `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SCIM_BRIDGE_"))
            .collect();
        let mut config = Self::parse(&text, path, &base_dir, env.clone())?;
        config.source = Some(ConfigSource {
            path: path.to_path_buf(),
            env,
        });
        Ok(config)
    }

    pub fn parse(
        text: &str,
        path: &Path,
        base_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (key, val) in env {
            env::apply_env(&mut value, &key, &val, base_dir).map_err(&invalid)?;
        }
        let raw = RawConfig::deserialize(value).map_err(|e| invalid(e.to_string()))?;
        let mut applications = BTreeMap::new();
        for (name, a) in raw.applications {
            if !valid_name(&name) {
                return Err(invalid(format!(
                    "application name {name:?} may only contain letters, digits, '-' and '_'"
                )));
            }
            let location = resolve_database(&a.database, a.password.as_ref(), base_dir)
                .map_err(|m| invalid(format!("applications.{name}.database: {m}")))?;
            let schema = a.schema.map(|p| resolve(base_dir, &p));
            applications.insert(
                name.clone(),
                ApplicationConfig {
                    name,
                    database: a.database,
                    location,
                    schema,
                },
            );
        }
        let mut tenants = BTreeMap::new();
        for (name, t) in raw.tenants {
            if !valid_name(&name) {
                return Err(invalid(format!(
                    "tenant name {name:?} may only contain letters, digits, '-' and '_'"
                )));
            }
            let mut tokens = vec![
                resolve_secret(&t.token, base_dir)
                    .map_err(|m| invalid(format!("tenants.{name}.token: {m}")))?,
            ];
            if let Some(next) = &t.next_token {
                tokens.push(
                    resolve_secret(next, base_dir)
                        .map_err(|m| invalid(format!("tenants.{name}.next_token: {m}")))?,
                );
            }
            let custom_schema = t
                .custom_schema
                .unwrap_or_else(|| DEFAULT_CUSTOM_SCHEMA.to_string());
            if !custom_schema.starts_with("urn:") || custom_schema.ends_with(':') {
                return Err(invalid(format!(
                    "tenants.{name}.custom_schema must be a URN like {DEFAULT_CUSTOM_SCHEMA}"
                )));
            }
            let sync = match t.sync {
                None => None,
                Some(raw) => Some(
                    sync_config(
                        raw,
                        &custom_schema,
                        t.retention_hours,
                        base_dir,
                        &applications,
                    )
                    .map_err(|m| invalid(format!("tenants.{name}.sync: {m}")))?,
                ),
            };
            tenants.insert(
                name.clone(),
                TenantConfig {
                    name,
                    tokens,
                    custom_schema,
                    retention_hours: t.retention_hours,
                    sync,
                },
            );
        }
        let staging_db = resolve_database(
            &raw.staging.database,
            raw.staging.password.as_ref(),
            base_dir,
        )
        .map_err(|m| invalid(format!("staging.database: {m}")))?;
        if let Some(mb) = raw.staging.max_size_mb {
            if matches!(staging_db, DbLocation::SqlServer(_)) {
                return Err(invalid(
                    "staging.max_size_mb applies to SQLite only; cap a SQL Server staging \
                     database with its files' MAXSIZE"
                        .into(),
                ));
            }
            if mb == 0 || mb > MAX_STAGING_SIZE_MB {
                return Err(invalid(format!(
                    "staging.max_size_mb must be between 1 and {MAX_STAGING_SIZE_MB} (1 TiB), not {mb}"
                )));
            }
        }
        if raw.server.max_page_size < 1 || raw.server.default_page_size < 1 {
            return Err(invalid("server page sizes must be at least 1".into()));
        }
        raw.limits.validate().map_err(invalid)?;
        let s = &raw.server;
        if [
            s.header_read_timeout_seconds,
            s.body_read_timeout_seconds,
            s.idle_timeout_seconds,
            s.request_timeout_seconds,
        ]
        .contains(&0)
            || s.max_connections == 0
            || s.max_requests_per_tenant == 0
        {
            return Err(invalid(
                "server timeouts, max_connections and max_requests_per_tenant must be at least 1"
                    .into(),
            ));
        }
        let mut admin_tokens = Vec::new();
        for (name, t) in raw.admin.tokens {
            let hash = resolve_secret(&t.token, base_dir)
                .map_err(|m| invalid(format!("admin.tokens.{name}.token: {m}")))?;
            if tenants
                .values()
                .any(|tc: &TenantConfig| tc.tokens.contains(&hash))
            {
                return Err(invalid(format!(
                    "admin.tokens.{name}.token is also a tenant's SCIM token; use separate tokens"
                )));
            }
            admin_tokens.push(AdminToken {
                name,
                hash,
                role: t.role,
            });
        }
        let (noop_run_days, run_days) = (raw.admin.noop_run_days, raw.admin.run_days);
        if run_days > 0 && noop_run_days > run_days {
            return Err(invalid(format!(
                "admin.noop_run_days ({noop_run_days}) exceeds admin.run_days ({run_days}): \
                 no-op runs would be kept longer than runs that changed something"
            )));
        }
        if raw.admin.console_idle_minutes == 0 || raw.admin.console_session_hours == 0 {
            return Err(invalid(
                "admin.console_idle_minutes and admin.console_session_hours must be at least 1"
                    .into(),
            ));
        }
        let admin = AdminConfig {
            tokens: admin_tokens,
            provisioning_log_days: raw.admin.provisioning_log_days,
            noop_run_days,
            run_days,
            console_idle: chrono::Duration::minutes(i64::from(raw.admin.console_idle_minutes)),
            console_session: chrono::Duration::hours(i64::from(raw.admin.console_session_hours)),
            max_body_bytes: raw.admin.max_body_bytes,
        };
        let ops_token = match &raw.server.ops_token {
            None => None,
            Some(t) => Some(
                resolve_secret(t, base_dir)
                    .map_err(|m| invalid(format!("server.ops_token: {m}")))?,
            ),
        };
        let ops_listen = match &raw.server.ops_listen {
            None => None,
            Some(a) => Some(a.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "server.ops_listen: {a:?} is not a socket address (an IP address and a port, like \"127.0.0.1:9100\")"
                ))
            })?),
        };
        Ok(Config {
            admin,
            ops_token,
            ops_listen,
            limits: raw.limits,
            server: raw.server,
            log: raw.log,
            staging: raw.staging,
            staging_db,
            tenants,
            applications,
            base_dir: base_dir.to_path_buf(),
            source: None,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Load and validate a mapping file, and check that its target.database is a configured
/// application (errors name file:line: reason).
pub fn load_mapping(
    mapping_path: &Path,
    custom_schema: &str,
    applications: &BTreeMap<String, ApplicationConfig>,
) -> Result<Mapping, String> {
    let mapping = Mapping::load(mapping_path, custom_schema).map_err(|e| e.to_string())?;
    let database = &mapping.target().database;
    if !applications.contains_key(database) {
        let known: Vec<&str> = applications.keys().map(String::as_str).collect();
        return Err(format!(
            "{}: target.database {database:?} is not a configured application (known: {})",
            mapping_path.display(),
            if known.is_empty() {
                "none; add [applications.NAME]".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    Ok(mapping)
}

/// Validate a tenant's sync table and load its mapping (errors name file:line:reason).
fn sync_config(
    raw: RawSync,
    custom_schema: &str,
    tenant_retention: u32,
    base_dir: &Path,
    applications: &BTreeMap<String, ApplicationConfig>,
) -> Result<SyncConfig, String> {
    let schedule = match raw.schedule.as_deref() {
        None => None,
        Some(s) => Some(Schedule::parse(s).map_err(|m| format!("schedule: {m}"))?),
    };
    if !(raw.guard_share.is_finite() && (0.0..=1.0).contains(&raw.guard_share)) {
        return Err("guard_share must be between 0 and 1".into());
    }
    if raw.batch_size == 0 || raw.batch_size > 10_000 {
        return Err("batch_size must be between 1 and 10000".into());
    }
    if !(6..=3600).contains(&raw.lease_seconds) {
        return Err("lease_seconds must be between 6 and 3600".into());
    }
    let mapping_path = resolve(base_dir, &raw.mapping);
    let mapping = load_mapping(&mapping_path, custom_schema, applications)?;
    Ok(SyncConfig {
        mapping_path,
        mapping: LoadedMapping(Arc::new(mapping)),
        schedule,
        retention_hours: raw.retention_hours.unwrap_or(tenant_retention),
        guard_share: raw.guard_share,
        guard_min: raw.guard_min,
        batch_size: raw.batch_size,
        lease_seconds: raw.lease_seconds,
        quarantine_after: raw.quarantine_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("test.toml"),
            Path::new("/base"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const MIN: &str = "[tenants.demo]\ntoken = \"0123456789abcdef\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MIN, &[]).unwrap();
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        assert!(
            matches!(&c.staging_db, DbLocation::Sqlite(p) if p == Path::new("/base/data/staging.db"))
        );
        assert_eq!(c.tenants["demo"].custom_schema, DEFAULT_CUSTOM_SCHEMA);
        assert!(c.tenants["demo"].accepts("0123456789abcdef"));
        assert!(!c.tenants["demo"].accepts("0123456789abcdeF"));
    }

    #[test]
    fn limits_default_are_set_and_are_checked() {
        assert_eq!(parse(MIN, &[]).unwrap().limits, Limits::DEFAULT);
        let c = parse(
            &format!("[limits]\nmax_patch_operations = 10\n{MIN}"),
            &[("SCIM_BRIDGE_LIMITS__MAX_MEMBERS_PER_REQUEST", "100")],
        )
        .unwrap();
        assert_eq!(c.limits.max_patch_operations, 10);
        assert_eq!(c.limits.max_members_per_request, 100);
        assert_eq!(c.limits.max_filter_terms, Limits::DEFAULT.max_filter_terms);
        for (bad, says) in [
            (
                "max_patch_operations = 0",
                "limits.max_patch_operations must be at least 1",
            ),
            (
                "max_filter_terms = 1001",
                "limits.max_filter_terms is at most 1000",
            ),
            (
                "max_filter_depth = 65",
                "limits.max_filter_depth is at most 64",
            ),
            (
                "max_user_name_chars = 257",
                "limits.max_user_name_chars is at most 256",
            ),
            ("max_pach_operations = 1", "max_pach_operations"),
        ] {
            let e = parse(&format!("[limits]\n{bad}\n{MIN}"), &[]).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&format!("{MIN}[server]\nlisten = \"x\"\nlistne = 1\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
        let e = parse(MIN, &[("SCIM_BRIDGE_SERVER__NOPE", "1")]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn ops_listen_is_a_socket_address_from_the_file_or_the_environment() {
        assert_eq!(parse(MIN, &[]).unwrap().ops_listen, None);
        let c = parse(
            &format!("{MIN}[server]\nops_listen = \"127.0.0.1:9100\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.ops_listen, Some("127.0.0.1:9100".parse().unwrap()));
        let c = parse(MIN, &[("SCIM_BRIDGE_SERVER__OPS_LISTEN", "[::1]:9100")]).unwrap();
        assert_eq!(c.ops_listen, Some("[::1]:9100".parse().unwrap()));
        for bad in [
            "\"nonsense\"",
            "\"127.0.0.1\"",
            "\"127.0.0.1:99999\"",
            "\"\"",
            "9100",
        ] {
            let e = parse(&format!("{MIN}[server]\nops_listen = {bad}\n"), &[]).unwrap_err();
            assert!(e.to_string().contains("ops_listen"), "{bad}: {e}");
        }
        let e = parse(MIN, &[("SCIM_BRIDGE_SERVER__OPS_LISTEN", "localhost")]).unwrap_err();
        assert!(e.to_string().contains("server.ops_listen"), "{e}");
    }

    #[test]
    fn env_overrides_and_two_tokens() {
        let c = parse(
            &format!("{MIN}next_token = \"fedcba9876543210\"\n"),
            &[
                ("SCIM_BRIDGE_SERVER__LISTEN", "0.0.0.0:9"),
                ("SCIM_BRIDGE_SERVER__MAX_PAGE_SIZE", "50"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9");
        assert_eq!(c.server.max_page_size, 50);
        let t = &c.tenants["demo"];
        assert!(t.accepts("0123456789abcdef") && t.accepts("fedcba9876543210"));
        assert!(!t.accepts(""));
    }

    #[test]
    fn secrets_from_file_and_env_file_variable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "from-a-file-0123456\n").unwrap();
        let c = Config::parse(
            "[tenants.a]\ntoken = { file = \"tok\" }\n",
            Path::new("x.toml"),
            dir.path(),
            [],
        )
        .unwrap();
        assert!(c.tenants["a"].accepts("from-a-file-0123456"));
        let c = Config::parse(
            MIN,
            Path::new("x.toml"),
            dir.path(),
            [(
                "SCIM_BRIDGE_TENANTS__DEMO__TOKEN_FILE".to_string(),
                "tok".to_string(),
            )],
        )
        .unwrap();
        assert!(c.tenants["demo"].accepts("from-a-file-0123456"));
        let e = parse(
            "[tenants.a]\ntoken = { env = \"SCIM_BRIDGE_TEST_UNSET_VAR\" }\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("SCIM_BRIDGE_TEST_UNSET_VAR"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse("[tenants.demo]\ntoken = \"short\"\n", &[]).is_err());
        assert!(parse("[tenants.\"a b\"]\ntoken = \"0123456789abcdef\"\n", &[]).is_err());
        assert!(
            parse(
                &format!("{MIN}[staging]\ndatabase = \"postgres://x\"\n"),
                &[]
            )
            .is_err()
        );
        assert!(parse(&format!("{MIN}custom_schema = \"nope\"\n"), &[]).is_err());
    }

    const SYNC_MAPPING: &str = "[target]\ndatabase = \"app\"\nuser_table = \"users\"\n\
        key_column = \"ExternalId\"\nkey = \"externalId\"\n[fields]\nName = \"{{userName}}\"\n";

    fn sync_config(sync: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), SYNC_MAPPING).unwrap();
        std::fs::write(dir.path().join("bad.toml"), "[target]\ndatabase = 1\n").unwrap();
        Config::parse(
            &format!(
                "[applications.app]\ndatabase = \"sqlite://data/app.db\"\nschema = \"app.sql\"\n\
                 {MIN}[tenants.demo.sync]\n{sync}"
            ),
            Path::new("test.toml"),
            dir.path(),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn sync_tables_with_defaults_and_env_overrides() {
        let c = sync_config("mapping = \"m.toml\"\n", &[]).unwrap();
        let s = c.tenants["demo"].sync.as_ref().unwrap();
        assert_eq!(
            (s.retention_hours, s.guard_min, s.batch_size),
            (48, 10, 500)
        );
        assert!((s.guard_share - 0.10).abs() < 1e-9);
        assert!(s.schedule.is_none());
        assert_eq!(s.mapping.0.target().database, "app");
        let app = &c.applications["app"];
        assert!(matches!(&app.location, DbLocation::Sqlite(p) if p.ends_with("data/app.db")));
        assert!(app.schema.as_ref().unwrap().ends_with("app.sql"));
        let c = sync_config(
            "mapping = \"m.toml\"\nschedule = \"0 */15 * * * *\"\n",
            &[
                ("SCIM_BRIDGE_TENANTS__DEMO__SYNC__GUARD_SHARE", "0.25"),
                ("SCIM_BRIDGE_TENANTS__DEMO__SYNC__BATCH_SIZE", "50"),
                ("SCIM_BRIDGE_TENANTS__DEMO__SYNC__RETENTION_HOURS", "1"),
            ],
        )
        .unwrap();
        let s = c.tenants["demo"].sync.as_ref().unwrap();
        assert!((s.guard_share - 0.25).abs() < 1e-9);
        assert_eq!((s.batch_size, s.retention_hours), (50, 1));
        assert_eq!(s.schedule.as_ref().unwrap().expr, "0 */15 * * * *");
        assert!(
            sync_config("mapping = \"m.toml\"\nschedule = \"*/5 * * * *\"\n", &[]).is_ok(),
            "five fields: no seconds"
        );
    }

    #[test]
    fn sync_tables_are_validated() {
        let err = |sync: &str| sync_config(sync, &[]).unwrap_err().to_string();
        let e = err("mapping = \"m.toml\"\nschedule = \"every hour\"\n");
        assert!(e.contains("tenants.demo.sync: schedule"), "{e}");
        let e = err("mapping = \"m.toml\"\nbatchsize = 5\n");
        assert!(e.contains("batchsize"), "{e}");
        assert!(err("mapping = \"m.toml\"\nguard_share = 2.0\n").contains("guard_share"));
        assert!(err("mapping = \"m.toml\"\nbatch_size = 0\n").contains("batch_size"));
        let e = err("mapping = \"missing.toml\"\n");
        assert!(e.contains("missing.toml"), "{e}");
        let e = err("mapping = \"bad.toml\"\n");
        assert!(e.contains("bad.toml:"), "names the file: {e}");
        // The mapping's target must be a configured application.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), SYNC_MAPPING).unwrap();
        let e = Config::parse(
            &format!("{MIN}[tenants.demo.sync]\nmapping = \"m.toml\"\n"),
            Path::new("test.toml"),
            dir.path(),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"app\" is not a configured application"), "{e}");
    }

    #[test]
    fn run_retention_is_configured_in_admin() {
        let c = parse(
            &format!("{MIN}[admin]\nnoop_run_days = 2\nrun_days = 30\n"),
            &[],
        )
        .unwrap();
        assert_eq!((c.admin.noop_run_days, c.admin.run_days), (2, 30));
        let c = parse(MIN, &[("SCIM_BRIDGE_ADMIN__RUN_DAYS", "0")]).unwrap();
        assert_eq!((c.admin.noop_run_days, c.admin.run_days), (7, 0));
        let e = parse(
            &format!("{MIN}[admin]\nnoop_run_days = 30\nrun_days = 7\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("admin.noop_run_days (30) exceeds admin.run_days (7)"),
            "{e}"
        );
    }

    #[test]
    fn admin_tokens_and_roles() {
        let c = parse(MIN, &[]).unwrap();
        assert!(c.admin.tokens.is_empty());
        assert_eq!(c.admin.provisioning_log_days, 14);
        let c = parse(
            &format!(
                "{MIN}[admin]\nprovisioning_log_days = 3\n\
                 [admin.tokens.ops]\ntoken = \"operator-token-0123456\"\nrole = \"operator\"\n\
                 [admin.tokens.ro]\ntoken = \"reader-token-01234567\"\nrole = \"reader\"\n"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.admin.provisioning_log_days, 3);
        assert_eq!((c.admin.noop_run_days, c.admin.run_days), (7, 90));
        let who = |t: &str| c.admin.authenticate(t).map(|a| (a.name.clone(), a.role));
        assert_eq!(
            who("operator-token-0123456"),
            Some(("ops".into(), AdminRole::Operator))
        );
        assert_eq!(
            who("reader-token-01234567"),
            Some(("ro".into(), AdminRole::Reader))
        );
        assert_eq!(
            who("0123456789abcdef"),
            None,
            "a SCIM token is not an admin token"
        );
        assert_eq!(who(""), None);
        let e = parse(
            &format!("{MIN}[admin.tokens.x]\ntoken = \"reader-token-01234567\"\nrole = \"root\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        let e = parse(
            &format!("{MIN}[admin.tokens.x]\ntoken = \"0123456789abcdef\"\nrole = \"reader\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("SCIM token"), "{e}");
    }

    #[test]
    fn sql_server_staging_by_connection_string_or_url() {
        let c = parse(
            &format!(
                "{MIN}[staging]\ndatabase = \"Server=db,1433;Database=scim;User Id=bridge;Password=pw-inline;Encrypt=true;TrustServerCertificate=true\"\n"
            ),
            &[],
        )
        .unwrap();
        let DbLocation::SqlServer(m) = &c.staging_db else {
            panic!("{:?}", c.staging_db)
        };
        assert_eq!((m.host.as_str(), m.database.as_str()), ("db", "scim"));
        assert!(
            !format!("{c:?}").contains("pw-inline"),
            "the password stays out of Debug"
        );
        // The password from a file wins over the connection string's; the URL form works too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "pw-from-file\n").unwrap();
        let c = Config::parse(
            &format!(
                "{MIN}[staging]\ndatabase = \"mssql://bridge@db/scim\"\npassword = {{ file = \"pw\" }}\n"
            ),
            Path::new("x.toml"),
            dir.path(),
            [],
        )
        .unwrap();
        let DbLocation::SqlServer(m) = &c.staging_db else {
            panic!("{:?}", c.staging_db)
        };
        assert_eq!(m.password.as_ref().unwrap().0, "pw-from-file");
        // The whole connection string from the environment, as for any key.
        let c = parse(
            MIN,
            &[(
                "SCIM_BRIDGE_STAGING__DATABASE",
                "Server=h;Database=d;User Id=u;Password=p",
            )],
        )
        .unwrap();
        assert!(matches!(c.staging_db, DbLocation::SqlServer(_)));
    }

    #[test]
    fn sql_server_settings_are_validated() {
        let err = |db: &str, extra: &str| {
            parse(
                &format!("{MIN}[staging]\ndatabase = \"{db}\"\n{extra}"),
                &[],
            )
            .unwrap_err()
            .to_string()
        };
        let e = err("Server=h;Database=d;User Id=u", "");
        assert!(
            e.contains("no password") && e.contains("server h,1433, database d"),
            "{e}"
        );
        let e = err("Server=h;Database=d;Pooling=x;User Id=u;Password=p", "");
        assert!(
            e.contains("staging.database") && e.contains("pooling"),
            "{e}"
        );
        let e = err(
            "Server=h;Database=d;User Id=u",
            "password = { env = \"SCIM_BRIDGE_TEST_UNSET_PW\" }\n",
        );
        assert!(e.contains("SCIM_BRIDGE_TEST_UNSET_PW"), "{e}");
        // A malformed connection string is reported as one, never taken for a file name.
        let e = err("Server=h;Database=d;User Id=u;Password=a;b", "");
        assert!(e.contains("must be quoted") && !e.contains("a;b"), "{e}");
        let e = err("data/staging.db", "password = \"x\"\n");
        assert!(e.contains("SQL Server only"), "{e}");
    }

    #[test]
    fn staging_max_size_is_optional_validated_and_sqlite_only() {
        let c = parse(MIN, &[]).unwrap();
        assert_eq!(c.staging.max_size_mb, None, "no cap by default");
        assert_eq!(c.staging.sqlite_settings().max_size_mb, None);
        let c = parse(&format!("{MIN}[staging]\nmax_size_mb = 512\n"), &[]).unwrap();
        assert_eq!(c.staging.max_size_mb, Some(512));
        assert_eq!(
            c.staging.sqlite_settings(),
            SqliteSettings {
                durability: Durability::Full,
                max_size_mb: Some(512)
            }
        );
        // From the environment, as any staging key.
        let c = parse(MIN, &[("SCIM_BRIDGE_STAGING__MAX_SIZE_MB", "64")]).unwrap();
        assert_eq!(c.staging.max_size_mb, Some(64));
        let err = |text: String, env: &[(&str, &str)]| parse(&text, env).unwrap_err().to_string();
        for bad in ["0", "1048577"] {
            let e = err(format!("{MIN}[staging]\nmax_size_mb = {bad}\n"), &[]);
            assert!(
                e.contains("staging.max_size_mb") && e.contains("between 1 and 1048576"),
                "{e}"
            );
        }
        let e = err(format!("{MIN}[staging]\nmax_size_mb = -1\n"), &[]);
        assert!(e.contains("max_size_mb"), "{e}");
        let e = err(format!("{MIN}[staging]\nmax_size_mb = \"big\"\n"), &[]);
        assert!(e.contains("max_size_mb"), "{e}");
        let e = err(
            MIN.to_string(),
            &[("SCIM_BRIDGE_STAGING__MAX_SIZE_MB", "0")],
        );
        assert!(e.contains("staging.max_size_mb"), "{e}");
        // A misspelt key is refused, not taken for no cap.
        let e = err(format!("{MIN}[staging]\nmax_size = 10\n"), &[]);
        assert!(e.contains("max_size"), "{e}");
        // SQL Server: refused, never silently ignored.
        let e = err(
            format!(
                "{MIN}[staging]\ndatabase = \"Server=h;Database=d;User Id=u;Password=p\"\nmax_size_mb = 10\n"
            ),
            &[],
        );
        assert!(
            e.contains("staging.max_size_mb") && e.contains("SQLite only"),
            "{e}"
        );
    }

    #[test]
    fn sql_server_application_databases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "app-pw-from-file\n").unwrap();
        let c = Config::parse(
            &format!(
                "{MIN}[applications.crm]\ndatabase = \"Server=tcp:sql.example.com,1433;Database=crm;User Id=bridge;Password=inline-pw\"\n\
                 schema = \"crm.mssql.sql\"\n\
                 [applications.erp]\ndatabase = \"mssql://bridge@sql.example.com/erp\"\npassword = {{ file = \"pw\" }}\n\
                 [applications.local]\ndatabase = \"sqlite://data/app.db\"\n"
            ),
            Path::new("x.toml"),
            dir.path(),
            [(
                "SCIM_BRIDGE_APPLICATIONS__LOCAL__DATABASE".to_string(),
                "Server=h;Database=local;User Id=u;Password=env-pw".to_string(),
            )],
        )
        .unwrap();
        let server = |name: &str| match &c.applications[name].location {
            DbLocation::SqlServer(m) => m.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(server("crm").database, "crm");
        assert!(
            c.applications["crm"]
                .schema
                .as_ref()
                .unwrap()
                .ends_with("crm.mssql.sql")
        );
        assert_eq!(server("erp").password.unwrap().0, "app-pw-from-file");
        assert_eq!(server("local").database, "local", "from the environment");
        let shown = format!("{:?}", c.applications);
        assert!(
            !shown.contains("inline-pw")
                && !shown.contains("app-pw-from-file")
                && !shown.contains("env-pw"),
            "{shown}"
        );
        // Without a password, the error names the application, the server and the database.
        let e = parse(
            &format!("{MIN}[applications.crm]\ndatabase = \"Server=h;Database=crm;User Id=u\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("applications.crm.database") && e.contains("server h,1433, database crm"),
            "{e}"
        );
    }

    #[test]
    fn token_debug_is_redacted() {
        let c = parse(MIN, &[]).unwrap();
        let dbg = format!("{:?}", c.tenants["demo"]);
        assert!(!dbg.contains("0123456789abcdef"));
    }
}
