//! The plans of the operator listings, as the database would run them: what a test (or an
//! operator wondering why a listing is slow) reads to see that each is served by an index.

use sea_orm::{ConnectionTrait, QueryTrait, Statement};
use uuid::Uuid;

use crate::{
    Db, DbError, DeadLetterFilter, DeliveryFilter, EventFilter, Page,
    admin::{attempts_listing, dead_letters_listing, deliveries_listing},
    events::events_listing,
};

/// An operator listing with its filters.
#[derive(Clone, Debug)]
pub enum Listing {
    /// `GET /events`.
    Events(EventFilter, Page),
    /// `GET /admin/deliveries`.
    Deliveries(DeliveryFilter, Page),
    /// `GET /admin/dead-letters`.
    DeadLetters(DeadLetterFilter, Page),
    /// `GET /events/{id}/attempts`.
    Attempts(Uuid),
}

/// The plan of `listing`, one line a row: Postgres' `EXPLAIN`, SQLite's `EXPLAIN QUERY PLAN`.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn explain(db: &Db, listing: &Listing) -> Result<Vec<String>, DbError> {
    let connection = db.orm_reader();
    let backend = connection.get_database_backend();
    let statement = match listing {
        Listing::Events(filter, page) => events_listing(filter, *page).build(backend),
        Listing::Deliveries(filter, page) => deliveries_listing(filter, *page).build(backend),
        Listing::DeadLetters(filter, page) => dead_letters_listing(filter, *page).build(backend),
        Listing::Attempts(event_id) => attempts_listing(*event_id).build(backend),
    };
    let (prefix, column) = match db {
        Db::Postgres(_) => ("explain", 0),
        // id, parent, notused, detail
        Db::Sqlite(_) => ("explain query plan", 3),
    };
    let explained = Statement::from_sql_and_values(
        backend,
        format!("{prefix} {}", statement.sql),
        statement.values.map(|values| values.0).unwrap_or_default(),
    );
    connection
        .query_all_raw(explained)
        .await?
        .iter()
        .map(|row| {
            row.try_get_by_index::<String>(column)
                .map_err(DbError::from)
        })
        .collect()
}
