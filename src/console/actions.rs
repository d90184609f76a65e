//! The operators' actions: start a run (dry or real), approve a held run, release a
//! quarantined user, release a stale lease. Each is a POST form carrying the session's CSRF
//! token, first answered with a confirmation page, then carried out through the same sync use
//! cases as the admin API, with the admin token's name.

use maud::{Markup, html};
use poem::http::StatusCode;

use super::html::{csrf, page as chrome};
use super::params::{Params, query};
use super::session::Session;
use super::{Console, ConsoleError, Ctx, PREFIX, PageResult, Reply, csrf_refused};
use crate::sync::{RunStatus, Trigger};

/// The start-run and release-lease forms of a tenant's overview.
pub fn run_controls(session: &Session, tenant: &str, leased: bool) -> Markup {
    html! {
        section.actions aria-label={ "Actions for " (tenant) } {
            h3 { "Actions" }
            form method="post" action={ (PREFIX) "/actions/run" } {
                (csrf(session))
                input type="hidden" name="tenant" value=(tenant);
                span.field {
                    input id={ "full-" (tenant) } type="checkbox" name="full" value="yes";
                    label for={ "full-" (tenant) } { "Full (every user, not only the changed ones)" }
                }
                button type="submit" name="dry_run" value="yes" { "Start a dry run…" }
                " "
                button type="submit" name="dry_run" value="no" { "Start a run…" }
            }
            @if leased {
                form method="post" action={ (PREFIX) "/actions/release-lease" } {
                    (csrf(session))
                    input type="hidden" name="tenant" value=(tenant);
                    button type="submit" { "Release the lease…" }
                }
            }
        }
    }
}

pub fn approve_control(session: &Session, run: i64, held: i64) -> Markup {
    html! {
        form.actions method="post" action={ (PREFIX) "/actions/approve" } {
            (csrf(session))
            input type="hidden" name="run" value=(run);
            p { "The guard held " (held) " offboardings of this run." }
            button type="submit" { "Approve run " (run) "…" }
        }
    }
}

pub fn release_control(session: &Session, tenant: &str, user_id: &str) -> Markup {
    html! {
        form.inline method="post" action={ (PREFIX) "/actions/release-quarantine" } {
            (csrf(session))
            input type="hidden" name="tenant" value=(tenant);
            input type="hidden" name="user" value=(user_id);
            button type="submit" { "Release…" }
        }
    }
}

/// What an action would do, said before it is done.
struct Confirm {
    question: String,
    fields: Vec<(&'static str, String)>,
    cancel: String,
}

fn confirm_page(cx: &Ctx, action: &str, c: Confirm) -> PageResult {
    Ok(Reply::Html(
        StatusCode::OK,
        chrome(
            Some(&cx.session),
            "",
            "Confirm",
            html! {
                form.confirm method="post" action={ (PREFIX) "/actions/" (action) } {
                    p { (c.question) }
                    (csrf(&cx.session))
                    @for (k, v) in &c.fields { input type="hidden" name=(k) value=(v); }
                    input type="hidden" name="confirm" value="yes";
                    button type="submit" autofocus { "Yes, do it" }
                    " "
                    a href=(c.cancel) { "Cancel" }
                }
            },
        ),
    ))
}

fn required<'a>(form: &'a Params, name: &str) -> Result<&'a str, ConsoleError> {
    form.get(name)
        .ok_or_else(|| ConsoleError::new(StatusCode::BAD_REQUEST, format!("{name} is missing")))
}

