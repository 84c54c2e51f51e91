//! Shops over HTTP: shops and members, and the isolation of one shop's warehouses from
//! another's over every endpoint that moves or reads stock (a table of requests × roles ×
//! own/other shop, each with its expected status).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::api::{
    Actors, Availability, List, LowStock, Member, Movement, Refused, Shop, Transfer, Warehouse,
};
use testkit::*;

/// Two shops with two warehouses each, a platform warehouse, one product stocked
/// everywhere, and a token per role.
struct Marketplace {
    app: TestApp,
    product: i64,
    /// Shop A's warehouses, then shop B's.
    a: [i64; 2],
    b: [i64; 2],
    platform: i64,
    shop_a: i64,
    shop_b: i64,
    owner_a: String,
    staff_a: String,
    owner_b: String,
    operator: String,
    customer: String,
}

async fn shop_warehouse(app: &TestApp, token: &str, shop: i64, code: &str) -> i64 {
    let body = json!({ "code": code, "name": code, "shop_id": shop });
    let made: Warehouse = app.create("/warehouses", token, body).await.unwrap();
    assert_eq!(made.shop_id, Some(shop), "{made:?}");
    made.id
}

impl Marketplace {
    async fn new() -> Self {
        let app = TestApp::spawn().await;
        let product = app.product("P", 100).await;
        let (shop_a, shop_b) = (app.shop("A").await, app.shop("B").await);
        let owner_a = app
            .member(&app.admin, shop_a, "owner-a@example.com", "shop_owner")
            .await;
        let staff_a = app
            .member(&owner_a, shop_a, "staff-a@example.com", "shop_staff")
            .await;
        let owner_b = app
            .member(&app.admin, shop_b, "owner-b@example.com", "shop_owner")
            .await;
        // An owner creates its own shop's warehouses; the platform's need an operator.
        let a = [
            shop_warehouse(&app, &owner_a, shop_a, "A1").await,
            shop_warehouse(&app, &owner_a, shop_a, "A2").await,
        ];
        let b = [
            shop_warehouse(&app, &app.admin, shop_b, "B1").await,
            shop_warehouse(&app, &owner_b, shop_b, "B2").await,
        ];
        let platform = app.warehouse("PL", 1).await;
        for w in a.iter().chain(&b).chain([&platform]) {
            app.stock(*w, product, 50).await;
        }
        let operator = app.operator("op@example.com").await;
        let (_, customer) = app.customer("cu@example.com").await;
        Self {
            app,
            product,
            a,
            b,
            platform,
            shop_a,
            shop_b,
            owner_a,
            staff_a,
            owner_b,
            operator,
            customer,
        }
    }
}

/// One request of the table, aimed at a warehouse pair.
fn request(kind: &str, product: i64, w: i64, w2: i64) -> (Method, String, Option<Value>) {
    let line = json!({ "warehouse_id": w, "product_id": product });
    match kind {
        "adjust" => (
            Method::POST,
            "/stock/adjustments".into(),
            Some(
                json!({ "warehouse_id": w, "product_id": product, "delta": 1, "reason": "receipt" }),
            ),
        ),
        "level" => (
            Method::PUT,
            "/stock/levels".into(),
            Some(json!({ "warehouse_id": w, "product_id": product, "on_hand": 40 })),
        ),
        "transfer" => (
            Method::POST,
            "/transfers".into(),
            Some(
                json!({ "from_warehouse_id": w, "to_warehouse_id": w2, "product_id": product, "quantity": 1 }),
            ),
        ),
        "status" => (
            Method::PUT,
            format!("/warehouses/{w}/status"),
            Some(json!({ "status": "active" })),
        ),
        "rename" => (
            Method::PATCH,
            format!("/warehouses/{w}"),
            Some(json!({ "name": "renamed" })),
        ),
        "lines" => (Method::GET, format!("/warehouses/{w}/stock"), None),
        "movements" => (
            Method::GET,
            format!("/stock/movements?warehouse_id={w}"),
            None,
        ),
        "pinned_reserve" => (
            Method::POST,
            "/reservations".into(),
            Some(
                json!({ "items": [{ "product_id": product, "quantity": 1, "warehouse_id": line["warehouse_id"] }] }),
            ),
        ),
        other => panic!("unknown request {other}"),
    }
}

