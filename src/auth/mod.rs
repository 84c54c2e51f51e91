//! Who is asking: passwords (bcrypt, off the async threads), tokens (HS256 JWTs with a
//! `jti`, revocable), roles, and TOTP.
//!
//! A token names its user; the user's role (and whether the user is still there and not
//! disabled) is read from a short-lived cache in front of the `users` table: a change made
//! through the API takes effect on the next request, one made in the database directly
//! within [`ROLE_FRESH_FOR`].

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

use crate::error::{AppError, Result};

/// How long a cached role is trusted before the `users` table is asked again.
pub const ROLE_FRESH_FOR: Duration = Duration::from_secs(5);

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
            Err(AppError::Forbidden)
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
    /// Failed logins per account.
    pub lockout: lockout::Lockout,
}

impl Auth {
    /// Loads the signing key (from `secret`, or generated once and kept in the database)
    /// and the revocations still in force.
    pub async fn load(
        pool: &PgPool,
        secret: Option<&str>,
        token_ttl: Duration,
        bcrypt_cost: u32,
    ) -> Result<Self> {
        let secret = match secret {
            Some(secret) if secret.len() < crate::config::MIN_JWT_SECRET => {
                return Err(AppError::Internal(format!(
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
            lockout: lockout::Lockout::default(),
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
            .map_err(|e| AppError::Internal(format!("signing a token: {e}")))
    }

    /// Checks a token's signature, expiry and revocation, and finds its user's role.
    pub async fn identify(&self, pool: &PgPool, token: &str) -> Result<Identity> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "token refused");
                AppError::unauthorized("the token is invalid or expired")
            })?
            .claims;
        if self.revoked.contains_key(&claims.jti) {
            return Err(AppError::unauthorized("the token was revoked"));
        }
        let user_id: i64 = claims
            .sub
            .parse()
            .map_err(|_| AppError::unauthorized("the token is invalid or expired"))?;
        let role = self.role_of(pool, user_id).await?;
        Ok(Identity {
            user_id,
            role,
            jti: claims.jti,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now),
        })
    }

    async fn role_of(&self, pool: &PgPool, user_id: i64) -> Result<Role> {
        if let Some(cached) = self.roles.get(&user_id) {
            let (role, read_at) = *cached;
            if read_at.elapsed() < ROLE_FRESH_FOR {
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
            return Err(AppError::unauthorized("the token's user no longer exists"));
        };
        if disabled {
            self.roles.remove(&user_id);
            return Err(AppError::unauthorized("the token's user is disabled"));
        }
        let role = Role::parse(&role)
            .ok_or_else(|| AppError::Internal(format!("stored role {role:?}")))?;
        self.roles
            .insert(user_id, (role, std::time::Instant::now()));
        Ok(role)
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
}
