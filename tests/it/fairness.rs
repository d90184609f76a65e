//! Fair share: a tenant with `[server] max_requests_per_tenant` requests in progress is told to
//! come back (429, Retry-After, a SCIM error) while other tenants and /healthz are served.
//! The assertions are outcomes (answered, status), not timings.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;

/// A request of `tenant` that holds its place: its head is sent, its body never finishes.
async fn hold(app: &TestApp, tenant: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /scim-api/v1/{tenant}/scim/Users HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/scim+json\r\n\
         Content-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_tenant_at_its_share_is_told_to_retry_while_others_are_served() {
    let mut app = TestApp::start_with_server("max_requests_per_tenant = 2").await;
    let held = [
        hold(&app, ACME, ACME_TOKEN).await,
        hold(&app, ACME, ACME_TOKEN).await,
    ];
    // Until both are in progress, acme may still get through.
    let mut refused = None;
    for _ in 0..50 {
        let r = app.list(ACME, "/Users", &[]).await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refused.expect("acme at its share is refused");
    r.assert_error(429, None);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);

    // Another tenant, and the health check, are served meanwhile.
    app.list(OTHER, "/Users", &[]).await.assert_status(200);
    app.get_root("/healthz").await.assert_status(200);

    // Once acme's requests end, acme is served again.
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if app.list(ACME, "/Users", &[]).await.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "acme is served once its requests ended");

    // Refusals are not logged (a flooding tenant would fill its own log); what was served is.
    app.stop().await;
    let logged = |status: i64| {
        app.db().scalar(
            "SELECT count(*) FROM provisioning_log WHERE tenant = ? AND status = ?",
            &[&ACME, &status],
        )
    };
    assert_eq!(logged(429), 0);
    assert!(logged(200) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_of_one_tenant_do_not_hold_up_another() {
    let app = TestApp::start().await;
    for i in 0..200 {
        app.user(&format!("scan{i:03}@acme.example")).await;
    }
    // Many scanning filters of acme at once, while other's look-ups and /healthz are asked.
    let filter = (0..40)
        .map(|i| format!("userName co \"{i:03}x\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let scans = (0..8).map(|_| {
        let (app, filter) = (&app, filter.clone());
        async move {
            app.list(ACME, "/Users", &[("filter", &filter)])
                .await
                .status
        }
    });
    let others = async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(app.list(OTHER, "/Users", &[]).await.status);
            statuses.push(app.get_root("/healthz").await.status);
        }
        statuses
    };
    let (scanned, others) = tokio::join!(futures_util::future::join_all(scans), others);
    assert!(scanned.iter().all(|s| *s == 200), "{scanned:?}");
    assert!(others.iter().all(|s| *s == 200), "{others:?}");
}
