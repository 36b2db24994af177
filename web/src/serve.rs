//! The accept loop: TLS 1.3 (or plain HTTP for a loopback `/metrics`),
//! HTTP/1.1 and HTTP/2 on one port, deadlines, a connection cap, graceful
//! shutdown.
//!
//! A request's body must arrive in full within [`Limits::body_timeout`]
//! of its headers, plus a second for every 64 KiB it carries (a deadline
//! for the whole body, not for each piece, so trickling it byte by byte
//! does not keep a request going, while a large upload on a slow link
//! still gets through); past it the handler's answer goes out as 408.
//!
//! Each connection is watched for idleness, whatever its protocol: the
//! service counts the requests in flight (from the moment a request's
//! headers are in until its response body has been sent or dropped, so an
//! event stream counts for as long as it lasts), and a connection with
//! none for [`Limits::idle_timeout`] (for its first request,
//! [`Limits::header_timeout`]) is shut down gracefully: an HTTP/1.1
//! connection is closed, an HTTP/2 one is sent GOAWAY, and one that has not
//! yet said which protocol it speaks is closed. A peer that does not
//! finish closing within another `header_timeout` while still idle is
//! dropped. A request under way is governed by the body deadline and by
//! the handler, never by the idle clock.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// What one client may cost a site.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time to finish the TLS handshake, and to send a request's headers;
    /// also the time a new connection may take to send its first request.
    pub header_timeout: Duration,
    /// Time a connection may stay open with no request in flight after
    /// its last response (HTTP/1.1 keep-alive and HTTP/2 alike). A
    /// response still being sent, such as an event stream, is in flight.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Largest request body, in bytes (413 beyond it).
    pub body_limit: usize,
    /// Time to send a request's whole body, from its headers on, plus a
    /// second for every 64 KiB of it (408 beyond it).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            body_limit: 64 * 1024,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// How long in-flight requests may take to finish once shutdown begins
/// (an event stream never finishes by itself).
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` over HTTPS until `shutdown` completes.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve(
        listener,
        Some(TlsAcceptor::from(tls)),
        app,
        limits,
        shutdown,
    )
    .await
}

/// Serves `app` over plain HTTP until `shutdown` completes: for `/metrics`
/// on a loopback or otherwise private address only.
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve(listener, None, app, limits, shutdown).await
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = app
        .layer(middleware::from_fn_with_state(
            limits.body_timeout,
            body_deadline,
        ))
        .layer(DefaultBodyLimit::max(limits.body_limit));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // True once shutdown begins; every connection task holds a receiver,
    // so `closed()` tells when the last one has ended.
    let (stopping, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept:
                    // wait a little rather than spin.
                    tracing::warn!("web: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(
                "web: {peer} refused: {} connections open",
                limits.max_connections
            );
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop_rx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!("web: TLS handshake with {peer} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("web: TLS handshake with {peer} timed out");
                                return;
                            }
                        };
                    connection(stream, peer, app, &limits, stop).await;
                }
                None => connection(tcp, peer, app, &limits, stop).await,
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stopping.send(true);
    // Each connection cuts itself off after DRAIN; the margin is for
    // handshakes still running when shutdown began.
    if tokio::time::timeout(DRAIN + Duration::from_secs(1), stopping.closed())
        .await
        .is_err()
    {
        tracing::debug!("web: connections still open after {DRAIN:?}");
    }
    Ok(())
}

/// Bytes a second a body's deadline moves on by as it arrives: a second
/// more for every 64 KiB, so a large upload on a slow link still gets
/// through, while a body trickled in byte by byte gains next to nothing.
const BODY_RATE: f64 = 64.0 * 1024.0;

/// Gives the request's body `timeout` to arrive in full (and a second
/// more per 64 KiB that does arrive); a handler whose
/// body did not arrive in time answers 408 (its own reply, whatever it
/// said about the missing body, with its headers, gets that status).
async fn body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(Deadline {
            body,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            expired: expired.clone(),
        })
    });
    let mut response = next.run(req).await;
    if expired.load(Ordering::Relaxed) {
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    }
    response
}

/// A request body with a deadline for all of it.
struct Deadline {
    body: Body,
    sleep: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.expired.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                // Large bodies (a greeting upload) get time in proportion.
                let more = data.map_or(0, Bytes::len) as f64 / BODY_RATE;
                let until = this.sleep.deadline() + Duration::from_secs_f64(more);
                this.sleep.as_mut().reset(until);
            }
            return Poll::Ready(frame);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(axum::Error::new(
                    "the request body did not arrive in time",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's requests in flight, and since when it has had none.
#[derive(Clone, Copy, Debug)]
struct Activity {
    in_flight: usize,
    /// Requests begun so far.
    begun: u64,
    /// When `in_flight` last went to zero (or the connection began).
    idle_since: Instant,
}

/// One request in flight; dropped with the response body.
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn begin(activity: &Arc<watch::Sender<Activity>>) -> InFlight {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.begun += 1;
        });
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that keeps its request in flight until it is done.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why a connection is being closed, and since when.
#[derive(Clone, Copy)]
enum Closing {
    No,
    /// Idle too long: closed once still idle `header_timeout` later.
    Idle(Instant),
    /// The site is stopping: closed `DRAIN` later whatever is in flight.
    Shutdown(Instant),
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(watch::Sender::new(Activity {
        in_flight: 0,
        begun: 0,
        idle_since: Instant::now(),
    }));
    let mut changes = activity.subscribe();
    let counter = activity.clone();
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = InFlight::begin(&counter);
        req.extensions_mut().insert(ConnectInfo(peer));
        let reply = app.clone().oneshot(req.map(Body::new));
        async move {
            let response: Response = reply.await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
        .into_owned();
    let mut conn = std::pin::pin!(conn);
    let mut closing = Closing::No;
    loop {
        let now = *changes.borrow_and_update();
        let deadline = match closing {
            Closing::Shutdown(since) => Some(since + DRAIN),
            _ if now.in_flight > 0 => None,
            Closing::Idle(since) => Some(since.max(now.idle_since) + limits.header_timeout),
            Closing::No if now.begun == 0 => Some(now.idle_since + limits.header_timeout),
            Closing::No => Some(now.idle_since + limits.idle_timeout),
        };
        let stopping = matches!(closing, Closing::Shutdown(_));
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!("web: connection from {peer} ended: {e}");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                conn.as_mut().graceful_shutdown();
                closing = Closing::Shutdown(Instant::now());
            }
            _ = changes.changed() => {}
            () = sleep_until(deadline) => match closing {
                Closing::No => {
                    tracing::debug!("web: closing the idle connection from {peer}");
                    conn.as_mut().graceful_shutdown();
                    closing = Closing::Idle(Instant::now());
                }
                Closing::Idle(_) | Closing::Shutdown(_) => {
                    tracing::debug!("web: dropping the connection from {peer}: not closed in time");
                    return;
                }
            },
        }
    }
}

/// Sleeps until `deadline`, or for ever.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
