//! Serving connections, for both protocols: accepting within `max_connections`, the TLS
//! handshake and the first bytes within a deadline, one task per connection with its idle and
//! age limits, and at shutdown a bounded drain after which every connection still open is
//! aborted — so no client, however slow, can hold the receiver (and the pipeline behind it)
//! open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use oxeye_api::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::tls::Io;
use crate::{Counter, Shared};

/// How long connections may take to finish their requests once the receiver stops, beyond
/// `backpressure.wait` (what a read request may wait for the pipeline); then they are aborted.
/// A request still arriving when it ends is cut: it was not accepted, its client retries.
const DRAIN_EXTRA: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface (24 bytes) and a SETTINGS frame header (9).
const H2_PREFACE_AND_SETTINGS: u64 = 33;

/// The drain time after `wait`, the longest a read request may wait for the pipeline.
pub(crate) fn drain_time(wait: Duration) -> Duration {
    wait + DRAIN_EXTRA
}

/// Per-protocol connection limits.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Connections open at once; more are closed as soon as they are accepted (and counted).
    pub max_connections: usize,
    /// From accept until the first request's headers (HTTP/1.1: every request's headers), TLS
    /// handshake included.
    pub first_request: Duration,
    /// A connection that moved no byte for this long is closed (gracefully, then by force).
    pub idle: Option<Duration>,
    /// A connection older than this is closed gracefully (and by force `age_grace` later).
    pub max_age: Option<Duration>,
    /// Time given to a connection past its maximum age or idle time to finish its requests.
    pub age_grace: Duration,
    /// HTTP/1.1 offered (false: HTTP/2 only, as gRPC needs).
    pub http1: bool,
    /// HTTP/1.1 keep-alive.
    pub keep_alive: bool,
    /// Concurrent HTTP/2 streams (requests) per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive pings: interval and how long an answer may take.
    pub ping: Option<(Duration, Duration)>,
}

/// A connection's activity: requests started and still open, bytes read, and when it last
/// moved a byte (ms since its accept).
#[derive(Default)]
struct Activity {
    requests: AtomicU64,
    open: AtomicU64,
    read: AtomicU64,
    last_ms: AtomicU64,
}

/// The service of one connection, counting the requests it starts and those still open.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// A request's answer in the making; the request counts as open until it is done or dropped.
struct Open<F> {
    inner: Pin<Box<F>>,
    activity: Arc<Activity>,
}

impl<F: std::future::Future> std::future::Future for Open<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<F> Drop for Open<F> {
    fn drop(&mut self) {
        self.activity.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Open<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.activity.requests.fetch_add(1, Ordering::Relaxed);
        self.activity.open.fetch_add(1, Ordering::Relaxed);
        Open {
            inner: Box::pin(self.inner.call(req)),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// A connection that records its activity (for the idle and first-request deadlines).
struct Watched {
    io: Io,
    activity: Arc<Activity>,
    epoch: Instant,
}

impl Watched {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.read.fetch_add(n as u64, Ordering::Relaxed);
            this.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The HTTP connection builder for `limits`.
fn builder(limits: &Limits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if !limits.http1 {
        b = b.http2_only();
    } else {
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.first_request)
            .keep_alive(limits.keep_alive)
            // Headers and read-ahead held per connection: 64 KiB, not hyper's ~400 KiB, so
            // thousands of slow clients cannot hold much.
            .max_buf_size(64 << 10);
    }
    let mut h2 = b.http2();
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // hyper's default, 16 KiB: header lists held per stream stay small.
        .max_header_list_size(16 << 10);
    if let Some((interval, timeout)) = limits.ping {
        h2.keep_alive_interval(interval).keep_alive_timeout(timeout);
    }
    b
}

/// Serves `service` on `listeners` until `shutdown`, then lets open requests finish for at most
/// `backpressure.wait` + 1 s and aborts what is left. Returns once no connection task is left.
pub(crate) async fn serve<S, B>(
    what: &'static str,
    listeners: Vec<TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    limits: Limits,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let source = shared.source_of(what);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    // Accepting: one task per listener, handing connections (with their permit) to this loop.
    let (tx, mut rx) =
        mpsc::channel::<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)>(64);
    let mut accepting = JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(
            what,
            listener,
            limits.max_connections,
            Arc::clone(&permits),
            tx.clone(),
            Arc::clone(&shared),
        ));
    }
    drop(tx);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            conn = rx.recv() => match conn {
                Some((stream, peer, permit)) => {
                    connections.spawn(connection(
                        what,
                        stream,
                        peer,
                        permit,
                        acceptor.clone(),
                        Arc::clone(&builder),
                        service.clone(),
                        Arc::clone(&limits),
                        Arc::clone(&shared),
                        shutdown.clone(),
                    ));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.wait() => break,
        }
    }
    accepting.shutdown().await;
    // Each connection saw the shutdown and is finishing its requests: give them the drain time.
    let open = connections.len();
    let drain = shared.drain_time();
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = connections.len();
        warn!(
            "otlp receiver: {what}: {left} of {open} connection(s) still open {:.1} s after the stop: closed",
            drain.as_secs_f64()
        );
        shared.bump(Counter::AbortedConnections, source, left as u64);
        connections.shutdown().await;
    }
}

