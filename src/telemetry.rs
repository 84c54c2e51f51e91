//! Logging: `RUST_LOG` filters (default `info`); `STOCKLINE_LOG_FORMAT=json` for JSON lines.
//! [`prometheus`]: the recorder and what it exports; [`requests`]: per-request metrics; [`traffic`]: the console's last minute of them.

pub mod prometheus;
pub mod requests;
pub mod traffic;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("STOCKLINE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
