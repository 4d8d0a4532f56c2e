//! Routing by event type: `subscription_routes`, filled from the subscriptions there are.

use sea_orm_migration::prelude::*;

use crate::{BackendSql, execute_sql};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[expect(
    elided_lifetimes_in_paths,
    reason = "the trait's async_trait signature elides the manager's lifetime"
)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = BackendSql {
            postgres: include_str!("sql/m20261129_000002_subscription_routes.up.sql"),
            sqlite: include_str!("sql/m20261129_000002_subscription_routes.sqlite.up.sql"),
        };
        execute_sql(manager, sql).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = BackendSql {
            postgres: include_str!("sql/m20261129_000002_subscription_routes.down.sql"),
            sqlite: include_str!("sql/m20261129_000002_subscription_routes.sqlite.down.sql"),
        };
        execute_sql(manager, sql).await
    }
}