async fn accept(
    what: &'static str,
    listener: TcpListener,
    max: usize,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)>,
    shared: Arc<Shared>,
) {
    let source = shared.source_of(what);
    let mut last_warning: Option<Instant> = None;
    let mut warn_once_a_second = |msg: String| {
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            warn!("{msg}");
            last_warning = Some(Instant::now());
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: say so (once a second), do not spin.
                warn_once_a_second(format!("otlp receiver: {what}: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Closing at once tells the client to come back, where waiting would leave it
            // hanging in the kernel's accept queue.
            shared.bump(Counter::RefusedConnections, source, 1);
            warn_once_a_second(format!(
                "otlp receiver: {what}: {max} connections open (max_connections): refusing {peer}"
            ));
            drop(stream);
            continue;
        };
        // Small responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        if tx.send((stream, peer, permit)).await.is_err() {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection<S, B>(
    what: &'static str,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    service: S,
    limits: Arc<Limits>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let source = shared.source_of(what);
    let epoch = Instant::now();
    let io = match acceptor {
        None => Io::Plain(stream),
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.first_request, acceptor.accept(stream));
            tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => Io::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        debug!("otlp receiver: {what}: TLS handshake with {peer}: {e}");
                        return;
                    }
                    Err(_) => {
                        shared.bump(Counter::Timeouts, source, 1);
                        debug!("otlp receiver: {what}: TLS handshake with {peer} timed out");
                        return;
                    }
                },
                _ = shutdown.wait() => return,
            }
        }
    };
    let activity = Arc::new(Activity::default());
    let io = Watched {
        io,
        activity: Arc::clone(&activity),
        epoch,
    };
    let service = Counted {
        inner: service,
        activity: Arc::clone(&activity),
    };
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    // When the connection was told to finish (idle, age, shutdown), and the reason.
    let mut closing: Option<(Instant, &'static str)> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // hyper's own header timeout ends the connection with a timeout error. Its
                    // timer also runs while a kept-alive connection waits for its next request:
                    // closing one that served requests is no timeout of a client's.
                    let timeout = e.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_timeout());
                    if timeout && activity.requests.load(Ordering::Relaxed) == 0 {
                        shared.bump(Counter::Timeouts, source, 1);
                    }
                    debug!("otlp receiver: {what}: connection from {peer}: {e}");
                }
                return;
            }
            _ = shutdown.wait(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some((Instant::now(), "shutdown"));
            }
            _ = check.tick() => {
                let now = epoch.elapsed();
                // HTTP/1.1: a whole request's headers; HTTP/2 only (gRPC): its preface and
                // settings (a channel may stay open and idle once it has spoken HTTP/2).
                let started = if limits.http1 {
                    activity.requests.load(Ordering::Relaxed) > 0
                } else {
                    activity.requests.load(Ordering::Relaxed) > 0
                        || activity.read.load(Ordering::Relaxed) >= H2_PREFACE_AND_SETTINGS
                };
                if !started && now >= limits.first_request {
                    // Nothing within the deadline: a client that connects and waits, or sends
                    // its headers (or the HTTP/2 preface) a byte at a time.
                    shared.bump(Counter::Timeouts, source, 1);
                    debug!("otlp receiver: {what}: no request from {peer} within {:?}: closed", limits.first_request);
                    return;
                }
                match closing {
                    Some((since, why)) if why != "shutdown" && since.elapsed() >= limits.age_grace => {
                        debug!("otlp receiver: {what}: {peer} still open {:?} after its {why} limit: closed", limits.age_grace);
                        return;
                    }
                    Some(_) => {}
                    None => {
                        let idle = now.saturating_sub(Duration::from_millis(activity.last_ms.load(Ordering::Relaxed)));
                        // Idle means no byte moving and no request open (one may wait on a
                        // full pipeline without a byte moving).
                        let quiet = activity.open.load(Ordering::Relaxed) == 0;
                        let why = if quiet && limits.idle.is_some_and(|d| idle >= d) {
                            Some("idle")
                        } else if limits.max_age.is_some_and(|d| now >= d) {
                            Some("age")
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            conn.as_mut().graceful_shutdown();
                            closing = Some((Instant::now(), why));
                        }
                    }
                }
            }
        }
    }
}

/// The addresses `listeners` are bound to, for the start-up line.
pub(crate) fn addresses(listeners: &[TcpListener]) -> String {
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    addrs.join(", ")
}

/// Logs where a protocol listens, warning when it takes plain text from other hosts.
pub(crate) fn announce(what: &str, listeners: &[TcpListener], tls: bool, extra: &str) {
    let exposed = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .any(|a| !a.ip().is_loopback());
    info!(
        "otlp receiver: {what} on {}{}{extra}",
        addresses(listeners),
        if tls { " (TLS)" } else { "" }
    );
    if exposed && !tls {
        warn!(
            "otlp receiver: {what} listens on {} without TLS: any host that reaches it can send data in plain text; set `tls:` (cert_file, key_file) or bind a loopback address",
            addresses(listeners)
        );
    }
}
