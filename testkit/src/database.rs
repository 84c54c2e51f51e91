//! A PostgreSQL database of its own for each test and bench run: named fresh, created and
//! migrated by the server (or [`fresh_pool`]) at start, dropped at the end. Each function
//! works on `TEST_DATABASE_BASE` (`postgres://postgres@127.0.0.1:5432` unless set); its
//! `_on` twin on a server a bench was given.

use sqlx::{Connection, PgPool};

/// The PostgreSQL server of tests and benches: `TEST_DATABASE_BASE`, else the machine's.
pub fn database_base() -> String {
    std::env::var("TEST_DATABASE_BASE")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The server's URL of the database `name`.
pub fn database_url(name: &str) -> String {
    format!("{}/{name}", database_base())
}

/// A new, unused database name; the server creates and migrates it at start.
pub fn fresh_database() -> String {
    format!("sltest_{}", uuid::Uuid::now_v7().simple())
}

/// A new database, created and migrated as the server does; answers its name and a pool.
pub async fn fresh_pool() -> (String, PgPool) {
    fresh_pool_on(&database_base()).await
}

/// [`fresh_pool`] on the PostgreSQL server at `base`.
pub async fn fresh_pool_on(base: &str) -> (String, PgPool) {
    let name = fresh_database();
    let pool = stockline::store::connect_and_migrate(&format!("{base}/{name}"))
        .await
        .expect("the database is created and migrated");
    (name, pool)
}

/// A new, empty database (no schema: a baseline design's own) on `base`; answers its name
/// and URL.
pub async fn empty_database_on(base: &str) -> (String, String) {
    let name = fresh_database();
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL answers");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("the database is created");
    let url = format!("{base}/{name}");
    (name, url)
}

/// Drops a test database (after its server stopped), its sessions ended.
pub async fn drop_database(name: &str) {
    drop_database_on(&database_base(), name).await
}

/// [`drop_database`] on the PostgreSQL server at `base`.
pub async fn drop_database_on(base: &str, name: &str) {
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL answers");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
