use super::watermark::{PRUNE_FLOOR, REFUSED_KEPT};
use super::*;
use crate::types::{TransferId, lock};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn transfer() -> Record {
    Record::Transfer(TransferRecord {
        note: None,
        id: TransferId::new(),
        from_warehouse_id: 1,
        to_warehouse_id: 2,
        product_id: 3,
        quantity: 1,
        created_at: Utc::now(),
    })
}

#[test]
fn appends_are_numbered_consecutively() {
    let buffer = JournalBuffer::<Record>::new(41, 100);
    assert_eq!(buffer.append(vec![transfer(), transfer()]), 43);
    assert_eq!(buffer.append(vec![transfer()]), 44);
    let batch = buffer.take().unwrap();
    let lsns: Vec<_> = batch.records.iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!((lsns, batch.last), (vec![42, 43, 44], 44));
    assert!(buffer.take().is_none());
}

#[tokio::test]
async fn records_of_an_open_group_are_held_until_it_closes_then_taken_together() {
    let buffer = JournalBuffer::<Record>::new(0, 100);
    buffer.append(vec![transfer()]);
    let group = buffer.group().await;
    buffer.append(vec![transfer()]);
    assert!(
        buffer.take().is_none(),
        "nothing is taken while a group is open"
    );
    buffer.append(vec![transfer()]);
    drop(group);
    let batch = buffer.take().unwrap();
    assert_eq!((batch.records.len(), batch.last), (3, 3));
}

