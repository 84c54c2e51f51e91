//! Start-up as a library function: tests start the real server on port 0 with it, and
//! `main` is left with parsing the CLI and waiting for a signal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use stockline_actors::{Core, CoreConfig, EmptyLoader, MemoryJournal};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub core: Arc<Core>,
}

/// Starts the core and serves HTTP on `listener` until `shutdown` resolves; then stops
/// accepting, finishes the requests in flight, drains every line's mailbox, and ends.
///
/// Returns the bound address (for port 0) and the task to await for the end.
pub async fn launch(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let addr = listener.local_addr()?;
    // The PostgreSQL journal and loader replace these when the store lands (issue #3).
    let core = Core::start(
        CoreConfig::default(),
        Arc::new(MemoryJournal::discarding()),
        Arc::new(EmptyLoader),
    )
    .await
    .map_err(io::Error::other)?;
    let state = AppState {
        config: Arc::new(config),
        core: Arc::new(core),
    };
    let router = http::router(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        state.core.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    });
    Ok((addr, task))
}
