//! The console's page chrome and the pieces every page uses: times, pagers, CSV.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::session::Session;
use super::{ASSET_VERSION, PREFIX};

/// The navigation, in the order a reader goes through it.
const NAV: &[(&str, &str)] = &[
    ("", "Overview"),
    ("/runs", "Runs"),
    ("/failing", "Failing now"),
    ("/offboardings", "Offboardings"),
    ("/log", "Provisioning log"),
    ("/user", "User"),
    ("/mapping", "Mapping"),
];

/// A whole page: skip link, navigation, who is signed in, the sign-out form.
pub fn page(session: Option<&Session>, current: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · scim-bridge console" }
                link rel="stylesheet" href={ (PREFIX) "/assets/console.css?v=" (ASSET_VERSION) };
                script src={ (PREFIX) "/assets/console.js?v=" (ASSET_VERSION) } defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    p.brand { a href=(PREFIX) { "scim-bridge console" } }
                    @if let Some(s) = session {
                        nav aria-label="Console" {
                            ul {
                                @for (path, label) in NAV {
                                    li {
                                        @if *path == current {
                                            a href={ (PREFIX) (path) } aria-current="page" { (label) }
                                        } @else {
                                            a href={ (PREFIX) (path) } { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action={ (PREFIX) "/sign-out" } {
                            span { "Signed in as " strong { (s.admin) } " (" (s.role.as_str()) ")" }
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A time as `<time>`: UTC in the text and the title; the script shows it in the
/// browser's time zone and keeps UTC on hover.
pub fn time(s: &str) -> Markup {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => time_at(t.with_timezone(&Utc)),
        Err(_) => html! { (s) },
    }
}

pub fn time_at(t: DateTime<Utc>) -> Markup {
    let iso = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let utc = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(iso) title=(utc) { (utc) } }
}

pub fn opt_time(s: Option<&str>) -> Markup {
    match s {
        Some(s) => time(s),
        None => html! { "—" },
    }
}

/// "Showing 21–40 of 93" and links to the previous and next pages, keeping the filters.
pub fn pager(base: &str, keep: &[(&str, &str)], total: i64, limit: i64, offset: i64) -> Markup {
    let link = |off: i64| {
        let mut pairs: Vec<(&str, String)> = keep
            .iter()
            .filter(|(k, _)| *k != "offset")
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        if off > 0 {
            pairs.push(("offset", off.to_string()));
        }
        let q = super::params::query(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        if q.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{q}")
        }
    };
    let first = if total == 0 { 0 } else { offset + 1 };
    let last = (offset + limit).min(total);
    html! {
        nav.pager aria-label="Pages" {
            span { "Showing " (first) "–" (last) " of " (total) }
            @if offset > 0 {
                a rel="prev" href=(link((offset - limit).max(0))) { "← Previous" }
            }
            @if offset + limit < total {
                a rel="next" href=(link(offset + limit)) { "Next →" }
            }
        }
    }
}

/// The link to a table's CSV, with the page's filters.
pub fn csv_link(base: &str, keep: &[(&str, &str)], extra: &[(&str, &str)]) -> Markup {
    let pairs = keep
        .iter()
        .filter(|(k, _)| *k != "offset" && *k != "format")
        .chain(extra.iter())
        .copied()
        .chain([("format", "csv")]);
    let href = format!("{base}?{}", super::params::query(pairs));
    html! { p.export { a href=(href) download { "Download as CSV" } } }
}

/// A hidden CSRF field for a session's forms.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A status as a badge: the class says how it went, the text says what it is.
pub fn status(s: &str) -> Markup {
    let class = match s {
        "succeeded" | "created" | "updated" | "reactivated" | "active" => "ok",
        "failed" | "completed_with_errors" => "bad",
        "awaiting_approval" | "offboarding_held" | "running" | "quarantined" => "warn",
        _ => "plain",
    };
    html! { span class={ "badge " (class) } { (s.replace('_', " ")) } }
}

/// A JSON value as a person reads it.
pub fn value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A user link to the user page (the story).
pub fn user_link(tenant: &str, user_id: &str, label: Option<&str>) -> Markup {
    let href = format!(
        "{PREFIX}/user?{}",
        super::params::query([("tenant", tenant), ("by", "userId"), ("q", user_id)])
    );
    html! { a href=(href) { (label.unwrap_or(user_id)) } }
}

/// A CSV document: one header row, then the rows; cells that a spreadsheet would read as a
/// formula are prefixed with `'`.
pub fn csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
        let mut first = true;
        for c in cells {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&csv_cell(&c));
        }
        out.push_str("\r\n");
    };
    line(&mut out, &mut header.iter().map(|h| h.to_string()));
    for r in rows {
        line(&mut out, &mut r.into_iter());
    }
    out
}

fn csv_cell(c: &str) -> String {
    let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) && c.parse::<f64>().is_err() {
        format!("'{c}")
    } else {
        c.to_string()
    };
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c
    }
}

/// A short explanatory paragraph.
pub fn note(text: &str) -> Markup {
    html! { p.note { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let text = csv(
            &["a", "b"],
            [
                vec!["x,y".to_string(), "=cmd()".to_string()],
                vec!["-1".into(), "say \"hi\"".into()],
            ],
        );
        assert_eq!(text, "a,b\r\n\"x,y\",'=cmd()\r\n-1,\"say \"\"hi\"\"\"\r\n");
    }

    #[test]
    fn times_carry_utc_for_the_script() {
        let m = time("2026-01-15T09:00:00.123Z").into_string();
        assert!(m.contains(r#"datetime="2026-01-15T09:00:00Z""#), "{m}");
        assert!(m.contains(r#"title="2026-01-15 09:00:00 UTC""#), "{m}");
        assert_eq!(time("not a time").into_string(), "not a time");
    }

    #[test]
    fn markup_is_escaped() {
        let m = html! { td { ("<script>alert(1)</script>") } }.into_string();
        assert_eq!(m, "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>");
    }
}
