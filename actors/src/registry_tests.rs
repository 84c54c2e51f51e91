//! The handle's retry when it meets an actor that a passivation is draining.

use std::sync::Arc;
use std::time::Duration;

use crate::line_state::LineOp;
use crate::types::LineKey;

#[tokio::test]
async fn a_call_that_meets_a_draining_actor_is_sent_again_to_a_fresh_one() {
    let core = crate::test_core().await;
    let key = LineKey::new(1, 7);
    core.adjust(key, 5, "receipt".into(), None).await.unwrap();
    let line = core.registry().resident(key).unwrap();
    let shared = &line.shared;

    // Passivate, as a sweep does, then leave the old actor published: what a caller that
    // loaded it just before the sweep would be holding.
    let stale = shared.actor.load_full().unwrap();
    shared.actor.store(None);
    stale.drain().unwrap();
    stale
        .get_cell()
        .wait(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    shared.actor.store(Some(stale.clone()));

    let applied = line
        .call(LineOp::Adjust {
            delta: 2,
            reason: "receipt".into(),
            note: None,
        })
        .await
        .unwrap();
    assert_eq!(
        applied.snapshot.on_hand, 7,
        "applied once, by the fresh actor"
    );
    let fresh = shared.actor.load_full().unwrap();
    assert!(!Arc::ptr_eq(&fresh, &stale), "the stale actor was replaced");
    assert_eq!(line.snapshot().await.unwrap().on_hand, 7);
}
