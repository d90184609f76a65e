//! The SCIM_BRIDGE_* environment overlay: `SCIM_BRIDGE_A__B=value` sets `a.b` in the parsed
//! file before it is validated; a name ending in `_FILE` reads the value from that file.

use std::path::Path;

/// Apply one SCIM_BRIDGE_A__B=value variable to the parsed file.
pub(super) fn apply_env(
    root: &mut toml::Value,
    key: &str,
    val: &str,
    base_dir: &Path,
) -> Result<(), String> {
    let Some(rest) = key.strip_prefix("SCIM_BRIDGE_") else {
        return Ok(());
    };
    if rest == "CONFIG" || rest.is_empty() {
        return Ok(());
    }
    let (rest, val) = match rest.strip_suffix("_FILE") {
        Some(r) => {
            let p = Path::new(val);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            };
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("{key}: cannot read {}: {e}", p.display()))?;
            (r, text.trim().to_string())
        }
        None => (rest, val.to_string()),
    };
    let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("{key}: {} is not a section", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            let parsed = val
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| val.parse::<bool>().map(toml::Value::Boolean))
                .or_else(|_| {
                    // Decimals (guard_share = 0.2); not "inf"/"nan", which stay strings.
                    val.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && val.contains('.'))
                        .map(toml::Value::Float)
                        .ok_or(())
                })
                .unwrap_or_else(|_| toml::Value::String(val.clone()));
            table.insert(part.clone(), parsed);
            return Ok(());
        }
        node = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::map::Map::new()));
    }
    Ok(())
}
