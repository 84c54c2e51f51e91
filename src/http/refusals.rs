//! How the domain's refusals answer over HTTP: each domain module says why it refuses in
//! its own terms, and only here does that become a status and a code of the contract.

use crate::auth::AuthError;
use crate::error::AppError;
use crate::shops::ShopError;

impl From<AuthError> for AppError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Forbidden => Self::Forbidden,
            AuthError::Unauthenticated(why) => Self::unauthorized(why),
            AuthError::Store(error) => error.into(),
            AuthError::Internal(what) => Self::Internal(what),
        }
    }
}

impl From<ShopError> for AppError {
    fn from(error: ShopError) -> Self {
        match error {
            ShopError::Forbidden => Self::Forbidden,
            ShopError::UnknownShop(id) => Self::NotFound(format!("shop {id}")),
            ShopError::UnknownWarehouse(id) => Self::NotFound(format!("warehouse {id}")),
        }
    }
}
