//! The demo database a new user meets: a small shop with customers,
//! products and orders, created on first run so `db.query` has something
//! real to read.

use std::path::Path;
use std::str::FromStr;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

const DEMO_SQL: &str = include_str!("../migrations/demo.sql");

/// Creates the demo database at `path` unless a file is already there.
/// Returns whether it was created.
pub async fn ensure_demo_database(path: &Path) -> Result<bool, sqlx::Error> {
    if path.exists() {
        return Ok(false);
    }
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(DEMO_SQL).execute(&mut *tx).await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(true)
}
