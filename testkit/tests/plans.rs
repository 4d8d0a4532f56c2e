//! Every operator listing is served by an index, whatever its filter: on a database holding a
//! million events over 60 days (each with a finished delivery and an attempt, 1 % dead), the
//! plan of each listing reads no history table whole.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use chrono::{Duration as TimeDelta, Utc};
use shared::state::DeliveryStatus;
use store::{
    self as db, DeadLetterFilter, DeliveryFilter, EventFilter, Page,
    plans::{Listing, explain, explain_console},
};
use testkit::db::{Backend, TestDb};
use uuid::Uuid;

const EVENTS: i64 = 1_000_000;

/// An event type no seeded event has.
const NOBODY_SENDS: &str = "a type nobody sends";

/// The history tables: none may be read whole by a listing.
const HISTORY: [&str; 4] = [
    "outbox_events",
    "delivery_history",
    "delivery_attempts",
    "dead_letters",
];

/// The line of `plan` that reads a history table (or one of its partitions) whole, if any.
/// The planner rightly scans a partition of a few pages (a day made ahead and empty, or the
/// day's handful of dead letters: a day of the seed holds ~170) rather than open an index, so
/// a sequential scan counts when its estimated cost passes 50, a few dozen pages (a day's
/// events here cost ~300).
///
/// SQLite has no such estimate in its plan: there a scan of a history table counts unless it
/// walks an index (an unfiltered listing reads the newest rows of the primary key and stops).
fn reads_whole<'p>(backend: Backend, plan: &'p str, table: &str) -> Option<&'p str> {
    plan.lines().find(|line| match backend {
        Backend::Postgres => {
            line.contains(&format!("Seq Scan on {table}"))
                && scan_cost(line).is_none_or(|cost| cost > 50.0)
        }
        Backend::Sqlite => {
            let line = line.trim();
            (line == format!("SCAN {table}") || line.starts_with(&format!("SCAN {table} ")))
                && !line.contains(" USING ")
        }
    })
}

/// The total cost of a plan line: `(cost=0.00..1.51 rows=…`.
fn scan_cost(line: &str) -> Option<f64> {
    let (_, after) = line.split_once("(cost=")?;
    let (range, _) = after.split_once(' ')?;
    range.split_once("..")?.1.parse().ok()
}

fn page() -> Page {
    Page {
        cursor: None,
        limit: 50,
    }
}

/// The history on Postgres is the bench's (`bench/src/history.sql`): events every 5.184 s
/// over the last 60 days, one finished delivery and one attempt each, a dead letter for every
/// hundredth (half of them replayed), event types `past.0` to `past.19`.
const SEED_POSTGRES: &str = include_str!("../../bench/src/history.sql");

/// The same history on SQLite (an id is 6 bytes of milliseconds, then 10 made of the row's
/// number).
const SEED_SQLITE: &str = "
insert into subscriptions (id, url, secret, event_types)
select randomblob(16), 'http://127.0.0.1:9/hook', 'whsec_x', '[\"*\"]'
from (with recursive n(i) as (select 1 union all select i + 1 from n where i < 100) select i from n);
create temporary table subs (k integer primary key, id blob);
insert into subs select row_number() over (order by id) - 1, id from subscriptions;

create temporary table seed as
with recursive n(i) as (select 1 union all select i + 1 from n where i < $EVENTS),
times as (
  select i, cast(strftime('%s', 'now', '-60 days') as integer) * 1000
            + i * (5184000000 / $EVENTS) as ms
  from n
)
select i as n,
       unhex(printf('%012x', ms) || '7' || printf('%019x', i)) as event_id,
       unhex(printf('%012x', ms + 1) || '7' || printf('%019x', i)) as delivery_id,
       unhex(printf('%012x', ms + 2) || '7' || printf('%019x', i)) as attempt_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', ms / 1000.0, 'unixepoch') as at,
       (select id from subs where k = i % 100) as subscription_id
from times;

insert into outbox_events (id, event_type, payload, request_hash, deliveries_created, created_at)
select event_id, 'past.' || (n % 20), '{}', 'h', 1, at from seed;
insert into delivery_history
  (id, event_id, target, subscription_id, status, attempts, last_error, created_at, updated_at)
select delivery_id, event_id, 'webhook', subscription_id,
       case when n % 100 = 0 then 'dead' else 'delivered' end, 1, null, at, at
from seed;
insert into delivery_attempts
  (id, delivery_id, event_id, attempt_number, started_at, duration_ms, response_status, outcome)
select attempt_id, delivery_id, event_id, 1, at, 3,
       case when n % 100 = 0 then 500 else 200 end,
       case when n % 100 = 0 then 'dead_lettered' else 'delivered' end
from seed;
insert into dead_letters (id, delivery_id, event_id, subscription_id, target, reason, created_at,
                          replayed_at)
select attempt_id, delivery_id, event_id, subscription_id, 'webhook', 'max_attempts_exceeded', at,
       case when n % 200 = 0 then at end
