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
                if let Some(context) = children.0.remove(&cell.get_id()) {
                    if !matches!(reason.as_deref(), Some(SHUTDOWN | DRAINED)) {
                        let why = reason.unwrap_or_else(|| "stopped unexpectedly".into());
                        Self::restart(&myself, children, context, &why).await;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
