//! The shard protocol: typed requests to the owner of a shard, over NATS request/reply on
//! the shard's subject, with no HTTP on the hop.
//!
//! A request is a message (with the [`OPERATION`] header) whose payload is the protocol's
//! [`VERSION`] then the operation, both in postcard (a varint, then the operation's serde
//! form). The owner answers with its own version then the answer. What the operations are
//! is not this module's business: the node registers what serves them ([`Operations`]),
//! and this module carries bytes, retries while a shard has no owner, and refuses what it
//! cannot read.
//!
//! Versions: a node answers a request of a version it does not know with
//! [`Refused::Version`], naming the one it speaks, never by guessing at its bytes; the
//! asking node answers its client 503 (during a rolling upgrade, the request succeeds
//! once both nodes speak the same version, or is served by a node that does).

use std::future::Future;
use std::pin::Pin;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::shard::Shard;

/// The version of the operations and answers this build sends and reads (2: orders' steps
/// and returns of stock; 3: carts' steps, reshaping a reservation, a saga's part named by
/// its own id).
pub const VERSION: u16 = 3;

/// Names, on each request, the version it speaks (for whoever watches the subject; the
/// payload says it again, and that is what counts).
pub const OPERATION: &str = "Stockline-Operation";

/// Why an owner did not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refused {
    /// The request's version is not this node's: it speaks `speaks`.
    Version { asked: u16, speaks: u16 },
    /// The payload did not decode as an operation of this version.
    Unreadable(String),
}

/// What the owner sends back: its answer, or why there is none.
#[derive(Debug, Serialize, Deserialize)]
enum Reply<A> {
    Answer(A),
    Refused(Refused),
}

/// A future the owner's side returns (boxed: the serving side is a trait object).
pub type Served = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// What serves the operations of the shards this node owns. `serve` gets the payload of
/// a request and returns the encoded reply, or `None` when this node does not serve
/// `shard` (any more): the asking node then tries again.
pub trait Operations: Send + Sync + 'static {
    fn serve(&self, shard: Shard, payload: Bytes) -> Served;

    /// How much longer this node serves `shard` for certain (no other node can own it
    /// before then); an asking node sends the shard's operations straight to this node
    /// for that long ([`super::batch`]). `None`: not served, or not known.
    fn serving_for(&self, shard: Shard) -> Option<std::time::Duration>;
}

/// `operation` as a request's payload.
pub fn encode<O: Serialize>(operation: &O) -> Vec<u8> {
    let mut bytes = postcard::to_stdvec(&VERSION).unwrap_or_default();
    // An operation of plain data always serializes.
    bytes.extend(postcard::to_stdvec(operation).unwrap_or_default());
    bytes
}

/// The operation a request carries, or the reply refusing it (to send as it is).
pub fn decode<O: DeserializeOwned>(payload: &[u8]) -> Result<O, Vec<u8>> {
    let refuse = |refused| reply::<()>(Reply::Refused(refused));
    let (version, rest) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| refuse(Refused::Unreadable(e.to_string())))?;
    if version != VERSION {
        return Err(refuse(Refused::Version {
            asked: version,
            speaks: VERSION,
        }));
    }
    postcard::from_bytes(rest).map_err(|e| refuse(Refused::Unreadable(e.to_string())))
}

/// `answer` as a reply's payload.
pub fn answer<A: Serialize>(answer: &A) -> Vec<u8> {
    reply(Reply::Answer(answer))
}

fn reply<A: Serialize>(reply: Reply<A>) -> Vec<u8> {
    let mut bytes = postcard::to_stdvec(&VERSION).unwrap_or_default();
    bytes.extend(postcard::to_stdvec(&reply).unwrap_or_default());
    bytes
}

/// The answer a reply carries, or why the owner refused (a reply of another version is
/// refused here the same way).
pub fn read_answer<A: DeserializeOwned>(payload: &[u8]) -> Result<A, Refused> {
    let (version, rest) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| Refused::Unreadable(e.to_string()))?;
    if version != VERSION {
        return Err(Refused::Version {
            asked: VERSION,
            speaks: version,
        });
    }
    match postcard::from_bytes::<Reply<A>>(rest) {
        Ok(Reply::Answer(answer)) => Ok(answer),
        Ok(Reply::Refused(refused)) => Err(refused),
        Err(e) => Err(Refused::Unreadable(e.to_string())),
    }
}

/// The headers of a typed request.
pub(super) fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(OPERATION, VERSION.to_string().as_str());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Operation {
        Reserve { product: i64, quantity: u64 },
        Read(uuid::Uuid),
    }

    #[test]
    fn an_operation_and_its_answer_round_trip() {
        let sent = Operation::Reserve {
            product: 42,
            quantity: 3,
        };
        let payload = encode(&sent);
        assert_eq!(decode::<Operation>(&payload).unwrap(), sent);
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            decode::<Operation>(&encode(&Operation::Read(id))).unwrap(),
            Operation::Read(id)
        );
        let reply = answer(&(201u16, "body".to_owned()));
        assert_eq!(
            read_answer::<(u16, String)>(&reply).unwrap(),
            (201, "body".to_owned())
        );
        // Compact: a reserve of one line is a few bytes, not a JSON document.
        assert!(payload.len() < 8, "{} bytes", payload.len());
    }

    #[test]
    fn a_request_of_another_version_is_refused_naming_the_version_spoken() {
        let mut payload = postcard::to_stdvec(&(VERSION + 1)).unwrap();
        payload.extend(postcard::to_stdvec(&Operation::Read(uuid::Uuid::nil())).unwrap());
        let refusal = decode::<Operation>(&payload).unwrap_err();
        assert_eq!(
            read_answer::<(u16, String)>(&refusal).unwrap_err(),
            Refused::Version {
                asked: VERSION + 1,
                speaks: VERSION
            }
        );
    }

    #[test]
    fn an_answer_of_another_version_is_not_read_as_this_one() {
        let mut reply = postcard::to_stdvec(&(VERSION + 1)).unwrap();
        reply.extend(postcard::to_stdvec(&Reply::Answer(7u16)).unwrap());
        assert_eq!(
            read_answer::<u16>(&reply).unwrap_err(),
            Refused::Version {
                asked: VERSION,
                speaks: VERSION + 1
            }
        );
    }

    #[test]
    fn garbage_is_refused_as_unreadable_not_guessed_at() {
        let mut payload = postcard::to_stdvec(&VERSION).unwrap();
        payload.extend([0xff, 0xff, 0xff]);
        let refusal = decode::<Operation>(&payload).unwrap_err();
        assert!(matches!(
            read_answer::<u16>(&refusal),
            Err(Refused::Unreadable(_))
        ));
        assert!(matches!(
            read_answer::<u16>(&[]),
            Err(Refused::Unreadable(_))
        ));
    }
}
