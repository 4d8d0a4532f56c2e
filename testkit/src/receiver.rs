//! A local HTTP server standing in for subscribers (and for Slack's API): it records every
//! request and answers as the test's script says.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, IntoResponse, Request, Response, Route, Server, handler,
    http::{HeaderMap, StatusCode},
    listener::TcpAcceptor,
    web::Data,
};
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// How the receiver answers its n-th request (0-based).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: vec![],
            body: vec![],
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A JSON answer, as Slack's API gives.
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            body: body.as_bytes().to_vec(),
            ..Self::status(status)
        }
        .header("content-type", "application/json")
    }
}

type Script = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    /// Per path: requests being answered now, and the most there ever were at once.
    in_flight: Arc<Mutex<HashMap<String, (usize, usize)>>>,
}

/// Counts a request in flight on its path while it lives.
struct InFlight {
    state: ReceiverState,
    path: String,
}

impl InFlight {
    fn enter(state: &ReceiverState, path: &str) -> Self {
        let mut all = state.in_flight.lock().unwrap();
        let (now, most) = all.entry(path.to_owned()).or_default();
        *now += 1;
        *most = (*most).max(*now);
        Self {
            state: state.clone(),
            path: path.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((now, _)) = self.state.in_flight.lock().unwrap().get_mut(&self.path) {
            *now -= 1;
        }
    }
}

#[handler]
async fn receive(request: &Request, body: poem::Body, state: Data<&ReceiverState>) -> Response {
    let received = Received {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        headers: request.headers().clone(),
        body: body.into_vec().await.unwrap_or_default(),
        at: Instant::now(),
    };
    let _in_flight = InFlight::enter(&state, &received.path);
    let index = {
        let mut all = state.received.lock().unwrap();
        all.push(received.clone());
        all.len() - 1
    };
    let script = state.script.lock().unwrap().clone();
    let reply = script(index, &received);
    tokio::time::sleep(reply.delay).await;
    let mut response = reply.body.into_response();
    response.set_status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            poem::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// A local HTTP server standing in for subscribers.
pub struct Receiver {
    pub address: SocketAddr,
    state: ReceiverState,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = ReceiverState {
            received: Arc::default(),
            script: Arc::new(Mutex::new(Arc::new(|_, _: &Received| Reply::status(200)))),
            in_flight: Arc::default(),
        };
        let stop = CancellationToken::new();
        let app = Route::new().at("/*path", receive).data(state.clone());
        let server_stop = stop.clone();
        tokio::spawn(async move {
            let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
            let _ = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    app,
                    server_stop.cancelled_owned(),
                    Some(Duration::from_millis(100)),
                )
                .await;
        });
        Self {
            address,
            state,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Answers from now on as `script` says.
    pub fn reply_with(&self, script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Arc::new(script);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// The most requests to `path` that were being answered at once.
    pub fn most_in_flight(&self, path: &str) -> usize {
        self.state
            .in_flight
            .lock()
            .unwrap()
            .get(path)
            .map_or(0, |(_, most)| *most)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
