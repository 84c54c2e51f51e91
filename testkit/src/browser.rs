//! A real headless Chromium, driven through chromedriver (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them), for the console's tests and its bench.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};

/// A chromedriver of its own and a browser session on it; both end on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// A headless Chromium at `width` x `height` pixels of viewport.
    pub async fn start(width: u32, height: u32) -> Self {
        let port = free_port();
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        // In a process group of its own, so that the browsers it starts end with it.
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{chromedriver} does not start ({e}): install chromium and chromium-driver (Debian), as .ci/run does")
            });
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", format!("--window-size={width},{height}")],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("no browser session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let browser = Self { client, driver };
        browser.resize(width, height).await;
        browser
    }

    /// Makes the viewport (not the window) `width` x `height`.
    pub async fn resize(&self, width: u32, height: u32) {
        let inner: (u32, u32) = serde_json::from_value(
            self.client
                .execute("return [window.innerWidth, window.innerHeight]", vec![])
                .await
                .unwrap(),
        )
        .unwrap();
        let (outer_w, outer_h, ..) = self.client.get_window_rect().await.unwrap();
        let (dw, dh) = (
            outer_w as u32 - inner.0.min(outer_w as u32),
            outer_h as u32 - inner.1.min(outer_h as u32),
        );
        self.client
            .set_window_size(width + dw, height + dh)
            .await
            .unwrap();
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The first element matching `css` whose text satisfies `test`, waited for up to 15 s.
    pub async fn wait_text(&self, css: &str, test: impl Fn(&str) -> bool) -> Element {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        loop {
            if let Ok(found) = self.client.find_all(Locator::Css(css)).await {
                for element in found {
                    if let Ok(text) = element.text().await {
                        if test(&text) {
                            return element;
                        }
                        last = text;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {css} as wanted within 15 s; last text seen: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn find(&self, css: &str) -> Element {
        self.wait_text(css, |_| true).await
    }

    /// Types `text` into the field named `name` inside `scope` (a CSS selector).
    pub async fn fill(&self, scope: &str, name: &str, text: &str) {
        let field = self.find(&format!("{scope} [name=\"{name}\"]")).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn submit(&self, scope: &str) {
        self.find(&format!("{scope} button[type=submit]"))
            .await
            .click()
            .await
            .unwrap();
    }

    /// Saves a PNG of the viewport as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        // testkit/ is beside the workspace's target/.
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session and the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and every browser it started.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
