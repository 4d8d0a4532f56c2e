//! What the tests of every crate stand on, used only as a dev-dependency: one fresh database
//! per test on either backend ([`db::TestDb`]), a TCP proxy in front of Postgres that can cut
//! the network, a local receiving server standing in for subscribers, and polling with a
//! deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

pub mod db;
pub mod receiver;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

/// An in-process TCP proxy. While broken it closes every live connection and every new one at
/// once, which is what a client sees of a database that went away.
pub struct ChaosProxy {
    address: SocketAddr,
    broken: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let (cut, _) = broadcast::channel(4);
        let accept_broken = broken.clone();
        let accept_cut = cut.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if accept_broken.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = accept_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Self {
            address,
            broken,
            cut,
            accept_task,
        }
    }

    /// The address clients should connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Rewrites a postgres URL to go through the proxy.
    pub fn proxied_url(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).unwrap();
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.address.port())).unwrap();
        parsed.to_string()
    }

    /// Cuts every live connection and refuses new ones.
    pub fn break_networking(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    /// Lets connections through again.
    pub fn restore_networking(&self) {
        self.broken.store(false, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Polls `check` every 50 ms until it returns true or `deadline` passes; returns whether it
/// became true. Tests wait with this, never with a fixed sleep.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port free on 127.0.0.1 a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Generates, for each named `async fn(Backend)`, a module of that name with one test per
/// backend: `name::postgres` and `name::sqlite` run the same body.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::db::Backend::Postgres).await;
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::db::Backend::Sqlite).await;
                }
            }
        )*
    };
}
