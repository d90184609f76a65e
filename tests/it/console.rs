//! The admin console at /console: sign-in and sessions (cookie flags, idle and absolute
//! expiry on the fake clock, sign-out), CSRF on every form, readers seeing and doing no
//! actions, every page answering, and the actions going through the sync use cases.

use chrono::Duration;
use serde_json::json;

use crate::helpers::*;

/// A browser without cookies of its own: the session cookie is carried by hand.
struct Browser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookie: Option<String>,
}

const BAD: &str = "bad@example.com";

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Browser<'a> {
        Browser {
            app,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/console{path}", self.app.addr)
    }

    async fn get(&self, path: &str) -> Resp {
        let mut rb = self.client.get(self.url(path));
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c);
        }
        read(rb.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        let mut rb = self.client.post(self.url(path)).form(form);
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c);
        }
        read(rb.send().await.unwrap()).await
    }

    /// Sign in with `token`; the answer.
    async fn sign_in(&mut self, token: &str) -> Resp {
        let r = self.post("/sign-in", &[("token", token)]).await;
        if let Some(set) = r.header("set-cookie") {
            self.cookie = set.split(';').next().map(str::to_string);
        }
        r
    }

    /// The CSRF token of the session, from a page's forms.
    async fn csrf(&self) -> String {
        let page = self.get("").await;
        page.assert_status(200);
        let at = page
            .text
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        page.text[at..at + 64].to_string()
    }
}

#[track_caller]
fn redirects_to(r: &Resp, to: &str) {
    assert_eq!(r.status, 303, "{}", r.text);
    assert_eq!(r.header("location"), Some(to));
}

async fn failing_app(settings: &str) -> TestApp {
    let app = TestApp::start_syncing(settings).await;
    Sql(app.dir().join("app.db")).exec(
        &format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON scifeon_users WHEN NEW.UserName = '{BAD}' \
             BEGIN SELECT RAISE(ABORT, 'refused by the application'); END"
        ),
        &[],
    );
    app
}

#[tokio::test]
async fn signing_in_turns_a_token_into_a_session_and_signing_out_ends_it() {
    let app = TestApp::start().await;
    let mut b = Browser::new(&app);
    redirects_to(&b.get("").await, "/console/sign-in");
    redirects_to(&b.get("/runs").await, "/console/sign-in");
    let form = b.get("/sign-in").await;
    form.assert_status(200);
    assert!(
        form.text.contains(r#"<label for="token">"#),
        "{}",
        form.text
    );

    // A wrong token (or a tenant's SCIM token) is no session.
    for token in ["nope", ACME_TOKEN, ""] {
        let r = b.sign_in(token).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert!(r.header("set-cookie").is_none());
        assert!(!r.text.contains(token) || token.is_empty());
    }
    assert!(b.cookie.is_none());

    let r = b.sign_in(OPERATOR_TOKEN).await;
    redirects_to(&r, "/console");
    let set = r.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    assert!(!set.contains(OPERATOR_TOKEN));
    let id = b.cookie.clone().unwrap();
    assert_eq!(id.split_once('=').unwrap().1.len(), 64);

    let page = b.get("").await;
    page.assert_status(200);
    assert!(
        page.text
            .contains("Signed in as <strong>ops</strong> (operator)")
    );
    assert!(!page.text.contains(OPERATOR_TOKEN));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );

    // Sign-out needs the session's CSRF token.
    let csrf = b.csrf().await;
    assert_eq!(b.post("/sign-out", &[]).await.status, 403);
    assert_eq!(b.post("/sign-out", &[("csrf", "x")]).await.status, 403);
    let r = b.post("/sign-out", &[("csrf", &csrf)]).await;
    redirects_to(&r, "/console/sign-in");
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    redirects_to(&b.get("").await, "/console/sign-in");
}

