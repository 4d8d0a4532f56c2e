//! The receiving sink: a local HTTP server standing in for subscribers. It answers 200 (or a
//! configured fraction of 500s, after an optional delay) and records when each (event,
//! endpoint) first arrived successfully, and how often it arrived again.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, Request, Response, Route, Server, handler, http::StatusCode,
    listener::TcpAcceptor, web::Data,
};

/// How the sink answers.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Fraction of requests answered 500.
    pub fail_rate: f64,
    /// Delay before every answer.
    pub delay: Duration,
    /// Delay before every answer on [`SLOW`] (a noisy neighbour) instead.
    pub slow_delay: Duration,
}

/// The path of the noisy neighbour's subscription: its arrivals are counted apart.
pub const SLOW: &str = "/slow";
/// The path of the rate-limited subscription: its arrival times are kept apart.
pub const LIMITED: &str = "/limited";

/// What the sink saw.
#[derive(Default)]
pub struct Arrivals {
    /// First successful arrival of each (event id, endpoint path).
    pub first: Mutex<HashMap<(String, String), Instant>>,
    /// Successful arrivals beyond the first.
    pub duplicates: AtomicU64,
    /// Requests answered 500 on purpose.
    pub failed: AtomicU64,
    /// Every request.
    pub requests: AtomicU64,
    /// Requests to [`SLOW`].
    pub slow: AtomicU64,
    /// When each request to [`LIMITED`] arrived.
    pub limited: Mutex<Vec<Instant>>,
}

#[derive(Clone)]
struct SinkState {
    arrivals: Arc<Arrivals>,
    behaviour: Behaviour,
}

/// A cheap deterministic coin per request: the fraction of failures is exact over many
/// requests, and a retried delivery gets a fresh toss.
fn fails(counter: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let scaled = (counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1_u64 << 53) as f64;
    scaled < rate
}

#[handler]
async fn receive(request: &Request, state: Data<&SinkState>) -> Response {
    let now = Instant::now();
    if request.uri().path() == LIMITED {
        state
            .arrivals
            .limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(now);
        return Response::builder().status(StatusCode::OK).finish();
    }
    if request.uri().path() == SLOW {
        state.arrivals.slow.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(state.behaviour.slow_delay).await;
        return Response::builder().status(StatusCode::OK).finish();
    }
    let count = state.arrivals.requests.fetch_add(1, Ordering::Relaxed);
    if !state.behaviour.delay.is_zero() {
        tokio::time::sleep(state.behaviour.delay).await;
    }
    if fails(count, state.behaviour.fail_rate) {
        state.arrivals.failed.fetch_add(1, Ordering::Relaxed);
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .finish();
    }
    let id = request
        .headers()
        .get("webhook-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let key = (id, request.uri().path().to_owned());
    let mut first = state
        .arrivals
        .first
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match first.entry(key) {
        std::collections::hash_map::Entry::Occupied(_) => {
            state.arrivals.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert(now);
        }
    }
    Response::builder().status(StatusCode::OK).finish()
}

/// The sink's accept queue (the kernel caps it at `net.core.somaxconn`).
const SINK_BACKLOG: u32 = 4096;

/// Starts the sink on `address`; returns where it listens and what it records.
///
/// # Errors
/// Returns an error when the address cannot be bound.
pub async fn start(
    address: &str,
    behaviour: Behaviour,
) -> anyhow::Result<(SocketAddr, Arc<Arrivals>)> {
    // a deep accept queue: a worker with hundreds of free slots opens hundreds of connections
    // at once, and a SYN dropped at a full queue comes back 1, 3 or 7 s later, which would be
    // measured as the service's latency
    let address: SocketAddr = address.parse()?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(address)?;
    let listener = socket.listen(SINK_BACKLOG)?;
    let local = listener.local_addr()?;
    let arrivals = Arc::new(Arrivals::default());
    let app = Route::new().at("/*path", receive).data(SinkState {
        arrivals: arrivals.clone(),
        behaviour,
    });
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor).run(app).await;
    });
    Ok((local, arrivals))
}

#[cfg(test)]
mod tests {
    use super::fails;

    #[test]
    fn the_failure_coin_has_the_requested_rate() {
        let failed = (0..100_000).filter(|n| fails(*n, 0.2)).count();
        assert!((19_000..21_000).contains(&failed), "{failed}");
        assert_eq!((0..1000).filter(|n| fails(*n, 0.0)).count(), 0);
    }
}
