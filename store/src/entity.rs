//! sea-orm entities of the tables the operator queries read and write, one description for
//! both backends.
//!
//! The columns are declared with the Rust types both backends decode into: uuids (Postgres
//! `uuid`, SQLite 16-byte blobs), times (`timestamptz`, or the fixed-width UTC text of
//! [`crate::stored_time`]), JSON (`jsonb`, or text). States are read as text and parsed
//! through their one mapping in `shared::state` when a row becomes a public row type. Times
//! *written* or *compared* go through [`crate::orm`], which renders them in each backend's
//! stored form.

/// `subscriptions`.
pub mod subscriptions {
    use sea_orm::entity::prelude::*;

    /// A subscription row, secrets included: only the secret maintenance reads those.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "subscriptions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub url: String,
        pub secret: String,
        pub previous_secret: Option<String>,
        pub previous_secret_expires_at: Option<DateTimeUtc>,
        pub event_types: Json,
        pub enabled: bool,
        pub description: Option<String>,
        pub headers: Json,
        pub disabled_reason: Option<String>,
        pub last_success_at: Option<DateTimeUtc>,
        pub last_failure_at: Option<DateTimeUtc>,
        pub consecutive_failures: i32,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub deleted_at: Option<DateTimeUtc>,
        pub max_in_flight: Option<i32>,
        pub rate_limit_per_second: Option<f64>,
        pub failing_since: Option<DateTimeUtc>,
        pub failure_window_started_at: Option<DateTimeUtc>,
        pub failure_window_count: i32,
        pub circuit_opened_at: Option<DateTimeUtc>,
        pub circuit_probes: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `subscription_routes`: which subscriptions an event type reaches (`*` for all).
pub mod routes {
    use sea_orm::entity::prelude::*;

    /// One event type of one subscription.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "subscription_routes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_type: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub subscription_id: Uuid,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `lanes`: made with its subscription. The lease's columns (when the lane is due, when it was
/// last leased from) have defaults and are the queue's own (`crate::queue`); only the id and
/// the time the lane is allowed again, which enabling a subscription releases, are described
/// here.
pub mod lanes {
    use sea_orm::entity::prelude::*;

    /// A lane.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "lanes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub next_allowed_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `outbox_events`.
pub mod events {
    use sea_orm::entity::prelude::*;

    /// An event as published.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub event_type: String,
        pub payload: String,
        pub idempotency_key: Option<String>,
        pub idempotency_scope: Option<String>,
        pub request_hash: String,
        pub deliveries_created: i32,
        pub traceparent: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `all_deliveries`: the live queue and the history as one view, for reading only (the queue
/// is written by the hot-path statements).
pub mod deliveries {
    use sea_orm::entity::prelude::*;

    /// A delivery of one event to one target.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "all_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub event_id: Uuid,
        pub target: String,
        pub subscription_id: Option<Uuid>,
        pub status: String,
        pub attempts: i32,
        pub next_attempt_at: DateTimeUtc,
        pub lease_token: Option<Uuid>,
        pub leased_by: Option<String>,
        pub last_error: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `delivery_attempts`.
pub mod attempts {
    use sea_orm::entity::prelude::*;

    /// One attempt of a delivery.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub delivery_id: Uuid,
        pub event_id: Uuid,
        pub attempt_number: i32,
        pub started_at: DateTimeUtc,
        pub duration_ms: i32,
        pub response_status: Option<i32>,
        pub response_body: Option<String>,
        pub error: Option<String>,
        pub worker_id: Option<String>,
        pub external_id: Option<String>,
        pub outcome: String,
    }

    // No relation to the deliveries: they are read through a view of two tables, which
    // SQLite would read whole on the right of a join; the attempt log reads them apart.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `dead_letters`.
pub mod dead_letters {
    use sea_orm::entity::prelude::*;

    /// A delivery that gave up, until an operator replays it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dead_letters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub delivery_id: Uuid,
        pub event_id: Uuid,
        pub subscription_id: Option<Uuid>,
        pub target: String,
        pub reason: String,
        pub created_at: DateTimeUtc,
        pub replayed_at: Option<DateTimeUtc>,
        pub replay_delivery_id: Option<Uuid>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `delivery_minutes`: a worker's outcomes, lag and sampled due depth per minute (the
/// console's charts; see `crate::charts`).
pub mod delivery_minutes {
    use sea_orm::entity::prelude::*;

    /// One minute of one worker.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_minutes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub minute: DateTimeUtc,
        #[sea_orm(primary_key, auto_increment = false)]
        pub worker_id: String,
        pub delivered: i64,
        pub retried: i64,
        pub dead: i64,
        pub lag_buckets: Json,
        pub due: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `subscription_minutes`: a worker's attempts per subscription per 5 minutes (the console's
/// health view; see `crate::charts`).
pub mod subscription_minutes {
    use sea_orm::entity::prelude::*;

    /// Five minutes of one worker for one subscription.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "subscription_minutes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub minute: DateTimeUtc,
        #[sea_orm(primary_key, auto_increment = false)]
        pub worker_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub subscription_id: Uuid,
        pub delivered: i64,
        pub failed: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
