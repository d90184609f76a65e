//! The process's metrics, rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! Small and explicit: counters and histograms keyed by their label values, behind one mutex
//! each (a request takes two short locks). Label values come from configured tenant names and
//! fixed vocabularies, never from request data, so the number of series stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::scim::entra;

/// Latency buckets in seconds.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Sync run duration buckets in seconds.
const RUN_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

struct Family<T> {
    series: Mutex<BTreeMap<Vec<String>, T>>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family {
            series: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<T> Family<T> {
    fn with(&self, key: Vec<String>, init: impl FnOnce() -> T, f: impl FnOnce(&mut T)) {
        if let Ok(mut m) = self.series.lock() {
            f(m.entry(key).or_insert_with(init));
        }
    }

    fn snapshot(&self) -> Vec<(Vec<String>, T)>
    where
        T: Clone,
    {
        self.series
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// What a SCIM request was, for the request metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimRequest<'a> {
    pub tenant: &'a str,
    /// `Users`, `Groups`, `ServiceProviderConfig`, `Schemas`, `ResourceTypes`, or "" for the root.
    pub resource: &'a str,
    /// `create`, `list`, `search`, `get`, `replace`, `patch`, `delete` or `other`.
    pub operation: &'a str,
    pub status: u16,
}

/// Every metric of the process. One instance lives in the application state.
#[derive(Default)]
pub struct Metrics {
    scim_requests: Family<u64>,
    scim_latency: Family<Histogram>,
    provisioning_log_dropped: Family<u64>,
    sync_runs: Family<u64>,
    sync_run_duration: Family<Histogram>,
    sync_items: Family<u64>,
    pending_offboardings: Family<i64>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One SCIM request answered.
    pub fn scim_request(&self, r: &ScimRequest<'_>, elapsed: Duration) {
        let key = vec![
            r.tenant.to_string(),
            r.resource.to_string(),
            r.operation.to_string(),
        ];
        let mut with_status = key.clone();
        with_status.push(r.status.to_string());
        self.scim_requests.with(with_status, || 0, |c| *c += 1);
        self.scim_latency.with(
            key,
            || Histogram::new(&LATENCY_BUCKETS),
            |h| h.observe(elapsed.as_secs_f64()),
        );
    }

    /// A provisioning log entry was dropped because the writer fell behind.
    pub fn provisioning_log_dropped(&self) {
        self.provisioning_log_dropped
            .with(vec![], || 0, |c| *c += 1);
    }

    /// Hook for the sync engine: a run of `tenant` ended with `status` (the ledger's status
    /// names: succeeded, completed_with_errors, failed, skipped, awaiting_approval).
    pub fn sync_run_finished(&self, tenant: &str, status: &str, elapsed: Duration) {
        self.sync_runs
            .with(vec![tenant.into(), status.into()], || 0, |c| *c += 1);
        self.sync_run_duration.with(
            vec![tenant.into()],
            || Histogram::new(&RUN_BUCKETS),
            |h| h.observe(elapsed.as_secs_f64()),
        );
    }

    /// Hook for the sync engine: `n` items of a run of `tenant` had `outcome` (created,
    /// updated, deactivated, failed, offboarded, purged, offboarding_held).
    pub fn sync_items(&self, tenant: &str, outcome: &str, n: u64) {
        self.sync_items
            .with(vec![tenant.into(), outcome.into()], || 0, |c| *c += n);
    }

    /// Hook for the sync engine: how many offboardings of `tenant` wait to be applied.
    pub fn set_pending_offboardings(&self, tenant: &str, n: i64) {
        self.pending_offboardings
            .with(vec![tenant.into()], || 0, |g| *g = n);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        counter(
            &mut out,
            "scim_bridge_scim_requests_total",
            "SCIM requests answered, by tenant, resource, operation and status.",
            &["tenant", "resource", "operation", "status"],
            &self.scim_requests.snapshot(),
        );
        histogram(
            &mut out,
            "scim_bridge_scim_request_duration_seconds",
            "SCIM request latency, by tenant, resource and operation.",
            &["tenant", "resource", "operation"],
            &self.scim_latency.snapshot(),
        );
        let entra: Vec<(Vec<String>, u64)> = entra::counts()
            .iter()
            .map(|(q, n)| (vec![q.label().to_string()], *n))
            .collect();
        counter(
            &mut out,
            "scim_bridge_entra_normalisations_total",
            "Entra ID dialect behaviours absorbed, by kind.",
            &["kind"],
            &entra,
        );
        let dropped = self.provisioning_log_dropped.snapshot();
        let dropped = if dropped.is_empty() {
            vec![(vec![], 0)]
        } else {
            dropped
        };
        counter(
            &mut out,
            "scim_bridge_provisioning_log_dropped_total",
            "Provisioning log entries dropped because the writer fell behind.",
            &[],
            &dropped,
        );
        counter(
            &mut out,
            "scim_bridge_sync_runs_total",
            "Sync runs ended, by tenant and status.",
            &["tenant", "status"],
            &self.sync_runs.snapshot(),
        );
        histogram(
            &mut out,
            "scim_bridge_sync_run_duration_seconds",
            "Sync run durations, by tenant.",
            &["tenant"],
            &self.sync_run_duration.snapshot(),
        );
        counter(
            &mut out,
            "scim_bridge_sync_items_total",
            "Sync run items, by tenant and outcome.",
            &["tenant", "outcome"],
            &self.sync_items.snapshot(),
        );
        gauge(
            &mut out,
            "scim_bridge_sync_pending_offboardings",
            "Offboardings decided and not yet applied, by tenant.",
            &["tenant"],
            &self.pending_offboardings.snapshot(),
        );
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn labels(names: &[&'static str], values: &[String]) -> Labels {
    names.iter().copied().zip(values.iter().cloned()).collect()
}

fn label_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape(&v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&'static str],
    series: &[(Vec<String>, u64)],
) {
    header(out, name, help, "counter");
    for (values, v) in series {
        let _ = writeln!(
            out,
            "{name}{} {v}",
            label_text(&labels(names, values), None)
        );
    }
}

fn gauge(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&'static str],
    series: &[(Vec<String>, i64)],
) {
    header(out, name, help, "gauge");
    for (values, v) in series {
        let _ = writeln!(
            out,
            "{name}{} {v}",
            label_text(&labels(names, values), None)
        );
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&'static str],
    series: &[(Vec<String>, Histogram)],
) {
    header(out, name, help, "histogram");
    for (values, h) in series {
        let l = labels(names, values);
        let mut cumulative = 0;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                label_text(&l, Some(("le", format!("{bound}"))))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            label_text(&l, Some(("le", "+Inf".into()))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", label_text(&l, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", label_text(&l, None), h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::new();
        let r = ScimRequest {
            tenant: "acme",
            resource: "Users",
            operation: "create",
            status: 201,
        };
        m.scim_request(&r, Duration::from_millis(3));
        m.scim_request(&r, Duration::from_millis(30));
        m.sync_run_finished("acme", "succeeded", Duration::from_secs(2));
        m.sync_items("acme", "created", 5);
        m.set_pending_offboardings("acme", 2);
        let text = m.render();
        assert!(text.contains(
            "scim_bridge_scim_requests_total{tenant=\"acme\",resource=\"Users\",operation=\"create\",status=\"201\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "scim_bridge_scim_request_duration_seconds_bucket{tenant=\"acme\",resource=\"Users\",operation=\"create\",le=\"0.005\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "scim_bridge_scim_request_duration_seconds_bucket{tenant=\"acme\",resource=\"Users\",operation=\"create\",le=\"0.05\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "scim_bridge_scim_request_duration_seconds_count{tenant=\"acme\",resource=\"Users\",operation=\"create\"} 2\n"
        ), "{text}");
        assert!(
            text.contains("scim_bridge_sync_runs_total{tenant=\"acme\",status=\"succeeded\"} 1\n")
        );
        assert!(
            text.contains("scim_bridge_sync_items_total{tenant=\"acme\",outcome=\"created\"} 5\n")
        );
        assert!(text.contains("scim_bridge_sync_pending_offboardings{tenant=\"acme\"} 2\n"));
        assert!(text.contains("scim_bridge_provisioning_log_dropped_total 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
