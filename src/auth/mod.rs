//! Who is asking: passwords (bcrypt, off the async threads), tokens (HS256 JWTs with a
//! `jti`, revocable), roles, and TOTP.
//!
//! A token names its user; the user's role (and whether the user is still there and not
//! disabled) is read from a short-lived cache in front of the `users` table: a change made
//! through the API takes effect on the next request, one made in the database directly
//! within [`ROLE_FRESH_FOR`].

mod error;
pub mod limiter;
pub mod lockout;
pub mod password;
pub mod totp;

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

pub use error::AuthError;
use error::Result;

/// How long a cached role is trusted before the `users` table is asked again.
pub const ROLE_FRESH_FOR: Duration = Duration::from_secs(5);

/// Checked tokens kept at most (about 2 MB of them).
pub const VERIFIED_MAX: usize = 10_000;

/// What a checked token says.
#[derive(Clone, Copy, Debug)]
struct Verified {
    user_id: i64,
    jti: Uuid,
    exp: i64,
}

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Customer, Self::Operator, Self::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id, as a string: JWT's `sub` is a string.
    sub: String,
    jti: Uuid,
    iat: i64,
    exp: i64,
}

/// The caller of a request, once its token checked out.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub user_id: i64,
    pub role: Role,
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl Identity {
    /// Refuses with 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }
}

/// Why a signed-in caller no longer may act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    LoggedOut,
    Expired,
    /// Disabled, or deleted.
    Disabled,
}

impl Lost {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoggedOut => "logged_out",
            Self::Expired => "token_expired",
            Self::Disabled => "user_disabled",
        }
    }
}

/// Keys, revocations and the role cache.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub token_ttl: Duration,
    pub bcrypt_cost: u32,
    /// A hash of a random password at `bcrypt_cost`, checked for unknown logins.
    pub dummy_hash: String,
    /// Logged-out tokens (by `jti`) until they expire; also kept in `revoked_tokens`.
    revoked: DashMap<Uuid, DateTime<Utc>>,
    /// Role per user id and when it was read, filled on first sight and on every change.
    roles: DashMap<i64, (Role, std::time::Instant)>,
    /// Tokens whose signature was checked, with their claims: a client sends the same
    /// token with every request, and checking the HMAC and parsing the claims each time
    /// was 5% of the CPU of the hot path. Expiry and revocation are still checked on each
    /// use; only tokens this server signed get in, and at most [`VERIFIED_MAX`].
    verified: DashMap<Box<str>, Verified>,
    /// Failed logins per account.
    pub lockout: lockout::Lockout,
    /// Login and register attempts per client address.
    pub limiter: limiter::AuthLimiter,
}

