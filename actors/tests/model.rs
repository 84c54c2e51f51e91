//! Property tests: a line actor against a plain sequential model, and concurrent
//! reservations against the invariant `0 <= reserved <= on_hand + backordered`, with
//! backorders within their product's limit and nothing committed that was not on hand.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use stockline_actors::{CoreError, LineKey, LineOp, ReservationId, TransferId};

/// The model: the rules of API.md written as plainly as possible, independently of the core.
#[derive(Debug, Default)]
struct Model {
    on_hand: i64,
    holds: HashMap<usize, i64>,
    inactive: bool,
    version: u64,
    safety: i64,
}

#[derive(Clone, Debug)]
enum Op {
    Reserve(usize, i64),
    Release(usize),
    Commit(usize),
    Expire(usize),
    Adjust(i64),
    SetLevel(i64, Option<u64>),
    TransferOut(i64),
    TransferIn(i64, bool),
    SetActive(bool),
    SetSafety(i64),
    Backorder(usize, i64, i64),
}

impl Model {
    fn reserved(&self) -> i64 {
        self.holds.values().sum()
    }

    /// What may be reserved or sent away: never the safety stock.
    fn available(&self) -> i64 {
        (self.on_hand - self.reserved() - self.safety).max(0)
    }

    /// What may be lost or corrected away: anything not reserved, safety stock included.
    fn unreserved(&self) -> i64 {
        (self.on_hand - self.reserved()).max(0)
    }

    /// How much of a slot's hold the stock on hand covers: older slots (lower index,
    /// created first) first.
    fn filled(&self, slot: usize) -> i64 {
        let before: i64 = (0..slot).filter_map(|s| self.holds.get(&s)).sum();
        self.holds
            .get(&slot)
            .map_or(0, |held| (*held).min((self.on_hand - before).max(0)))
    }

    /// The answer the core must give: `Ok` or the name of the refusal.
    fn apply(&mut self, op: &Op) -> Result<(), &'static str> {
        let bump = match *op {
            Op::SetActive(active) => {
                self.inactive = !active;
                false
            }
            Op::Reserve(slot, q) => {
                if self.inactive {
                    return Err("inactive");
                }
                if q > self.available() {
                    return Err("insufficient");
                }
                *self.holds.entry(slot).or_default() += q;
                true
            }
            Op::Release(slot) | Op::Expire(slot) => {
                self.holds.remove(&slot).ok_or("not_held")?;
                true
            }
            Op::Commit(slot) => {
                let held = *self.holds.get(&slot).ok_or("not_held")?;
                if self.filled(slot) < held {
                    return Err("backordered");
                }
                self.holds.remove(&slot);
                self.on_hand -= held;
                true
            }
            Op::Backorder(slot, q, room) => {
                if self.inactive {
                    return Err("inactive");
                }
                if (self.reserved() + q + self.safety - self.on_hand).max(0) > room {
                    return Err("insufficient");
                }
                *self.holds.entry(slot).or_default() += q;
                true
            }
            Op::Adjust(delta) => {
                if delta == 0 {
                    return Err("invalid");
                }
                if -delta > self.unreserved() {
                    return Err("insufficient");
                }
                self.on_hand += delta;
                true
            }
            Op::SetLevel(level, expected) => {
                if expected.is_some_and(|v| v != self.version) {
                    return Err("version");
                }
                if level < self.reserved() && level < self.on_hand {
                    return Err("insufficient");
                }
                self.on_hand = level;
                true
            }
            Op::TransferOut(q) => {
                if self.inactive {
                    return Err("inactive");
                }
                if q > self.available() {
                    return Err("insufficient");
                }
                self.on_hand -= q;
                true
            }
            Op::TransferIn(q, compensating) => {
                if self.inactive && !compensating {
                    return Err("inactive");
                }
                self.on_hand += q;
                true
            }
            Op::SetSafety(units) => {
                self.safety = units;
                true
            }
        };
        self.version += u64::from(bump);
        Ok(())
    }
}

