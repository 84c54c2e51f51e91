//! Reference data across nodes: each node keeps the catalog, the warehouses, the shops and
//! the revoked tokens in memory, so a change made through one node is announced on
//! `stockline.<cluster>.changed` and every node reads it again from the database.
//!
//! The node that made the change announces it after its transaction committed and before
//! it answers, so a client that goes on through another node finds the change there too in
//! all but a race of a few milliseconds; for what a routed request names (its products and
//! warehouses), the owner reads a missing item from the database before serving, which
//! closes that race for new products and warehouses. Announcements are not stored: a node
//! that was cut off from NATS has a stale copy until the next change, or its restart.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A product was created, changed or deleted: read it again.
    Product { id: i64 },
    /// A warehouse was created or changed: read them all again (there are few).
    Warehouses,
    /// A shop or a membership changed: read them all again.
    Shops,
    /// A token was logged out.
    Revoked {
        jti: Uuid,
        expires_at: chrono::DateTime<chrono::Utc>,
    },
}

/// The subject changes are announced on.
pub fn subject(cluster: &str) -> String {
    format!("stockline.{cluster}.changed")
}

/// Announces `change` to every node (this one too, harmlessly) and waits until NATS has
/// it. A failure is logged: the change is in the database, only other nodes' copies lag.
pub async fn announce(nats: &async_nats::Client, cluster: &str, change: &Change) {
    let payload = match serde_json::to_vec(change) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "a change could not be encoded");
            return;
        }
    };
    let sent = async {
        nats.publish(subject(cluster), payload.into()).await?;
        nats.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(error) = sent.await {
        tracing::warn!(%error, ?change, "announcing a change to the other nodes failed");
    }
}

/// Reads an announced change; `None` for one this version does not know.
pub fn parse(payload: &[u8]) -> Option<Change> {
    serde_json::from_slice(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_travel_as_tagged_json() {
        let changes = [
            Change::Product { id: 7 },
            Change::Warehouses,
            Change::Shops,
            Change::Revoked {
                jti: Uuid::nil(),
                expires_at: chrono::DateTime::UNIX_EPOCH,
            },
        ];
        for change in changes {
            let wire = serde_json::to_vec(&change).unwrap();
            assert_eq!(parse(&wire), Some(change));
        }
        assert_eq!(
            serde_json::to_string(&Change::Product { id: 7 }).unwrap(),
            r#"{"kind":"product","id":7}"#
        );
        assert_eq!(parse(br#"{"kind":"something_newer"}"#), None);
    }
}
