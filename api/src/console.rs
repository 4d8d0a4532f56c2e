//! `GET /console`: the operator console, a single page compiled into the binary from
//! `api/console/` (no build step, nothing fetched at run time). It calls only the JSON API,
//! with the operator's token from the browser session.
//!
//! Every asset is served with a Content-Security-Policy that allows scripts and styles from
//! this origin only (no inline script, no `eval`), so a payload or a receiver's answer that
//! slipped into the page as markup still could not run; the script itself only ever writes
//! text (`textContent`), never HTML.

use poem::{Response, Route, endpoint::make_sync, get, http::header};

/// Where the console is mounted.
pub const PREFIX: &str = "/console";

/// The assets: path under [`PREFIX`], body, content type. The routes and the `Allow` table
/// both come from this one list.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/",
        include_str!("../console/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/app.js",
        include_str!("../console/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/app.css",
        include_str!("../console/app.css"),
        "text/css; charset=utf-8",
    ),
];

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

/// The console's routes, mounted at [`PREFIX`].
pub fn routes() -> Route {
    ASSETS
        .into_iter()
        .fold(Route::new(), |route, (path, body, content_type)| {
            route.at(path, get(make_sync(move |_| asset(body, content_type))))
        })
}

/// The console's full paths, for the `Allow` table.
pub fn paths() -> Vec<String> {
    ASSETS
        .into_iter()
        .map(|(path, _, _)| format!("{PREFIX}{}", path.trim_end_matches('/')))
        .collect()
}