#[tokio::test]
async fn sessions_end_when_idle_and_after_their_lifetime() {
    let app = TestApp::start().await;
    let mut b = Browser::new(&app);
    b.sign_in(READER_TOKEN).await;
    b.get("").await.assert_status(200);
    // Defaults: 30 minutes idle.
    app.clock.advance(Duration::minutes(29));
    b.get("").await.assert_status(200);
    app.clock.advance(Duration::minutes(30));
    redirects_to(&b.get("").await, "/console/sign-in");

    // However busy, 8 hours after sign-in.
    b.sign_in(READER_TOKEN).await;
    for _ in 0..19 {
        app.clock.advance(Duration::minutes(25));
        b.get("/runs").await.assert_status(200);
    }
    app.clock.advance(Duration::minutes(25));
    redirects_to(&b.get("/runs").await, "/console/sign-in");
}

#[tokio::test]
async fn every_page_answers_and_exports_csv() {
    let app = failing_app("").await;
    let ann = app
        .scifeon_user("ann@example.com", "Ann", &["Scifeon Admins"])
        .await;
    app.scifeon_user(BAD, "Bad", &[]).await;
    let run = app.sync_now().await;
    assert_eq!(run["status"], "completed_with_errors", "{run}");
    let run = run["id"].as_i64().unwrap();
    app.flush_log().await;
    let mut b = Browser::new(&app);
    b.sign_in(READER_TOKEN).await;

    let pages = [
        String::new(),
        format!("?tenant={ACME}"),
        "/runs".into(),
        format!(
            "/runs?tenant={ACME}&status=completed_with_errors&trigger=api&since=2026-01-01&until=2030-01-01T00:00"
        ),
        format!("/runs/{run}"),
        format!("/runs/{run}?outcome=failed"),
        "/user".into(),
        format!("/user?tenant={ACME}&by=userName&q={BAD}"),
        format!("/user?tenant={ACME}&by=userId&q={ann}"),
        "/failing".into(),
        "/failing?quarantined=yes".into(),
        "/offboardings".into(),
        "/log".into(),
        format!("/log?tenant={ACME}&status=4xx&method=POST&user=ann%40example.com"),
        "/mapping".into(),
        format!("/mapping?tenant={ACME}&by=userName&q=ann%40example.com"),
    ];
    for p in &pages {
        let r = b.get(p).await;
        assert_eq!(r.status, 200, "{p}: {}", r.text);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.text.starts_with("<!DOCTYPE html>"), "{p}");
        assert!(r.text.contains(r##"<a class="skip" href="#main">"##), "{p}");
        assert!(
            !r.text.contains("/console/actions/"),
            "a reader sees no actions: {p}"
        );
    }

    // The run's failed item names the user and why; it links to the user's story.
    let r = b.get(&format!("/runs/{run}?outcome=failed")).await;
    assert!(r.text.contains("refused by the application"), "{}", r.text);
    assert!(
        r.text
            .contains("/console/user?tenant=acme&amp;by=userId&amp;q=")
    );
    assert!(
        r.text.contains("<time datetime=\"2026-01-15T09:00:00Z\""),
        "{}",
        r.text
    );
    let story = b
        .get(&format!("/user?tenant={ACME}&by=userName&q={BAD}"))
        .await;
    assert!(story.text.contains("Failing since"), "{}", story.text);
    let r = b
        .get(&format!("/user?tenant={ACME}&by=userName&q=nobody"))
        .await;
    assert_eq!(r.status, 404);
    // The mapping shows its fields, rules and lookups, and renders a preview.
    let m = b
        .get(&format!("/mapping?tenant={ACME}&q=ann%40example.com"))
        .await;
    for s in [
        "FirstName",
        "Scifeon Admins",
        "Lookup table departments",
        "Administrator",
    ] {
        assert!(m.text.contains(s), "{s}: {}", m.text);
    }

    let csvs = [
        ("/runs?format=csv", "id,tenant,trigger"),
        (
            &*format!("/runs/{run}?format=csv&outcome=failed"),
            "run,userId",
        ),
        ("/failing?format=csv", "tenant,userId"),
        ("/offboardings?format=csv", "tenant,state"),
        ("/log?format=csv", "time,requestId"),
        (
            &*format!("/user?tenant={ACME}&q={BAD}&table=runs&format=csv"),
            "run,trigger",
        ),
        (
            &*format!("/user?tenant={ACME}&q={BAD}&table=requests&format=csv"),
            "time,requestId",
        ),
    ];
    for (p, head) in csvs {
        let r = b.get(p).await;
        assert_eq!(r.status, 200, "{p}: {}", r.text);
        assert_eq!(
            r.header("content-type"),
            Some("text/csv; charset=utf-8"),
            "{p}"
        );
        assert!(r.text.starts_with(head), "{p}: {}", r.text);
    }
    let failed = b
        .get(&format!("/runs/{run}?format=csv&outcome=failed"))
        .await;
    assert_eq!(failed.text.lines().count(), 2, "{}", failed.text);
    assert!(failed.text.contains(BAD));

    // Bounded inputs: unknown or repeated parameters, bad values, unknown pages.
    for (p, status) in [
        ("/runs?tenantt=acme", 400),
        ("/runs?status=done", 400),
        ("/runs?offset=-1", 400),
        ("/runs?limit=100000", 400),
        ("/runs?since=yesterday", 400),
        ("/runs?tenant=a&tenant=b", 400),
        ("/runs?tenant=nosuch", 404),
        ("/log?status=abc", 400),
        ("/runs/999999", 404),
        ("/runs/abc", 404),
        ("/nothing", 404),
    ] {
        let r = b.get(p).await;
        assert_eq!(r.status, status, "{p}: {}", r.text);
        assert!(r.text.contains("role=\"alert\""), "{p}");
    }
    // The assets are the console's own.
    for a in ["/assets/console.css", "/assets/console.js"] {
        b.get(a).await.assert_status(200);
    }
}

#[tokio::test]
async fn actions_need_the_csrf_token_an_operator_and_a_confirmation() {
    let app = TestApp::start_syncing("").await;
    app.scifeon_user("ann@example.com", "Ann", &[]).await;
    let mut reader = Browser::new(&app);
    reader.sign_in(READER_TOKEN).await;
    let mut ops = Browser::new(&app);
    ops.sign_in(OPERATOR_TOKEN).await;

    let overview = ops.get("").await;
    assert!(
        overview.text.contains("/console/actions/run"),
        "{}",
        overview.text
    );
    let csrf = ops.csrf().await;
    let run = [("tenant", ACME), ("dry_run", "yes")];

    // No or a wrong CSRF token: refused, whoever asks.
    assert_eq!(ops.post("/actions/run", &run).await.status, 403);
    let wrong = [("tenant", ACME), ("dry_run", "yes"), ("csrf", "0000")];
    assert_eq!(ops.post("/actions/run", &wrong).await.status, 403);
    // Another session's token is not this one's.
    let reader_csrf = reader.csrf().await;
    let theirs = [("tenant", ACME), ("dry_run", "yes"), ("csrf", &reader_csrf)];
    assert_eq!(ops.post("/actions/run", &theirs).await.status, 403);
    // A reader with its own token: refused (and the page offered nothing).
    let mine = [
        ("tenant", ACME),
        ("dry_run", "yes"),
        ("csrf", &reader_csrf),
        ("confirm", "yes"),
    ];
    let r = reader.post("/actions/run", &mine).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("operator"));
    // Signed out: refused.
    let anon = Browser::new(&app);
    assert_eq!(anon.post("/actions/run", &mine).await.status, 401);
    let (total, _) = app
        .state
        .sync
        .as_ref()
        .unwrap()
        .ledger()
        .runs(&scim_bridge::sync::ledger::RunQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 0, "nothing refused was recorded");

    // The operator is asked first, then the run starts through the same use case.
    let ask = [("tenant", ACME), ("dry_run", "yes"), ("csrf", &csrf)];
    let r = ops.post("/actions/run", &ask).await;
    r.assert_status(200);
    assert!(
        r.text.contains("Start a dry run of tenant acme now?"),
        "{}",
        r.text
    );
    assert!(r.text.contains(r#"name="confirm" value="yes""#));
    let go = [
        ("tenant", ACME),
        ("dry_run", "yes"),
        ("csrf", &csrf),
        ("confirm", "yes"),
    ];
    let r = ops.post("/actions/run", &go).await;
    assert_eq!(r.status, 303, "{}", r.text);
    let location = r.header("location").unwrap().to_string();
    let id: i64 = location.rsplit('/').next().unwrap().parse().unwrap();
    let done = app.finished(id).await;
    assert_eq!(
        (done["dryRun"].clone(), done["trigger"].clone()),
        (json!(true), json!("api"))
    );
    ops.get(&format!("/runs/{id}")).await.assert_status(200);
}

#[tokio::test]
async fn an_operator_approves_a_held_run_and_a_reader_cannot() {
    let app = TestApp::start_syncing("retention_hours = 2\nguard_min = 0\nguard_share = 0.0").await;
    let ann = app.scifeon_user("ann@example.com", "Ann", &[]).await;
    app.sync_now().await;
    app.patch(
        &format!("/Users/{ann}"),
        &patch_ops(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await
    .assert_status(200);
    app.sync_now().await;
    app.clock.advance(Duration::hours(3));
    let held = app.sync_now().await;
    assert_eq!(held["status"], "awaiting_approval", "{held}");
    let held = held["id"].as_i64().unwrap();

    let mut reader = Browser::new(&app);
    reader.sign_in(READER_TOKEN).await;
    let page = reader.get(&format!("/runs/{held}")).await;
    assert!(page.text.contains("waits for an operator"), "{}", page.text);
    assert!(!page.text.contains("/console/actions/approve"));
    let overview = reader.get("").await;
    assert!(
        overview.text.contains("Runs awaiting approval"),
        "{}",
        overview.text
    );
    let csrf = reader.csrf().await;
    let held_s = held.to_string();
    let r = reader
        .post(
            "/actions/approve",
            &[("run", &held_s), ("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, 403);

    let mut ops = Browser::new(&app);
    ops.sign_in(OPERATOR_TOKEN).await;
    let page = ops.get(&format!("/runs/{held}")).await;
    assert!(
        page.text.contains("/console/actions/approve"),
        "{}",
        page.text
    );
    let csrf = ops.csrf().await;
    let r = ops
        .post("/actions/approve", &[("run", &held_s), ("csrf", &csrf)])
        .await;
    assert!(
        r.text
            .contains(&format!("Approve run {held} of tenant acme?")),
        "{}",
        r.text
    );
    let r = ops
        .post(
            "/actions/approve",
            &[("run", &held_s), ("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let id: i64 = r
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let approving = app.finished(id).await;
    assert_eq!(approving["approval"]["approvesRun"], held, "{approving}");
    let again = ops
        .post(
            "/actions/approve",
            &[("run", &held_s), ("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_https() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("staging.db"))
        .replace(
            "[server]\n",
            "[server]\npublic_url = \"https://scim.example.com\"\n",
        )
        .replace(
            "[admin]\nprovisioning_log_days = 14\n",
            "[admin]\nprovisioning_log_days = 14\nconsole_idle_minutes = 5\n",
        );
    assert!(text.contains("console_idle_minutes = 5") && text.contains("public_url"));
    let file = dir.path().join(CONFIG_FILE);
    std::fs::write(&file, &text).unwrap();
    let config = scim_bridge::config::Config::load(&file, std::iter::empty()).unwrap();
    assert_eq!(config.admin.console_idle, Duration::minutes(5));
    let clock = std::sync::Arc::new(scim_bridge::clock::FakeClock::new(start_time()));
    let app = scim_bridge::app::Application::build(config, clock.clone(), Some("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = app.addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("http://{addr}/console/sign-in"))
        .form(&[("token", READER_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("; Secure"), "{set}");
    // The configured idle expiry applies.
    let cookie = set.split(';').next().unwrap().to_string();
    clock.advance(Duration::minutes(5));
    let r = client
        .get(format!("http://{addr}/console"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "idle for console_idle_minutes: signed out");
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}
