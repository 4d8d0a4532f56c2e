//! Secrets at rest: sealed in the table, opened by the worker, re-encrypted by
//! `ih-migrate reencrypt`, and a damaged value fails only its own subscription's deliveries.

use std::{process::Command, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use shared::{config::SecretString, crypto::SecretCipher};
use store as db;
use uuid::Uuid;

use crate::{
    delivery::verify_standard_signature,
    observability::workspace_bin,
    support::{
        Receiver, count, eventually, publish, spawn_worker, subscribe, subscribe_sealed,
        worker_settings,
    },
};
use testkit::db::TestDb;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi10aGUtdGVzdA==";

fn key(byte: u8) -> String {
    BASE64.encode([byte; 32])
}

fn cipher(spec: &str) -> SecretCipher {
    SecretCipher::parse(spec).unwrap()
}

fn keyed_settings(database_url: &str, keys: &str) -> shared::config::Settings {
    let mut settings = worker_settings(database_url);
    settings.encryption_keys = Some(SecretString::new(keys));
    settings
}

fn assert_sealed(stored: &str, key_id: &str, secrets: &[&str]) {
    assert!(
        stored.starts_with(&format!("enc.v1.{key_id}.")),
        "not sealed under {key_id}: {stored}"
    );
    for secret in secrets {
        let base64_part = secret.trim_start_matches("whsec_");
        assert!(!stored.contains(base64_part), "plain text in {stored}");
    }
}

async fn delivered_count(db: &TestDb) -> i64 {
    count(
        db,
        "select count(*) from all_deliveries where status = 'delivered'",
    )
    .await
}

#[tokio::test]
async fn secrets_are_stored_sealed_and_deliveries_still_verify() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let keys = format!("a:{}", key(1));
    let id = subscribe_sealed(&db, &cipher(&keys), &receiver.url("/hook"), SECRET, &["a"]).await;
    let (stored, previous) = db.stored_secrets(id).await;
    assert_sealed(&stored, "a", &[SECRET]);
    assert_eq!(previous, None);

    // a rotation seals the new secret and keeps the old sealed value as the previous one
    db::rotate_subscription_secret(&db.pool, &cipher(&keys), id, OTHER_SECRET, 3600.0)
        .await
        .unwrap()
        .unwrap();
    let (stored, previous) = db.stored_secrets(id).await;
    assert_sealed(&stored, "a", &[SECRET, OTHER_SECRET]);
    assert_sealed(previous.as_deref().unwrap(), "a", &[SECRET, OTHER_SECRET]);

    publish(&db, "a", &["{}".to_owned()]).await;
    let worker = spawn_worker(&keyed_settings(&db.url, &keys), None);
    assert!(
        eventually(Duration::from_secs(20), || async {
            delivered_count(&db).await == 1
        })
        .await
    );
    worker.stop().await;
    let request = receiver.received().pop().unwrap();
    for secret in [SECRET, OTHER_SECRET] {
        assert!(verify_standard_signature(
            secret,
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            &request.body,
            request.header("webhook-signature"),
        ));
    }
}

fn reencrypt(database_url: &str, keys: &str) -> std::process::Output {
    Command::new(workspace_bin("ih-migrate"))
        .env_clear()
        .env("IH_DATABASE_URL", database_url)
        .env("IH_ENCRYPTION_KEYS", keys)
        .env("IH_LOG_LEVEL", "info")
        .arg("reencrypt")
        .output()
        .unwrap()
}

