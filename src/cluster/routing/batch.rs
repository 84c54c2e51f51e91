//! Operations for one node travel together.
//!
//! Every answer an owner sends on a shard's subject names the owner (its ordinal, in the
//! [`OWNER`] header) and how much longer it serves the shard for certain ([`OWNER_FOR`]:
//! until its serving deadline, before which no other node can own the shard). For that
//! long, a node that asked queues the shard's operations for the owner's node, and a
//! sender per node takes everything queued for it into one NATS message on the node's
//! subject ([`subject`]); the owner serves them all at once and answers them in one reply,
//! each answer again with how long it serves the shard. So an owner that stops answering
//! (paused, cut off) is asked this way only until its leases could have been taken over;
//! the next operation goes by the shard's subject, where the new owner answers. Under load the per-message costs (the NATS
//! server's routing, both connections' tasks, the subscriber's wake-up) are paid once a
//! message rather than once an operation, as TigerBeetle's clients batch their requests.
//!
//! Nothing waits to fill a batch: a sender with nothing in flight sends at once what is
//! queued, however little. At most [`IN_FLIGHT`] messages are in flight to one node;
//! while they are, what arrives queues, so the busier the hop, the fuller its messages.
//!
//! Nothing is served twice: an operation the node answered "not mine" (the shard moved),
//! or that no node received (no responder: the node is gone), is sent again on its
//! shard's subject, which finds the new owner. A node's batch subject is answered in a
//! queue group, so even two processes under one ordinal never both take a message (one
//! answering "not mine" while the other served it). An operation whose message was not
//! answered in time may have been served: the caller is told so, as on the shard's
//! subject. What was still queued for that node when its message timed out, or waited
//! past the time its owner was known to serve the shard, is not sent to it but on the
//! shard's subject; an operation whose caller gave up is not sent at all.
//!
//! The framing is this module's own, little-endian. A request: the count (u16), then each
//! operation's shard (u16), length (u32) and bytes (a request of the shard protocol, as
//! on the shard's subject). A reply: the count, then each answer's tag (1 answered, 0 not
//! served, 2 served but its answer did not fit in the reply: the caller is told it may
//! have landed), how long its owner serves the shard (ms, u32), its length and bytes. An owner that cannot read a request answers an empty
//! payload: nothing was served. The framing's version is in the subject, so a node of
//! another framing is no responder to this one, whose operations then go by their shards'
//! subjects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::cluster::shard::Shard;

/// Names, on an owner's answer on a shard's subject, the ordinal of the node that sent it:
/// the node whose subject takes that shard's operations in batches.
pub const OWNER: &str = "Stockline-Owner";

/// With [`OWNER`]: for how many milliseconds more the owner serves the shard for certain.
pub const OWNER_FOR: &str = "Stockline-Owner-For";

/// Operations in one message at most.
pub const MAX_ITEMS: usize = 64;

/// An operation larger than this travels alone on its shard's subject (a message stays
/// far below NATS's payload limit, 1 MiB by default).
pub const MAX_ITEM_BYTES: usize = 8 * 1024;

/// The longest an owner's word on serving a shard is taken for (a lease is far shorter).
pub const MOST_TRUSTED: Duration = Duration::from_secs(120);

/// Messages in flight to one node at once at most. One: what arrives while a message is
/// out leaves together in the next (BENCHMARKS.md: at 3 nodes round-robin, 4 in flight
/// carried 2.0 operations a message, 1 carried 5.2 and served a quarter more).
pub const IN_FLIGHT: usize = 1;

/// Operations queued for one node at most; a caller beyond waits for room.
const QUEUED: usize = 1024;

/// A reply's payload at most, below NATS's default limit (1 MiB): answers past it are
/// tagged as not carried.
const MAX_REPLY_BYTES: usize = 960 * 1024;

/// The queue group every process answering a batch subject joins.
pub const QUEUE_GROUP: &str = "stockline";

/// The subject of node `ordinal`'s batches in `cluster` (framing 1).
pub fn subject(cluster: &str, ordinal: u16) -> String {
    format!("stockline.{cluster}.batch1.{ordinal}")
}

/// What came of an operation sent in a batch.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The owner's reply to it, and how much longer the owner serves the shard.
    Answered(Bytes, Duration),
    /// Nothing happened: the node does not serve the shard (any more), or no node
    /// answers its subject. Send it on the shard's subject.
    NotServed,
    /// Sent, not answered in time, or served with an answer that did not come back: it
    /// may have been served.
    TimedOut,
    /// The messaging failed, or the reply could not be read: it may have been served.
    Failed,
}

