use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, uuid};

#[tokio::test]
async fn a_created_subscription_shows_its_generated_secret_once() {
    let app = TestApp::spawn().await;
    let created = app
        .create_subscription(
            "https://example.com/hooks?team=a",
            &["order.created", "order.created"],
        )
        .await;
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["events"], json!(["order.created"]));
    assert_eq!(created["enabled"], true);
    let id = uuid(&created["id"]);
    assert_eq!(id.get_version_num(), 7);
    let (stored, previous) = app.db.stored_secrets(id).await;
    assert_eq!(stored, secret);
    assert_eq!(previous, None);

    let (status, fetched) = app
        .admin(Method::GET, &format!("/api/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(fetched.get("secret").is_none(), "{fetched}");
    assert!(!fetched.to_string().contains(secret));
    let (_, listed) = app.admin(Method::GET, "/api/v1/subscriptions", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(secret));
}

#[tokio::test]
async fn a_chosen_secret_and_custom_headers_are_kept() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({
                "url": "http://127.0.0.1:9000/hook",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "events": ["*"],
                "enabled": false,
                "description": "billing team",
                "headers": {"X-Team": "billing"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // DESIGN §5: a secret the caller chose is not echoed (it may end up in logs and proxies)
    assert!(created.get("secret").is_none(), "{created}");
    assert!(
        !created
            .to_string()
            .contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    assert_eq!(created["headers"], json!({"x-team": "billing"}));
    assert_eq!(created["enabled"], false);
    assert_eq!(created["description"], "billing team");
}

#[tokio::test]
async fn a_subscriptions_in_flight_limit_is_set_changed_and_returned_to_the_default() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"url": "https://example.com/hook", "events": ["a"], "max_in_flight": 8})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["max_in_flight"], 8);
    let path = format!("/api/v1/subscriptions/{}", uuid(&created["id"]));
    let (status, changed) = app
        .admin(Method::PATCH, &path, Some(json!({"max_in_flight": 2})))
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["max_in_flight"], 2);
    let (status, refused) = app
        .admin(Method::PATCH, &path, Some(json!({"max_in_flight": -1})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"][0]["field"], "max_in_flight");
    let (_, fetched) = app.admin(Method::GET, &path, None).await;
    assert_eq!(
        fetched["max_in_flight"], 2,
        "a refused change changes nothing"
    );
    let (status, reset) = app
        .admin(Method::PATCH, &path, Some(json!({"max_in_flight": null})))
        .await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    assert_eq!(reset["max_in_flight"], Value::Null);
}

#[tokio::test]
async fn a_subscriptions_rate_limit_is_set_changed_and_removed() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"url": "https://example.com/hook", "events": ["a"], "rate_limit_per_second": 2.5})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["rate_limit_per_second"], 2.5);
    let path = format!("/api/v1/subscriptions/{}", uuid(&created["id"]));
    for refused in [json!(0), json!(0.001), json!(100_001), json!(-5)] {
        let (status, problem) = app
            .admin(
                Method::PATCH,
                &path,
                Some(json!({"rate_limit_per_second": refused})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused}: {problem}"
        );
        assert_eq!(problem["details"][0]["field"], "rate_limit_per_second");
    }
    let (status, changed) = app
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"rate_limit_per_second": 100})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["rate_limit_per_second"], 100.0);
    let (_, removed) = app
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"rate_limit_per_second": null})),
        )
        .await;
    assert_eq!(removed["rate_limit_per_second"], Value::Null);
}

