//! What operators watch: the stock-line actors, the write-behind store, the console's
//! overview and low stock.

mod actors;
mod overview;
mod store;

pub use actors::{Actor, Actors};
pub use overview::LowStock;
pub use store::{DeadLetter, Persistence};

use utoipa_axum::router::OpenApiRouter;

use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(actors::router())
        .merge(store::router())
        .merge(overview::router())
}