struct Pending {
    shard: Shard,
    payload: Bytes,
    /// Until when its owner surely serves the shard: not sent to it later.
    until: Instant,
    /// How many of the node's messages had timed out when it was queued.
    after_timeouts: u64,
    answer: oneshot::Sender<Outcome>,
}

/// What one node's sender and the callers queueing for it share.
struct Queue {
    queue: mpsc::Sender<Pending>,
    timeouts: Arc<AtomicU64>,
}

/// The asking side: a queue and a sender per node.
pub(super) struct Batches {
    client: async_nats::Client,
    cluster: String,
    answer_within: Duration,
    /// One per node asked so far (ordinals are at most 1023, so this is bounded); `None`
    /// once closed: operations then go by their shards' subjects.
    queues: Mutex<Option<HashMap<u16, Queue>>>,
    senders: TaskTracker,
    /// NATS messages sent with batches.
    pub(super) messages: Arc<AtomicU64>,
}

impl Batches {
    pub(super) fn new(
        client: async_nats::Client,
        cluster: String,
        answer_within: Duration,
    ) -> Self {
        Self {
            client,
            cluster,
            answer_within,
            queues: Mutex::new(Some(HashMap::new())),
            senders: TaskTracker::new(),
            messages: Arc::default(),
        }
    }

    /// Sends `payload` (an operation of `shard`'s) to node `node`, which surely serves
    /// the shard until `until`, with whatever else is going there.
    pub(super) async fn ask(
        &self,
        node: u16,
        shard: Shard,
        payload: Bytes,
        until: Instant,
    ) -> Outcome {
        let Some((queue, timeouts)) = self.queue(node) else {
            return Outcome::NotServed;
        };
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            shard,
            payload,
            until,
            after_timeouts: timeouts.load(Ordering::Relaxed),
            answer,
        };
        if queue.send(pending).await.is_err() {
            // Closed (the node is leaving): not sent.
            return Outcome::NotServed;
        }
        // A sender answers every operation it took; one that is gone failed somewhere.
        answered.await.unwrap_or(Outcome::Failed)
    }

    fn queue(&self, node: u16) -> Option<(mpsc::Sender<Pending>, Arc<AtomicU64>)> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queues = queues.as_mut()?;
        if let Some(Queue { queue, timeouts }) = queues.get(&node) {
            return Some((queue.clone(), timeouts.clone()));
        }
        let (queue, queued) = mpsc::channel(QUEUED);
        let timeouts = Arc::new(AtomicU64::new(0));
        let sender = Sender {
            client: self.client.clone(),
            subject: subject(&self.cluster, node),
            answer_within: self.answer_within,
            messages: self.messages.clone(),
            timeouts: timeouts.clone(),
        };
        self.senders.spawn(sender.run(queued));
        let made = Queue {
            queue: queue.clone(),
            timeouts: timeouts.clone(),
        };
        queues.insert(node, made);
        Some((queue, timeouts))
    }

    /// Stops every sender once it has sent and answered what was queued; operations
    /// asked after go by their shards' subjects.
    pub(super) async fn close(&self) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.senders.close();
        self.senders.wait().await;
    }
}

/// Sends one node's queue in messages.
struct Sender {
    client: async_nats::Client,
    subject: String,
    answer_within: Duration,
    messages: Arc<AtomicU64>,
    /// This node's messages that timed out so far.
    timeouts: Arc<AtomicU64>,
}

