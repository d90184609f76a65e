//! Sync schedules: cron expressions, validated with the parser the scheduler runs them with.

use croner::parser::{CronParser, Seconds};

/// A validated cron expression: `sec min hour day-of-month month day-of-week` (six fields) or
/// the classic five without seconds (run at second 0); `*`, lists, ranges, steps, names (`MON`,
/// `JAN`) and `@hourly`/`@daily`-style nicknames. When both day fields are restricted, a day
/// must match both. Parsed exactly as the scheduler parses it.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written in the configuration.
    pub expr: String,
    /// The six-field form the scheduler runs.
    pub normalized: String,
    pub cron: croner::Cron,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let trimmed = expr.trim();
        let normalized = if trimmed.starts_with('@') {
            nickname(trimmed)
                .ok_or_else(|| format!("unknown cron nickname {expr:?}"))?
                .to_string()
        } else if trimmed.split_whitespace().count() == 5 {
            format!("0 {trimmed}")
        } else {
            trimmed.to_string()
        };
        let cron = parser()
            .parse(&normalized)
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            normalized,
            cron,
        })
    }

    /// The first time after `after` the schedule is due.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

/// The parser the scheduler uses (six fields, a day must match both day fields).
pub fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

/// The six-field expression of a nickname.
pub fn nickname(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * SUN",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn five_and_six_fields_and_nicknames() {
        let t = Utc.with_ymd_and_hms(2026, 3, 2, 10, 7, 30).unwrap(); // a Monday
        let next = |e: &str| Schedule::parse(e).unwrap().next_after(t).unwrap();
        assert_eq!(
            next("*/15 * * * *"),
            Utc.with_ymd_and_hms(2026, 3, 2, 10, 15, 0).unwrap()
        );
        assert_eq!(
            next("30 */5 * * * *"),
            Utc.with_ymd_and_hms(2026, 3, 2, 10, 10, 30).unwrap()
        );
        assert_eq!(
            next("@hourly"),
            Utc.with_ymd_and_hms(2026, 3, 2, 11, 0, 0).unwrap()
        );
        assert_eq!(
            next("@daily"),
            Utc.with_ymd_and_hms(2026, 3, 3, 0, 0, 0).unwrap()
        );
        assert_eq!(
            next("0 0 6 * * MON-FRI"),
            Utc.with_ymd_and_hms(2026, 3, 3, 6, 0, 0).unwrap()
        );
        assert_eq!(
            Schedule::parse("*/5 * * * *").unwrap().normalized,
            "0 */5 * * * *"
        );
        for bad in ["every hour", "61 * * * *", "@fortnightly", "* * * *", ""] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
