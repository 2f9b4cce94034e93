//! The HTTP server: the poem endpoint served by hyper, with the limits a listener open to anyone needs.
//! Each connection must send a request's headers within `header_read_timeout` and is closed after
//! `idle_timeout` without a byte in either direction; at most `max_connections` are open at once (the rest
//! wait in the kernel's backlog); an accept that fails for want of file descriptors pauses the loop instead of
//! spinning on it. Shutdown stops accepting, lets requests in flight finish and closes idle connections; what
//! is still open when the grace period ends is dropped.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::{
    Addr, Endpoint, EndpointExt, Response,
    endpoint::{DynEndpoint, ToDynEndpoint},
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long the accept loop pauses after an error that is not about one connection (e.g. out of file
/// descriptors): long enough not to spin, short enough to resume soon after descriptors are freed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// How long a connection closed for idleness may take to say goodbye.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The connection limits (`server.*`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

type SharedEndpoint = Arc<dyn DynEndpoint<Output = Response>>;

/// Serves `endpoint` on `listener` until `shutdown` resolves, then drains within `grace`.
pub async fn serve(
    listener: TcpListener,
    endpoint: impl Endpoint + 'static,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let endpoint: SharedEndpoint = Arc::new(ToDynEndpoint(endpoint.map_to_response()));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let (closing, abandon) = (CancellationToken::new(), CancellationToken::new());
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.map_err(io::Error::other)?,
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_per_connection(&error) => continue,
                Err(error) => {
                    tracing::warn!(%error, pause = ?ACCEPT_PAUSE, "cannot accept connections; pausing");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            },
        };
        let connection = Connection { endpoint: endpoint.clone(), local, remote, limits };
        let (closing, abandon) = (closing.clone(), abandon.clone());
        connections.spawn(async move {
            connection.serve(stream, closing, abandon).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    closing.cancel();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(open = connections.len(), "connections still open at the end of the grace period; closing them");
        abandon.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Errors that concern only the connection being accepted; the next accept may succeed at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

struct Connection {
    endpoint: SharedEndpoint,
    local: SocketAddr,
    remote: SocketAddr,
    limits: ConnectionLimits,
}

impl Connection {
    async fn serve(self, stream: TcpStream, closing: CancellationToken, abandon: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let Self { endpoint, local, remote, limits } = self;
        let activity = Activity::default();
        let io = TokioIo::new(Tracked::new(stream, activity.clone()));
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let endpoint = endpoint.clone();
            async move {
                let request = poem::Request::from((
                    request,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(remote)),
                    Scheme::HTTP,
                ));
                let response = endpoint.get_response(request).await;
                Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, io::Error>>::from(response))
            }
        });
        // HTTP/1.1 only: HTTP/2 without TLS has no header-read timeout, and a client's PINGs would count as
        // activity, holding a connection forever without a request. TLS and HTTP/2 belong to the proxy in front.
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let idle = tokio::select! {
            _ = connection.as_mut() => return,
            () = activity.idle_for(limits.idle_timeout) => true,
            () = closing.cancelled() => false,
        };
        // Lets a request in flight finish (HTTP/1 answers it with `Connection: close`, HTTP/2 sends GOAWAY);
        // an idle connection closes at once.
        connection.as_mut().graceful_shutdown();
        if idle {
            tracing::debug!(%remote, "closing an idle connection");
            let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await;
        } else {
            tokio::select! {
                _ = connection => {}
                () = abandon.cancelled() => {}
            }
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self { opened: Instant::now(), last: Arc::default() }
    }
}

impl Activity {
    fn touch(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records its activity, and turns hyper's own bare answers to requests it cannot parse (400,
/// 414, 431, written before the service sees a request) into problem documents like every other error.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
    /// What is left to write of a replaced answer.
    pending: Vec<u8>,
}

impl Tracked {
    fn new(inner: TcpStream, activity: Activity) -> Self {
        Self { inner, activity, pending: Vec::new() }
    }

    /// Writes what is left of a replaced answer; ready once it is all out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.activity.touch();
            self.pending.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's answer to a request it could not parse: a status line of 4xx and an empty body, no content type.
/// The service's own answers always carry a problem document, so nothing of theirs matches.
fn bare_parse_error(head: &[u8]) -> Option<u16> {
    let head = std::str::from_utf8(head).ok()?;
    let status: u16 = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let headers = head.split_once("\r\n\r\n")?.0.to_ascii_lowercase();
    let bare = headers.contains("\r\ncontent-length: 0") && !headers.contains("\r\ncontent-type:");
    (matches!(status, 400 | 414 | 431) && bare).then_some(status)
}

fn problem_answer(status: u16) -> Vec<u8> {
    let (reason, kind, detail) = match status {
        414 => ("URI Too Long", "uri-too-long", "the request's URI is too long"),
        431 => (
            "Request Header Fields Too Large",
            "request-header-fields-too-large",
            "the request's headers are too large",
        ),
        _ => (
            "Bad Request",
            "invalid-request",
            "the request cannot be parsed as HTTP: its request line or a header has a character HTTP does not \
             allow (percent-encode spaces, quotes, angle brackets and the like in the URL, e.g. in `cursor`)",
        ),
    };
    let body = serde_json::json!({
        "type": format!("urn:tenantmq:problem:{kind}"),
        "title": reason,
        "status": status,
        "detail": detail,
    })
    .to_string();
    // Every answer carries a request id (hyper's refusal never reached the request context that gives one).
    let request_id = uuid::Uuid::now_v7();
    tracing::debug!(%request_id, status, "a request HTTP cannot parse refused");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         x-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(status) = bare_parse_error(buf) {
            self.pending = problem_answer(status);
            // The replacement goes out in place of hyper's answer; hyper flushes (or shuts down) next.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && bare_parse_error(first).is_some()
        {
            return self.poll_write(cx, first);
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit of open files to its hard limit, so that the connection cap, not the
/// default of 1,024 descriptors, bounds how many clients are served. Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_parse_errors_are_replaced() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(bare_parse_error(bare), Some(400));
        assert_eq!(
            bare_parse_error(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"),
            Some(431)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_parse_error(ours), None);
        assert_eq!(bare_parse_error(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(bare_parse_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(bare_parse_error(b"{\"payload\": 1}"), None);
        let answer = String::from_utf8(problem_answer(400)).expect("utf-8");
        let body = answer.split_once("\r\n\r\n").expect("a head").1;
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())), "{answer}");
        assert!(answer.contains("\r\nx-request-id: "), "every answer has a request id: {answer}");
        let problem: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(problem["status"], 400);
    }
}
