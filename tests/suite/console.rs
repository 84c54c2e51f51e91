//! The operator console in a real headless Chromium: sign-in, a hot line's counter rising
//! under load, a stock change seen on the page, an order shipped, a customer refused, a
//! shop member kept to its shop. Screenshots go to `target/console-screenshots/`.

use testkit::browser;

use browser::Browser;
use reqwest::StatusCode;
use serde_json::json;
use testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, TestApp};

const WIDE: (u32, u32) = (1280, 900);
const NARROW: (u32, u32) = (390, 844);

fn console(app: &TestApp) -> String {
    format!("{}/console", app.base)
}

/// Signs in through the console's form (with an authenticator code when given).
async fn sign_in(browser: &Browser, app: &TestApp, login: &str, password: &str) {
    browser.goto(&console(app)).await;
    browser.fill("#signin", "login", login).await;
    browser.fill("#signin", "password", password).await;
    browser.submit("#signin").await;
}

fn number(text: &str) -> u64 {
    text.replace(',', "").trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_a_hot_line_and_changes_stock() {
    let app = TestApp::spawn().await;
    let (product, warehouse) = app.stocked_product(1_000).await;
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &app, ADMIN_EMAIL, ADMIN_PASSWORD).await;

    // The overview is live: the request counter of the last minute moves.
    browser
        .wait_text("[data-card='Readiness']", |t| t == "ready")
        .await;
    browser
        .wait_text("[data-card='Requests/s']", |t| t != "–")
        .await;
    browser.screenshot("overview-1280").await;

    // Hot lines: the line's handled counter rises while requests run against it.
    browser.goto(&format!("{}#/lines", console(&app))).await;
    let cell = format!("[data-handled='{warehouse}:{product}']");
    let before = number(&browser.find(&cell).await.text().await.unwrap());
    let load = {
        let app_base = app.base.clone();
        let token = app.admin.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..150 {
                let reserved: serde_json::Value = client
                    .post(format!("{app_base}/api/v1/reservations"))
                    .bearer_auth(&token)
                    .json(&json!({ "items": [{ "product_id": product, "quantity": 1 }] }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = reserved["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{reserved}"));
                client
                    .post(format!("{app_base}/api/v1/reservations/{id}/release"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    browser
        .wait_text(&cell, |t| number(t) >= before + 300)
        .await;
    load.await.unwrap();
    browser.screenshot("hot-lines-1280").await;

    // Inventory: an adjustment shows on the line at once.
    browser
        .goto(&format!("{}#/inventory/{product}", console(&app)))
        .await;
    let on_hand = format!("[data-on-hand='{warehouse}']");
    browser.wait_text(&on_hand, |t| t == "1,000").await;
    browser
        .fill("form[aria-label='Adjust']", "delta", "25")
        .await;
    browser.submit("form[aria-label='Adjust']").await;
    browser.wait_text(&on_hand, |t| t == "1,025").await;
    assert_eq!(app.availability(product).await.on_hand, 1025);

    // Set level with a stale version: the API's refusal is shown, nothing changes.
    let level = "form[aria-label='Set level']";
    browser.fill(level, "on_hand", "7").await;
    browser.fill(level, "expected_version", "1").await;
    browser.submit(level).await;
    browser
        .wait_text(&format!("{level} .error"), |t| t.contains("version"))
        .await;
    assert_eq!(app.availability(product).await.on_hand, 1025);
    browser.screenshot("inventory-1280").await;

    // The same page at a phone's width: nothing is cut off sideways.
    browser.resize(NARROW.0, NARROW.1).await;
    let overflow: bool = serde_json::from_value(
        browser
            .client
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth + 1",
                vec![],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!overflow, "the page is wider than a 390 px screen");
    browser.screenshot("inventory-390").await;
    browser.goto(&format!("{}#/overview", console(&app))).await;
    browser
        .wait_text("[data-card='Readiness']", |t| t == "ready")
        .await;
    browser.screenshot("overview-390").await;
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ships_a_paid_order_by_keyboard_and_mouse() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    let (_, customer) = app.customer("buyer@example.com").await;
    let (status, order) = app
        .post(
            "/orders",
            &customer,
            json!({ "items": [{ "product_id": product, "quantity": 2 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let (status, paid) = app
        .post(
            &format!("/orders/{id}/pay"),
            &customer,
            json!({ "method": "card", "amount_cents": order["total_cents"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paid}");

    let operator = app.operator("ops@example.com").await;
    drop(operator);
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &app, "ops@example.com", "password-1").await;
    browser.find("nav a[data-page='orders']").await;
    // Keyboard: "g r" goes to the orders.
    browser.find("body").await.send_keys("gr").await.unwrap();
    browser.wait_text("main h1", |t| t == "Orders").await;
    browser
        .find(&format!("a[href='#/orders/{id}']"))
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("#order-status", |t| t == "paid").await;
    // The payment is listed with the order.
    browser
        .wait_text("main table", |t| t.contains("card"))
        .await;
    browser
        .fill("form[aria-label='Ship']", "tracking_number", "TRACK-42")
        .await;
    browser.submit("form[aria-label='Ship']").await;
    browser.wait_text("#order-status", |t| t == "shipped").await;
    let (_, now) = app.get(&format!("/orders/{id}"), &app.admin).await;
    assert_eq!(now["status"], "shipped");
    assert_eq!(now["tracking_number"], "TRACK-42");
    browser.screenshot("order-shipped-1280").await;
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_refused_and_a_shop_member_sees_only_its_shop() {
    let app = TestApp::spawn().await;
    let (_, _) = app.customer("shopper@example.com").await;
    let browser = Browser::start(NARROW.0, NARROW.1).await;
    sign_in(&browser, &app, "shopper@example.com", "password-1").await;
    browser
        .wait_text("#signin .error", |t| {
            t.contains("for operators, admins and shop members")
        })
        .await;
    let nav_shown: bool = serde_json::from_value(
        browser
            .client
            .execute("return !document.getElementById('nav').hidden", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!nav_shown, "a customer sees the console's pages");
    browser.screenshot("customer-refused-390").await;

    // A wrong password: the API's message.
    sign_in(&browser, &app, ADMIN_EMAIL, "not-the-password").await;
    browser.wait_text("#signin .error", |t| !t.is_empty()).await;

    // A shop's staff member: its own warehouse's lines only, no server-wide overview.
    let (staff_id, _) = app.customer("staff@example.com").await;
    let (_, shop) = app
        .post(
            "/shops",
            &app.admin,
            json!({ "code": "s1", "name": "Shop one" }),
        )
        .await;
    let shop = shop["id"].as_i64().unwrap();
    let (status, _) = app
        .put(
            &format!("/shops/{shop}/members/{staff_id}"),
            &app.admin,
            json!({ "role": "shop_staff" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, own) = app
        .post(
            "/warehouses",
            &app.admin,
            json!({ "code": "own", "name": "Own", "shop_id": shop }),
        )
        .await;
    let own = own["id"].as_i64().unwrap();
    let other = app.warehouse("other", 1).await;
    let product = app.product("P", 100).await;
    app.stock(own, product, 5).await;
    app.stock(other, product, 9).await;
    sign_in(&browser, &app, "staff@example.com", "password-1").await;
    browser
        .wait_text("main h1", |t| t.starts_with("Hot lines"))
        .await;
    browser
        .find(&format!("[data-handled='{own}:{product}']"))
        .await;
    let pages: Vec<String> = serde_json::from_value(
        browser
            .client
            .execute(
                "return [...document.querySelectorAll('#nav a')].map(a => a.dataset.page)",
                vec![],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pages, ["lines", "inventory", "warehouses", "alerts"]);
    let others: bool = serde_json::from_value(
        browser
            .client
            .execute(
                &format!("return !!document.querySelector(\"[data-handled='{other}:{product}']\")"),
                vec![],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!others, "a shop member sees another warehouse's line");
    // Inventory offers its own warehouse only, and an adjustment there works.
    browser
        .goto(&format!("{}#/inventory/{product}", console(&app)))
        .await;
    browser
        .find("form[aria-label='Adjust'] select[name=warehouse_id]")
        .await;
    let offered: Vec<String> = serde_json::from_value(
        browser
            .client
            .execute(
                "return [...document.querySelectorAll(\"form[aria-label='Adjust'] select[name=warehouse_id] option\")].map(o => o.value)",
                vec![],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(offered, [own.to_string()]);
    browser
        .fill("form[aria-label='Adjust']", "delta", "3")
        .await;
    browser.submit("form[aria-label='Adjust']").await;
    browser
        .wait_text(&format!("[data-on-hand='{own}']"), |t| t == "8")
        .await;
    assert_eq!(app.availability(product).await.on_hand, 17);
    browser.screenshot("shop-member-390").await;
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_asks_for_the_authenticator_code_when_totp_is_on() {
    let app = TestApp::spawn().await;
    let token = app.operator("totp@example.com").await;
    let (_, setup) = app.post("/auth/totp/setup", &token, json!({})).await;
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let code = || {
        let secret = totp_rs::Secret::try_from_base32(&secret).unwrap();
        let totp = totp_rs::Builder::new().with_secret(secret).build().unwrap();
        totp.generate_current().to_string()
    };
    let (status, body) = app
        .post("/auth/totp/verify", &token, json!({ "code": code() }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &app, "totp@example.com", "password-1").await;
    // The code field appears, with the API's message.
    browser.wait_text("#signin .error", |t| !t.is_empty()).await;
    browser.fill("#signin", "totp", &code()).await;
    browser.submit("#signin").await;
    browser
        .wait_text("main h1", |t| t.starts_with("Overview"))
        .await;
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_edits_and_removes_a_product_and_deactivates_a_warehouse() {
    let app = TestApp::spawn().await;
    let warehouse = app.warehouse("north", 1).await;
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    browser.find("nav a[data-page='products']").await;
    browser.goto(&format!("{}#/products", console(&app))).await;
    let add = "form[aria-label='Add a product']";
    browser.fill(add, "sku", "MUG-1").await;
    browser.fill(add, "name", "Blue mug").await;
    browser.fill(add, "price_cents", "1250").await;
    browser.submit(add).await;
    browser
        .wait_text("main h1", |t| t == "Product Blue mug")
        .await;
    // A duplicate SKU: the API's conflict, in the form.
    browser.goto(&format!("{}#/products", console(&app))).await;
    browser.fill(add, "sku", "MUG-1").await;
    browser.fill(add, "name", "Another").await;
    browser.fill(add, "price_cents", "1").await;
    browser.submit(add).await;
    browser
        .wait_text(&format!("{add} .error"), |t| !t.is_empty())
        .await;

    let (_, found) = app.get("/products?q=MUG-1", &app.admin).await;
    let id = found["items"][0]["id"].as_i64().unwrap();
    browser
        .goto(&format!("{}#/products/{id}", console(&app)))
        .await;
    let edit = "form[aria-label='Edit']";
    browser.fill(edit, "price_cents", "1400").await;
    browser.submit(edit).await;
    browser
        .wait_text("#notice", |t| t.starts_with("Saved"))
        .await;
    let (_, product) = app.get(&format!("/products/{id}"), &app.admin).await;
    assert_eq!(product["price_cents"], 1400);

    // Removal asks once more, then goes.
    let remove = browser.wait_text("button.danger", |t| t == "Remove").await;
    remove.click().await.unwrap();
    browser
        .wait_text("button.danger", |t| t.starts_with("Confirm"))
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("main h1", |t| t == "Products").await;
    let (status, _) = app.get(&format!("/products/{id}"), &app.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    browser
        .goto(&format!("{}#/warehouses", console(&app)))
        .await;
    browser
        .wait_text("main button", |t| t == "Deactivate")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("main button", |t| t == "Activate").await;
    let (_, now) = app
        .get(&format!("/warehouses/{warehouse}"), &app.admin)
        .await;
    assert_eq!(now["status"], "inactive");
    browser.screenshot("warehouses-1280").await;
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_show_low_stock_and_the_reservations_that_expire_soonest() {
    let app = TestApp::spawn().await;
    let (product, _) = app.stocked_product(10).await;
    let (status, _) = app
        .patch(
            &format!("/products/{product}"),
            &app.admin,
            json!({ "low_stock_threshold": 20 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, held) = app
        .post(
            "/reservations",
            &app.admin,
            json!({ "items": [{ "product_id": product, "quantity": 3 }], "ttl_seconds": 90, "reference": "cart-77" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    browser.find("nav a[data-page='alerts']").await;
    browser.goto(&format!("{}#/alerts", console(&app))).await;
    // Low stock: 7 available of a threshold of 20; the hold of 3, expiring in about 90 s.
    browser
        .wait_text("main table", |t| t.contains("20") && t.contains('7'))
        .await;
    browser
        .wait_text("main table", |t| {
            t.contains("cart-77") && t.contains("3× product")
        })
        .await;
    browser.screenshot("alerts-1280").await;
    browser.close().await;
    app.cleanup().await;
}
