//! `GET /console`: the operator console, a single page compiled into the binary from
//! `api/console/` (no build step, nothing fetched at run time). It calls only the JSON API,
//! with the operator's token from the browser session.
//!
//! Every asset is served with a Content-Security-Policy that allows scripts and styles from
//! this origin only (no inline script, no `eval`), so a payload or a receiver's answer that
//! slipped into the page as markup still could not run; the script itself only ever writes
//! text (`textContent`), never HTML.

use poem::{Response, Route, get, handler, http::header};

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// The console's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
        // a new binary may ship a new script: the browser revalidates every load
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

#[handler]
fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

#[handler]
fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[handler]
fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// The console's routes, mounted at `/console`.
pub fn routes() -> Route {
    Route::new()
        .at("/", get(index))
        .at("/app.js", get(script))
        .at("/app.css", get(style))
}

/// The console's paths, for the `Allow` table.
pub const PATHS: [&str; 3] = ["/console", "/console/app.js", "/console/app.css"];
