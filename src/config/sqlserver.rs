//! SQL Server connection settings: an ADO.NET connection string or an `mssql://` URL, parsed
//! into one typed struct and validated before anything connects.
//!
//! ```text
//! Server=tcp:db.example.com,1433;Database=scim;User Id=scim_bridge;Password=…;
//!     Encrypt=true;TrustServerCertificate=false;Connect Timeout=15;Command Timeout=30
//! mssql://scim_bridge:…@db.example.com:1433/scim?encrypt=true&trust_server_certificate=false
//! ```
//!
//! Keys are case-insensitive and take the usual ADO.NET synonyms; an unknown key is an error
//! that names it, like unknown configuration keys. Only SQL Server authentication (user and
//! password) is supported. The password never appears in `Debug` output or error messages.

use std::fmt;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConnStrError {
    #[error("the connection string has no value for {0}")]
    Missing(&'static str),
    #[error("unknown connection string key {0:?}")]
    UnknownKey(String),
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("malformed connection string: {0}")]
    Syntax(String),
}

/// Whether and how the connection is encrypted (TLS via rustls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    /// Encrypt=false: the login packet is still encrypted; the rest only if the server requires it.
    Off,
    /// Encrypt=true (the default): TLS for the whole connection.
    On,
    /// Encrypt=strict: TDS 8.0, TLS before any TDS traffic (SQL Server 2022, Azure SQL).
    Strict,
}

/// A password, redacted in Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MssqlConfig {
    pub host: String,
    /// None with a named instance: the SQL Browser service is not used, so give a port.
    pub port: u16,
    pub instance: Option<String>,
    pub database: String,
    pub user: String,
    pub password: Option<Password>,
    pub encrypt: Encrypt,
    pub trust_server_certificate: bool,
    /// TCP connect plus TLS and login; a connection attempt fails after this.
    pub connect_timeout: Duration,
    /// Per statement; None waits as long as the server takes.
    pub command_timeout: Option<Duration>,
    pub application_name: String,
    pub max_pool_size: u32,
    pub min_pool_size: u32,
}

pub const DEFAULT_PORT: u16 = 1433;

impl MssqlConfig {
    fn empty() -> Self {
        MssqlConfig {
            host: String::new(),
            port: DEFAULT_PORT,
            instance: None,
            database: String::new(),
            user: String::new(),
            password: None,
            encrypt: Encrypt::On,
            trust_server_certificate: false,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Some(Duration::from_secs(30)),
            application_name: "scim-bridge".into(),
            max_pool_size: 10,
            min_pool_size: 0,
        }
    }

    /// Whether `s` names a SQL Server database (rather than an SQLite file): an `mssql://` or
    /// `sqlserver://` URL, or text whose first key is a connection string key. A malformed
    /// connection string is still recognised, so its error is reported (and its password
    /// never taken for a file name).
    pub fn is_sql_server(s: &str) -> bool {
        let t = s.trim_start();
        let lower = t.to_ascii_lowercase();
        if lower.starts_with("mssql://") || lower.starts_with("sqlserver://") {
            return true;
        }
        if lower.contains("://") {
            return false;
        }
        let Some((first, _)) = lower.split_once('=') else {
            return false;
        };
        let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
        KEYS.contains(&first.as_str())
    }

    /// Parse an ADO.NET connection string or an `mssql://` / `sqlserver://` URL.
    pub fn parse(s: &str) -> Result<MssqlConfig, ConnStrError> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let c = if lower.starts_with("mssql://") || lower.starts_with("sqlserver://") {
            parse_url(t)?
        } else {
            parse_ado(t)?
        };
        c.validate()?;
        Ok(c)
    }

    /// Replace the password (from a secret given separately).
    pub fn with_password(mut self, password: String) -> Self {
        self.password = Some(Password(password));
        self
    }

    fn validate(&self) -> Result<(), ConnStrError> {
        if self.host.is_empty() {
            return Err(ConnStrError::Missing("Server"));
        }
        if self.database.is_empty() {
            return Err(ConnStrError::Missing("Database"));
        }
        if self.user.is_empty() {
            return Err(ConnStrError::Missing("User Id"));
        }
        if self.max_pool_size == 0 || self.min_pool_size > self.max_pool_size {
            return Err(ConnStrError::Invalid {
                key: "Max Pool Size".into(),
                message: "must be at least 1 and at least Min Pool Size".into(),
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConnStrError::Invalid {
                key: "Connect Timeout".into(),
                message: "must be at least 1 second".into(),
            });
        }
        Ok(())
    }

    /// `host,port` (or `host\instance`) and the database, for messages; never the password.
    pub fn describe(&self) -> String {
        let server = match &self.instance {
            Some(i) => format!("{}\\{i},{}", self.host, self.port),
            None => format!("{},{}", self.host, self.port),
        };
        format!("server {server}, database {}", self.database)
    }
}

