//! The agent's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status` and `/log-level`,
//! at `--listen` in both `hagw run` and `hagw agent --kubernetes`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::Observer;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves in a background task; returns the bound address (for port 0).
pub async fn serve(addr: SocketAddr, observer: Observer) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/log-level", get(get_log_level).put(put_log_level))
        .with_state(observer);
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            warn!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

/// Every managed router as JSON (`hagw status` reads it).
async fn status(State(observer): State<Observer>) -> impl IntoResponse {
    let body = serde_json::to_string(&observer.statuses()).unwrap_or_else(|_| "[]".into());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the Prometheus text
/// format.
async fn metrics(State(observer): State<Observer>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], observer.metrics().encode())
    } else {
        ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], observer.metrics().encode_prometheus_text())
    }
}

fn probe(result: Result<(), String>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn healthz(State(observer): State<Observer>) -> (StatusCode, String) {
    probe(observer.liveness())
}

async fn readyz(State(observer): State<Observer>) -> (StatusCode, String) {
    probe(observer.readiness())
}

async fn get_log_level() -> (StatusCode, String) {
    match crate::logging::filter() {
        Some(filter) => (StatusCode::OK, format!("{filter}\n")),
        None => (StatusCode::NOT_FOUND, "logging is not initialised\n".into()),
    }
}

/// Replaces the log filter. Only from the node itself (a loopback peer): the endpoint
/// usually listens on every address for Prometheus.
async fn put_log_level(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: String,
) -> (StatusCode, String) {
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "the log level can only be set from localhost\n".into());
    }
    let filter = body.trim();
    match crate::logging::set_filter(filter) {
        Ok(()) => {
            info!(filter, "log filter changed");
            (StatusCode::OK, format!("{filter}\n"))
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid filter: {e}\n")),
    }
}
