//! Subscriptions, the outbox (events and deliveries), attempts and dead letters.

use sea_orm_migration::prelude::*;

use crate::execute_sql;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[expect(
    elided_lifetimes_in_paths,
    reason = "the trait's async_trait signature elides the manager's lifetime"
)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        execute_sql(manager, include_str!("sql/m20261128_000001_initial.up.sql")).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        execute_sql(
            manager,
            include_str!("sql/m20261128_000001_initial.down.sql"),
        )
        .await
    }
}
