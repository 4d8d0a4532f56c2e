//! The one HTTP client the worker sends with, and the SSRF guard inside it.
//!
//! Every name is resolved by [`GuardedResolver`], which refuses the whole target when any
//! resolved address is forbidden and hands the connector only vetted addresses, so there is no
//! gap between the check and the connect (DNS rebinding). IP-literal hosts skip resolvers, so
//! they are checked before every send. The client follows no redirects and ignores the
//! `HTTP(S)_PROXY` environment.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use shared::url_policy::{BlockedAddress, DestinationPolicy};

/// Most bytes of a webhook receiver's body read before the connection is dropped.
pub const MAX_RESPONSE_READ: usize = 64 * 1024;
/// Most bytes of Slack's answer read: `chat.postMessage` echoes the posted message, and the
/// largest message the connector builds (about 8,000 characters, each at most twelve bytes
/// when JSON-escaped as a surrogate pair, echoed in `text` and in `blocks`: under 200 KB) must
/// still parse whole, or a posted message would look failed.
pub const MAX_SLACK_ANSWER_READ: usize = 512 * 1024;
/// Most bytes of a response body recorded with the attempt.
pub const MAX_RESPONSE_RECORDED: usize = 4 * 1024;
/// Longest wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("integrations-hub/", env!("CARGO_PKG_VERSION"));

/// Looks up host names; tests replace the system resolver with fixed answers.
pub trait Lookup: Send + Sync + 'static {
    /// Resolves `host` to addresses (port 0).
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo on a blocking thread).
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// Why a name was refused by the guard.
#[derive(Debug, thiserror::Error)]
#[error("blocked_address: {host} resolves to a forbidden address ({reason})")]
pub struct BlockedTarget {
    host: String,
    reason: BlockedAddress,
}

/// Resolves, then refuses the target if any address is forbidden.
pub struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    policy: DestinationPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.lookup.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let addresses = lookup.lookup(host.clone()).await?;
            // A name answering with a mix of public and private addresses is refused whole:
            // filtering would let an attacker keep a foot in the private network.
            for address in &addresses {
                if let Err(reason) = policy.check(*address) {
                    tracing::warn!(host = %host, address = %address, "refusing a forbidden destination");
                    return Err(Box::new(BlockedTarget { host, reason })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            let vetted: Addrs = Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(vetted)
        })
    }
}

/// Builds the delivery client.
///
/// # Errors
/// Returns an error when the TLS back-end cannot be set up.
#[expect(
    clippy::disallowed_methods,
    reason = "this is the one place the delivery client is built"
)]
pub fn client(
    policy: &DestinationPolicy,
    lookup: Arc<dyn Lookup>,
    timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            lookup,
            policy: policy.clone(),
        }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(USER_AGENT)
        .build()
}

/// What the receiver did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// It answered with a status.
    Answered {
        /// The status.
        status: u16,
        /// Its `Retry-After` header, raw.
        retry_after: Option<String>,
        /// Its body, up to the read limit (see [`excerpt`] for what is recorded).
        body: String,
    },
    /// It answered with a status, then the body broke off (connection closed mid-body, or the
    /// body trickled past the timeout): the receiver may not have finished with the request.
    BrokeOff {
        /// The status it had sent.
        status: u16,
        /// What went wrong, with the status.
        error: String,
    },
    /// No answer at all: refused address, connection error, timeout before a status.
    Failed {
        /// A short class and description, without the URL's query or credentials.
        error: String,
    },
}

/// The start of an answer's body that is recorded with the attempt: at most
/// [`MAX_RESPONSE_RECORDED`] bytes, cut on a character boundary.
pub fn excerpt(body: &str) -> String {
    let mut end = body.len().min(MAX_RESPONSE_RECORDED);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body.get(..end).unwrap_or_default().to_owned()
}

/// Sends one request and reads at most `read_limit` bytes of the answer.
pub async fn send(
    client: &reqwest::Client,
    policy: &DestinationPolicy,
    url: &str,
    headers: Vec<(String, String)>,
    body: String,
    read_limit: usize,
) -> SendResult {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(_) => {
            return SendResult::Failed {
                error: "invalid_url".to_owned(),
            };
        }
    };
    // IP literals never reach the resolver: check them here, on every send.
    let literal = match parsed.host() {
        Some(url::Host::Ipv4(address)) => Some(IpAddr::V4(address)),
        Some(url::Host::Ipv6(address)) => Some(IpAddr::V6(address)),
        _ => None,
    };
    if let Some(address) = literal
        && let Err(reason) = policy.check(address)
    {
        return SendResult::Failed {
            error: format!("blocked_address: {reason}"),
        };
    }
    if let Some(url::Host::Domain(name)) = parsed.host()
        && let Err(reason) = policy.check_host_name(name)
    {
        return SendResult::Failed {
            error: format!("blocked_address: {reason}"),
        };
    }

    let mut request = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = match request.body(body).send().await {
        Ok(response) => response,
        Err(error) => {
            return SendResult::Failed {
                error: describe(&error),
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut response = response;
    let mut read: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = read_limit.saturating_sub(read.len());
                read.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                if read.len() >= read_limit {
                    // Dropping the response closes the connection: the rest is never read.
                    break;
                }
            }
            Ok(None) => break,
            // An answer that broke off (connection closed mid-body, or the body trickled past
            // the timeout) is no answer: the receiver may not have finished with the event,
            // so it is a failed attempt and a retry rather than a delivery on the status line.
            Err(error) => {
                return SendResult::BrokeOff {
                    status,
                    error: format!("{} (after status {status})", describe(&error)),
                };
            }
        }
    }
    SendResult::Answered {
        status,
        retry_after,
        body: String::from_utf8_lossy(&read).into_owned(),
    }
}

/// A short description of a transport error, never with the URL.
fn describe(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<BlockedTarget>() {
            return blocked.to_string();
        }
        source = current.source();
    }
    let class = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection_error"
    } else if error.is_body() || error.is_decode() {
        "body_error"
    } else {
        "request_error"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(current) = source {
        detail = current.to_string();
        source = current.source();
    }
    if detail.is_empty() {
        class.to_owned()
    } else {
        format!("{class}: {detail}")
    }
}
