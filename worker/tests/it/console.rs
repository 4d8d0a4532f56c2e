//! The operator console end to end: headless Chromium (Debian's `chromium` and
//! `chromedriver`, driven over the W3C WebDriver protocol) against a real `ih-api`, a real
//! `ih-worker` and Postgres. `IH_CONSOLE_SCREENSHOTS=<dir>` also saves a screenshot of each
//! view there (`make console-screenshots` writes the ones in `docs/`).

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use testkit::db::TestDb;

use crate::{
    observability::{ADMIN_TOKEN, Stack},
    support::{Receiver, Reply, count, delivered_within, eventually},
};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Debian's paths; `IH_CHROMIUM` and `IH_CHROMEDRIVER` point elsewhere.
fn binary(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// A chromedriver process and one headless browser session.
struct Browser {
    driver: Child,
    client: reqwest::Client,
    session: String,
    screenshots: Option<PathBuf>,
}

impl Browser {
    async fn start() -> Self {
        let chromium = binary("IH_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("IH_CHROMEDRIVER", "/usr/bin/chromedriver");
        for binary in [&chromium, &chromedriver] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver (make browser)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // its own process group, so the browser it starts can be killed with it
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .stdin(Stdio::null())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        #[expect(
            clippy::disallowed_methods,
            reason = "a WebDriver client, not a delivery client"
        )]
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            eventually(Duration::from_secs(20), || async {
                client.get(format!("{base}/status")).send().await.is_ok()
            })
            .await,
            "chromedriver did not start"
        );
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,1000"]
                }
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Self {
            driver,
            client,
            session: format!("{base}/session/{session}"),
            screenshots: std::env::var_os("IH_CONSOLE_SCREENSHOTS").map(PathBuf::from),
        }
    }

    /// Sends a WebDriver command and returns its whole answer, errors included.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Sends a WebDriver command that must succeed and returns its value.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let answer = self.send(method, path, body).await;
        assert!(
            answer["value"].get("error").is_none(),
            "WebDriver {path}: {answer}"
        );
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs a script in the page and returns its result.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns true.
    async fn wait_for(&self, script: &str, what: &str) {
        let found = eventually(Duration::from_secs(30), || async {
            self.eval(script).await == Value::Bool(true)
        })
        .await;
        if !found {
            let page = self.eval("return document.body.innerText").await;
            panic!("{what} never showed\npage text:\n{page}");
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_owned()
    }

    /// Clicks the element; when the page re-rendered between finding and clicking it (a
    /// stale reference), finds it again.
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            let id = self.element(css).await;
            let answer = self
                .send(
                    reqwest::Method::POST,
                    &format!("/element/{id}/click"),
                    Some(json!({})),
                )
                .await;
            match answer["value"]["error"].as_str() {
                None => return,
                Some("stale element reference") => continue,
                Some(_) => panic!("click {css}: {answer}"),
            }
        }
        panic!("{css} kept going stale");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Accepts the confirmation dialog the last click opened.
    async fn accept_dialog(&self) {
        let answered = eventually(Duration::from_secs(5), || async {
            let answer = self
                .send(reqwest::Method::POST, "/alert/accept", Some(json!({})))
                .await;
            answer["value"].get("error").is_none()
        })
        .await;
        assert!(answered, "no confirmation was asked");
    }

    async fn screenshot(&self, name: &str) {
        let Some(directory) = &self.screenshots else {
            return;
        };
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        std::fs::create_dir_all(directory).unwrap();
        std::fs::write(
            directory.join(format!("console-{name}.png")),
            BASE64.decode(png.as_str().unwrap()).unwrap(),
        )
        .unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // the whole group: chromedriver and any browser a failed test left open
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

async fn publish(stack: &Stack, payload: Value) -> String {
    let published = stack
        .admin(
            "/api/v1/events",
            json!({"event_type": "order.created", "payload": payload}),
            &[],
        )
        .await;
    published["id"].as_str().unwrap().to_owned()
}

/// The view at `hash` has rendered (and nothing is loading).
fn ready(hash: &str) -> String {
    format!("return document.getElementById('main').getAttribute('data-ready') === '{hash}'")
}

#[tokio::test]
async fn an_operator_subscribes_watches_a_delivery_and_replays_a_dead_letter_in_the_console() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let stack = Stack::start(&db, &[("IH_DELIVERY_MAX_ATTEMPTS", "2".to_owned())]).await;
    let browser = Browser::start().await;
    let console = format!("{}/console", stack.api_url);

    // the token is entered once and kept for the session, never put in a URL
    browser.go(&format!("{console}#/subscriptions")).await;
    browser
        .wait_for(
            "return document.getElementById('error').textContent.includes('token')",
            "the request for a token",
        )
        .await;
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_for(&ready("#/subscriptions"), "the subscriptions view")
        .await;

    // create a subscription in the page; its secret is shown once
    browser
        .type_into("#new-subscription input[name=url]", &receiver.url("/hook"))
        .await;
    browser
        .type_into("#new-subscription input[name=events]", "order.created")
        .await;
    browser
        .type_into("#new-subscription input[name=description]", "billing")
        .await;
    browser.click("#new-subscription button[type=submit]").await;
    browser
        .wait_for(
            "return !!document.getElementById('secret-value')",
            "the new secret",
        )
        .await;
    let secret = browser
        .eval("return document.getElementById('secret-value').textContent")
        .await;
    assert!(secret.as_str().unwrap().starts_with("whsec_"), "{secret}");
    assert_eq!(count(&db, "select count(*) from subscriptions").await, 1);
    browser
        .wait_for(
            "return document.querySelector('tr[data-id] td:nth-child(3)').textContent === 'healthy'",
            "the new subscription's state",
        )
        .await;
    browser.screenshot("subscriptions").await;

    // a hostile payload is delivered and shown as text
    let hostile = json!({"note": "<script>window.__owned = 1</script><img src=x onerror=\"window.__owned = 2\"><b>bold</b>"});
    let delivered_event = publish(&stack, hostile).await;
    browser
        .go(&format!("{console}#/events/{delivered_event}"))
        .await;
    browser
        .wait_for(&ready(&format!("#/events/{delivered_event}")), "the event")
        .await;
    let delivered = "return document.querySelector('.delivery .status-delivered') !== null";
    let found = eventually(Duration::from_secs(30), || async {
        browser.click("#refresh").await;
        browser.eval(delivered).await == Value::Bool(true)
    })
    .await;
    if !found {
        let page = browser.eval("return document.body.innerText").await;
        panic!("the delivery never showed as delivered\npage text:\n{page}");
    }
    let payload = browser
        .eval("return document.getElementById('payload').textContent")
        .await;
    assert!(
        payload
            .as_str()
            .unwrap()
            .contains("<script>window.__owned = 1</script>")
    );
    assert_eq!(
        browser
            .eval("return [document.querySelectorAll('#main script, #main img, #main b').length, window.__owned === undefined]")
            .await,
        json!([0, true]),
        "the payload was rendered as markup"
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('.timeline li[data-outcome=delivered]').length")
            .await,
        json!(1)
    );
    browser.screenshot("event").await;

    // a failing receiver leads to a dead letter, replayed from the page
    receiver.reply_with(|_, _| Reply::json(500, r#"{"error":"<i>inventory service down</i>"}"#));
    let failing_event = publish(&stack, json!({"n": 2})).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&db, "select count(*) from dead_letters").await == 1
        })
        .await
    );
    browser
        .go(&format!("{console}#/deliveries?status=dead"))
        .await;
    browser
        .wait_for(&ready("#/deliveries?status=dead"), "the deliveries view")
        .await;
    browser
        .wait_for(
            &format!("return document.body.innerText.includes('{failing_event}')"),
            "the dead delivery",
        )
        .await;
    browser.screenshot("deliveries").await;

    receiver.reply_with(|_, _| Reply::status(200));
    browser.go(&format!("{console}#/dead-letters")).await;
    browser
        .wait_for(&ready("#/dead-letters"), "the dead letters view")
        .await;
    browser.screenshot("dead-letters").await;
    browser
        .click(&format!("tr[data-event='{failing_event}'] button.replay"))
        .await;
    browser.accept_dialog().await;
    browser
        .wait_for(
            "return document.getElementById('notice').textContent.includes('replayed')",
            "the replay notice",
        )
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            receiver.count() >= 4
                && count(
                    &db,
                    "select count(*) from all_deliveries where status = 'delivered'",
                )
                .await
                    == 2
        })
        .await,
        "the replayed delivery arrived"
    );
    browser
        .go(&format!("{console}#/events/{failing_event}"))
        .await;
    browser
        .wait_for(
            "return document.querySelectorAll('.delivery .status-delivered').length === 1 \
             && document.querySelectorAll('.timeline li').length === 3",
            "the replayed delivery in the event view",
        )
        .await;
    // the receiver's answer is shown as text too
    assert_eq!(
        browser
            .eval("return [document.querySelector('.response-body').textContent.includes('<i>'), document.querySelectorAll('#main i').length]")
            .await,
        json!([true, 0])
    );
    browser.screenshot("event-attempts").await;
    browser.go(&format!("{console}#/events")).await;
    browser
        .wait_for(&ready("#/events"), "the events view")
        .await;
    browser.screenshot("events").await;

    // bulk replay counts first (dry run), then replays after a confirmation
    receiver.reply_with(|_, _| Reply::status(500));
    publish(&stack, json!({"n": 3})).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(
                &db,
                "select count(*) from dead_letters where replayed_at is null",
            )
            .await
                == 1
        })
        .await
    );
    receiver.reply_with(|_, _| Reply::status(200));
    browser.go(&format!("{console}#/dead-letters")).await;
    browser
        .wait_for(&ready("#/dead-letters"), "the dead letters view")
        .await;
    browser.click("#bulk-replay button[type=submit]").await;
    browser
        .wait_for(
            "return (document.getElementById('bulk-count') || {}).textContent === '1 dead letter(s) would be replayed.'",
            "the dry-run count",
        )
        .await;
    assert_eq!(
        count(
            &db,
            "select count(*) from dead_letters where replayed_at is null"
        )
        .await,
        1,
        "the dry run changed nothing"
    );
    browser.click("#bulk-confirm").await;
    browser.accept_dialog().await;
    assert!(
        delivered_within(&db, 3, Duration::from_secs(30)).await,
        "the bulk-replayed delivery arrived"
    );

    // the overview counts what happened
    browser.go(&format!("{console}#/overview")).await;
    browser.wait_for(&ready("#/overview"), "the overview").await;
    let dead = browser
        .eval("return document.querySelector('#stat-dead .value').textContent")
        .await;
    assert_eq!(dead, json!("0"));
    // the charts: the delivery above is drawn once the worker has written its minute (every
    // ~10 s) and the overview refreshed (every 5 s); the window can be changed
    browser
        .wait_for(
            "return Number(document.querySelector('#chart-outcomes').dataset.points) > 0 \
             && document.querySelectorAll('#chart-outcomes polyline').length === 3",
            "the delivery in the outcomes chart",
        )
        .await;
    browser
        .eval(
            "const select = document.getElementById('chart-window'); select.value = '15m'; \
             select.dispatchEvent(new Event('change')); return true",
        )
        .await;
    browser
        .wait_for(
            "return document.getElementById('chart-window').value === '15m' \
             && Number(document.querySelector('#chart-lag').dataset.points) > 0",
            "the lag chart over 15 minutes",
        )
        .await;
    browser.screenshot("overview").await;

    // subscription management: rotate (the new secret shown once), edit, disable
    // an open circuit is shown with its time
    sqlx::query("update subscriptions set circuit_opened_at = now(), failing_since = now()")
        .execute(db.pg())
        .await
        .unwrap();
    browser.go(&format!("{console}#/subscriptions")).await;
    browser
        .wait_for(&ready("#/subscriptions"), "the subscriptions view")
        .await;
    browser
        .wait_for(
            "return document.querySelector('tr[data-id] td:nth-child(3)').textContent.startsWith('circuit open since ')",
            "the open circuit",
        )
        .await;
    browser.click("tr[data-id] button:nth-child(3)").await;
    browser.accept_dialog().await;
    browser
        .wait_for(
            "return !!document.getElementById('secret-value')",
            "the rotated secret",
        )
        .await;
    let rotated = browser
        .eval("return document.getElementById('secret-value').textContent")
        .await;
    assert!(rotated.as_str().unwrap().starts_with("whsec_") && rotated != secret);
    browser.click("tr[data-id] button:nth-child(1)").await;
    browser
        .type_into("#edit-subscription input[name=description]", "billing, EU")
        .await;
    browser
        .click("#edit-subscription button[type=submit]")
        .await;
    browser
        .wait_for(
            "return document.getElementById('notice').textContent === 'Subscription saved.'",
            "the saved edit",
        )
        .await;
    browser.click("tr[data-id] button:nth-child(2)").await;
    browser.accept_dialog().await;
    browser
        .wait_for(
            "return document.querySelector('tr[data-id] td:nth-child(3)').textContent.startsWith('disabled')",
            "the disabled subscription",
        )
        .await;
    let stored: (Option<String>, bool) =
        sqlx::query_as("select description, enabled from subscriptions")
            .fetch_one(db.pg())
            .await
            .unwrap();
    assert_eq!(stored, (Some("billing, EU".to_owned()), false));

    // the health view: a subscription whose endpoint fails sorts first, with its last hour
    // drawn; a click shows its deliveries
    receiver
        .reply_with(|_, received| Reply::status(if received.path == "/down" { 500 } else { 200 }));
    let down = stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/down"), "events": ["order.down"]}),
            &[],
        )
        .await;
    let down = down["id"].as_str().unwrap().to_owned();
    stack
        .admin(
            "/api/v1/events",
            json!({"event_type": "order.down", "payload": {"n": 9}}),
            &[],
        )
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(
                &db,
                "select count(*) from subscriptions where failing_since is not null",
            )
            .await
                == 1
        })
        .await
    );
    browser.go(&format!("{console}#/health")).await;
    browser
        .wait_for(&ready("#/health"), "the health view")
        .await;
    // the worker writes its counts every ~10 s: come back until the sparkline has them
    let first_row = format!(
        "const row = document.querySelector('tbody tr[data-id]'); \
         return !!row && row.dataset.id === '{down}' \
         && row.querySelector('td:nth-child(2)').textContent.startsWith('failing since ') \
         && Number(row.querySelector('svg.sparkline').dataset.attempts) > 0"
    );
    let charted = eventually(Duration::from_secs(40), || async {
        browser.go(&format!("{console}#/overview")).await;
        browser.wait_for(&ready("#/overview"), "the overview").await;
        browser.go(&format!("{console}#/health")).await;
        browser
            .wait_for(&ready("#/health"), "the health view")
            .await;
        browser.eval(&first_row).await == json!(true)
    })
    .await;
    assert!(
        charted,
        "the failing subscription first, with its attempts drawn"
    );
    browser.screenshot("health").await;
    browser.click("tbody tr[data-id] td:nth-child(3)").await;
    browser
        .wait_for(
            &format!(
                "return location.hash === '#/deliveries?subscription={down}' \
                 && document.querySelector('main').dataset.ready === location.hash \
                 && document.querySelectorAll('tbody tr').length === 1 \
                 && document.querySelector('tbody tr td:nth-child(4)').textContent === '{down}'"
            ),
            "the failing subscription's deliveries",
        )
        .await;

    // an API error is shown with its message
    browser.go(&format!("{console}#/events/not-a-uuid")).await;
    browser
        .wait_for(
            "return !document.getElementById('error').hidden && document.getElementById('error').textContent.length > 0",
            "the API's error message",
        )
        .await;
}
