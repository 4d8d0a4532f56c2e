//! The plans of the operator listings, as the database would run them: what a test (or an
//! operator wondering why a listing is slow) reads to see that each is served by an index.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, QueryTrait, Statement, TransactionTrait, Value,
    sea_query::{PostgresQueryBuilder, QueryBuilder},
};
use uuid::Uuid;

use crate::{
    Db, DbError, DeadLetterFilter, DeliveryFilter, EventFilter, Page,
    admin::{
        ATTEMPTS_PLANNING, DEAD_LETTERS_PLANNING, DELIVERIES_PLANNING, attempts_listing,
        dead_letters_listing, deliveries_listing,
    },
    events::{events_listing, events_planning},
    orm::Planning,
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
    let (statement, planning) = match listing {
        Listing::Events(filter, page) => (
            events_listing(filter, *page).build(backend),
            events_planning(filter),
        ),
        Listing::Deliveries(filter, page) => (
            deliveries_listing(filter, *page).build(backend),
            DELIVERIES_PLANNING,
        ),
        Listing::DeadLetters(filter, page) => (
            dead_letters_listing(filter, *page).build(backend),
            DEAD_LETTERS_PLANNING,
        ),
        Listing::Attempts(event_id) => (
            attempts_listing(*event_id).build(backend),
            ATTEMPTS_PLANNING,
        ),
    };
    let values = statement.values.map(|values| values.0).unwrap_or_default();
    if let Db::Sqlite(_) = db {
        // id, parent, notused, detail
        return connection
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!("explain query plan {}", statement.sql),
                values,
            ))
            .await?
            .iter()
            .map(|row| row.try_get_by_index::<String>(3).map_err(DbError::from))
            .collect();
    }
    explain_prepared(&connection, &statement.sql, &values, planning).await
}

/// The plans of the console's numbers on Postgres, as `console_stats` runs them (none on
/// SQLite, whose statement reads the same indexes as the listings).
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn explain_console(db: &Db) -> Result<Vec<String>, DbError> {
    if let Db::Sqlite(_) = db {
        return Ok(Vec::new());
    }
    let connection = db.orm_reader();
    explain_prepared(
        &connection,
        include_str!("sql/console_stats.sql"),
        &[],
        Planning::Once,
    )
    .await
}

/// The plan Postgres gives `sql` prepared and executed with `values` under `planning` (an
/// `explain` with bound values would always show the plan made for those values).
async fn explain_prepared(
    connection: &DatabaseConnection,
    sql: &str,
    values: &[Value],
    planning: Planning,
) -> Result<Vec<String>, DbError> {
    let backend = connection.get_database_backend();
    let name = format!("ih_explained_{}", Uuid::now_v7().simple());
    let arguments = values
        .iter()
        .map(|value| PostgresQueryBuilder.value_to_string(value))
        .collect::<Vec<_>>()
        .join(", ");
    let transaction = connection.begin().await?;
    transaction.execute_unprepared(planning.setting()).await?;
    transaction
        .execute_unprepared(&format!("prepare {name} as {sql}"))
        .await?;
    let execute = if values.is_empty() {
        format!("explain execute {name}")
    } else {
        format!("explain execute {name}({arguments})")
    };
    let plan = transaction
        .query_all_raw(Statement::from_string(backend, execute))
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).map_err(DbError::from))
        .collect::<Result<Vec<_>, _>>()?;
    // a prepared statement outlives its transaction
    transaction
        .execute_unprepared(&format!("deallocate {name}"))
        .await?;
    transaction.commit().await?;
    Ok(plan)
}
