//! The console, measured in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`): its page weight (the bytes of the page, script and style as served)
//! and the time to first render of the overview, from navigation start to the first
//! paint and to the overview's figures drawn (its first poll answered), signed in.
//!
//! Run: `cargo bench --bench console` (`-- --rounds N`).

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use testkit::browser;

#[derive(Parser)]
struct Args {
    /// Page loads measured (after one to warm up).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let app = testkit::TestApp::spawn_bench(&[]).await;
    let url = app.base.clone();
    let client = reqwest::Client::new();

    let mut weight = 0;
    for path in ["/console", "/console/console.js", "/console/console.css"] {
        let bytes = client
            .get(format!("{url}{path}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
        println!("console: {path}: {bytes} bytes");
        weight += bytes;
    }
    println!(
        "console: page weight {weight} bytes (uncompressed; nothing else is fetched but the API's JSON)"
    );

    let token = app.admin.clone();

    let browser = browser::Browser::start(1280, 900).await;
    browser.goto(&format!("{url}/console")).await;
    browser
        .client
        .execute(
            "sessionStorage.setItem('stockline.token', arguments[0])",
            vec![json!(token)],
        )
        .await
        .unwrap();
    let (mut paint, mut rendered) = (Vec::new(), Vec::new());
    for round in 0..=args.rounds {
        browser.goto("about:blank").await;
        browser.goto(&format!("{url}/console#/overview")).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let times = loop {
            let times = browser
                .client
                .execute(
                    "const o = performance.getEntriesByName('stockline:overview')[0];
                     const p = performance.getEntriesByName('first-contentful-paint')[0];
                     return o && p ? [p.startTime, o.startTime] : null",
                    vec![],
                )
                .await
                .unwrap();
            if !times.is_null() {
                break times;
            }
            assert!(Instant::now() < deadline, "the overview never rendered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if round > 0 {
            paint.push(times[0].as_f64().unwrap());
            rendered.push(times[1].as_f64().unwrap());
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[values.len() - 1])
    };
    let (paint_median, paint_max) = median(&mut paint);
    let (render_median, render_max) = median(&mut rendered);
    println!(
        "console: {} loads of the overview, signed in, 1280x900: first contentful paint median {paint_median:.1} ms (slowest {paint_max:.1}); overview figures drawn median {render_median:.1} ms (slowest {render_max:.1})",
        args.rounds
    );
    browser.close().await;
    app.cleanup().await;
}
