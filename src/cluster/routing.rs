//! Requests between nodes: NATS request/reply on `stockline.<cluster>.shard.<n>`.
//!
//! The owner of shard n subscribes to its subject while it holds the lease
//! ([`Routes::serve`]) and answers each request, a typed operation of the shard protocol
//! ([`protocol`]), with what it registered to serve them ([`Routes::operate_with`]). Any
//! other node [asks](Routes::ask) it and gets the encoded answer back. No HTTP travels.
//!
//! Once a node knows a shard's owner (every answer names it), it sends that shard's
//! operations on the owner's node subject instead, in messages that carry whatever else
//! is going to the same node ([`batch`]); the shard's subject remains the way to find an
//! owner, and the fallback while a shard moves.
//!
//! Between one owner giving a shard up and the next subscribing, a request finds no
//! responders, or an owner that no longer serves the shard (it answers with the
//! `NOT_OWNER` header): the asking node retries briefly, then gives up
//! ([`Unreached::NoOwner`]).
//!
//! A request the owner took but did not answer in time is [`Unreached::TimedOut`]: the
//! change may still land, so the client retries with the same `Idempotency-Key`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, RequestErrorKind};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use bytes::Bytes;

use self::batch::{Batches, Outcome};
use self::protocol::Operations;
use super::shard::Shard;

pub mod batch;
pub mod protocol;
mod wire;

use wire::{is_not_owner, operate, operate_batch, owner_of};

/// The longest [`Routes::settle`] waits for the NATS server's round trip (a few hundred
/// microseconds when all is well).
const SETTLE_WITHIN: Duration = Duration::from_millis(250);

/// Marks the answer of a node that does not serve the shard (any more): retried elsewhere.
const NOT_OWNER: &str = "stockline-not-owner";

/// How a node asks and answers.
#[derive(Clone, Debug)]
pub struct RouteSettings {
    /// `STOCKLINE_CLUSTER_NAME`: two clusters on one NATS never see each other's subjects.
    pub cluster: String,
    /// This node's ordinal (unique among the cluster's nodes): its batches' subject.
    pub node: u16,
    /// How long a request keeps retrying while its shard has no owner.
    pub retry_for: Duration,
    /// How long the owner may take to answer.
    pub answer_within: Duration,
}

struct Subscription {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The requests taken for the shard and not yet answered, on its subject or in
    /// batches: stopping waits for them.
    in_flight: TaskTracker,
}

type Subscriptions = Arc<Mutex<HashMap<Shard, Subscription>>>;

/// This node's side of the routing: the subjects it answers, and asking.
pub struct Routes {
    client: async_nats::Client,
    settings: RouteSettings,
    /// What serves typed operations ([`protocol`]), set once at start (what serves them
    /// holds these routes).
    operations: OnceLock<Arc<dyn Operations>>,
    subscriptions: Subscriptions,
    /// This node's batch subject, answered from the first shard it serves until it stops
    /// answering all.
    batches_answered: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    /// Who owns each shard, as the last answer from it said, and until when for certain.
    owners: Mutex<HashMap<Shard, (u16, Instant)>>,
    batches: Batches,
    /// Requests sent on shards' subjects (a retry is another).
    sent: AtomicU64,
    /// Operations sent to an owner over NATS (this node's own included, while it is
    /// between owning and serving a shard).
    asked: AtomicU64,
}