/// (request, target, (warehouse, second warehouse), status per role).
type Row = (&'static str, &'static str, (i64, i64), [u16; 5]);

#[tokio::test]
async fn a_shop_member_acts_on_its_own_warehouses_only_over_every_stock_endpoint() {
    let m = Marketplace::new().await;
    let app = &m.app;
    let roles: [(&str, &str); 5] = [
        ("owner_a", &m.owner_a),
        ("staff_a", &m.staff_a),
        ("operator", &m.operator),
        ("admin", &app.admin),
        ("customer", &m.customer),
    ];
    const OK: u16 = 200;
    const CREATED: u16 = 201;
    const FORBIDDEN: u16 = 403;
    // Statuses in the order of `roles`: owner_a, staff_a, operator, admin, customer.
    let own = (m.a[0], m.a[1]);
    let other = (m.b[0], m.b[1]);
    let cross = (m.a[0], m.b[0]);
    let platform = (m.platform, m.a[0]);
    let table: Vec<Row> = vec![
        ("adjust", "own", own, [OK, OK, OK, OK, FORBIDDEN]),
        (
            "adjust",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        (
            "adjust",
            "platform",
            platform,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        ("level", "own", own, [OK, OK, OK, OK, FORBIDDEN]),
        (
            "level",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        (
            "transfer",
            "own",
            own,
            [CREATED, CREATED, CREATED, CREATED, FORBIDDEN],
        ),
        (
            "transfer",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, CREATED, CREATED, FORBIDDEN],
        ),
        // Between two owners' warehouses: an admin only.
        (
            "transfer",
            "cross",
            cross,
            [FORBIDDEN, FORBIDDEN, FORBIDDEN, CREATED, FORBIDDEN],
        ),
        (
            "transfer",
            "platform",
            platform,
            [FORBIDDEN, FORBIDDEN, FORBIDDEN, CREATED, FORBIDDEN],
        ),
        ("status", "own", own, [OK, OK, OK, OK, FORBIDDEN]),
        (
            "status",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        ("rename", "own", own, [OK, OK, OK, OK, FORBIDDEN]),
        (
            "rename",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        ("lines", "own", own, [OK, OK, OK, OK, FORBIDDEN]),
        (
            "lines",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        ("movements", "own", own, [OK, OK, OK, OK, FORBIDDEN]),
        (
            "movements",
            "other",
            other,
            [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        ),
        // Reservations stay an operator's tool.
        (
            "pinned_reserve",
            "own",
            own,
            [FORBIDDEN, FORBIDDEN, CREATED, CREATED, FORBIDDEN],
        ),
    ];
    let mut failures = Vec::new();
    for (kind, target, (w, w2), expected) in &table {
        for ((role, token), want) in roles.iter().zip(expected) {
            let (method, path, body) = request(kind, m.product, *w, *w2);
            let (status, answer) = app.send(method, &path, Some(token), body).await;
            if status.as_u16() != *want {
                failures.push(format!(
                    "{kind} on {target} as {role}: {status}, expected {want}: {answer}"
                ));
            } else if *want == FORBIDDEN {
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    m.app.cleanup().await;
}

#[tokio::test]
async fn bulk_items_are_each_checked_and_lists_show_a_member_its_own_shop_only() {
    let m = Marketplace::new().await;
    let app = &m.app;
    let item = |w: i64| json!({ "warehouse_id": w, "product_id": m.product, "delta": 2, "reason": "receipt" });
    let (status, body) = app
        .post(
            "/stock/adjustments/bulk",
            &m.staff_a,
            json!([item(m.a[0]), item(m.b[0]), item(m.a[1]), item(m.platform)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Each item's outcome, as the bulk answer's JSON has it (no type of its own).
    let outcome: Vec<_> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ok"].as_bool().unwrap(), r["error"]["code"].clone()))
        .collect();
    assert_eq!(
        outcome,
        vec![
            (true, Value::Null),
            (false, json!("forbidden")),
            (true, Value::Null),
            (false, json!("forbidden")),
        ]
    );
    let (status, _) = app
        .post(
            "/stock/adjustments/bulk",
            &m.customer,
            json!([item(m.a[0])]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Lists: a member sees its shop's lines, movements, transfers and alerts only.
    let warehouses_of = |mut seen: Vec<i64>| -> Vec<i64> {
        seen.sort();
        seen.dedup();
        seen
    };
    let actors: Actors = app
        .call(Method::GET, "/admin/actors?limit=500", &m.owner_a, None)
        .await
        .unwrap();
    let seen = actors.items.iter().map(|a| a.warehouse_id).collect();
    assert_eq!(warehouses_of(seen), m.a.to_vec());
    let movements: List<Movement> = app
        .call(Method::GET, "/stock/movements?limit=500", &m.staff_a, None)
        .await
        .unwrap();
    let seen = movements.items.iter().map(|m| m.warehouse_id).collect();
    assert_eq!(warehouses_of(seen), m.a.to_vec());
    let all: Actors = app
        .call(Method::GET, "/admin/actors?limit=500", &m.operator, None)
        .await
        .unwrap();
    assert_eq!(all.total, 5);
    app.post(
        "/transfers",
        &m.owner_b,
        json!({ "from_warehouse_id": m.b[0], "to_warehouse_id": m.b[1], "product_id": m.product, "quantity": 1 }),
    )
    .await;
    app.post(
        "/transfers",
        &m.owner_a,
        json!({ "from_warehouse_id": m.a[0], "to_warehouse_id": m.a[1], "product_id": m.product, "quantity": 1 }),
    )
    .await;
    let transfers: List<Transfer> = app
        .call(Method::GET, "/transfers", &m.owner_a, None)
        .await
        .unwrap();
    assert_eq!(transfers.total, 1, "{transfers:?}");
    assert_eq!(transfers.items[0].from_warehouse_id, m.a[0]);

    // Low stock: the threshold is weighed against the member's own shop's stock.
    app.send(
        Method::PATCH,
        &format!("/products/{}", m.product),
        Some(&app.admin),
        Some(json!({ "low_stock_threshold": 150 })),
    )
    .await;
    let low: List<LowStock> = app
        .call(Method::GET, "/alerts/low-stock", &m.owner_a, None)
        .await
        .unwrap();
    let seen = low.items.iter().map(|l| l.warehouse_id).collect();
    assert_eq!(warehouses_of(seen), m.a.to_vec());
    assert_eq!(low.items[0].product_available, 104, "shop A's own total");
    let everywhere: List<LowStock> = app
        .call(Method::GET, "/alerts/low-stock", &m.operator, None)
        .await
        .unwrap();
    assert_eq!(
        everywhere.total, 0,
        "254 available over all warehouses: {everywhere:?}"
    );
    let (status, _) = app.get("/alerts/low-stock", &m.customer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    m.app.cleanup().await;
}

#[tokio::test]
async fn shops_and_members_are_managed_by_admins_and_owners_and_allocation_keeps_to_a_shop() {
    let m = Marketplace::new().await;
    let app = &m.app;
    // Shops: anyone signed in reads them; admins create; owners edit their own.
    let list: List<Shop> = app
        .call(Method::GET, "/shops", &m.customer, None)
        .await
        .unwrap();
    assert_eq!(list.total, 2, "{list:?}");
    let (status, _) = app
        .post("/shops", &m.owner_a, json!({ "code": "C", "name": "C" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .post(
            "/shops",
            &app.admin,
            json!({ "code": "A", "name": "again" }),
        )
        .await;
    assert_eq!(error_code(status, &body, StatusCode::CONFLICT), "conflict");
    let renamed: Shop = app
        .call(
            Method::PATCH,
            &format!("/shops/{}", m.shop_a),
            &m.owner_a,
            Some(json!({ "name": "Alpha" })),
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "Alpha");
    for token in [&m.staff_a, &m.owner_b] {
        let (status, _) = app
            .patch(
                &format!("/shops/{}", m.shop_a),
                token,
                json!({ "name": "x" }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = app.get("/shops/9999", &m.customer).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Members: staff may not add anyone; an owner adds and removes; removal takes effect at once.
    let (extra, extra_token) = app.customer("extra@example.com").await;
    let (status, _) = app
        .put(
            &format!("/shops/{}/members/{extra}", m.shop_a),
            &m.staff_a,
            json!({ "role": "shop_staff" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .put(
            &format!("/shops/{}/members/{extra}", m.shop_a),
            &m.owner_a,
            json!({ "role": "boss" }),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed"
    );
    let (status, _) = app
        .put(
            &format!("/shops/{}/members/987654", m.shop_a),
            &m.owner_a,
            json!({ "role": "shop_staff" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.put(
        &format!("/shops/{}/members/{extra}", m.shop_a),
        &m.owner_a,
        json!({ "role": "shop_staff" }),
    )
    .await;
    let adjust =
        json!({ "warehouse_id": m.a[0], "product_id": m.product, "delta": 1, "reason": "receipt" });
    let (status, _) = app
        .post("/stock/adjustments", &extra_token, adjust.clone())
        .await;
    assert_eq!(status, StatusCode::OK);
    let members: List<Member> = app
        .call(
            Method::GET,
            &format!("/shops/{}/members", m.shop_a),
            &m.staff_a,
            None,
        )
        .await
        .unwrap();
    assert_eq!(members.total, 3, "{members:?}");
    let (status, _) = app
        .get(&format!("/shops/{}/members", m.shop_a), &m.owner_b)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .delete(&format!("/shops/{}/members/{extra}", m.shop_a), &m.owner_a)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.post("/stock/adjustments", &extra_token, adjust).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .delete(&format!("/shops/{}/members/{extra}", m.shop_a), &m.owner_a)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A shop owner may not create a warehouse for another shop or the platform.
    for shop in [json!(m.shop_b), Value::Null] {
        let (status, _) = app
            .post(
                "/warehouses",
                &m.owner_a,
                json!({ "code": format!("X{shop}"), "name": "x", "shop_id": shop }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    // Availability over one shop, and allocation limited to it.
    let availability: Availability = app
        .call(
            Method::GET,
            &format!("/shops/{}/products/{}/availability", m.shop_b, m.product),
            &m.customer,
            None,
        )
        .await
        .unwrap();
    assert_eq!(availability.available, 100, "{availability:?}");
    let listed: Vec<_> = availability
        .warehouses
        .iter()
        .map(|w| w.warehouse_id)
        .collect();
    assert_eq!(listed, m.b.to_vec());
    let reservation = app
        .create_reservation(
            &app.admin,
            json!({ "items": [{ "product_id": m.product, "quantity": 80 }], "shop_id": m.shop_b }),
        )
        .await
        .unwrap();
    for item in &reservation.items {
        assert!(m.b.contains(&item.warehouse_id), "{item:?}");
    }
    let refusal = app
        .create_reservation(
            &app.admin,
            json!({ "items": [{ "product_id": m.product, "quantity": 21 }], "shop_id": m.shop_b }),
        )
        .await
        .refused(StatusCode::CONFLICT);
    assert_eq!(
        (refusal.code.as_str(), &refusal.details["available"]),
        ("insufficient_stock", &json!(20)),
        "shop B has 20 left, though others have plenty"
    );
    let refusal = app
        .create_reservation(
            &app.admin,
            json!({ "items": [{ "product_id": m.product, "quantity": 1, "warehouse_id": m.a[0] }], "shop_id": m.shop_b }),
        )
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refusal.code, "validation_failed");
    let order = app
        .place_order(
            &m.customer,
            json!({ "items": [{ "product_id": m.product, "quantity": 3 }], "shop_id": m.shop_a }),
        )
        .await
        .unwrap();
    assert!(m.a.contains(&order.items[0].warehouse_id), "{order:?}");
    let (status, _) = app
        .post(
            "/orders",
            &m.customer,
            json!({ "items": [{ "product_id": m.product, "quantity": 3 }], "shop_id": 9999 }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Memberships and warehouse owners survive a restart.
    let app = m.app.restart().await;
    let (status, _) = app
        .post(
            "/stock/adjustments",
            &m.owner_b,
            json!({ "warehouse_id": m.a[0], "product_id": m.product, "delta": 1, "reason": "receipt" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(
            "/stock/adjustments",
            &m.owner_b,
            json!({ "warehouse_id": m.b[0], "product_id": m.product, "delta": 1, "reason": "receipt" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.cleanup().await;
}
