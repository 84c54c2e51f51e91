//! The supervisor of every line actor: restarts a failed line from its last state.
//!
//! ractor's default supervision stops the parent when a child dies, which here would take
//! every line down with one; so this actor overrides `handle_supervisor_evt`. A line's
//! state lives in its [`LineShared`], which outlives the actor, so the restarted actor
//! continues from the state after the last message it accepted. Messages queued in the
//! dead actor's mailbox are lost; their callers get `Unavailable` and may retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::journal::lock;
use crate::stock_line::{LineContext, StockLine};

/// The stop reason the registry gives at shutdown; lines stopped with it stay stopped.
pub(crate) const SHUTDOWN: &str = "shutdown";
/// The reason ractor gives a line that stopped after draining its mailbox (at shutdown).
const DRAINED: &str = "Drained";

pub(crate) enum SupervisorMsg {
    /// Start a line linked to the supervisor and publish its ref in `shared.actor`.
    Spawn(LineContext, RpcReplyPort<Result<(), String>>),
}

pub(crate) struct LineSupervisor;

/// The running children, by actor id.
pub(crate) struct Children(HashMap<ActorId, LineContext>);

impl LineSupervisor {
    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        children: &mut Children,
        context: LineContext,
    ) -> Result<(), String> {
        let (actor, _) = Actor::spawn_linked(None, StockLine, context.clone(), myself.get_cell())
            .await
            .map_err(|e| format!("spawning line {}: {e}", context.shared.key))?;
        children.0.insert(actor.get_id(), context.clone());
        context.shared.actor.store(Some(Arc::new(actor)));
        Ok(())
    }

    async fn restart(
        myself: &ActorRef<SupervisorMsg>,
        children: &mut Children,
        context: LineContext,
        why: &str,
    ) {
        let shared = &context.shared;
        shared.actor.store(None);
        shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
        shared.state.clear_poison();
        if lock(&shared.state).repair() {
            tracing::warn!(line = %shared.key, "repaired reserved/on_hand from the line's holds");
        }
        tracing::error!(line = %shared.key, why, "stock line failed; restarting from its last state");
        if let Err(error) = Self::start_child(myself, children, context).await {
            tracing::error!(error, "could not restart a stock line");
        }
    }
}

impl Actor for LineSupervisor {
    type Msg = SupervisorMsg;
    type State = Children;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Children, ActorProcessingErr> {
        Ok(Children(HashMap::new()))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Spawn(context, reply) => {
                let result = Self::start_child(&myself, children, context).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(context) = children.0.remove(&cell.get_id()) {
                    let why = error.to_string();
                    Self::restart(&myself, children, context, &why).await;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let child = children.0.remove(&cell.get_id());
                let expected = matches!(reason.as_deref(), Some(SHUTDOWN | DRAINED));
                if let (Some(context), false) = (child, expected) {
                    let why = reason.unwrap_or_else(|| "stopped unexpectedly".into());
                    Self::restart(&myself, children, context, &why).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::journal::MemoryJournal;
    use crate::line_state::LineOp;
    use crate::registry::EmptyLoader;
    use crate::types::{LineKey, Quantity, ReservationId};
    use crate::{Core, CoreConfig, WarehouseInfo};

    #[tokio::test]
    async fn a_failed_line_is_restarted_from_its_last_state_and_its_siblings_live_on() {
        let core = Core::start(
            CoreConfig::default(),
            Arc::new(MemoryJournal::new()),
            Arc::new(EmptyLoader),
        )
        .await
        .unwrap();
        core.upsert_warehouse(1, WarehouseInfo::default())
            .await
            .unwrap();
        let key = LineKey::new(1, 7);
        core.adjust(key, 10, "receipt".into()).await.unwrap();
        core.adjust(LineKey::new(1, 8), 3, "receipt".into())
            .await
            .unwrap();
        let id = ReservationId::new();
        let line = core.registry().get(key).unwrap();
        let hold = LineOp::Reserve {
            id,
            qty: Quantity::new(4).unwrap(),
        };
        line.call(hold).await.unwrap();

        line.fail_for_test();
        for _ in 0..1_000 {
            if line.stats().restarts == 1 && line.snapshot().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(line.stats().restarts, 1);
        let after = line.snapshot().await.unwrap();
        assert_eq!((after.on_hand, after.reserved, after.version), (10, 4, 2));
        // The hold survived the restart: committing it still works.
        let committed = line.settle(LineOp::Commit { id }).await.unwrap();
        assert_eq!(
            (committed.snapshot.on_hand, committed.snapshot.reserved),
            (6, 0)
        );
        // The sibling line was not taken down with it.
        let sibling = core.registry().get(LineKey::new(1, 8)).unwrap();
        assert_eq!(sibling.snapshot().await.unwrap().on_hand, 3);
        assert_eq!(sibling.stats().restarts, 0);
    }
}