impl Auth {
    /// Loads the signing key (from `secret`, or generated once and kept in the database)
    /// and the revocations still in force.
    pub async fn load(
        pool: &PgPool,
        secret: Option<&str>,
        token_ttl: Duration,
        bcrypt_cost: u32,
        attempts_per_minute: u32,
    ) -> Result<Self> {
        let secret = match secret {
            Some(secret) if secret.len() < crate::config::MIN_JWT_SECRET => {
                return Err(AuthError::Internal(format!(
                    "the JWT secret needs at least {} bytes",
                    crate::config::MIN_JWT_SECRET
                )));
            }
            Some(secret) => secret.to_owned(),
            None => {
                let generated: String = (0..32)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                crate::store::setting_or_insert(pool, "jwt_secret", &generated).await?
            }
        };
        let revoked = DashMap::new();
        let rows: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > now()")
                .fetch_all(pool)
                .await?;
        for (jti, expires_at) in rows {
            revoked.insert(jti, expires_at);
        }
        let unguessable: String = (0..24)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let dummy_hash = password::hash(unguessable, bcrypt_cost).await?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            token_ttl,
            bcrypt_cost,
            dummy_hash,
            revoked,
            roles: DashMap::new(),
            verified: DashMap::new(),
            lockout: lockout::Lockout::default(),
            limiter: limiter::AuthLimiter::new(attempts_per_minute),
        })
    }

    /// A new token for `user_id`.
    pub fn issue(&self, user_id: i64) -> Result<String> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            jti: Uuid::now_v7(),
            iat: now,
            exp: now + self.token_ttl.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))
    }

    /// Checks a token's signature, expiry and revocation, and finds its user's role.
    pub async fn identify(&self, pool: &PgPool, token: &str) -> Result<Identity> {
        let claims = self.verify(token)?;
        if claims.exp <= Utc::now().timestamp() {
            return Err(AuthError::Unauthenticated(
                "the token is invalid or expired",
            ));
        }
        if self.revoked.contains_key(&claims.jti) {
            return Err(AuthError::Unauthenticated("the token was revoked"));
        }
        let role = self.role_of(pool, claims.user_id).await?;
        Ok(Identity {
            user_id: claims.user_id,
            role,
            jti: claims.jti,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now),
        })
    }

    /// The claims of a token this server signed: from the cache of checked tokens, or
    /// checked (signature, expiry, claims) and kept.
    fn verify(&self, token: &str) -> Result<Verified> {
        if let Some(known) = self.verified.get(token) {
            return Ok(*known);
        }
        let refused = || AuthError::Unauthenticated("the token is invalid or expired");
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "token refused");
                refused()
            })?
            .claims;
        let verified = Verified {
            user_id: claims.sub.parse().map_err(|_| refused())?,
            jti: claims.jti,
            exp: claims.exp,
        };
        if self.verified.len() >= VERIFIED_MAX {
            // Expired ones first; if all are live, start over (they are checked again).
            let now = Utc::now().timestamp();
            self.verified.retain(|_, v| v.exp > now);
            if self.verified.len() >= VERIFIED_MAX {
                self.verified.clear();
            }
        }
        self.verified.insert(token.into(), verified);
        Ok(verified)
    }

    /// Tokens held as checked (at most [`VERIFIED_MAX`]).
    pub fn verified_tokens(&self) -> usize {
        self.verified.len()
    }

    async fn role_of(&self, pool: &PgPool, user_id: i64) -> Result<Role> {
        self.role_within(pool, user_id, ROLE_FRESH_FOR).await
    }

    /// The user's role, read again from the database when the cached one is older than
    /// `fresh_for`; 401 for a disabled or deleted user.
    async fn role_within(&self, pool: &PgPool, user_id: i64, fresh_for: Duration) -> Result<Role> {
        if let Some(cached) = self.roles.get(&user_id) {
            let (role, read_at) = *cached;
            if read_at.elapsed() < fresh_for {
                return Ok(role);
            }
        }
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT role, disabled_at IS NOT NULL FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(pool)
                .await?;
        let Some((role, disabled)) = row else {
            self.roles.remove(&user_id);
            return Err(AuthError::Unauthenticated(
                "the token's user no longer exists",
            ));
        };
        if disabled {
            self.roles.remove(&user_id);
            return Err(AuthError::Unauthenticated("the token's user is disabled"));
        }
        let role = Role::parse(&role)
            .ok_or_else(|| AuthError::Internal(format!("stored role {role:?}")))?;
        self.roles
            .insert(user_id, (role, std::time::Instant::now()));
        Ok(role)
    }

    /// Whether a caller that signed in earlier still may act (a long-lived request, such
    /// as an event stream, asks now and then): its token not revoked nor expired, its user
    /// still enabled; answers what it has lost, or its identity now (the role read again
    /// when the cached one is older than `fresh_for`). A store that cannot be read is
    /// `Err(None)`: nothing is known to be lost.
    pub async fn recheck(
        &self,
        pool: &PgPool,
        identity: &Identity,
        fresh_for: Duration,
    ) -> std::result::Result<Identity, Option<Lost>> {
        if self.revoked.contains_key(&identity.jti) {
            return Err(Some(Lost::LoggedOut));
        }
        if identity.expires_at <= Utc::now() {
            return Err(Some(Lost::Expired));
        }
        match self.role_within(pool, identity.user_id, fresh_for).await {
            Ok(role) => Ok(Identity { role, ..*identity }),
            Err(AuthError::Unauthenticated(_)) => Err(Some(Lost::Disabled)),
            Err(_) => Err(None),
        }
    }

    /// Records a role change made in the database.
    pub fn set_role(&self, user_id: i64, role: Role) {
        self.roles
            .insert(user_id, (role, std::time::Instant::now()));
    }

    /// Forgets what is cached of a user (disabled or enabled): its next request reads
    /// the `users` table.
    pub fn forget(&self, user_id: i64) {
        self.roles.remove(&user_id);
    }

    /// Drops revocations of tokens that have expired anyway, stale cached roles and quiet
    /// lockout entries.
    pub fn sweep(&self) {
        let now = Utc::now();
        self.revoked.retain(|_, expires_at| *expires_at > now);
        self.roles
            .retain(|_, (_, read_at)| read_at.elapsed() < ROLE_FRESH_FOR);
        self.lockout.sweep();
        self.limiter.sweep();
    }

    /// Entries in the revocation and role maps (for tests of the sweep).
    pub fn tracked(&self) -> (usize, usize) {
        (self.revoked.len(), self.roles.len())
    }

    /// Refuses the token from now on, also after a restart.
    pub async fn revoke(&self, pool: &PgPool, identity: &Identity) -> Result<()> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(identity.jti)
        .bind(identity.expires_at)
        .execute(pool)
        .await?;
        self.revoked.insert(identity.jti, identity.expires_at);
        Ok(())
    }

    /// A token another node of the cluster logged out (it is in `revoked_tokens` already).
    pub fn revoked_elsewhere(&self, jti: Uuid, expires_at: DateTime<Utc>) {
        self.revoked.insert(jti, expires_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token_ttl: Duration) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        Auth {
            encoding: EncodingKey::from_secret(b"test secret"),
            decoding: DecodingKey::from_secret(b"test secret"),
            validation,
            token_ttl,
            bcrypt_cost: 4,
            dummy_hash: String::new(),
            revoked: DashMap::new(),
            roles: DashMap::new(),
            verified: DashMap::new(),
            lockout: lockout::Lockout::default(),
            limiter: limiter::AuthLimiter::new(10),
        }
    }

    #[test]
    fn checked_tokens_are_kept_up_to_the_bound_and_no_further() {
        let auth = auth(Duration::from_secs(3600));
        for user in 0..(VERIFIED_MAX as i64 + 500) {
            let token = auth.issue(user).unwrap();
            assert_eq!(auth.verify(&token).unwrap().user_id, user);
            assert!(auth.verified_tokens() <= VERIFIED_MAX);
        }
        let forged = format!("{}x", auth.issue(1).unwrap());
        assert!(auth.verify(&forged).is_err(), "a bad signature is refused");
        assert!(!auth.verified.contains_key(forged.as_str()), "and not kept");
    }

    #[tokio::test]
    async fn a_kept_token_is_refused_once_expired_or_revoked() {
        let auth = auth(Duration::from_secs(3600));
        // Never connected: both refusals come before the role is looked up.
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let token = auth.issue(7).unwrap();
        let verified = auth.verify(&token).unwrap();
        auth.revoked.insert(verified.jti, Utc::now());
        let refused = auth.identify(&pool, &token).await.unwrap_err();
        assert!(refused.to_string().contains("revoked"), "{refused}");

        let token = auth.issue(8).unwrap();
        auth.verify(&token).unwrap();
        auth.verified.get_mut(token.as_str()).unwrap().exp = Utc::now().timestamp() - 1;
        let refused = auth.identify(&pool, &token).await.unwrap_err();
        assert!(refused.to_string().contains("expired"), "{refused}");
    }
}
