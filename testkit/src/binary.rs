//! The real `stockline` binary, started as a child process on port 0 (kill -9 tests,
//! cluster nodes, benches of a process of its own).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, TestApp, database_url};

/// The `stockline` binary cargo built beside the running test or bench (cargo builds a
/// package's binaries for its integration tests and benches): `target/<profile>/stockline`,
/// the running one being `target/<profile>/deps/<name>-<hash>`. `STOCKLINE_BIN` overrides.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STOCKLINE_BIN") {
        return path.into();
    }
    let running = std::env::current_exe().expect("the running executable's path");
    let profile = running
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test or bench runs from target/<profile>/deps");
    let path = profile.join("stockline");
    assert!(
        path.is_file(),
        "no stockline binary at {} (build it, or set STOCKLINE_BIN)",
        path.display()
    );
    path
}

/// The environment that makes the binary create the tests' admin.
pub const ADMIN_ENV: [(&str, &str); 2] = [
    ("STOCKLINE_ADMIN_EMAIL", ADMIN_EMAIL),
    ("STOCKLINE_ADMIN_PASSWORD", ADMIN_PASSWORD),
];

/// Starts the real binary over `database` with the tests' admin; answers the child and a
/// client signed in as that admin.
pub async fn start_binary_app(database: &str) -> (Child, TestApp) {
    let (child, url) = start_binary(database, &ADMIN_ENV);
    (child, TestApp::attach(&url, database).await)
}

/// Starts the real binary on port 0 over `database`; answers the child and its base URL
/// once it printed that it listens.
pub fn start_binary(database: &str, extra_env: &[(&str, &str)]) -> (Child, String) {
    start_binary_logging(database, extra_env, Stdio::null())
}

/// [`start_binary`] with its log (stderr) going to `log`.
pub fn start_binary_logging(
    database: &str,
    extra_env: &[(&str, &str)],
    log: Stdio,
) -> (Child, String) {
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .env("STOCKLINE_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", database_url(database))
        .env("STOCKLINE_BCRYPT_COST", "4")
        .env("STOCKLINE_AUTH_RATE_PER_MINUTE", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("stockline listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}
