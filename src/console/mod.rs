//! The admin console at /console: server-rendered HTML pages over the same use cases and
//! read roles as the admin API (the sync service, the ledger reads, the staging counts, the
//! provisioning log), for admins who would rather not read JSON.
//!
//! Templates are `maud` macros: Rust, checked by the compiler, every interpolation escaped,
//! no template files to ship. The CSS and the small script are in the binary; nothing is
//! loaded from another host, and every page reads without the script (it only shows times
//! in the browser's time zone and adds copy buttons).
//!
//! Sign-in turns an admin token into a server-side session ([`session`]); the token is read
//! from the sign-in form once and never appears in a URL, a page or a log. Every POST form
//! carries the session's CSRF token. Readers see no action controls, and the server refuses
//! their actions (403).

mod actions;
mod html;
mod pages;
pub mod params;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

use maud::{Markup, html};
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, Request, Response};

use crate::api::AppState;
use crate::api::problem::AdminError;
use params::{BadParam, Params};
use session::{Session, Sessions};

pub const PREFIX: &str = "/console";
/// Part of the asset URLs, so a new version is never served from an old cache.
pub const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
const COOKIE: &str = "scim_bridge_console";
/// The largest form body the console reads.
const MAX_FORM: usize = 8 * 1024;
/// The most rows one CSV download holds.
pub const MAX_CSV_ROWS: i64 = 10_000;

/// The console's state: the application's, and the sessions.
pub struct Console {
    pub state: Arc<AppState>,
    pub sessions: Sessions,
    /// Cookies are `Secure` when the server is reached over https.
    secure: bool,
}

/// What a page answers.
pub enum Reply {
    Html(StatusCode, Markup),
    Csv(&'static str, String),
    /// 303 See Other.
    Redirect(String),
    /// Built by the caller (sign-in and sign-out set the cookie).
    Raw(Response),
}

/// A page that cannot be shown: its status and why, for a person.
#[derive(Debug, Clone)]
pub struct ConsoleError {
    pub status: StatusCode,
    pub detail: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ConsoleError {
            status,
            detail: detail.into(),
        }
    }
}

impl From<AdminError> for ConsoleError {
    fn from(e: AdminError) -> Self {
        ConsoleError::new(e.status, e.detail)
    }
}

impl From<crate::sync::SyncError> for ConsoleError {
    fn from(e: crate::sync::SyncError) -> Self {
        AdminError::from(e).into()
    }
}

impl From<crate::store::StoreError> for ConsoleError {
    fn from(e: crate::store::StoreError) -> Self {
        AdminError::from(e).into()
    }
}

impl From<BadParam> for ConsoleError {
    fn from(e: BadParam) -> Self {
        ConsoleError::new(StatusCode::BAD_REQUEST, e.0)
    }
}

pub type PageResult = Result<Reply, ConsoleError>;

/// The console as an endpoint, to be nested at [`PREFIX`].
pub fn endpoint(state: Arc<AppState>) -> ConsoleEndpoint {
    ConsoleEndpoint(Arc::new(Console::new(state)))
}

pub struct ConsoleEndpoint(pub Arc<Console>);

impl Endpoint for ConsoleEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(self.0.serve(req).await)
    }
}

/// The signed-in admin a page is rendered for, and where the request came from.
pub struct Ctx {
    pub session: Session,
    /// The request's Host header, for the SCIM endpoint URL without `public_url`.
    pub host: Option<String>,
}

impl Console {
    pub fn new(state: Arc<AppState>) -> Console {
        let admin = &state.config.admin;
        let secure = state
            .config
            .server
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        Console {
            sessions: Sessions::new(admin.console_idle, admin.console_session),
            secure,
            state,
        }
    }

