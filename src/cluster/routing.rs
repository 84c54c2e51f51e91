//! Requests between nodes: NATS request/reply on `stockline.<cluster>.shard.<n>`.
//!
//! The owner of shard n subscribes to its subject while it holds the lease
//! ([`Routes::serve`]) and answers each request by running it through its own HTTP router,
//! as if a client had sent it there. Any other node's edge [forwards](Routes::forward) the
//! whole request (method, path, headers, body) and relays the answer as it came.
//!
//! Between one owner giving a shard up and the next subscribing, a request finds no
//! responders, or an owner that no longer serves the shard ([`not_owner`]): the forwarder
//! retries briefly, then answers 503 with `Retry-After`. A forwarded request carries
//! [`FORWARDED`], so the node it reaches serves it or refuses it, never forwards it again.
//!
//! The answer to a request the owner took but did not answer in time is 503 too: the
//! change may still land, so the client retries with the same `Idempotency-Key`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, RequestErrorKind};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use bytes::Bytes;

use self::protocol::Operations;
use super::shard::Shard;
use crate::error::AppError;

pub mod protocol;
mod wire;

use wire::{add_http_headers, answer, is_not_owner, operate, relay};

/// Marks a request that came from another node over NATS.
pub const FORWARDED: &str = "stockline-forwarded";
/// Marks the answer of a node that does not serve the shard (any more): retried elsewhere.
const NOT_OWNER: &str = "stockline-not-owner";
const METHOD: &str = "Stockline-Method";
const URI: &str = "Stockline-Uri";
const STATUS: &str = "Stockline-Status";
/// An answer larger than this is not relayed (only single-shard operations are forwarded,
/// and their answers are small).
const MAX_ANSWER: usize = 768 * 1024;
/// A forwarded request's body at most (the edge refuses larger ones before they get here).
const MAX_REQUEST: usize = 1024 * 1024;

/// How a node forwards and answers.
#[derive(Clone, Debug)]
pub struct RouteSettings {
    /// `STOCKLINE_CLUSTER_NAME`: two clusters on one NATS never see each other's subjects.
    pub cluster: String,
    /// How long a forwarded request keeps retrying while its shard has no owner.
    pub retry_for: Duration,
    /// How long the owner may take to answer.
    pub answer_within: Duration,
}

struct Subscription {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// This node's side of the routing: the subjects it answers, and forwarding.
pub struct Routes {
    client: async_nats::Client,
    settings: RouteSettings,
    /// The node's own router, which answers forwarded requests (set once it is built,
    /// since the router's state holds these routes).
    app: OnceLock<Router>,
    /// What serves typed operations ([`protocol`]), set once at start like `app`.
    operations: OnceLock<Arc<dyn Operations>>,
    subscriptions: Mutex<HashMap<Shard, Subscription>>,
}

impl Routes {
    pub fn new(client: async_nats::Client, settings: RouteSettings) -> Self {
        Self {
            client,
            settings,
            app: OnceLock::new(),
            operations: OnceLock::new(),
            subscriptions: Mutex::default(),
        }
    }

    /// Gives the router forwarded requests run through; the first call wins.
    pub fn answer_with(&self, app: Router) {
        let _ = self.app.set(app);
    }

    /// Gives what serves typed operations for the shards this node owns; the first call
    /// wins.
    pub fn operate_with(&self, operations: Arc<dyn Operations>) {
        let _ = self.operations.set(operations);
    }

    pub fn subject(&self, shard: Shard) -> String {
        format!("stockline.{}.shard.{shard}", self.settings.cluster)
    }

    /// Whether the connection to NATS is up (a node without it can neither answer nor
    /// forward).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The shards whose subjects this node answers, sorted.
    pub fn answering(&self) -> Vec<Shard> {
        let subscriptions = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let mut shards: Vec<_> = subscriptions.keys().copied().collect();
        shards.sort_unstable();
        shards
    }

