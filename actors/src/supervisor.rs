//! The supervisor of every line actor: activates lines, passivates idle ones, and restarts
//! a failed line from its last state.
//!
//! ractor's default supervision stops the parent when a child dies, which here would take
//! every line down with one; so this actor overrides `handle_supervisor_evt`. A line's
//! state lives in its [`LineShared`](crate::stock_line::LineShared), which outlives any
//! actor, so a restarted or re-activated actor continues from the state after the last
//! message accepted.
//!
//! Passivation: a ractor actor costs ~6 KB (its task and four ports, BENCHMARKS.md) whether
//! it works or not, so a line idle for `passivate_after` gives its actor up and keeps only
//! its state (~0.6 KB). The next message activates it again. Both go through this one actor,
//! so a line never has two live actors. A passivated actor is drained: what is in its
//! mailbox is handled, and a send that arrives later is refused with the message handed
//! back unapplied, which the [`LineHandle`](crate::handle::LineHandle) sends again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::stock_line::{LineContext, LineMsg, StockLine};
use crate::types::lock;

/// The stop reason the registry gives at shutdown; lines stopped with it stay stopped.
pub(crate) const SHUTDOWN: &str = "shutdown";
/// The reason ractor gives a line that stopped after draining its mailbox (passivation,
/// shutdown): such a line is not restarted.
const DRAINED: &str = "Drained";

pub(crate) enum SupervisorMsg {
    /// Make sure the line has a running actor, published in `shared.actor`.
    Activate(LineContext, RpcReplyPort<Result<(), String>>),
    /// Passivate every line idle for at least this long.
    Sweep(Duration),
}

pub(crate) struct LineSupervisor;

/// A running child: the line it serves and the actor itself.
pub(crate) struct Child {
    context: LineContext,
    actor: Arc<ActorRef<LineMsg>>,
}

/// The running children (including drained ones not yet stopped), by actor id.
pub(crate) struct Children(HashMap<ActorId, Child>, Arc<Lifecycles>);

/// How often lines were given an actor (activations, restarts included) and gave it up
/// for being idle (passivations), since start: counts that outlive the lines themselves.
#[derive(Default)]
pub(crate) struct Lifecycles {
    pub(crate) activations: AtomicU64,
    pub(crate) passivations: AtomicU64,
}

impl LineSupervisor {
    async fn activate(
        myself: &ActorRef<SupervisorMsg>,
        children: &mut Children,
        context: LineContext,
    ) -> Result<(), String> {
        if context.shared.actor.load().is_some() {
            return Ok(());
        }
        let (actor, _) = Actor::spawn_linked(None, StockLine, context.clone(), myself.get_cell())
            .await
            .map_err(|e| format!("spawning line {}: {e}", context.shared.key))?;
        let actor = Arc::new(actor);
        context.shared.stats.touch(Utc::now());
        context.shared.actor.store(Some(actor.clone()));
        children.0.insert(actor.get_id(), Child { context, actor });
        children.1.activations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sweep(children: &Children, idle_after: Duration) {
        let now = Utc::now();
        for child in children.0.values() {
            let shared = &child.context.shared;
            let current = shared.actor.load();
            let is_current = current
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, &child.actor));
            if is_current && shared.stats.is_idle(now, idle_after) {
                // Unpublish first: new callers then ask for an activation instead of
                // sending to the actor being drained.
                shared.actor.store(None);
                shared.stats.passivations.fetch_add(1, Ordering::Relaxed);
                children.1.passivations.fetch_add(1, Ordering::Relaxed);
                child.actor.drain().ok();
            }
        }
    }

    async fn restart(
        myself: &ActorRef<SupervisorMsg>,
        children: &mut Children,
        child: Child,
        why: &str,
    ) {
        let shared = &child.context.shared;
        let current = shared.actor.load_full();
        if !current.is_some_and(|a| Arc::ptr_eq(&a, &child.actor)) {
            // A drained predecessor failed; the line already has another actor (or none).
            return;
        }
        shared.actor.store(None);
        shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
        shared.state.clear_poison();
        if lock(&shared.state).repair() {
            tracing::warn!(line = %shared.key, "repaired reserved/on_hand from the line's holds");
        }
        tracing::error!(line = %shared.key, why, "stock line failed; restarting from its last state");
        if let Err(error) = Self::activate(myself, children, child.context).await {
            tracing::error!(error, "could not restart a stock line");
        }
    }
}

impl Actor for LineSupervisor {
    type Msg = SupervisorMsg;
    type State = Children;
    type Arguments = Arc<Lifecycles>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        lifecycles: Arc<Lifecycles>,
    ) -> Result<Children, ActorProcessingErr> {
        Ok(Children(HashMap::new(), lifecycles))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Activate(context, reply) => {
                let result = Self::activate(&myself, children, context).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::Sweep(idle_after) => Self::sweep(children, idle_after),
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
                if let Some(child) = children.0.remove(&cell.get_id()) {
                    let why = error.to_string();
                    Self::restart(&myself, children, child, &why).await;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let child = children.0.remove(&cell.get_id());
                let expected = matches!(reason.as_deref(), Some(SHUTDOWN | DRAINED));
                if let (Some(child), false) = (child, expected) {
                    let why = reason.unwrap_or_else(|| "stopped unexpectedly".into());
                    Self::restart(&myself, children, child, &why).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::line_state::LineOp;
    use crate::types::{LineKey, Quantity, ReservationId};

    #[tokio::test]
    async fn a_failed_line_is_restarted_from_its_last_state_and_its_siblings_live_on() {
        let core = crate::test_core().await;
        let key = LineKey::new(1, 7);
        core.adjust(key, 10, "receipt".into(), None).await.unwrap();
        core.adjust(LineKey::new(1, 8), 3, "receipt".into(), None)
            .await
            .unwrap();
        let id = ReservationId::new();
        let line = core.registry().resident(key).unwrap();
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
        let sibling = core.registry().resident(LineKey::new(1, 8)).unwrap();
        assert_eq!(sibling.snapshot().await.unwrap().on_hand, 3);
        assert_eq!(sibling.stats().restarts, 0);
    }
}