impl Routes {
    pub fn new(client: async_nats::Client, settings: RouteSettings) -> Self {
        let batches = Batches::new(
            client.clone(),
            settings.cluster.clone(),
            settings.answer_within,
        );
        Self {
            client,
            settings,
            operations: OnceLock::new(),
            subscriptions: Arc::default(),
            batches_answered: Mutex::default(),
            owners: Mutex::default(),
            batches,
            sent: AtomicU64::new(0),
            asked: AtomicU64::new(0),
        }
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
    /// ask).
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
        match self.serve_each(&[shard]).await.pop() {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    /// Starts answering each of `shards`' subjects, then waits once for the server to
    /// have them all ([`Self::settle`]); answers the shards whose subscribing failed.
    pub async fn serve_each(&self, shards: &[Shard]) -> Vec<(Shard, async_nats::SubscribeError)> {
        let (mut failed, mut subscribed) = (Vec::new(), false);
        for &shard in shards {
            match self.subscribe(shard).await {
                Ok(new) => subscribed |= new,
                Err(error) => failed.push((shard, error)),
            }
        }
        if subscribed {
            self.settle().await;
        }
        failed
    }

    /// Subscribes to `shard`'s subject; false if this node answers it already.
    async fn subscribe(&self, shard: Shard) -> Result<bool, async_nats::SubscribeError> {
        if self.lock().contains_key(&shard) {
            return Ok(false);
        }
        self.answer_batches().await?;
        let subscriber = self.client.subscribe(self.subject(shard)).await?;
        let stop = CancellationToken::new();
        let client = self.client.clone();
        let operations = self.operations.get().cloned();
        let in_flight = TaskTracker::new();
        let node = self.settings.node;
        let task = listen(
            subscriber,
            stop.clone(),
            in_flight.clone(),
            move |message| operate(client.clone(), operations.clone(), node, shard, message),
        );
        let subscription = Subscription {
            stop,
            task,
            in_flight,
        };
        let previous = self.lock().insert(shard, subscription);
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        Ok(true)
    }

    /// Answers this node's batch subject, if it does not yet: each operation in a batch
    /// is served if this node answers its shard, as if it came on the shard's subject.
    async fn answer_batches(&self) -> Result<(), async_nats::SubscribeError> {
        if self.batches_lock().is_some() {
            return Ok(());
        }
        let subject = batch::subject(&self.settings.cluster, self.settings.node);
        let subscriber = self
            .client
            .queue_subscribe(subject, batch::QUEUE_GROUP.to_owned())
            .await?;
        let stop = CancellationToken::new();
        let client = self.client.clone();
        let operations = self.operations.get().cloned();
        let subscriptions = self.subscriptions.clone();
        let task = listen(
            subscriber,
            stop.clone(),
            TaskTracker::new(),
            move |message| {
                let subscriptions = subscriptions.clone();
                // Taken as one of the shard's requests while it is answered.
                let admit = move |shard| {
                    subscriptions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&shard)
                        .map(|s: &Subscription| s.in_flight.token())
                };
                operate_batch(client.clone(), operations.clone(), admit, message)
            },
        );
        let previous = self.batches_lock().replace((stop, task));
        if let Some((previous, _)) = previous {
            previous.cancel();
        }
        Ok(())
    }

    /// Stops answering `shard`'s subject, and returns once every request it took has been
    /// answered (in `sync` mode: once their changes are durable or timed out).
    pub async fn stop(&self, shard: Shard) {
        self.stop_each(&[shard]).await;
    }

    /// [`Self::stop`] for each of `shards`, then waits once for the server to have
    /// ended them all ([`Self::settle`]).
    pub async fn stop_each(&self, shards: &[Shard]) {
        let mut stopped = false;
        for &shard in shards {
            stopped |= self.unsubscribe(shard).await;
        }
        if stopped {
            self.settle().await;
        }
    }

    async fn unsubscribe(&self, shard: Shard) -> bool {
        let subscription = self.lock().remove(&shard);
        let Some(Subscription { stop, task, .. }) = subscription else {
            return false;
        };
        stop.cancel();
        let _ = task.await;
        true
    }

    /// Returns once the NATS server has read everything this node sent before, so that a
    /// subscription made or ended is in force for every other node. `flush` only writes
    /// the socket; a request nobody answers comes back ("no responders") only after the
    /// server read what came before it on the connection. Cut off, there is nothing to
    /// wait for; and it waits at most [`SETTLE_WITHIN`] (a subscriber to every subject
    /// that answers nothing, a tool's, keeps the answer from coming).
    async fn settle(&self) {
        if !self.connected() {
            return;
        }
        let subject = format!("stockline.{}.settle", self.settings.cluster);
        let request = async_nats::Request::new().timeout(Some(SETTLE_WITHIN));
        let asked = self.client.send_request(subject, request);
        let _ = tokio::time::timeout(SETTLE_WITHIN, asked).await;
    }

    /// Stops answering every shard and the batch subject (a node that leaves, or lost
    /// its leases all at once), and sends what it had queued for other nodes.
    pub async fn stop_all(&self) {
        let mut stopped = false;
        for shard in self.answering() {
            stopped |= self.unsubscribe(shard).await;
        }
        let answered = self.batches_lock().take();
        if let Some((stop, task)) = answered {
            stop.cancel();
            let _ = task.await;
            stopped = true;
        }
        if stopped {
            self.settle().await;
        }
        self.batches.close().await;
    }

    /// Operations this node sent to an owner, and the NATS messages that carried them
    /// (fewer, once operations for one node travel together).
    pub fn hop_counts(&self) -> (u64, u64) {
        let asked = self.asked.load(Ordering::Relaxed);
        (
            asked,
            self.batches.messages.load(Ordering::Relaxed) + self.sent.load(Ordering::Relaxed),
        )
    }

    /// Sends a typed operation (`payload`, [`protocol::encode`]d) to the owner of `shard`
    /// and returns the owner's reply payload ([`protocol::read_answer`]); retries while the
    /// shard has no owner, for [`RouteSettings::retry_for`].
    pub async fn ask(&self, shard: Shard, payload: Vec<u8>) -> Result<Bytes, Unreached> {
        // Cut off, the client would keep the request and send it on reconnecting, after
        // its caller was answered: refuse it now, so that giving up here changed nothing.
        if !self.connected() {
            return Err(Unreached::CutOff);
        }
        self.asked.fetch_add(1, Ordering::Relaxed);
        let payload = Bytes::from(payload);
        let owner = self.owner(shard);
        if let Some((node, until)) = owner
            && payload.len() <= batch::MAX_ITEM_BYTES
        {
            let asked_at = Instant::now();
            match self.batches.ask(node, shard, payload.clone(), until).await {
                Outcome::Answered(answer, owned_for) => {
                    self.learn(shard, node, asked_at, owned_for);
                    return Ok(answer);
                }
                // It may have landed; the next one finds out on the shard's subject who
                // answers.
                Outcome::TimedOut | Outcome::Failed => {
                    self.forget_owner(shard, node);
                    return Err(Unreached::TimedOut);
                }
                // Nothing happened: the shard moved, or its owner is gone.
                Outcome::NotServed => self.forget_owner(shard, node),
            }
        }
        let asked_at = Instant::now();
        let answer = self.send(shard, protocol::headers(), payload).await?;
        if let Some((node, owned_for)) = owner_of(&answer) {
            self.learn(shard, node, asked_at, owned_for);
        }
        Ok(answer.payload)
    }

    /// The node that last answered for `shard`, while it surely still serves it, and
    /// until when.
    fn owner(&self, shard: Shard) -> Option<(u16, Instant)> {
        let mut owners = self.owners();
        match owners.get(&shard) {
            Some(&(node, until)) if until > Instant::now() => Some((node, until)),
            Some(_) => {
                owners.remove(&shard);
                None
            }
            None => None,
        }
    }

    /// Takes `node`'s word, in answer to a request sent at `asked_at`, that it serves
    /// `shard` for `owned_for` more (counted from the sending: the word was given at some
    /// moment after it).
    fn learn(&self, shard: Shard, node: u16, asked_at: Instant, owned_for: Duration) {
        let mut owners = self.owners();
        if owned_for.is_zero() {
            owners.remove(&shard);
        } else {
            owners.insert(shard, (node, asked_at + owned_for));
        }
    }

    fn forget_owner(&self, shard: Shard, node: u16) {
        let mut owners = self.owners();
        if owners.get(&shard).is_some_and(|(known, _)| *known == node) {
            owners.remove(&shard);
        }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Shard, (u16, Instant)>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn batches_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(CancellationToken, JoinHandle<()>)>> {
        self.batches_answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
            self.sent.fetch_add(1, Ordering::Relaxed);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Shard, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Answers what `subscriber` brings, each message in a task of `in_flight`, until `stop`;
/// then unsubscribes and returns once every message taken is answered.
fn listen<F>(
    mut subscriber: async_nats::Subscriber,
    stop: CancellationToken,
    in_flight: TaskTracker,
    answer: impl Fn(async_nats::Message) -> F + Send + 'static,
) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = subscriber.next() => match message {
                    Some(message) => {
                        in_flight.spawn(answer(message));
                    }
                    None => break,
                },
                _ = stop.cancelled() => break,
            }
        }
        let _ = subscriber.unsubscribe().await;
        // What came before the unsubscribing is answered too, not left to time out.
        while let Some(message) = subscriber.next().await {
            in_flight.spawn(answer(message));
        }
        in_flight.close();
        in_flight.wait().await;
    })
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
