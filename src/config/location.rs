//! Where a database is: an SQLite file (with how durable its commits are) or a SQL Server
//! (its connection settings, in sqlserver.rs).

use std::path::{Path, PathBuf};

use super::secret::{RawSecret, read_secret};
pub use super::sqlserver::MssqlConfig;

/// How durable a commit is. `Normal` (WAL) survives a crash of the process; `Full` also a
/// power loss, at the cost of an fsync per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Normal,
    #[default]
    Full,
}

/// How the SQLite staging file is written: its durability and, when set, the most it may grow
/// to (`[staging] max_size_mb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqliteSettings {
    pub durability: Durability,
    /// None: no cap (the file grows while the disk has room).
    pub max_size_mb: Option<u32>,
}

/// Durability alone: no size cap.
impl From<Durability> for SqliteSettings {
    fn from(durability: Durability) -> Self {
        SqliteSettings {
            durability,
            max_size_mb: None,
        }
    }
}

/// The largest `[staging] max_size_mb` accepted: 1 TiB, far beyond what an embedded staging
/// file should hold (SQL Server is the backend for more).
pub const MAX_STAGING_SIZE_MB: u32 = 1024 * 1024;

/// Where a database is: the staging database, or an application database.
#[derive(Debug, Clone)]
pub enum DbLocation {
    /// The SQLite file, resolved against the config file's folder.
    Sqlite(PathBuf),
    SqlServer(MssqlConfig),
}

/// An SQLite location, or a SQL Server connection string with its password (from the
/// connection string or from `password`, which wins).
pub fn resolve_database(
    database: &str,
    password: Option<&RawSecret>,
    base_dir: &Path,
) -> Result<DbLocation, String> {
    if !MssqlConfig::is_sql_server(database) {
        if password.is_some() {
            return Err("a password applies to SQL Server only".into());
        }
        return resolve_sqlite_path(database, base_dir).map(DbLocation::Sqlite);
    }
    let mut c = MssqlConfig::parse(database).map_err(|e| e.to_string())?;
    if let Some(p) = password {
        c = c.with_password(read_secret(p, base_dir)?);
    }
    if c.password.as_ref().is_none_or(|p| p.0.is_empty()) {
        return Err(format!(
            "no password for SQL Server ({}): give Password= or a password secret",
            c.describe()
        ));
    }
    Ok(DbLocation::SqlServer(c))
}

/// `sqlite://relative/or/absolute.db`, `sqlite:path` or a plain path.
pub fn resolve_sqlite_path(url: &str, base_dir: &Path) -> Result<PathBuf, String> {
    let p = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if p.is_empty() || url.contains("://") && !url.starts_with("sqlite://") {
        return Err(format!(
            "{url:?} is not a SQLite location (use sqlite://PATH)"
        ));
    }
    let p = Path::new(p);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    })
}
