//! The HTTP server: the accept loop and each connection, with `[server]`'s connection cap and
//! connection timeouts (docs/operations.md). The request-level policy (body-read timeout,
//! whole-request deadline) is middleware in `api`.
//!
//! A connection is watched by its own task: one that has sent part of a request head for
//! longer than the header-read timeout is dropped (a slow client cannot hold a socket by
//! trickling headers), and one with no request in flight and no traffic for the idle timeout
//! is closed. Connections beyond the cap wait in the kernel's backlog; an accept error (out of
//! file descriptors) backs off instead of retrying at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::Endpoint;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection-level settings of `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From a request head's first byte to its last.
    pub header_read: Duration,
    /// No request in flight and no traffic.
    pub idle: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// The most headers hyper parses; the API's own limit is lower.
pub const HYPER_MAX_HEADERS: usize = 200;

/// The longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serve `ep` on `listener` until `shutdown` resolves; then stop accepting, let the requests in
/// flight finish (up to `grace`) and return.
pub async fn serve<E>(
    listener: TcpListener,
    ep: E,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()>
where
    E: Endpoint + 'static,
{
    let ep = Arc::new(ep);
    let local = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut backoff = Backoff::default();
    tracing::info!(addr = %local, "listening");
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: further connections wait in the kernel's backlog.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                let pause = backoff.failed();
                if backoff.failures == 1 || backoff.failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = backoff.failures, pause_ms = pause.as_millis() as u64, "accepting a connection failed");
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => {},
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            local,
            remote,
            ep.clone(),
            limits,
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period were closed");
    }
    Ok(())
}

/// Exponential back-off after accept errors: 10 ms doubling to [`MAX_ACCEPT_BACKOFF`].
#[derive(Debug, Default)]
pub struct Backoff {
    pub failures: u32,
}

impl Backoff {
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ms = 10u64.saturating_mul(1u64 << (self.failures - 1).min(16));
        Duration::from_millis(ms).min(MAX_ACCEPT_BACKOFF)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What a connection's watcher knows of it.
#[derive(Debug)]
struct Activity {
    in_flight: usize,
    last_traffic: Instant,
    /// When the first byte of a request head arrived, until the request starts.
    head_started: Option<Instant>,
}

/// What the watcher decides.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Idle for too long: close it between requests.
    Idle,
    /// A head that never completes: drop the socket.
    SlowHead,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Activity {
            in_flight: 0,
            last_traffic: now,
            head_started: None,
        }
    }

    fn verdict(&self, now: Instant, limits: &ConnectionLimits) -> Verdict {
        if self.in_flight > 0 {
            return Verdict::Keep;
        }
        match self.head_started {
            Some(t) if now.duration_since(t) >= limits.header_read => Verdict::SlowHead,
            Some(_) => Verdict::Keep,
            None if now.duration_since(self.last_traffic) >= limits.idle => Verdict::Idle,
            None => Verdict::Keep,
        }
    }
}

type Shared = Arc<Mutex<Activity>>;

fn with<T>(activity: &Shared, f: impl FnOnce(&mut Activity) -> T) -> T {
    let mut a = match activity.lock() {
        Ok(a) => a,
        Err(poisoned) => poisoned.into_inner(),
    };
    f(&mut a)
}

/// Counts a request in flight while it lives.
struct InFlight(Shared);

impl InFlight {
    fn start(activity: &Shared) -> InFlight {
        with(activity, |a| {
            a.in_flight += 1;
            a.head_started = None;
        });
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        with(&self.0, |a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            a.last_traffic = Instant::now();
        });
    }
}

