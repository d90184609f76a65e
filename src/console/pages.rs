//! The console's pages: each validates its parameters, makes one or a few reads through the
//! sync service, the ledger or the staging roles, and renders.

use std::sync::Arc;

use futures_util::try_join;
use maud::{Markup, html};
use poem::http::StatusCode;

use super::html::{
    csv, csv_link, note, opt_time, page as chrome, pager, status, time, user_link, value,
};
use super::params::{Params, query};
use super::{ConsoleError, Ctx, MAX_CSV_ROWS, PREFIX, PageResult, Reply};
use crate::api::SCIM_PREFIX;
use crate::api::admin_story::{Asked, UserStory, user_story};
use crate::config::SyncConfig;
use crate::store::{About, ProvisioningQuery, StatusFilter, format_time};
use crate::sync::SyncService;
use crate::sync::ledger::{RunQuery, RunRow, UserRef};
use crate::sync::service::PreviewSource;

use super::Console;

pub const RUN_STATUSES: &[&str] = &[
    "running",
    "succeeded",
    "completed_with_errors",
    "failed",
    "skipped",
    "awaiting_approval",
    "approved",
];
pub const TRIGGERS: &[&str] = &["schedule", "cli", "api"];
pub const OUTCOMES: &[&str] = &[
    "created",
    "updated",
    "reactivated",
    "deactivated",
    "failed",
    "offboarded",
    "purged",
    "offboarding_held",
    "adopted",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Route a GET.
pub async fn page(c: &Console, cx: &Ctx, path: &str, query: &str) -> PageResult {
    let params = |allowed: &[&str]| Params::parse(query, allowed);
    match path {
        "" => c.overview(cx, params(&["tenant"])?).await,
        "/runs" => {
            c.runs(
                cx,
                params(&[
                    "tenant", "status", "trigger", "since", "until", "offset", "limit", "format",
                ])?,
            )
            .await
        }
        "/failing" => {
            c.failing(
                cx,
                params(&["tenant", "quarantined", "offset", "limit", "format"])?,
            )
            .await
        }
        "/offboardings" => {
            c.offboardings(cx, params(&["tenant", "offset", "limit", "format"])?)
                .await
        }
        "/log" => {
            c.log(
                cx,
                params(&[
                    "tenant", "status", "method", "user", "since", "until", "offset", "limit",
                    "format",
                ])?,
            )
            .await
        }
        "/user" => {
            c.user(cx, params(&["tenant", "by", "q", "table", "format"])?)
                .await
        }
        "/mapping" => c.mapping(cx, params(&["tenant", "by", "q"])?).await,
        p => match p.strip_prefix("/runs/").map(str::parse::<i64>) {
            Some(Ok(id)) if id > 0 => {
                c.run(cx, id, params(&["outcome", "offset", "limit", "format"])?)
                    .await
            }
            _ => Err(ConsoleError::new(
                StatusCode::NOT_FOUND,
                "the console has no such page",
            )),
        },
    }
}

fn html_page(cx: &Ctx, current: &str, title: &str, body: Markup) -> PageResult {
    Ok(Reply::Html(
        StatusCode::OK,
        chrome(Some(&cx.session), current, title, body),
    ))
}

/// A `<select>` with a label; `""` is the "any" choice when `any` is set.
fn select(
    name: &str,
    label: &str,
    choices: &[&str],
    current: Option<&str>,
    any: Option<&str>,
) -> Markup {
    html! {
        span.field {
            label for={ "f-" (name) } { (label) }
            select id={ "f-" (name) } name=(name) {
                @if let Some(any) = any {
                    option value="" selected[current.is_none()] { (any) }
                }
                @for c in choices {
                    option value=(c) selected[current == Some(*c)] { (c.replace('_', " ")) }
                }
            }
        }
    }
}

fn text_input(name: &str, label: &str, current: Option<&str>, kind: &str, hint: &str) -> Markup {
    html! {
        span.field {
            label for={ "f-" (name) } { (label) }
            input id={ "f-" (name) } type=(kind) name=(name) value=[current] placeholder=(hint)
                maxlength="256";
        }
    }
}

/// A filter form (GET) whose fields are `fields`.
fn filters(action: &str, fields: Markup) -> Markup {
    html! {
        form.filters method="get" action=(action) role="search" aria-label="Filters" {
            (fields)
            button type="submit" { "Apply" }
            " "
            a href=(action) { "Clear" }
        }
    }
}

fn mins(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s < 60 {
        format!("{}.{:03} s", s, d.num_milliseconds() % 1000)
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

fn duration(r: &RunRow) -> String {
    let (Some(a), Some(b)) = (
        super::params::parse_time(&r.started_at),
        r.ended_at.as_deref().and_then(super::params::parse_time),
    ) else {
        return "—".into();
    };
    mins(b - a)
}

fn run_link(id: i64) -> Markup {
    html! { a href={ (PREFIX) "/runs/" (id) } { "run " (id) } }
}

fn change_list(
    changes: &std::collections::BTreeMap<String, crate::api::admin_sync::FieldChange>,
) -> Markup {
    html! {
        @if !changes.is_empty() {
            ul.changes {
                @for (col, ch) in changes {
                    li { code { (col) } ": " del { (value(&ch.before)) } " → " ins { (value(&ch.after)) } }
                }
            }
        }
    }
}

fn changes_text(
    changes: &std::collections::BTreeMap<String, crate::api::admin_sync::FieldChange>,
) -> String {
    changes
        .iter()
        .map(|(c, ch)| format!("{c}: {} -> {}", value(&ch.before), value(&ch.after)))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Console {
    fn tenant_names(&self) -> Vec<&str> {
        self.state.tenants.keys().map(String::as_str).collect()
    }

    /// The sync service and settings of a tenant that syncs.
    fn syncing(&self, tenant: &str) -> Option<(&Arc<SyncService>, SyncConfig)> {
        let service = self.state.sync.as_ref()?;
        Some((service, service.tenant_config(tenant).ok()?))
    }

    fn syncing_names(&self) -> Vec<&str> {
        self.tenant_names()
            .into_iter()
            .filter(|t| self.syncing(t).is_some())
            .collect()
    }

    /// The `tenant` parameter: a configured tenant, when given.
    fn tenant(&self, p: &Params) -> Result<Option<String>, ConsoleError> {
        match p.get("tenant") {
            None => Ok(None),
            Some(t) if self.state.tenants.contains_key(t) => Ok(Some(t.to_string())),
            Some(_) => Err(ConsoleError::new(
                StatusCode::NOT_FOUND,
                "no such tenant: choose one from the list",
            )),
        }
    }

    /// limit (default server.default_page_size, at most server.max_page_size) and offset;
    /// a CSV download takes up to [`MAX_CSV_ROWS`] from the start.
    fn paging(&self, p: &Params) -> Result<(i64, i64, bool), ConsoleError> {
        let server = &self.state.config.server;
        let csv = p.choice("format", &["csv"])?.is_some();
        let max = server.max_page_size.max(1);
        let limit = p
            .int("limit", 1, max)?
            .unwrap_or(server.default_page_size.clamp(1, max));
        let offset = p.int("offset", 0, 1_000_000_000)?.unwrap_or(0);
        Ok(if csv {
            (MAX_CSV_ROWS, 0, true)
        } else {
            (limit, offset, false)
        })
    }

    fn scim_url(&self, cx: &Ctx, tenant: &str) -> String {
        let root = match &self.state.config.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!(
                "http://{}",
                cx.host
                    .as_deref()
                    .unwrap_or(&self.state.config.server.listen)
            ),
        };
        format!("{root}{SCIM_PREFIX}/{tenant}/scim")
    }

    // ---- overview -------------------------------------------------------------------------

    async fn overview(&self, cx: &Ctx, p: Params) -> PageResult {
        let only = self.tenant(&p)?;
        let now = self.state.clock.now();
        let mut sections = Vec::new();
        for name in self.tenant_names() {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            // The reads are independent: run them at once (each on a read connection).
            let counts = async {
                self.state
                    .store
                    .tenant_counts(name)
                    .await
                    .map_err(ConsoleError::from)
            };
            let sync = async {
                let Some((service, config)) = self.syncing(name) else {
                    return Ok::<_, ConsoleError>(None);
                };
                let ledger = service.ledger();
                let awaiting = RunQuery {
                    tenant: Some(name.to_string()),
                    status: Some("awaiting_approval".into()),
                    limit: 5,
                    ..RunQuery::default()
                };
                let (last_run, failing, (quarantined, _), pending, awaiting, lease) = try_join!(
                    ledger.last_run(name),
                    ledger.failing(Some(name), false, 5, 0),
                    ledger.failing(Some(name), true, 1, 0),
                    ledger.pending_offboardings(name, config.retention_hours, 5, 0),
                    ledger.runs(&awaiting),
                    ledger.lease(name, now),
                )?;
                let next_run_at = config
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_after(now))
                    .map(format_time);
                Ok(Some((
                    (last_run, next_run_at),
                    failing,
                    quarantined,
                    pending,
                    awaiting,
                    lease,
                )))
            };
            let (counts, sync) = try_join!(counts, sync)?;
            let url = self.scim_url(cx, name);
            let act = cx.session.may_act();
            let url_id = format!("scim-url-{name}");
            sections.push(html! {
                section.tenant aria-labelledby={ "t-" (name) } {
                    h2 #{ "t-" (name) } { "Tenant " (name) }
                    p.scim-url {
                        label for=(url_id) { "SCIM endpoint (Tenant URL in Entra)" }
                        input id=(url_id) type="text" readonly value=(url) size="60";
                        button type="button" data-copy=(url_id) hidden { "Copy" }
                    }
                    table.facts {
                        caption { "Staged in tenant " (name) }
                        tbody {
                            tr { th scope="row" { "Active users" } td { (counts.active_users) } }
                            tr { th scope="row" { "Inactive users" } td { (counts.inactive_users) } }
                            tr { th scope="row" { "Groups" } td { (counts.groups) } }
                            tr { th scope="row" { "Memberships" } td { (counts.memberships) } }
                        }
                    }
                    @match &sync {
                        None => { (note("This tenant does not sync to an application: it only stages what the identity provider sends.")) }
                        Some((summary, (failing_total, failing), quarantined, (pending_total, pending), (awaiting_total, awaiting), lease)) => {
                            table.facts {
                                caption { "Sync of tenant " (name) }
                                tbody {
                                    tr { th scope="row" { "Last run" } td {
                                        @match &summary.0 {
                                            Some(r) => { (run_link(r.id)) " " (status(&r.status)) " started " (time(&r.started_at)) }
                                            None => "none yet",
                                        }
                                    } }
                                    tr { th scope="row" { "Next scheduled run" } td {
                                        (opt_time(summary.1.as_deref()))
                                        @if summary.1.is_none() { " (no schedule: runs on demand)" }
                                    } }
                                    tr { th scope="row" { "Failing now" } td { a href={ (PREFIX) "/failing?" (query([("tenant", name)])) } { (users(*failing_total)) } } }
                                    tr { th scope="row" { "Quarantined" } td { a href={ (PREFIX) "/failing?" (query([("tenant", name), ("quarantined", "yes")])) } { (users(*quarantined)) } } }
                                    tr { th scope="row" { "Pending offboardings" } td { a href={ (PREFIX) "/offboardings?" (query([("tenant", name)])) } { (pending_total) } } }
                                    tr { th scope="row" { "Runs awaiting approval" } td { a href={ (PREFIX) "/runs?" (query([("tenant", name), ("status", "awaiting_approval")])) } { (awaiting_total) } } }
                                    tr { th scope="row" { "Lease" } td {
                                        @match lease {
                                            None => "free",
                                            Some(Some(id)) => { "held by " (run_link(*id)) }
                                            Some(None) => "held",
                                        }
                                    } }
                                }
                            }
                            @if !failing.is_empty() {
                                table {
                                    caption { "Failing now in " (name) " (longest first)" }
                                    thead { tr { th scope="col" { "User" } th scope="col" { "Runs in a row" } th scope="col" { "Last error" } th scope="col" { "Since" } } }
                                    tbody {
                                        @for f in failing {
                                            tr {
                                                td { (user_link(name, &f.user_id, f.user_name.as_deref())) }
                                                td { (f.attempts) @if f.quarantined_at.is_some() { " " (status("quarantined")) } }
                                                td { (f.last_error) }
                                                td { (time(&f.first_failed_at)) }
                                            }
                                        }
                                    }
                                }
                            }
                            @if !pending.is_empty() {
                                table {
                                    caption { "Next offboardings in " (name) }
                                    thead { tr { th scope="col" { "User" } th scope="col" { "State" } th scope="col" { "Due" } } }
                                    tbody {
                                        @for o in pending {
                                            tr {
                                                td { (user_link(name, &o.user_id, o.user_name.as_deref())) }
                                                td { (o.state) }
                                                td { (time(&o.due_at)) }
                                            }
                                        }
                                    }
                                }
                            }
                            @if !awaiting.is_empty() {
                                table {
                                    caption { "Runs awaiting approval in " (name) }
                                    thead { tr { th scope="col" { "Run" } th scope="col" { "Started" } th scope="col" { "Held offboardings" } } }
                                    tbody {
                                        @for r in awaiting {
                                            tr { td { (run_link(r.id)) } td { (time(&r.started_at)) } td { (r.held) } }
                                        }
                                    }
                                }
                            }
                            @if act {
                                (super::actions::run_controls(&cx.session, name, lease.is_some()))
                            }
                        }
                    }
                }
            });
        }
        html_page(
            cx,
            "",
            "Overview",
            html! {
                @for s in &sections { (s) }
            },
        )
    }

    // ---- runs -----------------------------------------------------------------------------

    async fn runs(&self, cx: &Ctx, p: Params) -> PageResult {
        let tenant = self.tenant(&p)?;
        let q = RunQuery {
            tenant,
            status: p.choice("status", RUN_STATUSES)?,
            trigger: p.choice("trigger", TRIGGERS)?,
            since: p.time("since")?,
            until: p.time("until")?,
            limit: 0,
            offset: 0,
        };
        let (limit, offset, as_csv) = self.paging(&p)?;
        let q = RunQuery { limit, offset, ..q };
        let (total, rows) = match &self.state.sync {
            Some(s) => s.ledger().runs(&q).await?,
            None => (0, Vec::new()),
        };
        if as_csv {
            return Ok(Reply::Csv(
                "runs.csv",
                csv(
                    &[
                        "id",
                        "tenant",
                        "trigger",
                        "dryRun",
                        "full",
                        "status",
                        "startedAt",
                        "endedAt",
                        "created",
                        "updated",
                        "unchanged",
                        "deactivated",
                        "offboarded",
                        "failed",
                        "held",
                        "quarantined",
                        "error",
                    ],
                    rows.iter().map(|r| {
                        vec![
                            r.id.to_string(),
                            r.tenant.clone(),
                            r.trigger.clone(),
                            r.dry_run.to_string(),
                            r.full.to_string(),
                            r.status.clone(),
                            r.started_at.clone(),
                            r.ended_at.clone().unwrap_or_default(),
                            r.created.to_string(),
                            r.updated.to_string(),
                            r.unchanged.to_string(),
                            r.deactivated.to_string(),
                            r.offboarded.to_string(),
                            r.failed.to_string(),
                            r.held.to_string(),
                            r.quarantined.to_string(),
                            r.error.clone().unwrap_or_default(),
                        ]
                    }),
                ),
            ));
        }
        let keep: Vec<(&str, &str)> = p.pairs().collect();
        let base = format!("{PREFIX}/runs");
        let names = self.syncing_names();
        html_page(
            cx,
            "/runs",
            "Runs",
            html! {
                (filters(&base, html! {
                    (select("tenant", "Tenant", &names, q.tenant.as_deref(), Some("any")))
                    (select("status", "Status", RUN_STATUSES, q.status.as_deref(), Some("any")))
                    (select("trigger", "Trigger", TRIGGERS, q.trigger.as_deref(), Some("any")))
                    (text_input("since", "Started from (UTC)", p.get("since"), "datetime-local", "2026-01-15T09:00"))
                    (text_input("until", "Started before (UTC)", p.get("until"), "datetime-local", ""))
                }))
                @if self.state.sync.is_none() { (note("No tenant syncs: there are no runs.")) }
                table {
                    caption { "Sync runs, newest first" }
                    thead { tr {
                        th scope="col" { "Run" } th scope="col" { "Tenant" } th scope="col" { "Trigger" }
                        th scope="col" { "Status" } th scope="col" { "Started" } th scope="col" { "Took" }
                        th scope="col" { "Created" } th scope="col" { "Updated" } th scope="col" { "Deactivated" }
                        th scope="col" { "Offboarded" } th scope="col" { "Failed" } th scope="col" { "Held" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                th scope="row" { (run_link(r.id)) }
                                td { (r.tenant) }
                                td { (r.trigger) @if r.dry_run { " (dry run)" } @if r.full { " (full)" } }
                                td { (status(&r.status)) }
                                td { (time(&r.started_at)) }
                                td { (duration(r)) }
                                td.num { (r.created) } td.num { (r.updated) } td.num { (r.deactivated) }
                                td.num { (r.offboarded) } td.num { (r.failed) } td.num { (r.held) }
                            }
                        }
                    }
                }
                (pager(&base, &keep, total, limit, offset))
                (csv_link(&base, &keep, &[]))
            },
        )
    }

    // ---- a run ----------------------------------------------------------------------------

    async fn run(&self, cx: &Ctx, id: i64, p: Params) -> PageResult {
        let outcome = p.choice("outcome", OUTCOMES)?;
        let (limit, offset, as_csv) = self.paging(&p)?;
        let service = self.state.sync.as_ref().ok_or_else(|| {
            ConsoleError::new(StatusCode::NOT_FOUND, "no tenant syncs: there are no runs")
        })?;
        let ledger = service.ledger();
        let run = ledger
            .run(id)
            .await?
            .ok_or_else(|| ConsoleError::new(StatusCode::NOT_FOUND, format!("no run {id}")))?;
        let (total, items) = ledger.items(id, outcome.as_deref(), limit, offset).await?;
        let items: Vec<crate::api::admin_sync::RunItem> =
            items.into_iter().map(Into::into).collect();
        if as_csv {
            return Ok(Reply::Csv(
                "run-items.csv",
                csv(
                    &[
                        "run",
                        "userId",
                        "userName",
                        "appKey",
                        "outcome",
                        "action",
                        "changes",
                        "rolesAdded",
                        "rolesRemoved",
                        "error",
                    ],
                    items.iter().map(|i| {
                        vec![
                            id.to_string(),
                            i.user_id.clone(),
                            i.user_name.clone().unwrap_or_default(),
                            i.app_key.clone().unwrap_or_default(),
                            i.outcome.clone(),
                            i.action.clone().unwrap_or_default(),
                            changes_text(&i.changes),
                            i.roles_added.join(" "),
                            i.roles_removed.join(" "),
                            i.error.clone().unwrap_or_default(),
                        ]
                    }),
                ),
            ));
        }
        let keep: Vec<(&str, &str)> = p.pairs().collect();
        let base = format!("{PREFIX}/runs/{id}");
        let approvable =
            run.status == "awaiting_approval" && !run.dry_run && run.approved_at.is_none();
        let counts = [
            ("Created", run.created),
            ("Updated", run.updated),
            ("Unchanged", run.unchanged),
            ("Roles added", run.roles_added),
            ("Roles removed", run.roles_removed),
            ("Deactivated", run.deactivated),
            ("Offboarded", run.offboarded),
            ("Failed", run.failed),
            ("Held by the guard", run.held),
            ("Quarantined (skipped)", run.quarantined),
        ];
        html_page(
            cx,
            "/runs",
            &format!("Run {id}"),
            html! {
                table.facts {
                    caption { "Run " (id) }
                    tbody {
                        tr { th scope="row" { "Tenant" } td { a href={ (PREFIX) "?" (query([("tenant", run.tenant.as_str())])) } { (run.tenant) } } }
                        tr { th scope="row" { "Status" } td { (status(&run.status)) } }
                        tr { th scope="row" { "Trigger" } td { (run.trigger) @if run.dry_run { " (dry run: nothing written)" } @if run.full { " (full)" } } }
                        tr { th scope="row" { "Started" } td { (time(&run.started_at)) } }
                        tr { th scope="row" { "Ended" } td { (opt_time(run.ended_at.as_deref())) " (" (duration(&run)) ")" } }
                        tr { th scope="row" { "Watermark" } td {
                            (run.watermark_from.map(|w| w.to_string()).unwrap_or_else(|| "—".into())) " → "
                            (run.watermark_to.map(|w| w.to_string()).unwrap_or_else(|| "—".into()))
                        } }
                        @if let Some(e) = &run.error { tr { th scope="row" { "Error" } td.error { (e) } } }
                        @if let Some(a) = run.approves_run { tr { th scope="row" { "Approves" } td { (run_link(a)) } } }
                        @if let Some(at) = &run.approved_at { tr { th scope="row" { "Approved" } td { (time(at))
                            @if let Some(who) = &run.approver { " by " (who) }
                            @if let Some(by) = run.approved_by { ", applied by " (run_link(by)) } } } }
                    }
                }
                table.counts {
                    caption { "What run " (id) " did" }
                    thead { tr { @for (label, _) in &counts { th scope="col" { (label) } } } }
                    tbody { tr { @for (_, n) in &counts { td.num { (n) } } } }
                }
                @if approvable {
                    @if cx.session.may_act() {
                        (super::actions::approve_control(&cx.session, id, run.held))
                    } @else {
                        (note("This run waits for an operator's approval."))
                    }
                }
                h2 #items { "Items" }
                (filters(&base, html! {
                    (select("outcome", "Outcome", OUTCOMES, outcome.as_deref(), Some("any")))
                }))
                table {
                    caption { "Items of run " (id) @if let Some(o) = &outcome { ", outcome " (o.replace('_', " ")) } ", in the order recorded" }
                    thead { tr {
                        th scope="col" { "User" } th scope="col" { "Application key" } th scope="col" { "Outcome" }
                        th scope="col" { "Changes (before → after)" } th scope="col" { "Roles" } th scope="col" { "Error" }
                    } }
                    tbody {
                        @for i in &items {
                            tr {
                                th scope="row" { (user_link(&run.tenant, &i.user_id, i.user_name.as_deref())) }
                                td { (i.app_key.as_deref().unwrap_or("—")) }
                                td { (status(&i.outcome)) @if let Some(a) = &i.action { " (" (a) ")" } }
                                td { (change_list(&i.changes)) }
                                td {
                                    @for r in &i.roles_added { ins { "+" (r) } " " }
                                    @for r in &i.roles_removed { del { "−" (r) } " " }
                                }
                                td.error { (i.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                (pager(&base, &keep, total, limit, offset))
                (csv_link(&base, &keep, &[]))
            },
        )
    }

    // ---- a user ---------------------------------------------------------------------------

    async fn user(&self, cx: &Ctx, p: Params) -> PageResult {
        let names = self.tenant_names();
        let tenant = self
            .tenant(&p)?
            .or_else(|| names.first().map(|t| t.to_string()));
        let by = p
            .choice("by", &["userName", "externalId", "userId"])?
            .unwrap_or_else(|| "userName".into());
        let table = p.choice("table", &["runs", "requests"])?;
        let as_csv = p.choice("format", &["csv"])?.is_some();
        let story = match (&tenant, p.get("q")) {
            (Some(t), Some(q)) => {
                let asked = match by.as_str() {
                    "userId" => Asked::Id(q.to_string()),
                    "externalId" => Asked::ExternalId(q.to_string()),
                    _ => Asked::UserName(q.to_string()),
                };
                let limit = if as_csv { 100 } else { 20 };
                match user_story(&self.state, t, asked, limit).await {
                    Ok(s) => Some(Ok(s)),
                    Err(e) if e.status == StatusCode::NOT_FOUND => Some(Err(e.detail)),
                    Err(e) => return Err(e.into()),
                }
            }
            _ => None,
        };
        if as_csv {
            let Some(Ok(s)) = &story else {
                return Err(ConsoleError::new(StatusCode::NOT_FOUND, "no such user"));
            };
            return Ok(match table.as_deref() {
                Some("requests") => Reply::Csv(
                    "user-requests.csv",
                    csv(
                        &[
                            "time",
                            "requestId",
                            "method",
                            "path",
                            "resourceId",
                            "status",
                            "durationMs",
                            "error",
                        ],
                        s.requests.iter().map(|r| {
                            vec![
                                r.time.clone(),
                                r.request_id.clone(),
                                r.method.clone(),
                                r.path.clone(),
                                r.resource_id.clone().unwrap_or_default(),
                                r.status.to_string(),
                                r.duration_ms.to_string(),
                                r.error.clone().unwrap_or_default(),
                            ]
                        }),
                    ),
                ),
                _ => Reply::Csv(
                    "user-runs.csv",
                    csv(
                        &[
                            "run",
                            "trigger",
                            "dryRun",
                            "runStatus",
                            "startedAt",
                            "outcome",
                            "appKey",
                            "changes",
                            "error",
                        ],
                        s.items.iter().map(|i| {
                            vec![
                                i.run_id.to_string(),
                                i.trigger.clone(),
                                i.dry_run.to_string(),
                                i.run_status.clone(),
                                i.run_started_at.clone(),
                                i.item.outcome.clone(),
                                i.item.app_key.clone().unwrap_or_default(),
                                changes_text(&i.item.changes),
                                i.item.error.clone().unwrap_or_default(),
                            ]
                        }),
                    ),
                ),
            });
        }
        let status_code = match &story {
            Some(Err(_)) => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        };
        let base = format!("{PREFIX}/user");
        let keep: Vec<(&str, &str)> = p.pairs().collect();
        let body = html! {
            form.filters method="get" action=(base) role="search" aria-label="Find a user" {
                (select("tenant", "Tenant", &names, tenant.as_deref(), None))
                (select("by", "By", &["userName", "externalId", "userId"], Some(by.as_str()), None))
                (text_input("q", "User", p.get("q"), "search", "ann@example.com"))
                button type="submit" { "Find" }
            }
            @match &story {
                None => (note("Find a user by userName (case-insensitive), externalId (Entra's object id) or id: what is staged, what the application has, every run and SCIM request about it, and where it stands.")),
                Some(Err(detail)) => p.error role="alert" { (detail) },
                Some(Ok(s)) => (self.story(cx, s, &keep)),
            }
        };
        Ok(Reply::Html(
            status_code,
            chrome(Some(&cx.session), "/user", "User", body),
        ))
    }

    fn story(&self, cx: &Ctx, s: &UserStory, keep: &[(&str, &str)]) -> Markup {
        let base = format!("{PREFIX}/user");
        html! {
            p.headline role="status" { (s.headline) }
            @if let Some(st) = &s.staged {
                table.facts {
                    caption { "Staged (what the identity provider sent)" }
                    tbody {
                        tr { th scope="row" { "userName" } td { (st.user_name) } }
                        tr { th scope="row" { "externalId" } td { (st.external_id.as_deref().unwrap_or("—")) } }
                        tr { th scope="row" { "id" } td { (s.user_id.as_deref().unwrap_or("—")) } }
                        tr { th scope="row" { "displayName" } td { (st.display_name.as_deref().unwrap_or("—")) } }
                        tr { th scope="row" { "State" } td { @if st.deleted { "deleted" } @else if st.active { "active" } @else { "inactive" } } }
                        @if st.deactivated_at.is_some() { tr { th scope="row" { "Deactivated" } td { (opt_time(st.deactivated_at.as_deref())) } } }
                        @if st.deleted_at.is_some() { tr { th scope="row" { "Deleted" } td { (opt_time(st.deleted_at.as_deref())) } } }
                        tr { th scope="row" { "Groups" } td { (st.groups.join(", ")) } }
                    }
                }
            }
            @if let Some(a) = &s.application {
                table.facts {
                    caption { "In the application" }
                    tbody {
                        tr { th scope="row" { "Key" } td { (a.app_key) } }
                        tr { th scope="row" { "State" } td { (a.state) } }
                        tr { th scope="row" { "Roles" } td { (a.roles.join(", ")) } }
                        tr { th scope="row" { "Written" } td { (time(&a.updated_at)) } }
                    }
                }
            }
            @if let Some(f) = &s.failing {
                table.facts {
                    caption { "Failing" }
                    tbody {
                        tr { th scope="row" { "Runs in a row" } td { (f.attempts) } }
                        tr { th scope="row" { "Last error" } td.error { (f.last_error) } }
                        tr { th scope="row" { "Since" } td { (time(&f.first_failed_at)) } }
                        tr { th scope="row" { "Quarantined" } td { (opt_time(f.quarantined_at.as_deref())) } }
                    }
                }
                @if f.quarantined && cx.session.may_act() {
                    (super::actions::release_control(&cx.session, &s.tenant, &f.user_id))
                }
            }
            @if let Some(o) = &s.offboarding {
                table.facts {
                    caption { "Pending offboarding" }
                    tbody {
                        tr { th scope="row" { "State" } td { (o.state) } }
                        tr { th scope="row" { "Due" } td { (time(&o.due_at)) @if o.due { " (due now)" } } }
                        @if let Some(a) = &o.action { tr { th scope="row" { "Action" } td { (a) } } }
                        @if let Some(e) = &o.last_error { tr { th scope="row" { "Last error" } td.error { (e) " (" (o.attempts) " attempts)" } } }
                    }
                }
            }
            h2 { "Runs" }
            table {
                caption { "The runs that touched this user, newest first (" (s.items.len()) " of " (s.items_total) ")" }
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Started" } th scope="col" { "Outcome" }
                    th scope="col" { "Changes (before → after)" } th scope="col" { "Error" }
                } }
                tbody {
                    @for i in &s.items {
                        tr {
                            th scope="row" { (run_link(i.run_id)) " " (i.trigger) @if i.dry_run { " (dry run)" } }
                            td { (time(&i.run_started_at)) }
                            td { (status(&i.item.outcome)) }
                            td { (change_list(&i.item.changes)) }
                            td.error { (i.item.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            (csv_link(&base, keep, &[("table", "runs")]))
            h2 { "SCIM requests" }
            table {
                caption { "SCIM requests about this user, newest first (" (s.requests.len()) " of " (s.requests_total) ")" }
                thead { tr {
                    th scope="col" { "Time" } th scope="col" { "Request" } th scope="col" { "Status" }
                    th scope="col" { "Error" } th scope="col" { "Request id" }
                } }
                tbody {
                    @for r in &s.requests {
                        tr {
                            th scope="row" { (time(&r.time)) }
                            td { (r.method) " " (r.path) }
                            td { (status_badge(r.status)) }
                            td.error { (r.error.as_deref().unwrap_or("")) }
                            td { code { (r.request_id) } }
                        }
                    }
                }
            }
            (csv_link(&base, keep, &[("table", "requests")]))
        }
    }

    // ---- failing now ----------------------------------------------------------------------

    async fn failing(&self, cx: &Ctx, p: Params) -> PageResult {
        let tenant = self.tenant(&p)?;
        let quarantined = p.yes("quarantined")?;
        let (limit, offset, as_csv) = self.paging(&p)?;
        let (total, rows) = match &self.state.sync {
            Some(s) => {
                s.ledger()
                    .failing(tenant.as_deref(), quarantined, limit, offset)
                    .await?
            }
            None => (0, Vec::new()),
        };
        if as_csv {
            return Ok(Reply::Csv(
                "failing.csv",
                csv(
                    &[
                        "tenant",
                        "userId",
                        "userName",
                        "attempts",
                        "lastError",
                        "firstFailedAt",
                        "lastFailedAt",
                        "quarantinedAt",
                    ],
                    rows.iter().map(|f| {
                        vec![
                            f.tenant.clone(),
                            f.user_id.clone(),
                            f.user_name.clone().unwrap_or_default(),
                            f.attempts.to_string(),
                            f.last_error.clone(),
                            f.first_failed_at.clone(),
                            f.last_failed_at.clone(),
                            f.quarantined_at.clone().unwrap_or_default(),
                        ]
                    }),
                ),
            ));
        }
        let keep: Vec<(&str, &str)> = p.pairs().collect();
        let base = format!("{PREFIX}/failing");
        let names = self.syncing_names();
        let act = cx.session.may_act();
        html_page(
            cx,
            "/failing",
            "Failing now",
            html! {
                (note("Users whose last sync attempt failed: every run tries them again, until they fail quarantine_after runs in a row on one staged version; then runs skip them (quarantined) until their staged data changes or an operator releases them."))
                (filters(&base, html! {
                    (select("tenant", "Tenant", &names, tenant.as_deref(), Some("any")))
                    (select("quarantined", "Quarantined only", &["yes", "no"], Some(if quarantined { "yes" } else { "no" }), None))
                }))
                table {
                    caption { @if quarantined { "Quarantined users" } @else { "Failing users" } ", longest failing first" }
                    thead { tr {
                        th scope="col" { "User" } th scope="col" { "Tenant" } th scope="col" { "Runs in a row" }
                        th scope="col" { "Last error" } th scope="col" { "Failing since" } th scope="col" { "Last failed" }
                        th scope="col" { "Quarantined" }
                        @if act { th scope="col" { "Action" } }
                    } }
                    tbody {
                        @for f in &rows {
                            tr {
                                th scope="row" { (user_link(&f.tenant, &f.user_id, f.user_name.as_deref())) }
                                td { (f.tenant) }
                                td.num { (f.attempts) }
                                td.error { (f.last_error) }
                                td { (time(&f.first_failed_at)) }
                                td { (time(&f.last_failed_at)) }
                                td { (opt_time(f.quarantined_at.as_deref())) }
                                @if act { td { @if f.quarantined_at.is_some() { (super::actions::release_control(&cx.session, &f.tenant, &f.user_id)) } } }
                            }
                        }
                    }
                }
                (pager(&base, &keep, total, limit, offset))
                (csv_link(&base, &keep, &[]))
            },
        )
    }

    // ---- pending offboardings -------------------------------------------------------------

    async fn offboardings(&self, cx: &Ctx, p: Params) -> PageResult {
        let names = self.syncing_names();
        let tenant = self
            .tenant(&p)?
            .or_else(|| names.first().map(|t| t.to_string()));
        let (limit, offset, as_csv) = self.paging(&p)?;
        let now = self.state.clock.now();
        let (retention, total, rows) = match tenant.as_deref().and_then(|t| self.syncing(t)) {
            Some((service, config)) => {
                let t = tenant.as_deref().unwrap_or_default();
                let (total, rows) = service
                    .ledger()
                    .pending_offboardings(t, config.retention_hours, limit, offset)
                    .await?;
                (Some(config.retention_hours), total, rows)
            }
            None => (None, 0, Vec::new()),
        };
        let due = |at: &str| super::params::parse_time(at).is_some_and(|d| d <= now);
        if as_csv {
            return Ok(Reply::Csv(
                "offboardings.csv",
                csv(
                    &[
                        "tenant",
                        "state",
                        "userId",
                        "userName",
                        "appKey",
                        "deactivatedAt",
                        "deletedAt",
                        "dueAt",
                        "due",
                        "attempts",
                        "lastError",
                    ],
                    rows.iter().map(|o| {
                        vec![
                            tenant.clone().unwrap_or_default(),
                            o.state.clone(),
                            o.user_id.clone(),
                            o.user_name.clone().unwrap_or_default(),
                            o.app_key.clone(),
                            o.deactivated_at.clone().unwrap_or_default(),
                            o.deleted_at.clone().unwrap_or_default(),
                            o.due_at.clone(),
                            due(&o.due_at).to_string(),
                            o.attempts.to_string(),
                            o.last_error.clone().unwrap_or_default(),
                        ]
                    }),
                ),
            ));
        }
        let keep: Vec<(&str, &str)> = p.pairs().collect();
        let base = format!("{PREFIX}/offboardings");
        let t = tenant.clone().unwrap_or_default();
        html_page(
            cx,
            "/offboardings",
            "Pending offboardings",
            html! {
                (filters(&base, html! {
                    (select("tenant", "Tenant", &names, tenant.as_deref(), None))
                }))
                @match retention {
                    None => (note("This tenant does not sync: nothing is offboarded.")),
                    Some(h) => (note(&format!("Users deactivated or deleted in the identity provider keep their application row for the retention ({h} hours); then the next run offboards them. Queued ones were decided and are retried by every run."))),
                }
                table {
                    caption { "Offboardings not applied yet in " (t) ", soonest due first" }
                    thead { tr {
                        th scope="col" { "User" } th scope="col" { "State" } th scope="col" { "Application key" }
                        th scope="col" { "Deactivated" } th scope="col" { "Due" } th scope="col" { "Attempts" } th scope="col" { "Last error" }
                    } }
                    tbody {
                        @for o in &rows {
                            tr {
                                th scope="row" { (user_link(&t, &o.user_id, o.user_name.as_deref())) }
                                td { (o.state) }
                                td { (o.app_key) }
                                td { (opt_time(o.deactivated_at.as_deref().or(o.deleted_at.as_deref()))) }
                                td { (time(&o.due_at)) @if due(&o.due_at) { " (due)" } }
                                td.num { (o.attempts) }
                                td.error { (o.last_error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                (pager(&base, &keep, total, limit, offset))
                (csv_link(&base, &keep, &[]))
            },
        )
    }

    // ---- provisioning log -----------------------------------------------------------------

    async fn log(&self, cx: &Ctx, p: Params) -> PageResult {
        let names = self.tenant_names();
        let tenant = self
            .tenant(&p)?
            .or_else(|| names.first().map(|t| t.to_string()));
        let status_filter = match p.get("status") {
            None => None,
            Some(s) => Some(StatusFilter::parse(s).ok_or_else(|| {
                ConsoleError::new(
                    StatusCode::BAD_REQUEST,
                    "status: a status like 404, or 2xx, 4xx, 5xx",
                )
            })?),
        };
        let method = p.choice("method", METHODS)?;
        let user = p.get("user").map(str::to_string);
        let (limit, offset, as_csv) = self.paging(&p)?;
        let q = ProvisioningQuery {
            status: status_filter,
            method,
            about: user.as_ref().map(|u| About {
                ids: vec![u.clone()],
                user_name: Some(u.to_lowercase()),
                external_id: Some(u.clone()),
            }),
            since: p.time("since")?,
            until: p.time("until")?,
            limit,
            offset,
            ..ProvisioningQuery::default()
        };
        let t = tenant.clone().unwrap_or_default();
        let (total, rows) = match &tenant {
            Some(t) => self.state.store.provisioning_log(t, &q).await?,
            None => (0, Vec::new()),
        };
        if as_csv {
            return Ok(Reply::Csv(
                "provisioning-log.csv",
                csv(
                    &[
                        "time",
                        "requestId",
                        "method",
                        "path",
                        "resourceId",
                        "status",
                        "durationMs",
                        "error",
                        "userName",
                        "externalId",
                    ],
                    rows.iter().map(|r| {
                        vec![
                            r.at.clone(),
                            r.request_id.clone(),
                            r.method.clone(),
                            r.path.clone(),
                            r.resource_id.clone().unwrap_or_default(),
                            r.status.to_string(),
                            r.duration_ms.to_string(),
                            r.error.clone().unwrap_or_default(),
                            r.user_name.clone().unwrap_or_default(),
                            r.external_id.clone().unwrap_or_default(),
                        ]
                    }),
                ),
            ));
        }
        let keep: Vec<(&str, &str)> = p.pairs().collect();
        let base = format!("{PREFIX}/log");
        html_page(
            cx,
            "/log",
            "Provisioning log",
            html! {
                (note("Every SCIM request the identity provider made, with its answer. Bodies, query strings and filter values are never recorded."))
                (filters(&base, html! {
                    (select("tenant", "Tenant", &names, tenant.as_deref(), None))
                    (select("status", "Status", &["2xx", "4xx", "5xx"], p.get("status"), Some("any")))
                    (select("method", "Method", METHODS, p.get("method"), Some("any")))
                    (text_input("user", "User (id, userName or externalId)", user.as_deref(), "search", ""))
                    (text_input("since", "From (UTC)", p.get("since"), "datetime-local", ""))
                    (text_input("until", "Before (UTC)", p.get("until"), "datetime-local", ""))
                }))
                table {
                    caption { "SCIM requests to " (t) ", newest first" }
                    thead { tr {
                        th scope="col" { "Time" } th scope="col" { "Request" } th scope="col" { "User" }
                        th scope="col" { "Status" } th scope="col" { "Took" } th scope="col" { "Error" } th scope="col" { "Request id" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                th scope="row" { (time(&r.at)) }
                                td { (r.method) " " (r.path) }
                                td {
                                    @if r.path.starts_with("/Users") {
                                        @if let Some(id) = &r.resource_id { (user_link(&t, id, r.user_name.as_deref())) }
                                        @else if let Some(n) = &r.user_name {
                                            a href={ (PREFIX) "/user?" (query([("tenant", t.as_str()), ("by", "userName"), ("q", n.as_str())])) } { (n) }
                                        }
                                    }
                                }
                                td { (status_badge(r.status)) }
                                td.num { (format!("{:.1} ms", r.duration_ms)) }
                                td.error { (r.error.as_deref().unwrap_or("")) }
                                td { code { (r.request_id) } }
                            }
                        }
                    }
                }
                (pager(&base, &keep, total, limit, offset))
                (csv_link(&base, &keep, &[]))
            },
        )
    }

    // ---- mapping --------------------------------------------------------------------------

    async fn mapping(&self, cx: &Ctx, p: Params) -> PageResult {
        let names = self.syncing_names();
        let tenant = self
            .tenant(&p)?
            .or_else(|| names.first().map(|t| t.to_string()));
        let by = p
            .choice("by", &["userName", "userId"])?
            .unwrap_or_else(|| "userName".into());
        let base = format!("{PREFIX}/mapping");
        let Some((t, (service, config))) = tenant
            .as_deref()
            .and_then(|t| self.syncing(t).map(|s| (t, s)))
        else {
            return html_page(
                cx,
                "/mapping",
                "Mapping",
                note("No tenant (of these) syncs: there is no mapping."),
            );
        };
        let preview = match p.get("q") {
            None => None,
            Some(q) => {
                let who = if by == "userId" {
                    UserRef::Id(q)
                } else {
                    UserRef::UserName(q)
                };
                Some(
                    service
                        .preview(t, PreviewSource::Staged(who))
                        .await
                        .map_err(|e| {
                            let e = crate::api::problem::AdminError::from(e);
                            e.detail
                        }),
                )
            }
        };
        let m = &config.mapping.0;
        let target = m.target();
        let s = &config;
        html_page(
            cx,
            "/mapping",
            "Mapping",
            html! {
                (filters(&base, html! { (select("tenant", "Tenant", &names, Some(t), None)) }))
                table.facts {
                    caption { "The mapping of " (t) }
                    tbody {
                        tr { th scope="row" { "File" } td { code { (config.mapping_path.display()) } } }
                        tr { th scope="row" { "Application" } td { (target.database) } }
                        tr { th scope="row" { "User table" } td { (target.user_table) " keyed by " code { (target.key_column) } } }
                        tr { th scope="row" { "Offboarding" } td { (m.offboarding_action()) } }
                        tr { th scope="row" { "Schedule" } td { (s.schedule.as_ref().map(|x| x.expr.as_str()).unwrap_or("none (on demand)")) } }
                        tr { th scope="row" { "Retention" } td { (s.retention_hours) " hours" } }
                        tr { th scope="row" { "Guard" } td { "holds offboardings above " (format!("{:.0}%", s.guard_share * 100.0)) " of the users (at least " (s.guard_min) ")" } }
                        tr { th scope="row" { "Quarantine after" } td { (s.quarantine_after) " failed runs" } }
                        tr { th scope="row" { "Tests" } td { (m.test_count()) " [[test]] cases" } }
                    }
                }
                table {
                    caption { "Fields: what each column is written from" }
                    thead { tr { th scope="col" { "Column" } th scope="col" { "Section" } th scope="col" { "Template" } th scope="col" { "Type" } th scope="col" { "Line" } } }
                    tbody {
                        @for f in m.field_descriptions() {
                            tr { th scope="row" { code { (f.column) } } td { (f.section) } td { code { (f.template) } } td { (f.ty.to_string()) } td.num { (f.line) } }
                        }
                    }
                }
                table {
                    caption { "Role rules: a user gets the roles of every rule one of its groups matches" }
                    thead { tr { th scope="col" { "Matches" } th scope="col" { "Roles" } } }
                    tbody {
                        @for (matches, roles) in m.role_rule_descriptions() {
                            tr { th scope="row" { code { (matches) } } td { (roles.join(", ")) } }
                        }
                    }
                }
                @for (name, lk) in m.lookups() {
                    table {
                        caption { "Lookup table " (name) @if lk.ignore_case { " (ignoring case)" } @if let Some(d) = &lk.default { ", otherwise " q { (d) } } }
                        thead { tr { th scope="col" { "Value" } th scope="col" { "Becomes" } } }
                        tbody {
                            @for (k, v) in &lk.values { tr { th scope="row" { (k) } td { (v) } } }
                        }
                    }
                }
                h2 #preview { "Preview one staged user" }
                form.filters method="get" action=(base) aria-label="Preview" {
                    input type="hidden" name="tenant" value=(t);
                    (select("by", "By", &["userName", "userId"], Some(by.as_str()), None))
                    (text_input("q", "User", p.get("q"), "search", ""))
                    button type="submit" { "Preview" }
                }
                @match &preview {
                    None => (note("Renders the user with the mapping in use and shows what the next run would change; nothing is written.")),
                    Some(Err(detail)) => p.error role="alert" { (detail) },
                    Some(Ok(pv)) => {
                        p { "Rendered as " strong { (pv.state) } ", key " code { (pv.key_column) " = " (pv.key) } "." }
                        table {
                            caption { "The application row the mapping renders" @if pv.link.is_some() { ", and what the next run would change" } }
                            thead { tr { th scope="col" { "Column" } th scope="col" { "Value" } @if pv.link.is_some() { th scope="col" { "In the application now" } } } }
                            tbody {
                                @for (col, v) in &pv.fields {
                                    tr {
                                        th scope="row" { code { (col) } }
                                        td { (value(v)) }
                                        @if let Some(l) = &pv.link {
                                            td {
                                                @match pv.changes.as_ref().and_then(|c| c.get(col)) {
                                                    Some(ch) => { del { (value(&ch.before)) } " (changes)" }
                                                    None => { (l.fields.get(col).map(value).unwrap_or_else(|| "same".into())) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        p { "Roles: " (pv.roles.join(", "))
                            @if let Some(a) = &pv.roles_added { @if !a.is_empty() { "; the next run adds " (a.join(", ")) } }
                            @if let Some(r) = &pv.roles_removed { @if !r.is_empty() { "; removes " (r.join(", ")) } }
                        }
                    }
                }
            },
        )
    }
}

/// "1 user", "2 users".
fn users(n: i64) -> String {
    if n == 1 {
        "1 user".into()
    } else {
        format!("{n} users")
    }
}

fn status_badge(code: u16) -> Markup {
    let class = match code {
        200..=299 => "ok",
        400..=499 => "warn",
        _ => "bad",
    };
    html! { span class={ "badge " (class) } { (code) } }
}