/// The connection string keys understood, lower case.
const KEYS: &[&str] = &[
    "server",
    "data source",
    "address",
    "addr",
    "network address",
    "port",
    "database",
    "initial catalog",
    "user id",
    "uid",
    "user",
    "username",
    "password",
    "pwd",
    "encrypt",
    "trustservercertificate",
    "trust server certificate",
    "connect timeout",
    "connection timeout",
    "timeout",
    "command timeout",
    "application name",
    "app",
    "max pool size",
    "min pool size",
    "integrated security",
    "trusted_connection",
    "authentication",
];

/// The text is not echoed: it may be the tail of a password that holds a ';'.
fn no_value() -> ConnStrError {
    ConnStrError::Syntax(
        "a part has no '=' (a value containing ';' must be quoted: Password='…')".into(),
    )
}

fn ended_with_eq(s: &str) -> bool {
    s.trim_end().ends_with('=')
}

/// `key=value;…` into lower-cased keys (inner whitespace collapsed) and unquoted values.
fn ado_pairs(s: &str) -> Result<Vec<(String, String)>, ConnStrError> {
    let mut out = vec![];
    let mut chars = s.chars().peekable();
    loop {
        // key
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            if c == ';' && key.trim().is_empty() {
                key.clear();
                continue;
            }
            if c == ';' {
                return Err(no_value());
            }
            key.push(c);
        }
        if chars.peek().is_none() && !key.trim().is_empty() && !ended_with_eq(s) {
            return Err(no_value());
        }
        let key = key.split_whitespace().collect::<Vec<_>>().join(" ");
        if key.is_empty() {
            if chars.peek().is_none() {
                return Ok(out);
            }
            return Err(ConnStrError::Syntax("a value has no key".into()));
        }
        // value: quoted with ' or " (the quote doubled inside), or up to the next ;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        match chars.peek().copied() {
            Some(q @ ('\'' | '"')) => {
                chars.next();
                loop {
                    match chars.next() {
                        Some(c) if c == q => {
                            if chars.peek() == Some(&q) {
                                chars.next();
                                value.push(q);
                            } else {
                                break;
                            }
                        }
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConnStrError::Syntax(format!(
                                "the value of {key:?} has no closing quote"
                            )));
                        }
                    }
                }
                for c in chars.by_ref() {
                    if c == ';' {
                        break;
                    }
                    if !c.is_whitespace() {
                        return Err(ConnStrError::Syntax(format!(
                            "text after the quoted value of {key:?}"
                        )));
                    }
                }
            }
            _ => {
                for c in chars.by_ref() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                }
                value = value.trim().to_string();
            }
        }
        out.push((key.to_ascii_lowercase(), value));
        if chars.peek().is_none() {
            return Ok(out);
        }
    }
}

fn parse_ado(s: &str) -> Result<MssqlConfig, ConnStrError> {
    let mut c = MssqlConfig::empty();
    let mut after_password = false;
    for (key, value) in ado_pairs(s)? {
        match set(&mut c, &key, &value) {
            // After Password= an unknown key may be the rest of an unquoted password: not echoed.
            Err(ConnStrError::UnknownKey(_)) if after_password => {
                return Err(ConnStrError::Syntax(
                    "an unknown key after Password= (a value containing ';' must be quoted: Password='…')"
                        .into(),
                ));
            }
            r => r?,
        }
        after_password |= matches!(key.as_str(), "password" | "pwd");
    }
    Ok(c)
}

