//! The `stockline` binary and its start-up: what a newcomer running it would see.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use stockline::config::Config;

fn config() -> Config {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        config: Config,
    }
    Wrap::parse_from(["test", "--addr", "127.0.0.1:0"]).config
}

#[tokio::test]
async fn launch_serves_healthz_on_port_zero_and_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = stockline::startup::launch(listener, config(), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let response = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_binary_prints_its_address_and_exits_zero_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockline"))
        .arg("serve")
        .env("STOCKLINE_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("stockline listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let response = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exits 0 after SIGTERM");
}

#[test]
fn commands_that_need_the_store_say_so_and_fail() {
    let output = Command::new(env!("CARGO_BIN_EXE_stockline"))
        .args(["migrate"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PostgreSQL"));
}
