//! The in-memory copy of the product catalog the hot path reads (existence, price,
//! low-stock threshold), kept in step by the product handlers, which write PostgreSQL first.

use dashmap::DashMap;
use sqlx::PgPool;

/// What the hot path needs of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProductInfo {
    pub price_cents: i64,
    pub low_stock_threshold: i64,
    /// Units that may be reserved beyond what is available (backorders).
    pub backorder_limit: u64,
}

/// Live (not deleted) products by id.
#[derive(Default)]
pub struct Catalog {
    products: DashMap<i64, ProductInfo>,
}

impl Catalog {
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, price_cents, low_stock_threshold, backorder_limit FROM products
             WHERE deleted_at IS NULL",
        )
        .fetch_all(pool)
        .await?;
        let catalog = Self::default();
        for (id, price_cents, low_stock_threshold, backorder_limit) in rows {
            catalog.put(
                id,
                ProductInfo {
                    price_cents,
                    low_stock_threshold,
                    backorder_limit: backorder_limit as u64,
                },
            );
        }
        Ok(catalog)
    }

    pub fn get(&self, id: i64) -> Option<ProductInfo> {
        self.products.get(&id).map(|p| *p)
    }

    pub fn put(&self, id: i64, info: ProductInfo) {
        self.products.insert(id, info);
    }

    /// Every live product with its info.
    pub fn all(&self) -> Vec<(i64, ProductInfo)> {
        self.products
            .iter()
            .map(|p| (*p.key(), *p.value()))
            .collect()
    }

    /// The backorder limits of those of `products` that allow backorders.
    pub fn backorder_limits(
        &self,
        products: impl IntoIterator<Item = i64>,
    ) -> std::collections::BTreeMap<i64, u64> {
        products
            .into_iter()
            .filter_map(|id| Some((id, self.get(id)?.backorder_limit)))
            .filter(|(_, limit)| *limit > 0)
            .collect()
    }

    pub fn remove(&self, id: i64) {
        self.products.remove(&id);
    }

    /// Reads one product again from the database (another node changed it, or this node
    /// has not seen it yet); answers whether it is live.
    pub async fn refresh(&self, pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT price_cents, low_stock_threshold, backorder_limit FROM products
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        match row {
            Some((price_cents, low_stock_threshold, backorder_limit)) => {
                self.put(
                    id,
                    ProductInfo {
                        price_cents,
                        low_stock_threshold,
                        backorder_limit: backorder_limit as u64,
                    },
                );
                Ok(true)
            }
            None => {
                self.remove(id);
                Ok(false)
            }
        }
    }
}
