//! Where `ih` listens with authentication disabled (`make run`'s development mode): a tokenless
//! API is an admin console for anyone who reaches it, so by default it is reachable from this
//! machine only.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use shared::config::DEFAULT_API_PORT;
use testkit::free_port;

use crate::support::{client, eventually};

/// An address of this machine that is not loopback, from the interfaces it has.
fn outside_address() -> IpAddr {
    let output = Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .find(|address| address.is_ipv4() && !address.is_loopback())
        .expect("the machine has a non-loopback IPv4 address to test against")
}

/// Starts `ih` with authentication disabled on a new SQLite file in `directory`.
fn spawn_open_ih(directory: &Path, addr: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ih"));
    command
        .current_dir(directory)
        .env_clear()
        .env("IH_AUTH_DISABLED", "true")
        .env("IH_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(addr) = addr {
        command.env("IH_API_ADDR", addr);
    }
    command.spawn().unwrap()
}

async fn healthy(url: &str) -> bool {
    let client = client();
    eventually(Duration::from_secs(20), || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await
}

fn temp_directory() -> std::path::PathBuf {
    let directory =
        std::env::temp_dir().join(format!("ih_listen_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn without_authentication_and_an_address_ih_listens_on_loopback_only() {
    let outside = outside_address();
    let directory = temp_directory();
    let hub = spawn_open_ih(&directory, None);
    let up = healthy(&format!("http://127.0.0.1:{DEFAULT_API_PORT}/health")).await;
    let refused = tokio::net::TcpStream::connect(SocketAddr::new(outside, DEFAULT_API_PORT))
        .await
        .is_err();
    let log = stop(hub);
    assert!(up, "ih answers on 127.0.0.1:{DEFAULT_API_PORT}\n{log}");
    assert!(
        refused,
        "ih must not accept a connection on {outside}\n{log}"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn an_explicit_outside_address_still_wins_with_a_loud_warning() {
    let outside = outside_address();
    let directory = temp_directory();
    let port = free_port();
    let hub = spawn_open_ih(&directory, Some(&format!("0.0.0.0:{port}")));
    let up = healthy(&format!("http://{outside}:{port}/health")).await;
    let log = stop(hub);
    assert!(up, "ih answers on {outside}:{port}\n{log}");
    assert!(
        log.contains("AUTHENTICATION IS DISABLED AND THE API LISTENS BEYOND THIS MACHINE"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&directory);
}