impl Sender {
    async fn run(self, mut queued: mpsc::Receiver<Pending>) {
        let this = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let sending = TaskTracker::new();
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let Some(first) = queued.recv().await else {
                break;
            };
            let mut batch = Vec::with_capacity(MAX_ITEMS);
            let mut next = Some(first);
            while let Some(pending) = next.take() {
                if let Some(pending) = this.still_to_send(pending) {
                    batch.push(pending);
                }
                if batch.len() < MAX_ITEMS {
                    next = queued.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let this = this.clone();
            sending.spawn(async move {
                this.send(batch).await;
                drop(permit);
            });
        }
        sending.close();
        sending.wait().await;
    }

    /// `pending`, unless it is not to be sent to this node: its caller gave up (nothing
    /// to do), or it was queued before one of the node's messages timed out, or its owner
    /// is no longer known to serve the shard (to its shard's subject then).
    fn still_to_send(&self, pending: Pending) -> Option<Pending> {
        if pending.answer.is_closed() {
            return None;
        }
        if pending.after_timeouts < self.timeouts.load(Ordering::Relaxed)
            || pending.until <= Instant::now()
        {
            let _ = pending.answer.send(Outcome::NotServed);
            return None;
        }
        Some(pending)
    }

    async fn send(&self, batch: Vec<Pending>) {
        let payload = encode_request(batch.iter().map(|p| (p.shard, &p.payload)));
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(self.answer_within));
        self.messages.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .client
            .send_request(self.subject.clone(), request)
            .await;
        let answers = match sent {
            Ok(reply) if reply.payload.is_empty() => None,
            Ok(reply) => match decode_reply(reply.payload, batch.len()) {
                Some(answers) => Some(answers),
                None => {
                    tracing::warn!(subject = %self.subject, "a batch's reply was unreadable");
                    return answer_all(batch, || Outcome::Failed);
                }
            },
            Err(error) => match error.kind() {
                RequestErrorKind::NoResponders => None,
                RequestErrorKind::TimedOut => {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                    return answer_all(batch, || Outcome::TimedOut);
                }
                _ => {
                    tracing::warn!(%error, subject = %self.subject, "a batch over NATS failed");
                    return answer_all(batch, || Outcome::Failed);
                }
            },
        };
        let Some(answers) = answers else {
            return answer_all(batch, || Outcome::NotServed);
        };
        for (pending, answer) in batch.into_iter().zip(answers) {
            let _ = pending.answer.send(match answer {
                Carried::Answered(answer, owned_for) => Outcome::Answered(answer, owned_for),
                Carried::NotServed => Outcome::NotServed,
                Carried::Dropped => Outcome::TimedOut,
            });
        }
    }
}

fn answer_all(batch: Vec<Pending>, outcome: impl Fn() -> Outcome) {
    for pending in batch {
        let _ = pending.answer.send(outcome());
    }
}

/// A batch's request payload.
pub(super) fn encode_request<'a>(items: impl Iterator<Item = (Shard, &'a Bytes)>) -> Bytes {
    let items: Vec<_> = items.collect();
    let size = 2 + items.iter().map(|(_, p)| 6 + p.len()).sum::<usize>();
    let mut bytes = BytesMut::with_capacity(size);
    bytes.put_u16_le(items.len() as u16);
    for (shard, payload) in items {
        bytes.put_u16_le(shard);
        bytes.put_u32_le(payload.len() as u32);
        bytes.put_slice(payload);
    }
    bytes.freeze()
}

/// The operations a batch's request carries, each with its shard; `None` if it is not a
/// request of this framing (or carries more than [`MAX_ITEMS`]).
pub(super) fn decode_request(mut payload: Bytes) -> Option<Vec<(Shard, Bytes)>> {
    let count = usize::from(take_u16(&mut payload)?);
    if count == 0 || count > MAX_ITEMS {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let shard = take_u16(&mut payload)?;
        items.push((shard, take_bytes(&mut payload)?));
    }
    payload.is_empty().then_some(items)
}

/// An operation's answer in a batch's reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    /// The owner's reply, as on the shard's subject.
    pub reply: Vec<u8>,
    /// How much longer the owner serves the shard for certain (zero: not known).
    pub owned_for: Duration,
}

/// A batch's reply payload: each answer in the request's order, `None` for not served.
/// Answers that would take the reply past [`MAX_REPLY_BYTES`] are tagged as served but
/// not carried.
pub(super) fn encode_reply(answers: &[Option<Answer>]) -> Bytes {
    encode_reply_within(answers, MAX_REPLY_BYTES)
}

fn encode_reply_within(answers: &[Option<Answer>], most: usize) -> Bytes {
    const HEAD: usize = 9;
    let mut left = most.saturating_sub(2 + HEAD * answers.len());
    let mut bytes = BytesMut::with_capacity(most.min(64 * 1024));
    bytes.put_u16_le(answers.len() as u16);
    for answer in answers {
        let (tag, owned_for, reply) = match answer {
            None => (0, 0, &[][..]),
            Some(a) if a.reply.len() <= left => {
                left -= a.reply.len();
                (1, millis(a.owned_for), &a.reply[..])
            }
            Some(_) => (2, 0, &[][..]),
        };
        bytes.put_u8(tag);
        bytes.put_u32_le(owned_for);
        bytes.put_u32_le(reply.len() as u32);
        bytes.put_slice(reply);
    }
    bytes.freeze()
}

/// An answer as a reply carried it.
#[derive(Debug, PartialEq, Eq)]
enum Carried {
    Answered(Bytes, Duration),
    NotServed,
    /// Served, its answer too large to carry.
    Dropped,
}

