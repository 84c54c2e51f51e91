//! The owner's side of a request: a typed operation served and answered, or refused as
//! not this node's; and of a batch of them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::join_all;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::NOT_OWNER;
use super::batch::{self, Answer, OWNER, OWNER_FOR};
use super::protocol::Operations;
use crate::cluster::ordinal::MAX_ORDINAL;
use crate::cluster::shard::Shard;

/// Whether an answer says its node does not serve the shard (any more).
pub(super) fn is_not_owner(answer: &async_nats::Message) -> bool {
    answer
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(NOT_OWNER).is_some())
}

/// The node an answer names as its sender, whose batch subject takes the shard's
/// operations, and for how long.
pub(super) fn owner_of(answer: &async_nats::Message) -> Option<(u16, Duration)> {
    let headers = answer.headers.as_ref()?;
    let node: u16 = headers.get(OWNER)?.as_str().parse().ok()?;
    let owned_for: u64 = headers.get(OWNER_FOR)?.as_str().parse().ok()?;
    (1..=MAX_ORDINAL).contains(&node).then(|| {
        (
            node,
            Duration::from_millis(owned_for).min(batch::MOST_TRUSTED),
        )
    })
}

/// Serves a typed operation for `shard` and replies with its answer, naming this node
/// (`node`); a node with nothing to serve operations with, or that does not serve the
/// shard, says it is not the owner.
pub(super) async fn operate(
    client: async_nats::Client,
    operations: Option<Arc<dyn Operations>>,
    node: u16,
    shard: Shard,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let answer = match &operations {
        Some(operations) => operations.serve(shard, message.payload).await,
        None => None,
    };
    let sent = match answer {
        Some(answer) => {
            let mut headers = HeaderMap::new();
            if let Some(owned_for) = operations.and_then(|o| o.serving_for(shard)) {
                headers.insert(OWNER, node.to_string().as_str());
                headers.insert(OWNER_FOR, batch::millis(owned_for).to_string().as_str());
            }
            client
                .publish_with_headers(reply, headers, answer.into())
                .await
        }
        None => {
            let mut headers = HeaderMap::new();
            headers.insert(NOT_OWNER, "1");
            client
                .publish_with_headers(reply, headers, Bytes::new())
                .await
        }
    };
    if let Err(error) = sent {
        tracing::warn!(%error, "the answer to an operation was not sent");
    }
}

/// Serves a batch ([`batch`]): each operation whose shard `admit` takes (this node answers
/// the shard, and counts the operation among its requests until answered), all at once,
/// and replies with every answer together; an operation not admitted, or that the service
/// does not serve, is answered "not served". Each counts among its shard's requests until
/// the reply is sent. A request that is not a batch of this framing is answered with
/// nothing: none of it was served.
pub(super) async fn operate_batch(
    client: async_nats::Client,
    operations: Option<Arc<dyn Operations>>,
    admit: impl Fn(Shard) -> Option<TaskTrackerToken>,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let mut taken = Vec::new();
    let answer = match batch::decode_request(message.payload) {
        Some(items) => {
            let served = items.into_iter().map(|(shard, payload)| {
                let token = admit(shard);
                let operations = operations.clone();
                async move {
                    let (Some(token), Some(operations)) = (token, operations) else {
                        return (None, None);
                    };
                    let Some(reply) = operations.serve(shard, payload).await else {
                        return (None, Some(token));
                    };
                    let owned_for = operations.serving_for(shard).unwrap_or_default();
                    (Some(Answer { reply, owned_for }), Some(token))
                }
            });
            let (answers, tokens): (Vec<_>, Vec<_>) = join_all(served).await.into_iter().unzip();
            taken = tokens;
            batch::encode_reply(&answers)
        }
        None => {
            tracing::warn!(subject = %message.subject, "a batch of another framing was refused");
            Bytes::new()
        }
    };
    if let Err(error) = client.publish(reply, answer).await {
        tracing::warn!(%error, "the answer to a batch was not sent");
    }
    // Published (into the connection's buffer): the shard's requests are answered.
    drop(taken);
}