    /// Starts answering `shard`'s subject (after this node claimed it). Once this returns,
    /// the server has the subscription: the next request reaches this node.
    pub async fn serve(&self, shard: Shard) -> Result<(), async_nats::SubscribeError> {
        if self.lock().contains_key(&shard) {
            return Ok(());
        }
        let mut subscriber = self.client.subscribe(self.subject(shard)).await?;
        // The server has the subscription once it has answered a round trip after it.
        let _ = self.client.flush().await;
        let stop = CancellationToken::new();
        let client = self.client.clone();
        let app = self.app.get().cloned();
        let operations = self.operations.get().cloned();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let in_flight = TaskTracker::new();
            loop {
                tokio::select! {
                    message = subscriber.next() => match message {
                        Some(message) if protocol::is_operation(&message) => {
                            let operations = operations.clone();
                            in_flight.spawn(operate(client.clone(), operations, shard, message));
                        }
                        Some(message) => {
                            let (client, app) = (client.clone(), app.clone());
                            in_flight.spawn(answer(client, app, shard, message));
                        }
                        None => break,
                    },
                    _ = stopped.cancelled() => break,
                }
            }
            let _ = subscriber.unsubscribe().await;
            in_flight.close();
            in_flight.wait().await;
        });
        let previous = self.lock().insert(shard, Subscription { stop, task });
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        Ok(())
    }

    /// Stops answering `shard`'s subject, and returns once every request it took has been
    /// answered (in `sync` mode: once their changes are durable or timed out).
    pub async fn stop(&self, shard: Shard) {
        let subscription = self.lock().remove(&shard);
        if let Some(Subscription { stop, task }) = subscription {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Stops answering every shard (a node that leaves, or lost its leases all at once).
    pub async fn stop_all(&self) {
        for shard in self.answering() {
            self.stop(shard).await;
        }
    }

    /// Sends `request` to the owner of `shard` and answers what it answered; retries while
    /// the shard has no owner, for [`RouteSettings::retry_for`], then answers 503.
    pub async fn forward(&self, shard: Shard, request: Request<Body>) -> Response<Body> {
        // Cut off, the client would keep the request and send it on reconnecting, after
        // its caller was answered: refuse it now, so that a 503 here changed nothing.
        if !self.connected() {
            return cut_off();
        }
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
            Ok(body) => body,
            Err(_) => return AppError::PayloadTooLarge.into_response(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(METHOD, parts.method.as_str());
        headers.insert(URI, parts.uri.to_string());
        add_http_headers(&mut headers, &parts.headers);
        match self.send(shard, headers, body).await {
            Ok(answer) => relay(answer),
            Err(Unreached::TooLarge) => AppError::PayloadTooLarge.into_response(),
            Err(unreached) => AppError::Unavailable(unreached.to_string()).into_response(),
        }
    }

    /// Sends a typed operation (`payload`, [`protocol::encode`]d) to the owner of `shard`
    /// and returns the owner's reply payload ([`protocol::read_answer`]); retries while the
    /// shard has no owner, as [`Self::forward`] does.
    pub async fn ask(&self, shard: Shard, payload: Vec<u8>) -> Result<Bytes, Unreached> {
        if !self.connected() {
            return Err(Unreached::CutOff);
        }
        let answer = self
            .send(shard, protocol::headers(), Bytes::from(payload))
            .await?;
        Ok(answer.payload)
    }

    /// Sends a message to the owner of `shard`, again while the shard has no owner (no
    /// responders, or a node that gave it up), until [`RouteSettings::retry_for`].
    async fn send(
        &self,
        shard: Shard,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<async_nats::Message, Unreached> {
        let subject = self.subject(shard);
        let until = Instant::now() + self.settings.retry_for;
        let mut pause = Duration::from_millis(10);
        loop {
            let sent = async_nats::Request::new()
                .headers(headers.clone())
                .payload(payload.clone())
                .timeout(Some(self.settings.answer_within));
            match self.client.send_request(subject.clone(), sent).await {
                Ok(answer) if !is_not_owner(&answer) => return Ok(answer),
                Ok(_) => {}
                Err(error) if error.kind() == RequestErrorKind::NoResponders => {}
                Err(error) if error.kind() == RequestErrorKind::TimedOut => {
                    return Err(Unreached::TimedOut);
                }
                Err(error) if error.kind() == RequestErrorKind::MaxPayloadExceeded => {
                    return Err(Unreached::TooLarge);
                }
                Err(error) => {
                    tracing::warn!(%error, shard, "a request over NATS failed");
                    return Err(Unreached::CutOff);
                }
            }
            if Instant::now() + pause > until {
                return Err(Unreached::NoOwner(shard));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Sends `request` to the owner of `shard`, like [`Self::forward`], but through this
    /// node's own router, with no trip over NATS, while this node answers that shard (the
    /// parts of a reservation across shards that this node holds itself).
    pub async fn call(&self, shard: Shard, request: Request<Body>) -> Response<Body> {
        let app = self.app.get().cloned();
        let Some(app) = app.filter(|_| self.lock().contains_key(&shard)) else {
            return self.forward(shard, request).await;
        };
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
            Ok(body) => body,
            Err(_) => return AppError::PayloadTooLarge.into_response(),
        };
        let rebuild = || {
            let mut request = Request::new(Body::from(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            request
        };
        let mut here = rebuild();
        here.extensions_mut().insert(Forwarded);
        let response = match tower::ServiceExt::oneshot(app, here).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if response.headers().contains_key(NOT_OWNER) {
            // Given up a moment ago: its new owner answers.
            return self.forward(shard, rebuild()).await;
        }
        response
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Shard, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The answer of a node that cannot reach NATS.
fn cut_off() -> Response<Body> {
    AppError::Unavailable(Unreached::CutOff.to_string()).into_response()
}

/// Why a request did not reach an owner that answered it. Each is a 503 to the client:
/// nothing is known to have happened, or (timed out) it may still land.
#[derive(Debug, thiserror::Error)]
pub enum Unreached {
    #[error("this node cannot reach the cluster's messaging; retry shortly")]
    CutOff,
    #[error("shard {0} has no owner right now (it is moving between nodes); retry shortly")]
    NoOwner(Shard),
    #[error(
        "the node that owns this stock did not answer in time; the change may still land: \
         retry with the same Idempotency-Key"
    )]
    TimedOut,
    #[error("the request is too large to send between nodes")]
    TooLarge,
}

/// The answer of a node asked for a shard it does not serve: the forwarder tries again.
pub fn not_owner(shard: Shard) -> Response<Body> {
    let mut response = AppError::Unavailable(format!(
        "this node does not serve shard {shard}; retry shortly"
    ))
    .into_response();
    response
        .headers_mut()
        .insert(NOT_OWNER, HeaderValue::from_static("1"));
    response
}

/// Marks, among a request's extensions, a request that came from another node over NATS.
/// An extension, not a header: a client cannot claim it.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;

/// Whether a request came from another node (and so must not be forwarded again).
pub fn is_forwarded(extensions: &axum::http::Extensions) -> bool {
    extensions.get::<Forwarded>().is_some()
}
