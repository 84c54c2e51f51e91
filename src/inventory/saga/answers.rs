//! What the parts of a reservation across shards answered, and what the whole answers
//! from them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use stockline_actors::ReservationStatus;

use crate::error::AppError;
use crate::inventory::MAX_ANSWER;

/// What one part answered (or any operation of the service: an order's step reads its
/// reservation's answers with it too).
pub(in crate::inventory) struct PartAnswer {
    pub(in crate::inventory) status: StatusCode,
    pub(in crate::inventory) body: Value,
}

impl PartAnswer {
    /// What a part's answer says (its body is the API's JSON).
    pub(in crate::inventory) async fn of(response: Response) -> Self {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice(&body).ok())
            .unwrap_or(Value::Null);
        Self { status, body }
    }

    pub(in crate::inventory) fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The part's status if it answered "not pending".
    pub(in crate::inventory) fn not_pending(&self) -> Option<ReservationStatus> {
        let error = &self.body["error"];
        (self.status == StatusCode::CONFLICT && error["code"] == "reservation_not_pending")
            .then(|| ReservationStatus::parse(error["details"]["status"].as_str()?))
            .flatten()
    }

    pub(super) fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// The refusal to answer for the whole among the parts' answers: a client error first
/// (it says why), else the first failure. `None` if every part succeeded.
pub(super) fn refusal(answers: Vec<PartAnswer>) -> Option<PartAnswer> {
    let mut failures: Vec<_> = answers.into_iter().filter(|a| !a.ok()).collect();
    let at = failures
        .iter()
        .position(|a| a.status.is_client_error())
        .unwrap_or(0);
    (!failures.is_empty()).then(|| failures.swap_remove(at))
}

/// The parts' answers if every part succeeded, else the refusal to answer for the whole.
pub(super) fn all_held(
    answers: Vec<PartAnswer>,
) -> std::result::Result<Vec<PartAnswer>, PartAnswer> {
    if answers.iter().all(PartAnswer::ok) {
        return Ok(answers);
    }
    Err(refusal(answers)
        .unwrap_or_else(|| failed(AppError::Unavailable("a part did not answer; retry".into()))))
}

pub(super) fn failed(error: AppError) -> PartAnswer {
    PartAnswer {
        status: error.status(),
        body: json!({ "error": error.body() }),
    }
}
