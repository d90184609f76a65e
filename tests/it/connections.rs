//! The connection-level timeouts and the connection cap (`[server]`, docs/operations.md), over
//! raw sockets: a client that trickles its headers, an idle keep-alive connection, a body
//! that never arrives, a request past its deadline, connections beyond the cap.
//!
//! The assertions are outcomes — closed or answered, and with what — with generous bounds on
//! how long the test waits for them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::helpers::*;

/// Read until the server closes the connection (or `within` passes): what arrived, and
/// whether it was closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Read one answer's head and body (Content-Length framed) without waiting for a close.
async fn read_answer(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    timeout(within, async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return Some(text);
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn healthz(host: &str) -> String {
    format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    let app = TestApp::start_with_server("header_read_timeout_seconds = 1").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.split();
    // A header line every 200 ms, for up to 10 s: the server must hang up long before.
    let trickle = async {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let mut buf = [0u8; 1024];
    let closed = tokio::select! {
        r = rd.read(&mut buf) => matches!(r, Ok(0) | Err(_)),
        _ = trickle => false,
    };
    assert!(
        closed,
        "a head still incomplete after the timeout closes the connection"
    );
    // Others are served meanwhile and after.
    let r = app.get_root("/healthz").await;
    r.assert_status(200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = TestApp::start_with_server("idle_timeout_seconds = 1").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(healthz("x").as_bytes()).await.unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept alive after the answer, then closed once idle.
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "an idle connection is closed");
    assert_eq!(rest, "", "nothing more is sent");

    // A connection that never sends anything is closed as well.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(closed, "a silent connection is closed");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408_and_the_connection_closes() {
    let app = TestApp::start_with_server("body_read_timeout_seconds = 1").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /scim-api/v1/{ACME}/scim/Users HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {ACME_TOKEN}\r\nContent-Type: application/scim+json\r\n\
         Content-Length: 1000000\r\n\r\n{{\"schemas\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(closed, "the connection is closed: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(ERROR_SCHEMA), "a SCIM error: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_request_past_its_deadline_is_stopped_with_a_scim_error() {
    let app = TestApp::start_with_server("request_timeout_seconds = 1").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /scim-api/v1/{ACME}/scim/Users HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {ACME_TOKEN}\r\nContent-Type: application/scim+json\r\n\
         Content-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.split();
    // A byte every 100 ms: within the body-read timeout, past the request deadline.
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let done = timeout(Duration::from_secs(15), async {
        tokio::select! {
            _ = read => {},
            _ = trickle => {},
        }
    })
    .await;
    assert!(done.is_ok(), "the connection was closed");
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(ERROR_SCHEMA), "a SCIM error: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    let r = app.list(ACME, "/Users", &[]).await;
    assert_eq!(r.total(), 0, "nothing was created");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = TestApp::start_with_server("max_connections = 2").await;
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    first.write_all(healthz("x").as_bytes()).await.unwrap();
    assert!(
        read_answer(&mut first, Duration::from_secs(5))
            .await
            .is_some()
    );
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    second.write_all(healthz("x").as_bytes()).await.unwrap();
    assert!(
        read_answer(&mut second, Duration::from_secs(5))
            .await
            .is_some()
    );

    // Both are kept alive: a third is not served while they are open...
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third.write_all(healthz("x").as_bytes()).await.unwrap();
    assert!(
        read_answer(&mut third, Duration::from_millis(700))
            .await
            .is_none(),
        "a connection beyond the cap waits"
    );
    // ...and is as soon as one of them closes.
    drop(first);
    let answer = read_answer(&mut third, Duration::from_secs(10)).await;
    assert!(
        answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "served once a connection closed"
    );
    drop(second);
}

#[tokio::test]
async fn an_untrusted_host_header_never_reaches_meta_location() {
    let app = TestApp::start().await;
    let id = app.user("hosted@acme.example").await;
    let r = app
        .send(
            app.request(reqwest::Method::GET, ACME, &format!("/Users/{id}"))
                .header("host", "evil.example"),
        )
        .await;
    r.assert_status(200);
    let location = r.body["meta"]["location"].as_str().unwrap();
    assert!(!location.contains("evil"), "{location}");
    assert!(
        location.starts_with(&format!("http://{}/", app.addr)),
        "the address the connection came in on: {location}"
    );
    // The address a client really used is kept.
    let r = app.get(&format!("/Users/{id}")).await;
    assert!(
        r.body["meta"]["location"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}/", app.addr))
    );
}

#[tokio::test]
async fn a_head_over_the_limits_gets_a_scim_error_body() {
    let app = TestApp::start().await;
    // A long query string.
    let filter = "a".repeat(20_000);
    let r = app
        .list(
            ACME,
            "/Users",
            &[("filter", &format!("userName eq \"{filter}\""))],
        )
        .await;
    r.assert_error(414, None);
    // Many headers, and large ones.
    let mut rb = app.request(reqwest::Method::GET, ACME, "/Users");
    for i in 0..150 {
        rb = rb.header(format!("x-many-{i}"), "y");
    }
    app.send(rb).await.assert_error(431, None);
    let rb = app
        .request(reqwest::Method::GET, ACME, "/Users")
        .header("x-large", "z".repeat(100_000));
    app.send(rb).await.assert_error(431, None);
    // The admin API answers with a problem document.
    let r = app
        .send(
            app.admin_request(reqwest::Method::GET, "/tenants", Some(READER_TOKEN))
                .header("x-large", "z".repeat(100_000)),
        )
        .await;
    r.assert_problem(431);
}

#[tokio::test]
async fn a_head_past_the_http_librarys_limits_still_gets_a_scim_error_body() {
    let app = TestApp::start().await;
    let scim_error = |(status, head, body): (u16, String, String), want: u16| {
        assert_eq!(status, want, "{head}");
        assert!(head.contains("application/scim+json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
            "{body}"
        );
        assert_eq!(v["status"], want.to_string());
        assert!(
            !body.contains("aaaa"),
            "nothing of the request is echoed: {body}"
        );
    };
    // A 70 KB target, past the library's 64 KiB.
    let long = format!(
        "GET /scim-api/v1/acme/scim/Users?filter={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    scim_error(raw_http(app.addr, long.as_bytes()).await, 414);
    // 300 headers, past its 200.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..300 {
        many.push_str(&format!("x-h{i}: aaaa\r\n"));
    }
    many.push_str("\r\n");
    scim_error(raw_http(app.addr, many.as_bytes()).await, 431);
    // Not HTTP.
    scim_error(
        raw_http(app.addr, b"GET /healthz HTTP/1.1\r\nHo st: aaaa\r\n\r\n").await,
        400,
    );
    // On a kept-alive connection, after an answer the API gave.
    let (status, head, body) = raw_http(
        app.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{many}").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let second = body
        .split_once("HTTP/1.1 ")
        .map(|(_, rest)| format!("HTTP/1.1 {rest}"))
        .unwrap_or_default();
    let (head2, body2) = second.split_once("\r\n\r\n").unwrap_or(("", ""));
    scim_error(
        (
            head2
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            head2.to_string(),
            body2.to_string(),
        ),
        431,
    );
}

/// CPU time (user + system, in clock ticks) of process `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = child_config(dir.path(), port, "error", "fd", "fd-limit-token-0123456789");
    // A process with few descriptors: the connections below exhaust them.
    let mut server = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" serve --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_scim-bridge"))
        .arg(&config)
        .env_remove("SCIM_BRIDGE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if client.get(&health).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the server started");

    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(server.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(server.id()) - before;
    // A loop retrying accept at once burns a core: about 200 ticks in 2 s.
    assert!(
        spent < 50,
        "{spent} ticks of CPU in 2 s at the descriptor limit"
    );

    drop(held);
    let mut served = false;
    for _ in 0..100 {
        if client
            .get(&health)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(served, "served again once descriptors are free");
}
