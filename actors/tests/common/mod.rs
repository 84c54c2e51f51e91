//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stockline_actors::journal::MovementRecord;
use stockline_actors::{
    Core, CoreConfig, DurableWatch, EmptyStore, ItemRequest, Journal, LineKey, LineSeed, LineStore,
    Lsn, MemoryJournal, ProductId, Quantity, Record, ReservationRequest, StoreFuture,
    WarehouseInfo, Watermark,
};

/// A core over an in-memory journal that keeps every record.
pub async fn core() -> (Core, Arc<MemoryJournal>) {
    core_with(CoreConfig::default(), Arc::new(EmptyStore)).await
}

pub async fn core_with(
    config: CoreConfig,
    store: Arc<dyn LineStore>,
) -> (Core, Arc<MemoryJournal>) {
    let journal = Arc::new(MemoryJournal::new());
    let core = Core::start(config, journal.clone() as Arc<dyn Journal>, store)
        .await
        .expect("core starts");
    (core, journal)
}

/// A store over a map the test writes, counting the loads asked of it.
#[derive(Default)]
pub struct MapStore {
    pub lines: Mutex<BTreeMap<LineKey, LineSeed>>,
    /// Lines asked for, in all queries together.
    pub keys_loaded: AtomicUsize,
    /// Queries asked.
    pub queries: AtomicUsize,
    /// How long each query takes (so first touches can pile up behind it).
    pub delay: Duration,
}

impl MapStore {
    pub fn with(lines: impl IntoIterator<Item = (LineKey, LineSeed)>) -> Self {
        Self {
            lines: Mutex::new(lines.into_iter().collect()),
            ..Self::default()
        }
    }

    pub fn put(&self, key: LineKey, seed: LineSeed) {
        self.lines.lock().unwrap().insert(key, seed);
    }

    pub fn keys_loaded(&self) -> usize {
        self.keys_loaded.load(Ordering::SeqCst)
    }
}

impl LineStore for MapStore {
    fn load(&self, keys: Vec<LineKey>) -> StoreFuture<Vec<(LineKey, LineSeed)>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.keys_loaded.fetch_add(keys.len(), Ordering::SeqCst);
        let lines = self.lines.lock().unwrap();
        let found: Vec<_> = keys
            .into_iter()
            .filter_map(|key| lines.get(&key).map(|seed| (key, seed.clone())))
            .collect();
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(found)
        })
    }

    fn lines_of_products(&self, products: Vec<ProductId>) -> StoreFuture<Vec<(LineKey, LineSeed)>> {
        let lines = self.lines.lock().unwrap();
        let found: Vec<_> = lines
            .iter()
            .filter(|(key, _)| products.contains(&key.product_id))
            .map(|(key, seed)| (*key, seed.clone()))
            .collect();
        Box::pin(async move { Ok(found) })
    }
}

/// Adds an active warehouse of the given priority.
pub async fn warehouse(core: &Core, id: i64, priority: i32) {
    core.upsert_warehouse(
        id,
        WarehouseInfo {
            priority,
            active: true,
            shop_id: None,
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
        None,
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
        shop_id: None,
        backorder_limits: Default::default(),
    }
}

/// `(on_hand, reserved)` of a line, read through its mailbox.
pub async fn levels(core: &Core, warehouse_id: i64, product_id: i64) -> (u64, u64) {
    let line = core
        .registry()
        .resident(LineKey::new(warehouse_id, product_id))
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

/// A journal that writes line states into a [`MapStore`] as a flusher would, and counts
/// them durable then; while held, records wait (the write-behind backlog) and the
/// watermark stays where it was.
pub struct StoreJournal {
    store: Arc<MapStore>,
    state: Mutex<JournalState>,
    durable: Arc<Watermark>,
}

#[derive(Default)]
struct JournalState {
    head: Lsn,
    held: bool,
    backlog: Vec<(Lsn, Record)>,
    kept: Vec<(Lsn, Record)>,
}

impl StoreJournal {
    pub fn new(store: Arc<MapStore>) -> Self {
        Self {
            store,
            state: Mutex::default(),
            durable: Watermark::starting_at(0),
        }
    }

    /// Holds records back from the store until [`Self::release`].
    pub fn hold(&self) {
        self.state.lock().unwrap().held = true;
    }

    /// Writes what was held back and lets records through again.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.held = false;
        self.flush(&mut state);
    }

    pub fn movements(&self, key: LineKey) -> Vec<MovementRecord> {
        self.state
            .lock()
            .unwrap()
            .kept
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Movement(m) if m.key == key => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn flush(&self, state: &mut JournalState) {
        for (_, record) in state.backlog.drain(..) {
            if let Record::Line(line) = &record {
                self.store.put(
                    line.key,
                    LineSeed {
                        safety_stock: 0,
                        on_hand: line.on_hand,
                        reserved: line.reserved,
                        version: line.version,
                        updated_at: Some(line.updated_at),
                        holds: Vec::new(),
                    },
                );
            }
        }
        self.durable.advance(state.head);
    }
}

impl Journal for StoreJournal {
    fn append(&self, records: Vec<Record>) -> Lsn {
        let mut state = self.state.lock().unwrap();
        for record in records {
            state.head += 1;
            let lsn = state.head;
            state.kept.push((lsn, record.clone()));
            state.backlog.push((lsn, record));
        }
        if !state.held {
            self.flush(&mut state);
        }
        state.head
    }

    fn is_backlogged(&self) -> bool {
        false
    }

    fn durable(&self) -> DurableWatch {
        self.durable.watch()
    }
}

/// A core over a [`MapStore`] and a [`StoreJournal`] writing into it.
pub async fn stored_core(config: CoreConfig, store: Arc<MapStore>) -> (Core, Arc<StoreJournal>) {
    let journal = Arc::new(StoreJournal::new(store.clone()));
    let core = Core::start(config, journal.clone() as Arc<dyn Journal>, store)
        .await
        .expect("core starts");
    (core, journal)
}