    /// One request (the path without the prefix). Answers always carry the security
    /// headers and the render time (`Server-Timing`, for the bench).
    pub async fn serve(&self, mut req: Request) -> Response {
        let started = Instant::now();
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let reply = match (&method, path.as_str()) {
            (&Method::GET, "/assets/console.css") => {
                return asset(CSS, "text/css; charset=utf-8");
            }
            (&Method::GET, "/assets/console.js") => {
                return asset(JS, "text/javascript; charset=utf-8");
            }
            (&Method::GET, "/sign-in") => Ok(self.sign_in_page(None, StatusCode::OK)),
            (&Method::POST, "/sign-in") => self.sign_in(&mut req).await,
            (&Method::POST, "/sign-out") => self.sign_out(&mut req).await,
            (&Method::POST, p) if p.starts_with("/actions/") => match self.signed_in(&req) {
                None => Err(ConsoleError::new(
                    StatusCode::UNAUTHORIZED,
                    "your session has ended: sign in again",
                )),
                Some((_, s)) => match self.form(&mut req).await {
                    Ok(form) => actions::act(self, &self.ctx(&req, s), p, &form).await,
                    Err(e) => Err(e),
                },
            },
            (&Method::GET, p) => match self.signed_in(&req) {
                None => Ok(Reply::Redirect(format!("{PREFIX}/sign-in"))),
                Some((_, s)) => pages::page(self, &self.ctx(&req, s), p, &query).await,
            },
            _ => Err(ConsoleError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "the console answers GET, and POST from its own forms",
            )),
        };
        let session = self.signed_in_quietly(&req);
        let mut resp = match reply {
            Ok(r) => self.respond(r),
            Err(e) => self.respond(Reply::Html(
                e.status,
                html::page(
                    session.as_ref(),
                    "",
                    e.status.canonical_reason().unwrap_or("Error"),
                    html! {
                        p.error role="alert" { (e.detail) }
                        p { a href=(PREFIX) { "Back to the overview" } }
                    },
                ),
            )),
        };
        let h = resp.headers_mut();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(v) = HeaderValue::from_str(&format!("render;dur={ms:.3}")) {
            h.insert("server-timing", v);
        }
        resp
    }

    fn ctx(&self, req: &Request, session: Session) -> Ctx {
        Ctx {
            session,
            host: req.header(header::HOST).map(str::to_string),
        }
    }

    fn respond(&self, r: Reply) -> Response {
        let mut resp = match r {
            Reply::Html(status, m) => Response::builder()
                .status(status)
                .content_type("text/html; charset=utf-8")
                .body(m.into_string()),
            Reply::Csv(name, text) => Response::builder()
                .content_type("text/csv; charset=utf-8")
                .header(
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                )
                .body(text),
            Reply::Redirect(to) => Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, to)
                .finish(),
            Reply::Raw(r) => r,
        };
        security_headers(&mut resp);
        resp
    }

    /// The session named by the request's cookie, its idle clock restarted.
    fn signed_in(&self, req: &Request) -> Option<(String, Session)> {
        let id = cookie(req, COOKIE)?;
        let s = self.sessions.touch(&id, self.state.clock.now())?;
        tracing::Span::current().record("admin", s.admin.as_str());
        Some((id, s))
    }

    /// The session for an error page's header (already touched by the request).
    fn signed_in_quietly(&self, req: &Request) -> Option<Session> {
        self.signed_in(req).map(|(_, s)| s)
    }

    /// A form body, bounded; only from this site (`Sec-Fetch-Site`, when the browser sends
    /// it).
    async fn form(&self, req: &mut Request) -> Result<Params, ConsoleError> {
        if let Some(site) = req.header("sec-fetch-site")
            && !matches!(site, "same-origin" | "none")
        {
            return Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                "forms are only accepted from the console itself",
            ));
        }
        let body = req
            .take_body()
            .into_bytes_limit(MAX_FORM)
            .await
            .map_err(|_| ConsoleError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large"))?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ConsoleError::new(StatusCode::BAD_REQUEST, "form is not UTF-8"))?;
        Params::parse(
            text,
            &[
                "csrf", "confirm", "token", "tenant", "dry_run", "full", "run", "user",
            ],
        )
        .map_err(ConsoleError::from)
    }

    fn sign_in_page(&self, problem: Option<&str>, status: StatusCode) -> Reply {
        Reply::Html(
            status,
            html::page(
                None,
                "",
                "Sign in",
                html! {
                    @if let Some(p) = problem {
                        p.error role="alert" { (p) }
                    }
                    form.signin method="post" action={ (PREFIX) "/sign-in" } {
                        p {
                            label for="token" { "Admin token" }
                            input #token type="password" name="token" required
                                autocomplete="off" spellcheck="false" autofocus;
                        }
                        p.hint { "An " code { "[admin.tokens.NAME]" } " token. It is exchanged for a \
                            session here and not kept in the browser." }
                        button type="submit" { "Sign in" }
                    }
                },
            ),
        )
    }

    async fn sign_in(&self, req: &mut Request) -> PageResult {
        let form = self.form(req).await?;
        let presented = form.get("token").unwrap_or("");
        let Some(token) = self.state.config.admin.authenticate(presented) else {
            tracing::warn!("console sign-in refused: not an admin token");
            return Ok(self.sign_in_page(
                Some("That is not an admin token."),
                StatusCode::UNAUTHORIZED,
            ));
        };
        let (id, _) = self
            .sessions
            .create(&token.name, token.role, self.state.clock.now());
        tracing::info!(admin = %token.name, "console sign-in");
        let mut resp = Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, PREFIX)
            .finish();
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={id}; Path={PREFIX}; HttpOnly; SameSite=Strict{}",
            if self.secure { "; Secure" } else { "" }
        )) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        Ok(Reply::Raw(resp))
    }

    async fn sign_out(&self, req: &mut Request) -> PageResult {
        let form = self.form(req).await?;
        if let Some((id, s)) = self.signed_in(req) {
            if !s.csrf_matches(form.get("csrf").unwrap_or("")) {
                return Err(csrf_refused());
            }
            self.sessions.end(&id);
            tracing::info!(admin = %s.admin, "console sign-out");
        }
        let mut resp = Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, format!("{PREFIX}/sign-in"))
            .finish();
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}=; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        Ok(Reply::Raw(resp))
    }
}

pub fn csrf_refused() -> ConsoleError {
    ConsoleError::new(
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or not this session's: reload the page and try again",
    )
}

fn cookie(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "public, max-age=86400")
        .body(body);
    security_headers(&mut resp);
    resp
}

/// Nothing from another host, no framing, no sniffing, no referrer; pages are not cached.
fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}
