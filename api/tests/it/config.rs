//! The binary refuses bad configuration at start, listing every problem.

use std::process::Command;

#[test]
fn ih_api_refuses_to_start_without_tokens_and_lists_every_problem() {
    let output = Command::new(env!("CARGO_BIN_EXE_ih-api"))
        .env_clear()
        .env("IH_API_ADDR", "nowhere")
        .env("IH_DATABASE_MAX_CONNECTIONS", "0")
        .env("IH_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in [
        "IH_API_TOKENS",
        "IH_API_ADDR",
        "IH_DATABASE_MAX_CONNECTIONS",
        "IH_LOG_FORMAT",
    ] {
        assert!(
            stderr.contains(variable),
            "{variable} missing from: {stderr}"
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_is_reported_with_its_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_ih-api"))
        .env_clear()
        .env("IH_AUTH_DISABLED", "true")
        .env("IH_DATABASE_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.to_lowercase().contains("database_max_connections"),
        "{stderr}"
    );
}
