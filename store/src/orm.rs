//! The sea-orm side of the store: connections over the same pools as the hand-written SQL,
//! and the few expressions whose text differs by backend.
//!
//! Operator queries (subscriptions, listings, details, dead letters' reads) are built once
//! with sea-orm's query builder and rendered for whichever backend runs them. Two things the
//! builder cannot make uniform are kept here: *times*, which Postgres stores as `timestamptz`
//! and SQLite as fixed-width UTC text (a bound `DateTime` would be encoded by sqlx in another
//! text form that does not compare as the stored one), and the database's *current time*.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Select, Selector, SelectorTrait, SqlxPostgresConnector,
    SqlxSqliteConnector, TransactionTrait, Value, sea_query::Expr,
};

use crate::{Db, DbError, Page, stored_time};

/// One page of a listing, newest first: uuid v7 ids sort by time, and the cursor is the last
/// id of the previous page.
pub(crate) fn newest_first<E: EntityTrait>(
    query: Select<E>,
    id: E::Column,
    page: Page,
) -> Select<E> {
    query
        .apply_if(page.cursor, |query, cursor| query.filter(id.lt(cursor)))
        .order_by_desc(id)
        .limit(page.limit_rows())
}

/// A state read as text, parsed through its one mapping (`shared::state`).
pub(crate) fn parse_state<T>(text: &str) -> Result<T, DbError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.parse().map_err(DbError::undecodable)
}

/// How Postgres plans a listing's statement.
///
/// A history table has a partition per day (tens of them, each with its indexes). Planning a
/// statement over all of them costs several milliseconds, more than running it: a page is a
/// few index descents per partition. Postgres plans a prepared statement afresh for each
/// call's values while that looks cheaper than one plan for any values, which for a
/// partitioned table it always does, so by default every call pays the planning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Planning {
    /// Once per connection, for any values (`plan_cache_mode = force_generic_plan`): for
    /// listings whose best plan has the same shape whatever the values. Without JIT: a plan
    /// for any page size is costed as if it read a tenth of the table, past the threshold at
    /// which Postgres compiles it, which takes ~100 ms for a page read in 2.
    Once,
    /// For each call's values: the best index depends on them (an event type nobody sends is
    /// found through the type's index; a common one by walking the newest ids).
    EachCall,
}

/// The statements that make the rest of a transaction plan as [`Planning::Once`] says.
macro_rules! planned_once {
    () => {
        "set local plan_cache_mode = force_generic_plan; set local jit = off"
    };
}

/// Opens a Postgres transaction whose statements are planned once per connection (as
/// [`Planning::Once`]), in the one round trip of its `begin`: for statements whose best plan
/// does not depend on the values, where planning would cost as much as running.
pub(crate) const BEGIN_PLANNED_ONCE: &str = concat!("begin; ", planned_once!());

impl Planning {
    /// The statements that make the rest of a transaction plan this way on Postgres.
    pub(crate) const fn setting(self) -> &'static str {
        match self {
            Self::Once => planned_once!(),
            Self::EachCall => "set local plan_cache_mode = auto",
        }
    }
}

impl Db {
    /// Reads every row of `query`, planned as `planning` says on Postgres (SQLite plans each
    /// statement once per connection anyway).
    pub(crate) async fn read_all<S: SelectorTrait>(
        &self,
        query: Selector<S>,
        planning: Planning,
    ) -> Result<Vec<S::Item>, DbError> {
        let connection = self.orm_reader();
        if matches!(self, Self::Sqlite(_)) || planning == Planning::EachCall {
            return Ok(query.all(&connection).await?);
        }
        let transaction = connection.begin().await?;
        transaction.execute_unprepared(planning.setting()).await?;
        let rows = query.all(&transaction).await?;
        transaction.commit().await?;
        Ok(rows)
    }

    /// A connection for reads, and for single statements on Postgres. Cheap: it shares the
    /// pool.
    pub(crate) fn orm_reader(&self) -> DatabaseConnection {
        match self {
            Self::Postgres(pool) => SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
            Self::Sqlite(sqlite) => SqlxSqliteConnector::from_sqlx_sqlite_pool(sqlite.reader()),
        }
    }

    /// A connection for writes: on SQLite the file's one writer, so writes of this process
    /// queue in its pool instead of meeting in SQLite's busy handler.
    pub(crate) fn orm_writer(&self) -> DatabaseConnection {
        match self {
            Self::Postgres(pool) => SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
            Self::Sqlite(sqlite) => SqlxSqliteConnector::from_sqlx_sqlite_pool(sqlite.writer()),
        }
    }

    fn backend(&self) -> DatabaseBackend {
        match self {
            Self::Postgres(_) => DatabaseBackend::Postgres,
            Self::Sqlite(_) => DatabaseBackend::Sqlite,
        }
    }

    /// `at` in the stored form of this backend, for comparisons and writes.
    pub(crate) fn time(&self, at: DateTime<Utc>) -> Value {
        match self.backend() {
            DatabaseBackend::Sqlite => stored_time::time(at).into(),
            _ => at.into(),
        }
    }

    /// The database's current time, in the stored form (the database's clock, as every
    /// hand-written statement uses, so the API's clock never decides a lease or a grace).
    pub(crate) fn now(&self) -> Expr {
        match self.backend() {
            DatabaseBackend::Sqlite => Expr::cust(stored_time::now!()),
            _ => Expr::cust("now()"),
        }
    }

    /// The database's current time plus `delay`, in the stored form.
    pub(crate) fn now_plus(&self, delay: Duration) -> Expr {
        match self.backend() {
            // `plus` renders digits and a dot only: nothing from outside reaches the text
            DatabaseBackend::Sqlite => Expr::cust(format!(
                "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{}')",
                stored_time::plus(delay)
            )),
            _ => Expr::cust(format!(
                "now() + interval '{} milliseconds'",
                delay.as_millis()
            )),
        }
    }
}
