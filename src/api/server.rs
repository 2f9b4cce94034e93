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
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
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
        let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
        let connection = builder.serve_connection_with_upgrades(io, service);
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

/// A stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
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
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit of open files to its hard limit, so that the connection cap, not the
/// default of 1,024 descriptors, bounds how many clients are served. Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
