//! Secrets (tokens, passwords): given inline, by environment variable or by file, and never
//! shown; tokens are held only as hashes.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret given inline, by environment variable or by file.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSecret::Inline(_) => f.write_str("Inline(<redacted>)"),
            RawSecret::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            RawSecret::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}

/// A token held only as its SHA-256; compared in constant time.
#[derive(Clone)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
    pub fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.0.ct_eq(&h))
    }
}

/// Two hashes of the same token (compared in constant time too).
impl PartialEq for TokenHash {
    fn eq(&self, other: &TokenHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

pub(super) fn resolve_secret(s: &RawSecret, base_dir: &Path) -> Result<TokenHash, String> {
    let value = read_secret(s, base_dir)?;
    if value.len() < 16 {
        return Err("a token must be at least 16 characters long".into());
    }
    Ok(TokenHash::of(&value))
}

/// The secret's value, trimmed.
pub(super) fn read_secret(s: &RawSecret, base_dir: &Path) -> Result<String, String> {
    let value = match s {
        RawSecret::Inline(v) => v.clone(),
        RawSecret::Env { env } => {
            std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))?
        }
        RawSecret::File { file } => {
            let p = if file.is_absolute() {
                file.clone()
            } else {
                base_dir.join(file)
            };
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?
        }
    };
    Ok(value.trim().to_string())
}
