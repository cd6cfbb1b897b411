//! `/healthz` and `/readyz` for the DaemonSet's probes.
//!
//! Live means the process serves HTTP. Ready means the agent enforces a known set of
//! routers: the HARouters have been listed once, or the local spec cache was loaded. It
//! stays ready while the API server is away, because enforcement goes on from the last
//! known specs and restarting the pod would not bring the API server back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::warn;

use super::Error;

/// Set once the agent is ready; shared with the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves the probes in a background task.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> Result<SocketAddr, Error> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| Error::Health { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Health { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "health endpoint stopped");
        }
    });
    Ok(bound)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the first HARouter list\n")
    }
}
