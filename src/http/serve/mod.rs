//! The connection layer under the router: HTTP/1.1 over TCP with the limits a public
//! server needs, which `axum::serve` does not keep.
//!
//! - A **header-read timeout**: a new connection, or one that has begun sending a request,
//!   must deliver the whole request head within it, or is closed (slow-header clients).
//! - An **idle timeout**: a keep-alive connection with no request for this long is closed.
//! - A **bound on connections**, below the process's open-file limit: at the bound, the
//!   connection idle the longest (no request in flight) is closed to make room, so a flood
//!   of silent connections cannot lock out `/healthz` or real clients; if every connection
//!   is busy, the new one is answered 503 `overloaded` and closed.
//!
//! A request in flight is never timed out here: its body is read within the body-read
//! timeout by the router's first layer (`http/body.rs`), and handlers bound their own
//! work. Each connection tracks whether a request is in flight (from the moment its head
//! is parsed until its response body is written) and when it last saw bytes or an answer;
//! one task per connection sleeps until the next deadline that could close it.
//!
//! Shutdown: accepting stops, idle connections close at once, and connections with a
//! request in flight finish it and then close (after a grace period, they are closed too).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

mod watch;

use watch::{InFlight, Tracked, Watched};

/// The connection limits (`STOCKLINE_HEADER_READ_TIMEOUT_MS`, `STOCKLINE_IDLE_TIMEOUT_MS`,
/// `STOCKLINE_MAX_CONNECTIONS`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Headers hyper itself accepts; past it hyper answers 431 without a body, so it is set
/// well above the bound the router checks (and answers with the contract's body).
const HYPER_MAX_HEADERS: usize = 400;

/// How long shutdown waits for requests in flight before it closes their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let connections = Arc::new(Connections::new(limits.max_connections));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        match connections.admit() {
            Some(connection) => {
                let (router, limits, stop) = (router.clone(), limits, stop.clone());
                let connections = connections.clone();
                tracker.spawn(async move {
                    let id = connection.id;
                    connection.run(stream, peer, router, limits, stop).await;
                    connections.remove(id);
                });
            }
            None => {
                tracker.spawn(refuse(stream));
            }
        }
    }
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period; closing them");
        connections.close_all();
        tracker.wait().await;
    }
    Ok(())
}

/// At the bound with every connection busy: a 503 in the contract's format, then close.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":{"code":"overloaded","message":"too many connections; retry shortly","details":{}}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The live connections, for the bound and for eviction.
struct Connections {
    bound: usize,
    /// The clock every connection's times count from, so they compare.
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Connections {
    fn new(bound: usize) -> Self {
        Self {
            bound: bound.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a new connection: free, or made by closing the connection idle the
    /// longest. `None` when every connection has a request in flight.
    fn admit(&self) -> Option<Arc<Activity>> {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if live.len() >= self.bound {
            let (&oldest, _) = live
                .iter()
                .filter(|(_, a)| a.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, a)| a.last_seen_ms.load(Ordering::Acquire))?;
            if let Some(evicted) = live.remove(&oldest) {
                evicted.evict.cancel();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(id, self.epoch));
        live.insert(id, activity.clone());
        Some(activity)
    }

    /// Closes every connection at once.
    fn close_all(&self) {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for activity in live.values() {
            activity.evict.cancel();
        }
    }

    fn remove(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}

/// What one connection is doing, shared by its IO, its service and its watchdog.
struct Activity {
    id: u64,
    /// The clock shared by all connections (the times below count from it).
    epoch: Instant,
    /// Milliseconds since `epoch` when the connection was accepted.
    opened_ms: u64,
    /// Requests whose response is not yet fully written.
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` + 1 when bytes of a request head first arrived while no
    /// request was in flight; 0 when no head is being read.
    head_since_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last answer finished (0: none yet).
    answered_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last bytes or answer (for choosing whom to evict).
    last_seen_ms: AtomicU64,
    /// Cancelled to close the connection at once (eviction).
    evict: CancellationToken,
}

impl Activity {
    fn new(id: u64, epoch: Instant) -> Self {
        let opened_ms = epoch.elapsed().as_millis() as u64;
        Self {
            id,
            epoch,
            opened_ms,
            in_flight: AtomicUsize::new(0),
            head_since_ms: AtomicU64::new(0),
            answered_ms: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(opened_ms),
            evict: CancellationToken::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn bytes_read(&self) {
        let now = self.now_ms();
        self.last_seen_ms.store(now, Ordering::Release);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since_ms.compare_exchange(
                0,
                now + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// A request head was parsed: it is in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// When this connection is to be closed if nothing happens first; `None` while a
    /// request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since_ms.load(Ordering::Acquire);
        let answered = self.answered_ms.load(Ordering::Acquire);
        Some(if head > 0 {
            self.at(head - 1) + limits.header_read_timeout
        } else if answered > 0 {
            self.at(answered) + limits.idle_timeout
        } else {
            // A new connection that has sent nothing: it owes a request head.
            self.at(self.opened_ms) + limits.header_read_timeout
        })
    }

    /// Serves one connection until it ends, times out, is evicted or shut down.
    async fn run(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        router: Router,
        limits: Limits,
        stop: CancellationToken,
    ) {
        let activity = self.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let guard = activity.begin();
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                // Still in flight until the body is written (streams included).
                response.map(|r| {
                    r.map(|body| {
                        Body::new(Tracked {
                            body,
                            _guard: guard,
                        })
                    })
                })
            }
        });
        let io = TokioIo::new(Watched {
            stream,
            activity: self.clone(),
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .max_headers(HYPER_MAX_HEADERS)
            .serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        loop {
            let wake = self
                .deadline(&limits)
                .unwrap_or_else(|| Instant::now() + limits.header_read_timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, connection = self.id, "connection ended");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if self.deadline(&limits).is_some_and(|at| at <= Instant::now()) {
                        tracing::debug!(connection = self.id, "closed: header-read or idle timeout");
                        return;
                    }
                }
                _ = self.evict.cancelled() => return,
                _ = stop.cancelled(), if !stopping => {
                    if self.in_flight.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        }
    }
}

/// The default bound on connections: the process's open-file limit, less headroom for
/// the database pool, the listener and files (an eighth, at least 64).
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as usize
    } else {
        1024
    };
    soft.saturating_sub((soft / 8).max(64)).max(16)
}
