//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stockline_actors::{
    Core, CoreConfig, EmptyLoader, ItemRequest, Journal, LineKey, LineLoader, MemoryJournal,
    Quantity, ReservationRequest, WarehouseInfo,
};

/// A core over an in-memory journal that keeps every record.
pub async fn core() -> (Core, Arc<MemoryJournal>) {
    core_with(CoreConfig::default(), Arc::new(EmptyLoader)).await
}

pub async fn core_with(
    config: CoreConfig,
    loader: Arc<dyn LineLoader>,
) -> (Core, Arc<MemoryJournal>) {
    let journal = Arc::new(MemoryJournal::new());
    let core = Core::start(config, journal.clone() as Arc<dyn Journal>, loader)
        .await
        .expect("core starts");
    (core, journal)
}

/// Adds an active warehouse of the given priority.
pub async fn warehouse(core: &Core, id: i64, priority: i32) {
    core.upsert_warehouse(
        id,
        WarehouseInfo {
            priority,
            active: true,
        },
    )
    .await
    .unwrap();
}

/// Receives `on_hand` units on a line.
pub async fn stock(core: &Core, warehouse_id: i64, product_id: i64, on_hand: i64) {
    core.adjust(
        LineKey::new(warehouse_id, product_id),
        on_hand,
        "receipt".into(),
    )
    .await
    .unwrap();
}

pub fn qty(n: u64) -> Quantity {
    Quantity::try_from(n).unwrap()
}

/// An item allocated by the core across warehouses.
pub fn item(product_id: i64, n: u64) -> ItemRequest {
    ItemRequest {
        product_id,
        quantity: qty(n),
        warehouse_id: None,
    }
}

/// An item pinned to one warehouse.
pub fn pinned(warehouse_id: i64, product_id: i64, n: u64) -> ItemRequest {
    ItemRequest {
        product_id,
        quantity: qty(n),
        warehouse_id: Some(warehouse_id),
    }
}

pub fn request(items: Vec<ItemRequest>) -> ReservationRequest {
    ReservationRequest {
        items,
        ttl: Duration::from_secs(900),
        reference: None,
    }
}

/// `(on_hand, reserved)` of a line, read through its mailbox.
pub async fn levels(core: &Core, warehouse_id: i64, product_id: i64) -> (u64, u64) {
    let line = core
        .registry()
        .get(LineKey::new(warehouse_id, product_id))
        .expect("line exists");
    let s = line.snapshot().await.unwrap();
    (s.on_hand, s.reserved)
}

/// Polls `condition` until it holds, yielding to other tasks (and, under a paused clock,
/// letting time advance); panics after `tries` rounds.
pub async fn eventually<F, Fut>(tries: usize, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..tries {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition did not hold in time");
}

/// A core with warehouse 1 (priority 100) and line w1/p7 holding `on_hand`.
pub async fn stocked(on_hand: i64) -> (Core, Arc<MemoryJournal>) {
    let (core, journal) = core().await;
    warehouse(&core, 1, 100).await;
    stock(&core, 1, 7, on_hand).await;
    (core, journal)
}

/// Reserves `items` (default TTL), which must succeed.
pub async fn reserve(core: &Core, items: Vec<ItemRequest>) -> stockline_actors::Reservation {
    core.reservations()
        .reserve(request(items))
        .await
        .expect("reserved")
        .0
}