/// `duration` in whole milliseconds, as the framing and the [`OWNER_FOR`] header carry it.
pub(super) fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// The answers a reply carries for a request of `expected` operations (each with how
/// long its owner serves the shard), or `None` if it is not such a reply.
fn decode_reply(mut payload: Bytes, expected: usize) -> Option<Vec<Carried>> {
    if usize::from(take_u16(&mut payload)?) != expected {
        return None;
    }
    let mut answers = Vec::with_capacity(expected);
    for _ in 0..expected {
        if payload.remaining() < 5 {
            return None;
        }
        let tag = payload.get_u8();
        let owned_for = Duration::from_millis(u64::from(payload.get_u32_le()));
        let answer = take_bytes(&mut payload)?;
        answers.push(match tag {
            0 => Carried::NotServed,
            1 => Carried::Answered(answer, owned_for),
            2 => Carried::Dropped,
            _ => return None,
        });
    }
    payload.is_empty().then_some(answers)
}

fn take_u16(payload: &mut Bytes) -> Option<u16> {
    (payload.remaining() >= 2).then(|| payload.get_u16_le())
}

fn take_bytes(payload: &mut Bytes) -> Option<Bytes> {
    if payload.remaining() < 4 {
        return None;
    }
    let len = payload.get_u32_le() as usize;
    (payload.remaining() >= len).then(|| payload.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_reply_round_trip() {
        let (a, b) = (Bytes::from_static(b"\x03\x01"), Bytes::new());
        let request = encode_request([(5, &a), (1023, &b)].into_iter());
        assert_eq!(
            decode_request(request).unwrap(),
            vec![(5, a.clone()), (1023, b)]
        );
        let answer = |reply: &[u8], ms| Answer {
            reply: reply.to_vec(),
            owned_for: Duration::from_millis(ms),
        };
        let reply = encode_reply(&[Some(answer(b"yes", 2500)), None, Some(answer(b"", 0))]);
        assert_eq!(
            decode_reply(reply, 3).unwrap(),
            vec![
                Carried::Answered(Bytes::from_static(b"yes"), Duration::from_millis(2500)),
                Carried::NotServed,
                Carried::Answered(Bytes::new(), Duration::ZERO)
            ]
        );
    }

    #[test]
    fn answers_past_the_reply_s_room_are_said_served_not_carried() {
        let answer = |len| {
            Some(Answer {
                reply: vec![7; len],
                owned_for: Duration::from_secs(1),
            })
        };
        let answers = [answer(400), None, answer(400), answer(100)];
        // Room for the heads and 500 bytes of answers: the second 400 does not fit, the
        // 100 after it does.
        let reply = encode_reply_within(&answers, 2 + 9 * 4 + 500);
        assert!(reply.len() <= 2 + 9 * 4 + 500);
        let carried = decode_reply(reply, 4).unwrap();
        assert!(matches!(&carried[0], Carried::Answered(b, _) if b.len() == 400));
        assert_eq!(carried[1], Carried::NotServed);
        assert_eq!(carried[2], Carried::Dropped);
        assert!(matches!(&carried[3], Carried::Answered(b, _) if b.len() == 100));
    }

    #[test]
    fn what_is_not_a_request_or_a_reply_of_this_framing_is_refused() {
        let a = Bytes::from_static(b"abc");
        let request = encode_request([(5, &a)].into_iter());
        // Cut anywhere, or with bytes after it: refused, never read short.
        for end in 0..request.len() {
            assert!(
                decode_request(request.slice(..end)).is_none(),
                "cut at {end}"
            );
        }
        let mut longer = BytesMut::from(&request[..]);
        longer.put_u8(0);
        assert!(decode_request(longer.freeze()).is_none());
        // A length past the end, no operations, too many.
        let mut lying = BytesMut::new();
        lying.put_u16_le(1);
        lying.put_u16_le(5);
        lying.put_u32_le(u32::MAX);
        assert!(decode_request(lying.freeze()).is_none());
        assert!(decode_request(Bytes::from_static(&[0, 0])).is_none());
        let many: Vec<Bytes> = vec![Bytes::new(); MAX_ITEMS + 1];
        assert!(decode_request(encode_request(many.iter().map(|p| (1, p)))).is_none());

        let reply = encode_reply(&[Some(Answer {
            reply: b"yes".to_vec(),
            owned_for: Duration::from_secs(1),
        })]);
        assert!(
            decode_reply(reply.clone(), 2).is_none(),
            "answers for another request"
        );
        for end in 0..reply.len() {
            assert!(
                decode_reply(reply.slice(..end), 1).is_none(),
                "cut at {end}"
            );
        }
        let mut tagged = BytesMut::from(&reply[..]);
        tagged[2] = 7;
        assert!(decode_reply(tagged.freeze(), 1).is_none(), "an unknown tag");
    }
}
