//! The per-product index of warehouses: which warehouses hold a line of a product, read
//! with the product's lines in one query on first use, so those lines' first touch needs
//! no query of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dashmap::DashMap;
use tokio::sync::OnceCell;

use crate::error::Result;
use crate::loading::{BatchLimits, Batcher, LineSeed, LineStore, StoreFuture};
use crate::types::{LineKey, ProductId, WarehouseId};

use super::Lines;

/// Which warehouses hold a line of each product: loaded per product on first use (in
/// batches, from the store), kept after (a few dozen bytes a product), and grown as new
/// lines appear. Lines never disappear, so it never shrinks.
pub(super) struct ProductIndex {
    pub(super) known: DashMap<ProductId, Arc<[WarehouseId]>>,
    loading: DashMap<ProductId, Arc<OnceCell<()>>>,
    batcher: Batcher<ProductId, Vec<(LineKey, LineSeed)>>,
}

impl ProductIndex {
    pub(super) fn new(store: Arc<dyn LineStore>, limits: BatchLimits) -> Self {
        let batcher = Batcher::spawn(limits, move |products| {
            let found = store.lines_of_products(products);
            Box::pin(async move {
                let mut by_product: HashMap<ProductId, Vec<(LineKey, LineSeed)>> = HashMap::new();
                for (key, seed) in found.await? {
                    by_product
                        .entry(key.product_id)
                        .or_default()
                        .push((key, seed));
                }
                Ok(by_product)
            }) as StoreFuture<_>
        });
        Self {
            known: DashMap::new(),
            loading: DashMap::new(),
            batcher,
        }
    }

    /// Adds a new line's warehouse to its product (whose entry is known by now).
    pub(super) fn add(&self, key: LineKey) {
        if let Some(mut known) = self.known.get_mut(&key.product_id)
            && let Err(at) = known.binary_search(&key.warehouse_id)
        {
            let mut grown = known.to_vec();
            grown.insert(at, key.warehouse_id);
            *known = grown.into();
        }
    }
}

impl Lines {
    /// The warehouses holding a line of the product, loading the product's entry (and its
    /// lines, in the same query) on first use.
    pub(super) async fn product_warehouses(
        &self,
        product_id: ProductId,
    ) -> Result<Arc<[WarehouseId]>, String> {
        let index = &self.products;
        if let Some(known) = index.known.get(&product_id) {
            return Ok(known.clone());
        }
        let slot = index.loading.entry(product_id).or_default().clone();
        let loaded = slot
            .get_or_try_init(|| async {
                if !index.known.contains_key(&product_id) {
                    let epoch = self.eviction_epoch.load(Ordering::Acquire);
                    let lines = index.batcher.get(product_id).await?.unwrap_or_default();
                    let mut found: Vec<WarehouseId> =
                        lines.iter().map(|(key, _)| key.warehouse_id).collect();
                    found.sort_unstable();
                    found.dedup();
                    self.prewarm(epoch, lines);
                    index
                        .known
                        .entry(product_id)
                        .or_insert_with(|| found.into());
                }
                Ok::<_, String>(())
            })
            .await;
        index
            .loading
            .remove_if(&product_id, |_, s| Arc::ptr_eq(s, &slot));
        loaded?;
        Ok(index
            .known
            .get(&product_id)
            .map(|known| known.clone())
            .unwrap_or_default())
    }

    /// Puts lines read with their product in memory, so their first touch needs no query
    /// of its own. Only lines not in memory, and only if no line left memory since the
    /// read began (`epoch`): a line out of memory has its newest state in the store, so
    /// what was read is current unless the line came in, changed and left meanwhile.
    fn prewarm(&self, epoch: u64, lines: Vec<(LineKey, LineSeed)>) {
        let _evicting = crate::types::lock(&self.evicting);
        if self.eviction_epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        for (key, seed) in lines {
            if self.resident.contains_key(&key) {
                continue;
            }
            if let Ok(shared) = self.shared_from(key, Some(seed)) {
                self.resident
                    .entry(key)
                    .or_insert_with(|| Arc::new(OnceCell::new_with(Some(Arc::new(shared)))));
            }
        }
    }
}
