//! The web dashboard: one page and its two assets, compiled into the binary (no CDN, no
//! separate web server). Setting `CAIRN_DASHBOARD_DIR` serves the files from that directory
//! instead, so the page can be edited without rebuilding.

use crate::AppState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| asset("index.html", INDEX, "text/html; charset=utf-8")),
        )
        .route(
            "/assets/app.js",
            get(|| asset("app.js", APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|| asset("app.css", APP_CSS, "text/css; charset=utf-8")),
        )
}

async fn asset(name: &str, built_in: &'static str, content_type: &'static str) -> Response {
    let body = match std::env::var_os("CAIRN_DASHBOARD_DIR") {
        Some(dir) => std::fs::read_to_string(std::path::Path::new(&dir).join(name))
            .unwrap_or_else(|_| built_in.to_string()),
        None => built_in.to_string(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
