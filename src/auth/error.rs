//! Why auth refuses, in its own terms; `http/` says how each answers.

/// What auth refuses, or what failed under it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Signed in, but the role (or shop membership) may not do this.
    #[error("you may not do this")]
    Forbidden,
    /// The token does not stand: invalid, expired or revoked, or its user is gone or
    /// disabled.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// What should not happen: signing failed, a stored role or secret is unreadable, a
    /// hashing task died, a JWT secret too short.
    #[error("{0}")]
    Internal(String),
}

/// `Result` with [`AuthError`].
pub type Result<T, E = AuthError> = std::result::Result<T, E>;