/// Apply one setting; `key` is lower case. Shared by the ADO.NET and URL forms.
fn set(c: &mut MssqlConfig, key: &str, value: &str) -> Result<(), ConnStrError> {
    let invalid = |message: &str| ConnStrError::Invalid {
        key: key.to_string(),
        message: message.to_string(),
    };
    let boolean = |v: &str| match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(invalid("expected true or false")),
    };
    let seconds = |v: &str| {
        v.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| invalid("expected a number of seconds"))
    };
    match key {
        "server" | "data source" | "address" | "addr" | "network address" => {
            let v = value.strip_prefix("tcp:").unwrap_or(value);
            let (host_inst, port) = match v.rsplit_once(',') {
                Some((h, p)) => (
                    h,
                    Some(
                        p.trim()
                            .parse::<u16>()
                            .map_err(|_| invalid("the port after ',' is not a number"))?,
                    ),
                ),
                None => (v, None),
            };
            let (host, instance) = match host_inst.split_once('\\') {
                Some((h, i)) => (h, Some(i.trim().to_string())),
                None => (host_inst, None),
            };
            let host = match host.trim() {
                "." | "(local)" => "localhost",
                h => h,
            };
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(invalid("expected host, host,port or host\\instance"));
            }
            c.host = host.to_string();
            c.instance = instance.filter(|i| !i.is_empty());
            if let Some(p) = port {
                c.port = p;
            }
        }
        "port" => {
            c.port = value
                .parse()
                .map_err(|_| invalid("expected a port number"))?
        }
        "database" | "initial catalog" => c.database = value.to_string(),
        "user id" | "uid" | "user" | "username" => c.user = value.to_string(),
        "password" | "pwd" => c.password = Some(Password(value.to_string())),
        "encrypt" => {
            c.encrypt = match value.to_ascii_lowercase().as_str() {
                "strict" => Encrypt::Strict,
                "true" | "yes" | "mandatory" | "1" => Encrypt::On,
                "false" | "no" | "optional" | "0" => Encrypt::Off,
                _ => return Err(invalid("expected true, false or strict")),
            }
        }
        "trustservercertificate" | "trust server certificate" | "trust_server_certificate" => {
            c.trust_server_certificate = boolean(value)?
        }
        "connect timeout" | "connection timeout" | "timeout" | "connect_timeout" => {
            c.connect_timeout = seconds(value)?
        }
        "command timeout" | "command_timeout" => {
            let d = seconds(value)?;
            c.command_timeout = (!d.is_zero()).then_some(d);
        }
        "application name" | "app" | "application_name" => c.application_name = value.to_string(),
        "max pool size" | "max_pool_size" => {
            c.max_pool_size = value.parse().map_err(|_| invalid("expected a number"))?
        }
        "min pool size" | "min_pool_size" => {
            c.min_pool_size = value.parse().map_err(|_| invalid("expected a number"))?
        }
        "integrated security" | "trusted_connection" | "authentication" => {
            return Err(invalid(
                "only SQL Server authentication (User Id and Password) is supported",
            ));
        }
        _ => return Err(ConnStrError::UnknownKey(key.to_string())),
    }
    Ok(())
}

/// `mssql://user:password@host[:port][/instance]/database?key=value&…` (user, password and
/// values percent-decoded; query keys as in the ADO.NET form, with `_` or spaces).
fn parse_url(s: &str) -> Result<MssqlConfig, ConnStrError> {
    let rest = s
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| ConnStrError::Syntax("expected mssql://".into()))?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let mut c = MssqlConfig::empty();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(u) = userinfo {
        let (user, password) = match u.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (u, None),
        };
        c.user = decode(user, "user")?;
        if let Some(p) = password {
            c.password = Some(Password(decode(p, "password")?));
        }
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(p.parse::<u16>().map_err(|_| ConnStrError::Invalid {
                key: "port".into(),
                message: "expected a port number".into(),
            })?),
        ),
        None => (hostport, None),
    };
    c.host = decode(host, "host")?;
    if let Some(p) = port {
        c.port = p;
    }
    let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match segments.as_slice() {
        [] => {}
        [db] => c.database = decode(db, "database")?,
        [inst, db] => {
            c.instance = Some(decode(inst, "instance")?);
            c.database = decode(db, "database")?;
        }
        _ => {
            return Err(ConnStrError::Syntax(
                "expected /database or /instance/database".into(),
            ));
        }
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k, "query key")?
            .to_ascii_lowercase()
            .replace('_', " ");
        let key = match key.as_str() {
            // The URL form spells these with underscores; map them to one ADO.NET name.
            "trust server certificate" => "trustservercertificate".to_string(),
            _ => key,
        };
        set(&mut c, &key, &decode(v, &key)?)?;
    }
    Ok(c)
}

