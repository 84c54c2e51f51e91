//! Shops, and who may act on which warehouse: the one policy every handler that touches
//! a warehouse asks, so the rules are written once.
//!
//! A shop owns warehouses (`warehouses.shop_id`; `NULL` is the platform's own). Its members,
//! `shop_owner` or `shop_staff`, act like operators on those warehouses and nowhere else.
//! Operators and admins act on every warehouse, except that moving stock between
//! warehouses of two different owners needs an admin. Owners (and admins) manage the shop
//! and its members. Shops and memberships live in PostgreSQL and, for the per-request
//! check, in [`Shops`] here, written through by the shop handlers.

use dashmap::DashMap;
use sqlx::PgPool;
use stockline_actors::types::ShopId;
use stockline_actors::{WarehouseId, Warehouses};

use crate::auth::{Identity, Role};
/// Why shop access refuses; `http/` says how each answers.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShopError {
    /// Neither an operator nor a member allowed this.
    #[error("you may not do this")]
    Forbidden,
    #[error("shop {0} not found")]
    UnknownShop(ShopId),
    #[error("warehouse {0} not found")]
    UnknownWarehouse(WarehouseId),
}

/// `Result` with [`ShopError`] as the default error.
pub type Result<T, E = ShopError> = std::result::Result<T, E>;

/// A member's role in its shop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShopRole {
    Owner,
    Staff,
}

impl ShopRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "shop_owner",
            Self::Staff => "shop_staff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Owner, Self::Staff]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The shops that exist and every user's memberships, in memory.
#[derive(Default)]
pub struct Shops {
    ids: DashMap<ShopId, ()>,
    by_user: DashMap<i64, Vec<(ShopId, ShopRole)>>,
}

impl Shops {
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let shops = Self::default();
        shops.refresh(pool).await?;
        Ok(shops)
    }

    /// Reads the shops and memberships again (another node changed them): what is gone
    /// goes, the rest is replaced entry by entry, so no reader sees them empty meanwhile.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let fresh = Self::default();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM shops")
            .fetch_all(pool)
            .await?;
        for id in ids {
            fresh.add(id);
        }
        let rows: Vec<(i64, i64, String)> =
            sqlx::query_as("SELECT user_id, shop_id, role FROM shop_members")
                .fetch_all(pool)
                .await?;
        for (user_id, shop_id, role) in rows {
            if let Some(role) = ShopRole::parse(&role) {
                fresh.set(user_id, shop_id, role);
            }
        }
        self.ids.retain(|id, _| fresh.ids.contains_key(id));
        self.by_user
            .retain(|user, _| fresh.by_user.contains_key(user));
        for entry in fresh.ids {
            self.ids.insert(entry.0, ());
        }
        for (user, memberships) in fresh.by_user {
            self.by_user.insert(user, memberships);
        }
        Ok(())
    }

    pub fn add(&self, shop_id: ShopId) {
        self.ids.insert(shop_id, ());
    }

    /// The shop, if it exists; 404 otherwise.
    pub fn require(&self, shop_id: ShopId) -> Result<ShopId> {
        if self.ids.contains_key(&shop_id) {
            Ok(shop_id)
        } else {
            Err(ShopError::UnknownShop(shop_id))
        }
    }

    /// The user's memberships (a user may belong to several shops).
    pub fn of(&self, user_id: i64) -> Vec<(ShopId, ShopRole)> {
        self.by_user
            .get(&user_id)
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn set(&self, user_id: i64, shop_id: ShopId, role: ShopRole) {
        let mut shops = self.by_user.entry(user_id).or_default();
        shops.retain(|(shop, _)| *shop != shop_id);
        shops.push((shop_id, role));
    }

    pub fn remove(&self, user_id: i64, shop_id: ShopId) {
        self.by_user.remove_if_mut(&user_id, |_, shops| {
            shops.retain(|(shop, _)| *shop != shop_id);
            shops.is_empty()
        });
    }
}

/// Which warehouses a caller sees in lists: all of them, or its shops' only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Shops(Vec<ShopId>),
}

