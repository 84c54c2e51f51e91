//! The owner's side of a request: a typed operation served and answered, or refused as
//! not this node's.

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::NOT_OWNER;
use super::protocol::Operations;
use crate::cluster::shard::Shard;

/// Whether an answer says its node does not serve the shard (any more).
pub(super) fn is_not_owner(answer: &async_nats::Message) -> bool {
    answer
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(NOT_OWNER).is_some())
}

/// Serves a typed operation for `shard` and replies with its answer; a node with nothing
/// to serve operations with, or that does not serve the shard, says it is not the owner.
pub(super) async fn operate(
    client: async_nats::Client,
    operations: Option<Arc<dyn Operations>>,
    shard: Shard,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let answer = match operations {
        Some(operations) => operations.serve(shard, message.payload).await,
        None => None,
    };
    let sent = match answer {
        Some(answer) => client.publish(reply, answer.into()).await,
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