#[tokio::test]
async fn keys_rotate_with_reencrypt_and_the_old_key_can_go() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let key_a = format!("a:{}", key(1));
    let both = format!("b:{},a:{}", key(2), key(1));
    let only_b = format!("b:{}", key(2));
    // one stored before keys were configured, one under key a, one rotated under key a
    let plain = subscribe(&db, &receiver.url("/plain"), SECRET, &["a"]).await;
    let sealed = subscribe_sealed(
        &db,
        &cipher(&key_a),
        &receiver.url("/sealed"),
        SECRET,
        &["a"],
    )
    .await;
    let rotated = subscribe_sealed(
        &db,
        &cipher(&key_a),
        &receiver.url("/rotated"),
        SECRET,
        &["a"],
    )
    .await;
    db::rotate_subscription_secret(&db.pool, &cipher(&key_a), rotated, OTHER_SECRET, 3600.0)
        .await
        .unwrap()
        .unwrap();

    let output = reencrypt(&db.url, &both);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("reencrypted=3"), "{log}");
    for id in [plain, sealed, rotated] {
        let (stored, previous) = db.stored_secrets(id).await;
        assert_sealed(&stored, "b", &[SECRET, OTHER_SECRET]);
        if let Some(previous) = previous {
            assert_sealed(&previous, "b", &[SECRET, OTHER_SECRET]);
        }
    }
    // a second run finds nothing to do
    let again = reencrypt(&db.url, &both);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("reencrypted=0"));
    // without a key there is nothing to encrypt with
    let refused = reencrypt(&db.url, "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("IH_ENCRYPTION_KEYS"));

    // a worker missing a key still in use refuses to start, naming it
    let refusal = worker_refusal(&db.url, &key_a).await;
    assert!(refusal.contains("sealed with key `b`"), "{refusal}");
    assert!(!refusal.contains(&key(2)), "{refusal}");

    // key a removed: every subscription still signs with its own secrets
    publish(&db, "a", &["{}".to_owned()]).await;
    let worker = spawn_worker(&keyed_settings(&db.url, &only_b), None);
    assert!(
        eventually(Duration::from_secs(20), || async {
            delivered_count(&db).await == 3
        })
        .await
    );
    worker.stop().await;
    for request in receiver.received() {
        let secret = if request.path == "/rotated" {
            OTHER_SECRET
        } else {
            SECRET
        };
        assert!(
            verify_standard_signature(
                secret,
                request.header("webhook-id"),
                request.header("webhook-timestamp"),
                &request.body,
                request.header("webhook-signature"),
            ),
            "{}",
            request.path
        );
    }
}

/// Starts `ih-worker` with `keys` and returns what it printed, asserting it exits non-zero.
async fn worker_refusal(database_url: &str, keys: &str) -> String {
    let mut child = Command::new(workspace_bin("ih-worker"))
        .env_clear()
        .env("IH_DATABASE_URL", database_url)
        .env("IH_ENCRYPTION_KEYS", keys)
        .env("IH_WORKER_METRICS_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(20), || {
        let status = child.try_wait().unwrap();
        async move { status.is_some() }
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        exited && !output.status.success(),
        "the worker kept running"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_damaged_or_foreign_secret_fails_only_its_own_deliveries() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let keys = format!("a:{}", key(1));
    let healthy = subscribe_sealed(
        &db,
        &cipher(&keys),
        &receiver.url("/healthy"),
        SECRET,
        &["a"],
    )
    .await;
    let truncated = subscribe_sealed(
        &db,
        &cipher(&keys),
        &receiver.url("/truncated"),
        SECRET,
        &["a"],
    )
    .await;
    let flipped = subscribe_sealed(
        &db,
        &cipher(&keys),
        &receiver.url("/flipped"),
        SECRET,
        &["a"],
    )
    .await;
    let unknown = subscribe_sealed(
        &db,
        &cipher(&format!("z:{}", key(9))),
        &receiver.url("/unknown"),
        SECRET,
        &["a"],
    )
    .await;
    let copied = subscribe_sealed(
        &db,
        &cipher(&keys),
        &receiver.url("/copied"),
        SECRET,
        &["a"],
    )
    .await;
    let (healthy_value, _) = db.stored_secrets(healthy).await;
    let (flipped_value, _) = db.stored_secrets(flipped).await;
    let mut bytes = flipped_value.into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    for (id, value) in [
        (truncated, "enc.v1.a.AAAA".to_owned()),
        (flipped, String::from_utf8(bytes).unwrap()),
        // another subscription's ciphertext: the subscription id is bound in as associated data
        (copied, healthy_value),
    ] {
        sqlx::query("update subscriptions set secret = $2 where id = $1")
            .bind(id)
            .bind(value)
            .execute(db.pg())
            .await
            .unwrap();
    }

    publish(&db, "a", &["{}".to_owned()]).await;
    let worker = spawn_worker(&keyed_settings(&db.url, &keys), None);
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&db, "select count(*) from delivery_attempts").await >= 5
        })
        .await
    );
    worker.stop().await;
    assert_eq!(
        receiver.count(),
        1,
        "only the healthy subscription is called"
    );
    assert_eq!(receiver.received()[0].path, "/healthy");
    let errors: Vec<(Uuid, String)> = sqlx::query_as(
        "select d.subscription_id, a.error from delivery_attempts a \
         join deliveries d on d.id = a.delivery_id where a.error is not null",
    )
    .fetch_all(db.pg())
    .await
    .unwrap();
    let mut failed: Vec<Uuid> = errors.iter().map(|(id, _)| *id).collect();
    failed.sort();
    failed.dedup();
    let mut expected = vec![truncated, flipped, unknown, copied];
    expected.sort();
    assert_eq!(failed, expected);
    for (_, error) in &errors {
        assert!(error.starts_with("secret_unavailable"), "{error}");
        assert!(
            !error.contains(SECRET.trim_start_matches("whsec_")),
            "{error}"
        );
    }
}