fn to_line_op(op: &Op, slots: &[ReservationId]) -> LineOp {
    match *op {
        Op::Reserve(s, q) => LineOp::Reserve {
            id: slots[s],
            qty: qty(q as u64),
        },
        Op::Release(s) => LineOp::Release { id: slots[s] },
        Op::Commit(s) => LineOp::Commit { id: slots[s] },
        Op::Expire(s) => LineOp::Expire { id: slots[s] },
        Op::Adjust(delta) => LineOp::Adjust {
            note: None,
            delta,
            reason: "count".into(),
        },
        Op::SetLevel(level, expected_version) => LineOp::SetLevel {
            note: None,
            on_hand: level as u64,
            expected_version,
            reason: "count".into(),
        },
        Op::TransferOut(q) => LineOp::TransferOut {
            note: None,
            id: TransferId::new(),
            qty: qty(q as u64),
        },
        Op::TransferIn(q, compensating) => LineOp::TransferIn {
            note: None,
            id: TransferId::new(),
            qty: qty(q as u64),
            compensating,
        },
        Op::SetActive(active) => LineOp::SetActive(active),
        Op::SetSafety(units) => LineOp::SetSafety {
            safety_stock: units as u64,
        },
        Op::Backorder(s, q, room) => LineOp::Backorder {
            id: slots[s],
            qty: qty(q as u64),
            room: room as u64,
        },
    }
}

fn refusal_name(error: &CoreError) -> &'static str {
    match error {
        CoreError::InsufficientStock { .. } => "insufficient",
        CoreError::WarehouseInactive { .. } => "inactive",
        CoreError::NotHeld => "not_held",
        CoreError::VersionMismatch { .. } => "version",
        CoreError::InvalidQuantity(_) => "invalid",
        CoreError::Backordered { .. } => "backordered",
        other => panic!("the model has no refusal like {other:?}"),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 1..15i64).prop_map(|(s, q)| Op::Reserve(s, q)),
        2 => (0..4usize).prop_map(Op::Release),
        2 => (0..4usize).prop_map(Op::Commit),
        1 => (0..4usize).prop_map(Op::Expire),
        3 => (-20..20i64).prop_map(Op::Adjust),
        1 => (0..40i64, proptest::option::of(0..30u64)).prop_map(|(l, v)| Op::SetLevel(l, v)),
        1 => (1..15i64).prop_map(Op::TransferOut),
        1 => (1..15i64, any::<bool>()).prop_map(|(q, c)| Op::TransferIn(q, c)),
        1 => any::<bool>().prop_map(Op::SetActive),
        1 => (0..10i64).prop_map(Op::SetSafety),
        2 => (0..4usize, 1..15i64, 0..12i64).prop_map(|(s, q, r)| Op::Backorder(s, q, r)),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_line_actor_answers_and_ends_like_the_sequential_model(ops in proptest::collection::vec(op(), 1..80)) {
        runtime().block_on(async {
            let (core, _) = core().await;
            warehouse(&core, 1, 100).await;
            let line = core.registry().line(LineKey::new(1, 7)).await.unwrap();
            let slots: Vec<_> = (0..4).map(|_| ReservationId::new()).collect();
            let mut model = Model::default();
            for op in &ops {
                let expected = model.apply(op);
                let actual = line.settle(to_line_op(op, &slots)).await;
                prop_assert_eq!(actual.as_ref().map(|_| ()).map_err(refusal_name), expected, "{:?}", op);
                let s = line.snapshot().await.unwrap();
                prop_assert!(s.reserved <= s.on_hand + s.backordered());
                prop_assert_eq!(s.backordered() as i64, (model.reserved() - model.on_hand).max(0));
                prop_assert_eq!(
                    (s.on_hand as i64, s.reserved as i64, s.version, s.active),
                    (model.on_hand, model.reserved(), model.version, !model.inactive)
                );
                prop_assert_eq!((s.safety_stock as i64, s.available() as i64), (model.safety, model.available()));
            }
            Ok(())
        })?;
    }
}

/// The product of the concurrent test that may be backordered, and by how much.
const BACKORDERED: i64 = 3;
const BACKORDER_LIMIT: u64 = 4;

#[derive(Clone, Debug)]
enum Step {
    Reserve(Vec<(i64, u64, Option<i64>)>),
    Settle(usize, bool),
    Adjust(i64, i64, i64),
    Transfer(i64, i64, i64, u64),
}