impl Scope {
    pub fn allows(&self, warehouses: &Warehouses, warehouse_id: WarehouseId) -> bool {
        match self {
            Self::All => true,
            Self::Shops(shops) => warehouses
                .get(warehouse_id)
                .and_then(|w| w.shop_id)
                .is_some_and(|shop| shops.contains(&shop)),
        }
    }

    /// The warehouses to filter a query by; `None`: no filter.
    pub fn warehouse_ids(&self, warehouses: &Warehouses) -> Option<Vec<WarehouseId>> {
        match self {
            Self::All => None,
            Self::Shops(shops) => Some(warehouses.of_shops(shops)),
        }
    }
}

/// One caller's rights, asked by handlers before they touch a warehouse or a shop.
pub struct Access<'a> {
    identity: Identity,
    shops: Vec<(ShopId, ShopRole)>,
    warehouses: &'a Warehouses,
}

impl<'a> Access<'a> {
    pub fn new(identity: Identity, shops: &Shops, warehouses: &'a Warehouses) -> Self {
        Self {
            shops: shops.of(identity.user_id),
            identity,
            warehouses,
        }
    }

    fn is_operator(&self) -> bool {
        self.identity.role >= Role::Operator
    }

    fn member_of(&self, shop: Option<ShopId>) -> Option<ShopRole> {
        let shop = shop?;
        self.shops.iter().find(|(s, _)| *s == shop).map(|(_, r)| *r)
    }

    /// The warehouse's owner; 404 when it is unknown.
    fn owner(&self, warehouse_id: WarehouseId) -> Result<Option<ShopId>> {
        self.warehouses
            .get(warehouse_id)
            .map(|w| w.shop_id)
            .ok_or(ShopError::UnknownWarehouse(warehouse_id))
    }

    /// May change this warehouse's stock or status: operators anywhere, members on their
    /// shop's. Unknown: 404; someone else's: 403.
    pub fn warehouse(&self, warehouse_id: WarehouseId) -> Result<()> {
        let owner = self.owner(warehouse_id)?;
        if self.is_operator() || self.member_of(owner).is_some() {
            Ok(())
        } else {
            Err(ShopError::Forbidden)
        }
    }

    /// May move stock from one warehouse to another: both must be the caller's to touch,
    /// and two different owners need an admin.
    pub fn transfer(&self, from: WarehouseId, to: WarehouseId) -> Result<()> {
        self.warehouse(from)?;
        self.warehouse(to)?;
        if self.owner(from)? != self.owner(to)? {
            self.identity
                .require(Role::Admin)
                .map_err(|_| ShopError::Forbidden)?;
        }
        Ok(())
    }

    /// Which warehouses the caller sees in operator lists; 403 for a caller who is neither
    /// an operator nor a member of any shop.
    pub fn scope(&self) -> Result<Scope> {
        if self.is_operator() {
            Ok(Scope::All)
        } else if self.shops.is_empty() {
            Err(ShopError::Forbidden)
        } else {
            Ok(Scope::Shops(self.shops.iter().map(|(s, _)| *s).collect()))
        }
    }

    /// May create a warehouse owned by `shop` (`None`: the platform's): operators any,
    /// a shop's owner its own.
    pub fn create_warehouse(&self, shop: Option<ShopId>) -> Result<()> {
        if self.is_operator() || self.member_of(shop) == Some(ShopRole::Owner) {
            Ok(())
        } else {
            Err(ShopError::Forbidden)
        }
    }

    /// May edit the shop and its members: admins, and the shop's owners.
    pub fn manage_shop(&self, shop: ShopId) -> Result<()> {
        if self.identity.role == Role::Admin || self.member_of(Some(shop)) == Some(ShopRole::Owner)
        {
            Ok(())
        } else {
            Err(ShopError::Forbidden)
        }
    }

    /// May see the shop's members: admins and the shop's own members.
    pub fn see_members(&self, shop: ShopId) -> Result<()> {
        if self.identity.role == Role::Admin || self.member_of(Some(shop)).is_some() {
            Ok(())
        } else {
            Err(ShopError::Forbidden)
        }
    }
}
