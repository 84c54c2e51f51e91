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

#[tokio::test]
async fn a_survey_and_a_top_list_rank_the_lines_in_one_pass() {
    let core = crate::test_core().await;
    // Line (1, p) gets p adjustments: p messages.
    for product in 1..=6 {
        for _ in 0..product {
            core.adjust(LineKey::new(1, product), 1, "receipt".into(), None)
                .await
                .unwrap();
        }
    }
    let survey = core.registry().survey(3);
    assert_eq!((survey.lines, survey.active), (6, 6));
    assert_eq!(survey.messages_handled, 21);
    let busiest: Vec<i64> = survey
        .busiest
        .iter()
        .map(|(key, _)| key.product_id)
        .collect();
    assert_eq!(busiest, [6, 5, 4]);

    // Among the odd products' lines only, by messages handled, two of them.
    let top =
        core.registry()
            .top_resident(2, |key| key.product_id % 2 == 1, |s| s.messages_handled);
    let ranked: Vec<i64> = top.lines.iter().map(|l| l.key().product_id).collect();
    assert_eq!((ranked, top.matched, top.active), (vec![5, 3], 3, 3));
    // Ties go by key; asking for more than there are gives them all.
    let all = core.registry().top_resident(100, |_| true, |_| 0);
    let keys: Vec<i64> = all.lines.iter().map(|l| l.key().product_id).collect();
    assert_eq!(keys.len(), 6);
    let mut sorted = all.lines.iter().map(|l| l.key()).collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(
        all.lines.iter().map(|l| l.key()).collect::<Vec<_>>(),
        sorted
    );
    assert_eq!(core.registry().top_resident(0, |_| true, |_| 0).matched, 6);
    // A page far past the end (the count comes from a client) costs nothing and finds all.
    let far = core.registry().top_resident(usize::MAX, |_| true, |_| 0);
    assert_eq!((far.lines.len(), far.matched), (6, 6));
}