fn decode(s: &str, what: &str) -> Result<String, ConnStrError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(ConnStrError::Syntax(format!("bad %-escape in the {what}")));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnStrError::Syntax(format!("the {what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ado_net_connection_string() {
        let c = MssqlConfig::parse(
            "Server=tcp:db.example.com,14330;Database=scim;User Id=bridge;Password=p@ss;w0rd;\
             Encrypt=true;TrustServerCertificate=true;Connect Timeout=5;Command Timeout=60",
        );
        // A ';' in an unquoted password ends it; the rest is not echoed.
        let e = c.unwrap_err().to_string();
        assert!(e.contains("must be quoted") && !e.contains("w0rd"), "{e}");
        let c = MssqlConfig::parse(
            " server = tcp:db.example.com,14330 ; Initial Catalog=scim;UID=bridge;PWD='p@ss;w0rd''s';\
             Encrypt=yes;TrustServerCertificate=True;Connection Timeout=5;Command Timeout=0;\
             Application Name=bridge-1;Max Pool Size=20;Min Pool Size=2;",
        )
        .unwrap();
        assert_eq!(c.host, "db.example.com");
        assert_eq!(c.port, 14330);
        assert_eq!(c.database, "scim");
        assert_eq!(c.user, "bridge");
        assert_eq!(c.password, Some(Password("p@ss;w0rd's".into())));
        assert_eq!(c.encrypt, Encrypt::On);
        assert!(c.trust_server_certificate);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.command_timeout, None, "0 means no limit");
        assert_eq!(c.application_name, "bridge-1");
        assert_eq!((c.max_pool_size, c.min_pool_size), (20, 2));
        assert_eq!(c.describe(), "server db.example.com,14330, database scim");
    }

    #[test]
    fn defaults_instance_and_strict() {
        let c = MssqlConfig::parse(r"Data Source=.\SQLEXPRESS;Database=d;User=u;Encrypt=strict")
            .unwrap();
        assert_eq!(c.host, "localhost");
        assert_eq!(c.instance.as_deref(), Some("SQLEXPRESS"));
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.encrypt, Encrypt::Strict);
        assert!(
            !c.trust_server_certificate,
            "certificates are checked by default"
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(15));
        assert_eq!(c.command_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.password, None);
    }

    #[test]
    fn url_form() {
        let c = MssqlConfig::parse(
            "mssql://bridge:p%40ss%3Bw0rd@db.example.com:1444/scim?encrypt=false&trust_server_certificate=true&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.database.as_str(),
                c.user.as_str()
            ),
            ("db.example.com", 1444, "scim", "bridge")
        );
        assert_eq!(c.password, Some(Password("p@ss;w0rd".into())));
        assert_eq!(c.encrypt, Encrypt::Off);
        assert!(c.trust_server_certificate);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        let c = MssqlConfig::parse("sqlserver://u@h/INST/db").unwrap();
        assert_eq!(c.instance.as_deref(), Some("INST"));
        assert_eq!(c.port, DEFAULT_PORT);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |s: &str| MssqlConfig::parse(s).unwrap_err().to_string();
        assert!(e("Database=d;User Id=u").contains("Server"));
        assert!(e("Server=h;User Id=u").contains("Database"));
        assert!(e("Server=h;Database=d").contains("User Id"));
        assert!(e("Server=h;Database=d;User Id=u;Colour=blue").contains("colour"));
        assert!(e("Server=h,notaport;Database=d;User Id=u").contains("port"));
        assert!(e("Server=h;Database=d;User Id=u;Encrypt=maybe").contains("encrypt"));
        assert!(e("Server=h;Database=d;User Id=u;Connect Timeout=soon").contains("seconds"));
        assert!(e("Server=h;Database=d;User Id=u;Connect Timeout=0").contains("Connect Timeout"));
        assert!(
            e("Server=h;Database=d;Integrated Security=SSPI").contains("SQL Server authentication")
        );
        assert!(e("Server=h;Database=d;User Id=u;Password='open").contains("closing quote"));
        assert!(e("mssql://u@h:99999/d").contains("port"));
        assert!(e("mssql://u@h/d?encrypt=%zz").contains("escape"));
    }

    #[test]
    fn the_password_stays_out_of_debug_and_messages() {
        let c =
            MssqlConfig::parse("Server=h;Database=d;User Id=u;Password=hunter2-secret").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.describe().contains("hunter2"));
        for s in [
            "Server=h;Database=d;User Id=u;Password=hunter2-secret;Bad=1",
            "Server=h;Database=d;User Id=u;Password=hunter2;secret",
            "Server=h;Database=d;User Id=u;Password=hunter2;secret=x",
            "Server=h;Database=d;User Id=u;Password=hunter2;secret;",
        ] {
            let e = MssqlConfig::parse(s).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && !e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn tells_sql_server_from_sqlite() {
        for s in [
            "mssql://u@h/d",
            "SQLSERVER://u@h/d",
            "Server=h;Database=d",
            "Data Source=h,1433;Initial Catalog=d",
            "Database=d; Server=h",
            "Server=h;Password=a;b",
        ] {
            assert!(MssqlConfig::is_sql_server(s), "{s}");
        }
        for s in [
            "sqlite://data/staging.db",
            "data/staging.db",
            "sqlite:x=y.db",
            "/var/lib/a=b/staging.db",
        ] {
            assert!(!MssqlConfig::is_sql_server(s), "{s}");
        }
    }
}