fn step() -> impl Strategy<Value = Step> {
    let item = (1..=3i64, 1..6u64, proptest::option::of(1..=2i64));
    prop_oneof![
        4 => proptest::collection::vec(item, 1..4).prop_map(Step::Reserve),
        3 => (0..64usize, any::<bool>()).prop_map(|(i, c)| Step::Settle(i, c)),
        1 => (1..=2i64, 1..=3i64, -5..10i64).prop_map(|(w, p, d)| Step::Adjust(w, p, d)),
        1 => (1..=2i64, 1..=3i64, 1..=2i64, 1..5u64).prop_map(|(f, p, t, q)| Step::Transfer(f, p, t, q)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Random reservation traffic run concurrently, while lines idle for 1 ms passivate
    /// and leave memory (to a store the journal writes) and come back: whatever
    /// interleaving happens, every line keeps `0 <= reserved <= on_hand` (product 3, which
    /// may be backordered: `reserved <= on_hand + backordered`, its backorders over both
    /// warehouses within the limit), `reserved` equals its pending holds, and `on_hand`
    /// equals what was received minus what was committed.
    #[test]
    fn concurrent_traffic_keeps_every_line_consistent(steps in proptest::collection::vec(step(), 1..120)) {
        runtime().block_on(async {
            let config = stockline_actors::CoreConfig {
                limits: stockline_actors::Limits {
                    passivate_after: Some(std::time::Duration::from_millis(1)),
                    ..Default::default()
                },
                ..Default::default()
            };
            let (core, journal) = stored_core(config, Arc::new(MapStore::default())).await;
            for w in 1..=2 {
                warehouse(&core, w, w as i32).await;
                for p in 1..=3 {
                    stock(&core, w, p, 6).await;
                }
            }
            let core = Arc::new(core);
            let ids: Arc<std::sync::Mutex<Vec<ReservationId>>> = Default::default();
            let tasks: Vec<_> = steps.into_iter().map(|step| {
                let core = core.clone();
                let ids = ids.clone();
                tokio::spawn(async move { run_step(&core, &ids, step).await })
            }).collect();
            for task in tasks {
                task.await.unwrap();
            }
            let mut pending: HashMap<LineKey, u64> = HashMap::new();
            for r in core.reservations().pending() {
                for item in r.items {
                    *pending.entry(item.key()).or_default() += item.quantity;
                }
            }
            let keys = (1..=2).flat_map(|w| (1..=3).map(move |p| LineKey::new(w, p)));
            let mut backordered = 0;
            for key in keys {
                let s = core.registry().line(key).await.unwrap().snapshot().await.unwrap();
                if key.product_id == BACKORDERED {
                    backordered += s.beyond_available();
                } else {
                    prop_assert!(s.reserved <= s.on_hand);
                }
                prop_assert!(s.reserved <= s.on_hand + s.backordered());
                prop_assert_eq!(s.reserved, pending.get(&s.key).copied().unwrap_or(0));
                let ledger: i64 = journal.movements(s.key).iter().map(|m| match m.kind.as_str() {
                    "commit" | "transfer_out" => -m.quantity,
                    "adjust" | "transfer_in" => m.quantity,
                    _ => 0,
                }).sum();
                prop_assert_eq!(ledger, s.on_hand as i64);
            }
            prop_assert!(backordered <= BACKORDER_LIMIT, "{} backordered", backordered);
            Ok(())
        })?;
    }
}

async fn run_step(
    core: &stockline_actors::Core,
    ids: &std::sync::Mutex<Vec<ReservationId>>,
    step: Step,
) {
    match step {
        Step::Reserve(items) => {
            let items = items
                .into_iter()
                .map(|(p, q, w)| match w {
                    Some(w) => pinned(w, p, q),
                    None => item(p, q),
                })
                .collect();
            let mut request = request(items);
            request.backorder_limits = [(BACKORDERED, BACKORDER_LIMIT)].into();
            if let Ok((r, _)) = core.reservations().reserve(request).await {
                ids.lock().unwrap().push(r.id);
            }
        }
        Step::Settle(i, commit) => {
            let id = {
                let ids = ids.lock().unwrap();
                if ids.is_empty() {
                    return;
                }
                ids[i % ids.len()]
            };
            let _ = if commit {
                core.reservations().commit(id).await
            } else {
                core.reservations().release(id).await
            };
        }
        Step::Adjust(w, p, delta) => {
            let _ = core
                .adjust(LineKey::new(w, p), delta, "count".into(), None)
                .await;
        }
        Step::Transfer(from, p, to, q) => {
            let _ = core
                .transfer(stockline_actors::TransferRequest {
                    note: None,
                    from_warehouse_id: from,
                    to_warehouse_id: to,
                    product_id: p,
                    quantity: qty(q),
                })
                .await;
        }
    }
}
