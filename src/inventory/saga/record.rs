//! A reservation across shards as the store keeps it: its parts, its status (the
//! coordinator's decision), its reference and times (`reservation_sagas`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stockline_actors::ReservationStatus;
use uuid::Uuid;

use crate::cluster::Shard;
use crate::error::Result;

/// A reservation across shards, as `reservation_sagas` has it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Saga {
    pub id: Uuid,
    pub(super) shards: Vec<i16>,
    pub(super) parts: Vec<Uuid>,
    #[sqlx(try_from = "String")]
    pub(super) status: SagaStatus,
    pub(super) reference: Option<String>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) created_at: DateTime<Utc>,
}

impl Saga {
    /// Each part's shard and id.
    pub(super) fn parts(&self) -> impl Iterator<Item = (Shard, Uuid)> + '_ {
        self.shards
            .iter()
            .zip(&self.parts)
            .map(|(shard, part)| (*shard as Shard, *part))
    }
}

/// The reservation across shards with this id, if it is one.
pub async fn find(db: &PgPool, id: Uuid) -> Result<Option<Saga>> {
    Ok(sqlx::query_as(
        "SELECT id, shards, parts, status, reference, expires_at, created_at
         FROM reservation_sagas WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Where a reservation across shards stands: pending, a decision being carried to its
/// parts, or settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaStatus {
    Pending,
    /// Decided: every part is to be committed (by its coordinator, or by the parts'
    /// owners if it stopped).
    Committing,
    /// Decided: every part is to be released.
    Releasing,
    Committed,
    Released,
    Expired,
}

impl SagaStatus {
    const ALL: [Self; 6] = [
        Self::Pending,
        Self::Committing,
        Self::Releasing,
        Self::Committed,
        Self::Released,
        Self::Expired,
    ];

    /// Whether the whole may move from here to `next`: a pending one to a decision or
    /// straight to where its parts stand; a decided one only to an end (its parts may
    /// have ended otherwise than decided: expired, or committed in part); an ended one
    /// nowhere. Nothing goes back to pending, or from one decision to the other.
    pub fn can_become(self, next: Self) -> bool {
        match (self, next) {
            (Self::Pending, Self::Pending) => false,
            (Self::Pending, _) => true,
            (
                Self::Committing | Self::Releasing,
                Self::Committed | Self::Released | Self::Expired,
            ) => true,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Committing => "committing",
            Self::Releasing => "releasing",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

impl TryFrom<String> for SagaStatus {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("a reservation across shards cannot be {text:?}"))
    }
}

/// The whole's status once its parts stand at `status`.
impl From<ReservationStatus> for SagaStatus {
    fn from(status: ReservationStatus) -> Self {
        match status {
            ReservationStatus::Pending => Self::Pending,
            ReservationStatus::Committed => Self::Committed,
            ReservationStatus::Released => Self::Released,
            ReservationStatus::Expired => Self::Expired,
        }
    }
}

/// Moves `id` from status `from` to `to`; false if it was not at `from`.
pub(super) async fn mark(db: &PgPool, id: Uuid, from: SagaStatus, to: SagaStatus) -> Result<bool> {
    debug_assert!(
        from.can_become(to),
        "reservation {id}: {} cannot become {}",
        from.as_str(),
        to.as_str()
    );
    let moved = sqlx::query(
        "UPDATE reservation_sagas SET status = $3, updated_at = now() WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(db)
    .await?;
    Ok(moved.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_it_is_stored_and_nothing_else_is_one() {
        for status in SagaStatus::ALL {
            assert_eq!(SagaStatus::try_from(status.as_str().to_owned()), Ok(status));
        }
        assert!(SagaStatus::try_from("Pending".to_owned()).is_err());
        assert!(SagaStatus::try_from(String::new()).is_err());
    }

    #[test]
    fn a_decision_is_never_taken_back_and_an_end_is_final() {
        use SagaStatus::*;
        let ends = [Committed, Released, Expired];
        for to in [Committing, Releasing, Committed, Released, Expired] {
            assert!(Pending.can_become(to), "pending to {}", to.as_str());
        }
        for decided in [Committing, Releasing] {
            assert!(ends.iter().all(|end| decided.can_become(*end)));
            assert!(!decided.can_become(Pending));
        }
        assert!(!Committing.can_become(Releasing) && !Releasing.can_become(Committing));
        for end in ends {
            assert!(SagaStatus::ALL.iter().all(|to| !end.can_become(*to)));
        }
        assert_eq!(
            SagaStatus::from(ReservationStatus::Expired),
            SagaStatus::Expired
        );
    }
}
