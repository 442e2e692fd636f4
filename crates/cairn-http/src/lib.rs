//! # cairn-http: the HTTP front
//!
//! Serves, from the `cairn serve` process:
//! * the Durable Functions management API under `/runtime/webhooks/durabletask/` ([`api`]):
//!   start, status (202 while running, 200 when done), query, raise event, terminate,
//!   suspend, resume, rewind, restart, purge, and the entity routes;
//! * `/metrics` in Prometheus text format, `/api/stats` for the dashboard and `/api/scale` for
//!   autoscalers ([`metrics`]);
//! * the web dashboard at `/`, built into the binary ([`dashboard`]);
//! * `/openapi.json`, the description of all of the above (tested against the real routes).
//!
//! When an auth token is configured, every route except the dashboard's static files,
//! `/healthz` and `/openapi.json` needs `Authorization: Bearer <token>`. With a certificate
//! ([`tls`]) the front serves HTTPS only.
//!
//! This crate only translates HTTP to [`cairn_runtime::Client`] calls: it never decides what
//! happens to an instance.

pub mod api;
pub mod dashboard;
mod error;
pub mod json;
pub mod metrics;
mod params;
pub mod tls;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use error::ApiError;
use std::sync::Arc;
use std::time::Instant;

/// Settings of the HTTP front.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Bearer token required on management routes (None: open, for loopback use).
    pub auth_token: Option<String>,
    /// Base of the management URLs handed out (default: `http://` + the request's Host).
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Serve HTTPS with this certificate (None: plain HTTP).
    pub tls: Option<tls::TlsIdentity>,
    /// How `/api/scale` turns the backlog into a worker count.
    pub scale: cairn_runtime::scale::ScalePolicy,
    /// The cluster this node serves a hub of (None: an embedded hub).
    pub cluster: Option<ClusterView>,
}

/// How the HTTP front sees the cluster: this node's name and a way to read the hub's status
/// from JetStream (blocking; run off the async threads). Shown at `/api/cluster`.
#[derive(Clone)]
pub struct ClusterView {
    pub node: String,
    pub status: Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub client: cairn_runtime::Client,
    pub stats: Vec<Arc<cairn_runtime::LeaderStats>>,
    pub config: Arc<HttpConfig>,
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub started: Instant,
    /// The queue SDK workers take work from (None when no front serves remote workers).
    pub remote: Option<cairn_runtime::remote::RemoteQueue>,
    /// Label sets of the worker gauges published last, so ones that vanish drop to zero.
    pub published_workers: Arc<parking_lot::Mutex<std::collections::HashSet<metrics::WorkerGauge>>>,
    /// Orchestration names with a published `cairn_instances_by_name` gauge.
    pub published_names: Arc<parking_lot::Mutex<std::collections::BTreeSet<String>>>,
    /// Orchestration and entity names with a published `cairn_backlog` gauge.
    pub published_backlog: Arc<parking_lot::Mutex<std::collections::BTreeSet<String>>>,
    pub published_activity_backlog: Arc<parking_lot::Mutex<std::collections::BTreeSet<String>>>,
    /// The engine's retention policy (shown and changed by `/api/retention`).
    pub retention: cairn_runtime::Retention,
}

/// The whole HTTP application for `engine`.
pub fn router(
    engine: &cairn_runtime::Engine,
    config: HttpConfig,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Router {
    let body_limit = if config.max_body_bytes == 0 {
        4 * 1024 * 1024 + 64 * 1024
    } else {
        config.max_body_bytes
    };
    let state = AppState {
        client: engine.client(),
        stats: engine.stats(),
        config: Arc::new(config),
        prometheus,
        started: Instant::now(),
        remote: engine.remote_queue(),
        published_workers: Arc::default(),
        published_names: Arc::default(),
        published_backlog: Arc::default(),
        published_activity_backlog: Arc::default(),
        retention: engine.retention().clone(),
    };
    Router::new()
        .merge(api::routes())
        .route("/metrics", get(metrics::prometheus))
        .route("/api/stats", get(metrics::stats_json))
        .route("/api/workers", get(metrics::workers_json))
        .route("/api/scale", get(metrics::scale_json))
        .route("/api/cluster", get(metrics::cluster_json))
        .route(
            "/api/retention",
            get(metrics::retention_json).put(metrics::set_retention),
        )
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .merge(dashboard::routes())
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// The OpenAPI 3 description of every route, as served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn no_such_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NoSuchRoute(format!(
        "no route for {method} {}; the routes are listed in /openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; see /openapi.json for the methods it takes",
        uri.path()
    ))
}