#[tokio::test]
async fn a_draining_flusher_makes_new_groups_wait_so_it_cannot_starve() {
    let buffer = Arc::new(JournalBuffer::<Record>::new(0, 100));
    let first = buffer.group().await;
    buffer.append(vec![transfer()]);
    let flusher = {
        let buffer = buffer.clone();
        tokio::spawn(async move { buffer.next_batch().await.last })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = {
        let buffer = buffer.clone();
        tokio::spawn(async move {
            let _group = buffer.group().await;
            buffer.append(vec![transfer()])
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !second.is_finished(),
        "a new group waits while the flusher drains"
    );
    drop(first);
    assert_eq!(
        flusher.await.unwrap(),
        1,
        "the flusher got the first group's records"
    );
    assert_eq!(second.await.unwrap(), 2, "then the waiting group went on");
}

#[tokio::test]
async fn a_waiter_is_released_only_once_its_batch_is_complete() {
    let buffer = Arc::new(JournalBuffer::<Record>::new(0, 100));
    let lsn = buffer.append(vec![transfer()]);
    let watch = buffer.durable();
    let waiter = tokio::spawn(async move { watch.wait_for(lsn).await });
    let batch = buffer.take().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiter.is_finished(),
        "released before the batch was written"
    );
    buffer.complete(&batch);
    waiter.await.unwrap().unwrap();
    assert_eq!(buffer.durable().current(), lsn);
    assert_eq!(buffer.backlog(), 0);
}

#[tokio::test]
async fn a_failed_flush_keeps_the_backlog_and_its_waiters() {
    let buffer = JournalBuffer::<Record>::new(0, 2);
    buffer.append(vec![transfer(), transfer()]);
    let batch = buffer.take().unwrap();
    // The flusher failed to write `batch` and holds on to it: nothing is durable.
    assert!(buffer.is_backlogged());
    assert_eq!(buffer.durable().current(), 0);
    buffer.complete(&batch);
    assert!(!buffer.is_backlogged());
}

#[tokio::test]
async fn next_batch_returns_when_something_is_appended() {
    let buffer = Arc::new(JournalBuffer::<Record>::new(0, 100));
    let waiting = {
        let buffer = buffer.clone();
        tokio::spawn(async move { buffer.next_batch().await.last })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    buffer.append(vec![transfer()]);
    let last = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, 1);
}

/// Counts how often a waiting future is woken.
struct Wakes(AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once<F: std::future::Future>(
    future: std::pin::Pin<&mut F>,
    wakes: &Arc<Wakes>,
) -> std::task::Poll<F::Output> {
    let waker = std::task::Waker::from(wakes.clone());
    future.poll(&mut std::task::Context::from_waker(&waker))
}

#[test]
fn a_waiter_is_woken_once_when_its_own_lsn_is_durable_not_at_every_flush_before() {
    let buffer = JournalBuffer::<Record>::new(0, 100);
    let mut batches = Vec::new();
    for _ in 0..5 {
        buffer.append(vec![transfer()]);
        batches.push(buffer.take().unwrap());
    }
    let watch = buffer.durable();
    let late = watch.wait_for(5);
    let early = watch.wait_for(2);
    tokio::pin!(late, early);
    let (late_wakes, early_wakes) = (
        Arc::new(Wakes(AtomicUsize::new(0))),
        Arc::new(Wakes(AtomicUsize::new(0))),
    );
    assert!(poll_once(late.as_mut(), &late_wakes).is_pending());
    assert!(poll_once(early.as_mut(), &early_wakes).is_pending());
    for batch in &batches[..4] {
        buffer.complete(batch);
    }
    assert_eq!(
        early_wakes.0.load(Ordering::SeqCst),
        1,
        "woken when 2 was durable"
    );
    assert!(poll_once(early.as_mut(), &early_wakes).is_ready());
    assert_eq!(
        late_wakes.0.load(Ordering::SeqCst),
        0,
        "four flushes before its own: never woken"
    );
    assert!(poll_once(late.as_mut(), &late_wakes).is_pending());
    buffer.complete(&batches[4]);
    assert_eq!(late_wakes.0.load(Ordering::SeqCst), 1);
    assert!(matches!(
        poll_once(late.as_mut(), &late_wakes),
        std::task::Poll::Ready(Ok(()))
    ));
}

#[tokio::test]
async fn waiters_hear_that_the_journal_closed_and_so_does_anyone_after() {
    let buffer = JournalBuffer::<Record>::new(0, 100);
    let lsn = buffer.append(vec![transfer()]);
    let watch = buffer.durable();
    let waiter = tokio::spawn({
        let watch = watch.clone();
        async move { watch.wait_for(lsn).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(buffer);
    assert_eq!(waiter.await.unwrap(), Err(NotDurable::JournalClosed));
    assert_eq!(watch.wait_for(lsn).await, Err(NotDurable::JournalClosed));
    assert_eq!(
        watch.wait_for(0).await,
        Ok(()),
        "what was durable stays durable"
    );
}

#[tokio::test]
async fn a_refused_batchs_waiters_hear_so_before_or_after_and_the_others_go_on() {
    let buffer = JournalBuffer::<Record>::new(0, 100);
    let watch = buffer.durable();
    let first = buffer.append(vec![transfer()]);
    let batch_one = buffer.take().unwrap();
    let refused = buffer.append(vec![transfer(), transfer()]);
    let batch_two = buffer.take().unwrap();
    let after = buffer.append(vec![transfer()]);
    let batch_three = buffer.take().unwrap();
    let spawn = |lsn| {
        let watch = watch.clone();
        tokio::spawn(async move { watch.wait_for(lsn).await })
    };
    let (one, two, three) = (spawn(first), spawn(refused), spawn(after));
    tokio::time::sleep(Duration::from_millis(20)).await;
    buffer.complete(&batch_one);
    buffer.refuse(&batch_two);
    assert_eq!(one.await.unwrap(), Ok(()));
    assert_eq!(two.await.unwrap(), Err(NotDurable::Refused));
    assert!(!three.is_finished(), "released before its own batch");
    // A caller that took its Lsn in the refused batch and only now waits.
    assert_eq!(watch.wait_for(refused - 1).await, Err(NotDurable::Refused));
    assert_eq!(
        watch.current(),
        refused,
        "the watermark moved past the refusal"
    );
    buffer.complete(&batch_three);
    assert_eq!(three.await.unwrap(), Ok(()));
    assert_eq!(watch.wait_for(first).await, Ok(()));
    assert_eq!(buffer.backlog(), 0);

    // Refusals are remembered within a bound.
    let watermark = Watermark::starting_at(0);
    for n in 0..(REFUSED_KEPT as Lsn + 10) {
        watermark.refuse(n * 10 + 1, n * 10 + 5);
    }
    assert_eq!(lock(&watermark.waiters).refused.len(), REFUSED_KEPT);
}

#[tokio::test]
async fn waiters_that_gave_up_do_not_pile_up_while_nothing_becomes_durable() {
    // The store is down: nothing becomes durable, and every request times out.
    let watermark = Watermark::starting_at(0);
    let watch = watermark.watch();
    for _ in 0..100_000 {
        let wait = watch.wait_for(1);
        tokio::pin!(wait);
        let waker = std::task::Waker::noop();
        assert!(
            wait.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
    }
    assert!(
        watermark.waiting() <= 2 * PRUNE_FLOOR,
        "{} abandoned waiters kept",
        watermark.waiting()
    );
    // Those really waiting are kept and released.
    let kept = tokio::spawn({
        let watch = watch.clone();
        async move { watch.wait_for(1).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10_000 {
        let wait = watch.wait_for(1);
        tokio::pin!(wait);
        let _ = wait
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    }
    watermark.advance(1);
    kept.await.unwrap().unwrap();
    assert_eq!(watermark.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_waiter_is_missed_by_a_racing_flush() {
    // Waiters register while flushes complete on another thread; each must return.
    let buffer = Arc::new(JournalBuffer::<Record>::new(0, 1_000_000));
    let flusher = {
        let buffer = buffer.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..20_000 {
                buffer.append(vec![transfer()]);
                let batch = buffer.take().unwrap();
                buffer.complete(&batch);
            }
        })
    };
    let watch = buffer.durable();
    let mut waiters = Vec::new();
    for lsn in (1..=20_000).step_by(7) {
        let watch = watch.clone();
        waiters.push(tokio::spawn(async move { watch.wait_for(lsn).await }));
    }
    flusher.await.unwrap();
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("every waiter is released")
            .unwrap()
            .unwrap();
    }
    assert_eq!(watch.current(), 20_000);
}

#[test]
fn the_memory_journal_keeps_or_discards_records_but_always_numbers_them() {
    let kept = MemoryJournal::new();
    let dropped = MemoryJournal::discarding();
    for journal in [&kept, &dropped] {
        assert_eq!(journal.append(vec![transfer(), transfer()]), 2);
        assert_eq!(journal.durable().current(), 2);
    }
    assert_eq!(kept.records().len(), 2);
    assert!(dropped.records().is_empty());
}

/// Marking a batch written before the one taken ahead of it would call the earlier one
/// durable too: the buffer's belief says so, in debug builds and tests.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "out of turn")]
fn a_batch_marked_written_before_the_one_ahead_of_it_is_caught() {
    let buffer = JournalBuffer::<Record>::new(0, 100);
    buffer.append(vec![transfer()]);
    let _ahead = buffer.take().unwrap();
    buffer.append(vec![transfer()]);
    let behind = buffer.take().unwrap();
    buffer.complete(&behind);
}