#[tokio::test]
async fn invalid_subscriptions_are_refused_naming_every_bad_field() {
    let app = TestApp::spawn().await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"url": "ftp://example.com", "events": ["a"]}),
            vec!["url"],
        ),
        (
            json!({"url": "https://user:pw@example.com/", "events": ["a"]}),
            vec!["url"],
        ),
        (
            json!({"url": "http://10.0.0.1/hook", "events": ["a"]}),
            vec!["url"],
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "events": ["a"]}),
            vec!["url"],
        ),
        (
            json!({"url": "http://[::1]:8080/", "events": ["a"]}),
            vec!["url"],
        ),
        (
            json!({"url": "https://example.com", "events": []}),
            vec!["events"],
        ),
        (
            json!({"url": "https://example.com", "events": ["ok", "not ok"]}),
            vec!["events[1]"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "secret": "short"}),
            vec!["secret"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "secret": "whsec_***not-base64***"}),
            vec!["secret"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "headers": {"Content-Type": "x"}}),
            vec!["headers.Content-Type"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "headers": {"X-Evil": "a\r\nb: c"}}),
            vec!["headers.X-Evil"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "description": "x".repeat(1001)}),
            vec!["description"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "max_in_flight": 0}),
            vec!["max_in_flight"],
        ),
        (
            json!({"url": "https://example.com", "events": ["a"], "max_in_flight": 10_001}),
            vec!["max_in_flight"],
        ),
        (
            json!({"url": "nope", "events": [], "secret": "short"}),
            vec!["url", "secret", "events"],
        ),
    ];
    for (body, fields) in cases {
        let (status, problem) = app
            .admin(Method::POST, "/api/v1/subscriptions", Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
        assert_eq!(problem["code"], "validation_failed");
        let named: Vec<&str> = problem["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields, "{body}");
    }
    let (status, problem) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"events": ["a"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(
        app.db.fetch_i64("select count(*) from subscriptions").await,
        0
    );
}

#[tokio::test]
async fn loopback_destinations_need_the_operator_allowance() {
    let app = TestApp::spawn_with(|s| s.allowed_destination_cidrs = None).await;
    let (status, problem) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9000/", "events": ["a"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("forbidden destination")
    );
    let (status, _) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"url": "http://localhost:9000/", "events": ["a"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_subscription_can_be_patched_disabled_enabled_and_deleted() {
    let app = TestApp::spawn().await;
    let created = app
        .create_subscription("http://127.0.0.1:9/a", &["a"])
        .await;
    let path = format!("/api/v1/subscriptions/{}", created["id"].as_str().unwrap());

    let (status, patched) = app
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"url": "http://127.0.0.1:9/b", "events": ["b", "c"], "description": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["url"], "http://127.0.0.1:9/b");
    assert_eq!(patched["events"], json!(["b", "c"]));
    assert_eq!(patched["description"], "x");

    let (_, disabled) = app
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"enabled": false, "description": null})),
        )
        .await;
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["disabled_reason"], "disabled_by_operator");
    assert!(disabled["description"].is_null());
    assert_eq!(disabled["url"], "http://127.0.0.1:9/b");
    let (_, enabled) = app
        .admin(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabled_reason"].is_null());

    let (status, problem) = app
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"url": "http://10.1.1.1/"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["details"][0]["field"], "url");
    let (_, unchanged) = app.admin(Method::GET, &path, None).await;
    assert_eq!(unchanged["url"], "http://127.0.0.1:9/b");

    let (status, _) = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for method in [Method::GET, Method::DELETE] {
        let (status, problem) = app.admin(method, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(problem["code"], "not_found");
    }
    let (status, _) = app
        .admin(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = app.admin(Method::GET, "/api/v1/subscriptions", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn rotating_a_secret_keeps_the_old_one_for_a_grace_period() {
    let app = TestApp::spawn().await;
    let created = app
        .create_subscription("http://127.0.0.1:9/a", &["a"])
        .await;
    let id = uuid(&created["id"]);
    let (status, rotated) = app
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_"));
    assert_ne!(new_secret, created["secret"].as_str().unwrap());
    assert!(rotated["previous_secret_expires_at"].is_string());
    let (stored, previous) = app.db.stored_secrets(id).await;
    assert_eq!(stored, new_secret);
    assert_eq!(previous.as_deref(), created["secret"].as_str());
    let (status, _) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions/01a22415-1292-7a36-aa6d-264ec608abbf/rotate-secret",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn subscriptions_are_paged_by_cursor() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.create_subscription(&format!("http://127.0.0.1:9/{i}"), &["a"])
            .await;
    }
    let (_, first) = app
        .admin(Method::GET, "/api/v1/subscriptions?limit=2", None)
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .admin(
            Method::GET,
            &format!("/api/v1/subscriptions?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["url"], "http://127.0.0.1:9/2");
    assert!(second["next_cursor"].is_null());
}

#[tokio::test]
async fn with_encryption_keys_the_table_holds_only_sealed_secrets() {
    let key = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let app = TestApp::spawn_with(|s| {
        s.encryption_keys = Some(shared::config::SecretString::new(key));
    })
    .await;
    let created = app
        .create_subscription("https://example.com/hooks", &["a"])
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = uuid(&created["id"]);
    let (stored, previous) = app.db.stored_secrets(id).await;
    assert!(stored.starts_with("enc.v1.k1."), "{stored}");
    assert!(!stored.contains(secret.trim_start_matches("whsec_")));
    assert_eq!(previous, None);

    let (status, rotated) = app
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    let (stored_after, previous) = app.db.stored_secrets(id).await;
    assert!(stored_after.starts_with("enc.v1.k1."));
    assert!(!stored_after.contains(new_secret.trim_start_matches("whsec_")));
    // the old sealed value moved over as it was
    assert_eq!(previous.as_deref(), Some(stored.as_str()));

    // a chosen secret may not look like a sealed value
    let (status, refused) = app
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({
                "url": "https://example.com/hooks",
                "secret": "enc.v1.k1.looks-sealed-but-is-not",
                "events": ["a"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("enc."), "{refused}");
}

#[tokio::test]
async fn a_subscriptions_endpoint_state_is_shown_and_enabling_it_closes_the_circuit() {
    let app = TestApp::spawn().await;
    let created = app
        .create_subscription("https://example.com/hook", &["a"])
        .await;
    assert_eq!(created["state"], "healthy");
    assert_eq!(created["failing_since"], Value::Null);
    assert_eq!(created["circuit_opened_at"], Value::Null);
    let id = uuid(&created["id"]);
    let path = format!("/api/v1/subscriptions/{id}");

    // as the worker leaves it after a run of failures
    app.db
        .execute_bound(
            "update subscriptions set failing_since = now() - interval '1 minute', \
             circuit_opened_at = now(), consecutive_failures = 20 where id = $1",
            id,
        )
        .await;
    let (_, open) = app.admin(Method::GET, &path, None).await;
    assert_eq!(open["state"], "circuit_open", "{open}");
    assert!(open["failing_since"].is_string() && open["circuit_opened_at"].is_string());
    let (_, listed) = app.admin(Method::GET, "/api/v1/subscriptions", None).await;
    assert_eq!(listed["data"][0]["state"], "circuit_open");

    // an operator who knows the endpoint is back enables it: the circuit closes
    let (status, enabled) = app
        .admin(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["state"], "healthy");
    assert_eq!(enabled["circuit_opened_at"], Value::Null);
    assert_eq!(enabled["consecutive_failures"], 0);

    let (_, disabled) = app
        .admin(Method::PATCH, &path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(disabled["state"], "disabled");
    app.db
        .execute_bound(
            "update subscriptions set enabled = true, disabled_reason = null, \
             failing_since = now() where id = $1",
            id,
        )
        .await;
    let (_, failing) = app.admin(Method::GET, &path, None).await;
    assert_eq!(failing["state"], "failing");
}