/// Routes anyone may read: the dashboard's static files, health, and the API description.
fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/") || path == "/healthz" || path == "/openapi.json"
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.auth_token {
        if !is_public(request.uri().path()) {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| cairn_runtime::auth::bearer_token(v.as_bytes()))
                .map(|token| token.trim_ascii());
            if !given.is_some_and(|g| cairn_runtime::auth::constant_time_eq(g, token.as_bytes())) {
                return ApiError::Unauthorized(
                    "this route needs 'Authorization: Bearer <token>' with the token given to \
                     cairn serve (--auth-token or CAIRN_AUTH_TOKEN)"
                        .into(),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Serves the HTTP front until `shutdown` resolves.
pub async fn serve(
    engine: &cairn_runtime::Engine,
    config: HttpConfig,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = config.tls.clone();
    let app = router(engine, config, prometheus);
    match tls {
        Some(identity) => {
            axum::serve(identity.listener(listener)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener_without_delay(listener), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// `listener` with `TCP_NODELAY` set on every accepted connection: answers are small, and
/// Nagle's algorithm would hold one back until the client's delayed ACK (up to 40 ms).
pub fn listener_without_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an HTTP connection: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    /// `/api/retention` shows the policy the engine runs with.
    #[tokio::test]
    async fn retention_shows_the_policy() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let mut policy = cairn_runtime::RetentionPolicy::default();
        policy.hub.completed = Some(7 * day);
        policy.by_name.entry("nightly".into()).or_default().failed = Some(day);
        let engine = cairn_runtime::Engine::open(
            cairn_runtime::EngineConfig {
                data_dir: dir.path().to_path_buf(),
                partitions: Some(2),
                retention: policy,
                ..Default::default()
            },
            cairn_runtime::Registry::new(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = super::router(&engine, super::HttpConfig::default(), None);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/retention HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["hub"]["completed"], "7d", "{json}");
        assert_eq!(json["hub"]["failed"], serde_json::Value::Null, "{json}");
        assert_eq!(json["byName"]["nightly"]["failed"], "1d", "{json}");
        assert_eq!(json["purged"], 0, "{json}");

        // Changed while running: the new policy is in force and shown.
        let (code, json) = call(
            addr,
            "PUT",
            r#"{"hub": {"completed": "12h"}, "byName": {"audit": {"terminated": "90d"}}}"#,
        )
        .await;
        assert_eq!(code, 200, "{json}");
        assert_eq!(
            engine.retention().policy().hub.completed,
            Some(12 * 3600 * Duration::from_secs(1))
        );
        let (_, json) = call(addr, "GET", "").await;
        assert_eq!(json["hub"]["completed"], "12h", "{json}");
        assert_eq!(json["byName"]["audit"]["terminated"], "90d", "{json}");
        assert!(json["byName"].get("nightly").is_none(), "{json}");
        // A bad policy is refused with what is wrong, and changes nothing.
        for (body, says) in [
            (
                r#"{"hub": {"completed": "soon"}}"#,
                "hub.completed is 'soon'",
            ),
            (r#"{"hub": {"running": "1d"}}"#, "the ended statuses are"),
            (r#"{"everything": 1}"#, "not \"everything\""),
            ("[", "JSON"),
        ] {
            let (code, json) = call(addr, "PUT", body).await;
            assert_eq!(code, 400, "{body}: {json}");
            assert!(
                json["message"].as_str().unwrap_or("").contains(says),
                "{body}: {json}"
            );
        }
        assert_eq!(
            engine.retention().policy().hub.completed,
            Some(12 * 3600 * Duration::from_secs(1))
        );
        server.abort();
        engine.shutdown().await.unwrap();
    }

    /// One request to `/api/retention`: status code and JSON body.
    async fn call(
        addr: std::net::SocketAddr,
        method: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} /api/retention HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let code = answer[9..12].parse().unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        (
            code,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Small HTTP answers must not wait for the client's delayed ACK.
    #[tokio::test]
    async fn accepted_http_connections_have_nodelay() {
        use axum::serve::Listener;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = super::listener_without_delay(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY is off on an accepted HTTP connection"
        );
    }
}