async fn serve_connection<E: Endpoint + 'static>(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    ep: Arc<E>,
    limits: ConnectionLimits,
    stopping: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let activity: Shared = Arc::new(Mutex::new(Activity::new(Instant::now())));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        replaced: None,
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |req: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(&activity);
            let ep = ep.clone();
            async move {
                let req: poem::Request = (
                    req,
                    LocalAddr(poem::Addr::SocketAddr(local)),
                    RemoteAddr(poem::Addr::SocketAddr(remote)),
                    poem::http::uri::Scheme::HTTP,
                )
                    .into();
                let resp = ep.get_response(req).await;
                drop(in_flight);
                Ok::<hyper::Response<BoxBody<bytes::Bytes, io::Error>>, Infallible>(resp.into())
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watcher below times header reads; hyper's own timer would also count idle time.
    // Heads up to hyper's limits reach the API, which answers those over its own (smaller)
    // limits with an error document; past hyper's limits, `Watched` puts a SCIM error body
    // into hyper's own answer.
    builder
        .http1()
        .header_read_timeout(None)
        .max_headers(HYPER_MAX_HEADERS);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let tick = (limits.header_read.min(limits.idle) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stopping.cancelled(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            _ = tokio::time::sleep(tick) => {
                let now = Instant::now();
                if let Some(since) = closing_since {
                    // A graceful close waits for the answer in flight; a client that does not
                    // read it gets the idle timeout, then is dropped.
                    let stuck = with(&activity, |a| a.in_flight == 0 && now.duration_since(a.last_traffic) >= limits.idle);
                    if stuck && now.duration_since(since) >= limits.header_read {
                        return;
                    }
                    continue;
                }
                match with(&activity, |a| a.verdict(now, &limits)) {
                    Verdict::Keep => {}
                    Verdict::Idle => {
                        tracing::debug!("closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(now);
                    }
                    Verdict::SlowHead => {
                        tracing::info!("dropping a connection whose request head did not arrive in time");
                        return;
                    }
                }
            }
        }
    }
}

/// The socket, noting traffic for the watcher.
struct Watched {
    inner: TcpStream,
    activity: Shared,
    /// Our answer in place of hyper's own, and how much of it is written.
    replaced: Option<(Vec<u8>, usize)>,
}

/// hyper answers a request it cannot take (a head past its limits, or not HTTP) by itself,
/// before the API sees it, with an empty body:
/// `HTTP/1.1 431 …\r\nconnection: close\r\ncontent-length: 0\r\n…`. The same answer with
/// a SCIM error body, for such a head; None for anything else (the API's own answers carry a
/// body, so they never match).
fn answer_for_hyper_refusal(head: &[u8]) -> Option<Vec<u8>> {
    const MARK: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\n";
    let (status, reason, detail) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (400, "Bad Request", "the request is not valid HTTP"),
        b"HTTP/1.1 414 " => (
            414,
            "URI Too Long",
            "the request target is longer than the server accepts",
        ),
        b"HTTP/1.1 431 " => (
            431,
            "Request Header Fields Too Large",
            "the request has more or larger headers than the server accepts",
        ),
        _ => return None,
    };
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let rest = line_end + MARK.len();
    if head.get(line_end..rest)? != MARK || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    // hyper's other headers (its Date) stay, after ours.
    let others = String::from_utf8_lossy(&head[rest..]);
    let body = serde_json::json!({
        "schemas": [crate::scim::error::ERROR_SCHEMA],
        "status": status.to_string(),
        "detail": detail,
    })
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\nconnection: close\r\n\
             content-type: application/scim+json\r\ncontent-length: {}\r\n{others}{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl Watched {
    /// Write what is left of a replaced answer; Ready once it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.replaced {
            if *done == bytes.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` is hyper's own refusal, take it (as written) and send ours instead.
    fn replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.replaced.is_some() {
            return None;
        }
        let ours = answer_for_hyper_refusal(buf)?;
        self.replaced = Some((ours, 0));
        Some(match self.drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // The rest goes out on flush, which hyper calls before it closes.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
        {
            with(&self.activity, |a| a.last_traffic = Instant::now());
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = Instant::now();
            with(&self.activity, |a| {
                a.last_traffic = now;
                if a.in_flight == 0 && a.head_started.is_none() {
                    a.head_started = Some(now);
                }
            });
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(taken) = self.replace(cx, buf) {
            return taken;
        }
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper writes a refusal's head as one slice, with nothing after it.
        if let [head, rest @ ..] = bufs
            && rest.iter().all(|b| b.is_empty())
            && let Some(taken) = self.replace(cx, head)
        {
            return taken;
        }
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        max_connections: 10,
    };

    #[test]
    fn only_hypers_own_refusals_are_replaced() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                      content-length: 0\r\ndate: Thu, 03 Dec 2026 17:18:46 GMT\r\n\r\n";
        let ours = String::from_utf8(answer_for_hyper_refusal(hyper).unwrap()).unwrap();
        let (head, body) = ours.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(
            head.contains("\r\ndate: Thu, 03 Dec 2026 17:18:46 GMT"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], "431");
        // The API's answers (with a body, or kept alive), and other statuses, pass.
        let api = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: \
                    application/scim+json\r\ncontent-length: 120\r\n\r\n";
        assert!(answer_for_hyper_refusal(api).is_none());
        let kept = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(answer_for_hyper_refusal(kept).is_none());
        let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(answer_for_hyper_refusal(ok).is_none());
        assert!(answer_for_hyper_refusal(b"HTTP/1.1 4").is_none());
    }

    #[test]
    fn accept_errors_back_off_to_a_second() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // A thousand failures in a row still pause a second each: no spinning.
        for _ in 0..1000 {
            b.failed();
        }
        assert_eq!(b.failed(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    #[test]
    fn the_watcher_drops_slow_heads_and_closes_idle_connections() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        assert_eq!(
            a.verdict(t0 + Duration::from_secs(59), &LIMITS),
            Verdict::Keep
        );
        assert_eq!(
            a.verdict(t0 + Duration::from_secs(60), &LIMITS),
            Verdict::Idle
        );
        a.head_started = Some(t0 + Duration::from_secs(1));
        assert_eq!(
            a.verdict(t0 + Duration::from_secs(10), &LIMITS),
            Verdict::Keep
        );
        assert_eq!(
            a.verdict(t0 + Duration::from_secs(11), &LIMITS),
            Verdict::SlowHead
        );
        // A request in flight is the request deadline's business.
        a.in_flight = 1;
        assert_eq!(
            a.verdict(t0 + Duration::from_secs(600), &LIMITS),
            Verdict::Keep
        );
    }
}