/// Carry out (or confirm) the action at `path` (`/actions/…`). CSRF first, then the role.
pub async fn act(c: &Console, cx: &Ctx, path: &str, form: &Params) -> PageResult {
    if !cx.session.csrf_matches(form.get("csrf").unwrap_or("")) {
        tracing::warn!(admin = %cx.session.admin, "console action refused: CSRF token");
        return Err(csrf_refused());
    }
    if !cx.session.may_act() {
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "this action needs an admin token with the operator role",
        ));
    }
    let confirmed = form.yes("confirm")?;
    let admin = cx.session.admin.as_str();
    let service = c
        .state
        .sync
        .as_ref()
        .ok_or_else(|| ConsoleError::new(StatusCode::NOT_FOUND, "no tenant syncs"))?;
    let action = path.trim_start_matches("/actions/");
    match action {
        "run" => {
            let tenant = required(form, "tenant")?;
            let dry_run = form.yes("dry_run")?;
            let full = form.yes("full")?;
            service.tenant_config(tenant)?;
            if !confirmed {
                return confirm_page(
                    cx,
                    action,
                    Confirm {
                        question: format!(
                            "Start a {}{} run of tenant {tenant} now?{}",
                            if full { "full " } else { "" },
                            if dry_run { "dry" } else { "real" },
                            if dry_run {
                                " A dry run plans every change and writes nothing to the application."
                            } else {
                                " It writes to the application."
                            }
                        ),
                        fields: vec![
                            ("tenant", tenant.to_string()),
                            ("dry_run", if dry_run { "yes" } else { "no" }.into()),
                            ("full", if full { "yes" } else { "no" }.into()),
                        ],
                        cancel: format!("{PREFIX}?{}", query([("tenant", tenant)])),
                    },
                );
            }
            tracing::info!(admin, tenant, dry_run, full, "console: sync run requested");
            let started = service
                .start_run(tenant, Trigger::Api, dry_run, full)
                .await?;
            Ok(Reply::Redirect(format!("{PREFIX}/runs/{}", started.run_id)))
        }
        "approve" => {
            let run_id = form
                .int("run", 1, i64::MAX)?
                .ok_or_else(|| ConsoleError::new(StatusCode::BAD_REQUEST, "run is missing"))?;
            let run = service.ledger().run(run_id).await?.ok_or_else(|| {
                ConsoleError::new(StatusCode::NOT_FOUND, format!("no run {run_id}"))
            })?;
            if run.status != RunStatus::AwaitingApproval.as_str()
                || run.dry_run
                || run.approved_at.is_some()
            {
                return Err(ConsoleError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "run {run_id} is not awaiting approval (status {})",
                        run.status
                    ),
                ));
            }
            if !confirmed {
                return confirm_page(
                    cx,
                    action,
                    Confirm {
                        question: format!(
                            "Approve run {run_id} of tenant {}? A new run applies the {} offboardings the guard held.",
                            run.tenant, run.held
                        ),
                        fields: vec![("run", run_id.to_string())],
                        cancel: format!("{PREFIX}/runs/{run_id}"),
                    },
                );
            }
            tracing::info!(admin, tenant = %run.tenant, run_id, "console: approval requested");
            let started = service.approve(run_id, Trigger::Api, admin).await?;
            Ok(Reply::Redirect(format!("{PREFIX}/runs/{}", started.run_id)))
        }
        "release-quarantine" => {
            let tenant = required(form, "tenant")?;
            let user = required(form, "user")?;
            service.tenant_config(tenant)?;
            let story = format!(
                "{PREFIX}/user?{}",
                query([("tenant", tenant), ("by", "userId"), ("q", user)])
            );
            if !confirmed {
                return confirm_page(
                    cx,
                    action,
                    Confirm {
                        question: format!(
                            "Release user {user} of tenant {tenant} from quarantine? The next run tries it again."
                        ),
                        fields: vec![("tenant", tenant.to_string()), ("user", user.to_string())],
                        cancel: story,
                    },
                );
            }
            if !service.release_quarantine(tenant, user, admin).await? {
                return Err(ConsoleError::new(
                    StatusCode::NOT_FOUND,
                    "that user is not quarantined (any more)",
                ));
            }
            Ok(Reply::Redirect(story))
        }
        "release-lease" => {
            let tenant = required(form, "tenant")?;
            service.tenant_config(tenant)?;
            if !confirmed {
                return confirm_page(
                    cx,
                    action,
                    Confirm {
                        question: format!(
                            "Release the lease of tenant {tenant}, whoever holds it? Do this only when the run holding it is gone (its process died); a live run stops at its next batch."
                        ),
                        fields: vec![("tenant", tenant.to_string())],
                        cancel: format!("{PREFIX}?{}", query([("tenant", tenant)])),
                    },
                );
            }
            if service.release_lease(tenant, admin).await?.is_none() {
                return Err(ConsoleError::new(
                    StatusCode::NOT_FOUND,
                    format!("tenant {tenant} holds no lease"),
                ));
            }
            Ok(Reply::Redirect(format!(
                "{PREFIX}?{}",
                query([("tenant", tenant)])
            )))
        }
        _ => Err(ConsoleError::new(StatusCode::NOT_FOUND, "no such action")),
    }
}