from seed where n % 100 = 0;
drop table seed;
analyze;
";

#[tokio::test]
async fn every_listing_is_served_by_an_index_on_a_million_events_on_postgres() {
    every_listing_is_served_by_an_index(Backend::Postgres).await;
}

#[tokio::test]
async fn every_listing_is_served_by_an_index_on_a_million_events_on_sqlite() {
    every_listing_is_served_by_an_index(Backend::Sqlite).await;
}

async fn every_listing_is_served_by_an_index(backend: Backend) {
    let test = TestDb::on(backend).await;
    let db = &test.pool;
    // the Postgres seed makes the partitions of its 60 days itself
    let seed = match backend {
        Backend::Postgres => SEED_POSTGRES,
        Backend::Sqlite => SEED_SQLITE,
    };
    test.execute_script(seed.replace("$EVENTS", &EVENTS.to_string()))
        .await;
    assert_eq!(
        test.fetch_i64("select count(*) from outbox_events").await,
        EVENTS
    );
    let first = db::list_subscriptions(
        db,
        None,
        Page {
            cursor: None,
            limit: 1,
        },
    )
    .await
    .unwrap();
    let subscription = first[0].id;
    let newest = db::list_events(
        db,
        &EventFilter::default(),
        Page {
            cursor: None,
            limit: 1,
        },
    )
    .await
    .unwrap();
    let event = newest[0].id;
    let middle = Utc::now() - TimeDelta::days(30);
    let second = |at| EventFilter {
        since: Some(at),
        until: Some(at + TimeDelta::seconds(1)),
        ..EventFilter::default()
    };
    let of_type = |event_type: &str| EventFilter {
        event_type: Some(event_type.to_owned()),
        ..EventFilter::default()
    };
    let deliveries = |status, subscription_id, event_id| DeliveryFilter {
        status,
        subscription_id,
        event_id,
    };
    let dead_letters = |subscription_id, replayed| DeadLetterFilter {
        subscription_id,
        replayed,
    };
    let listings = [
        Listing::Events(EventFilter::default(), page()),
        Listing::Events(of_type(NOBODY_SENDS), page()),
        Listing::Events(of_type("past.3"), page()),
        Listing::Events(second(middle), page()),
        Listing::Events(
            EventFilter {
                event_type: Some("past.3".to_owned()),
                ..second(middle)
            },
            page(),
        ),
        Listing::Events(
            EventFilter {
                since: Some(middle),
                ..EventFilter::default()
            },
            Page {
                cursor: Some(event),
                limit: 50,
            },
        ),
        Listing::Deliveries(DeliveryFilter::default(), page()),
        Listing::Deliveries(
            deliveries(Some(DeliveryStatus::Delivered), None, None),
            page(),
        ),
        Listing::Deliveries(deliveries(Some(DeliveryStatus::Dead), None, None), page()),
        Listing::Deliveries(
            deliveries(Some(DeliveryStatus::Pending), None, None),
            page(),
        ),
        Listing::Deliveries(deliveries(None, Some(subscription), None), page()),
        Listing::Deliveries(
            deliveries(Some(DeliveryStatus::Dead), Some(subscription), None),
            page(),
        ),
        Listing::Deliveries(deliveries(None, Some(Uuid::now_v7()), None), page()),
        Listing::Deliveries(deliveries(None, None, Some(event)), page()),
        Listing::DeadLetters(dead_letters(None, None), page()),
        Listing::DeadLetters(dead_letters(Some(subscription), None), page()),
        Listing::DeadLetters(dead_letters(None, Some(true)), page()),
        Listing::DeadLetters(dead_letters(None, Some(false)), page()),
        Listing::DeadLetters(dead_letters(Some(subscription), Some(false)), page()),
        Listing::DeadLetters(dead_letters(Some(subscription), Some(true)), page()),
        Listing::Attempts(event),
    ];
    for listing in &listings {
        let plan = explain(db, listing).await.unwrap().join("\n");
        // a type nobody sends is sought in the type's index, not looked for along the ids of
        // every day (which a plan made for any type does)
        if let Listing::Events(filter, _) = listing
            && filter.event_type.as_deref() == Some(NOBODY_SENDS)
        {
            assert!(
                !plan.contains("Filter: (event_type"),
                "{listing:?} tests the type of every row:\n{plan}"
            );
        }
        for table in HISTORY {
            assert_eq!(
                reads_whole(backend, &plan, table),
                None,
                "{listing:?} reads {table} whole:\n{plan}"
            );
        }
    }

    if backend == Backend::Sqlite {
        return;
    }
    // the console's numbers, planned as they run
    let plan = explain_console(db).await.unwrap().join("\n");
    assert!(plan.contains("dead_letters"), "{plan}");
    // the recent outcomes come from the workers' minutes, not the attempt log
    assert!(!plan.contains("delivery_attempts"), "{plan}");
    for table in HISTORY {
        assert_eq!(
            reads_whole(backend, &plan, table),
            None,
            "the console's numbers read {table} whole:\n{plan}"
        );
    }
}
