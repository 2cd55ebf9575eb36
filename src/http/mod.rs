//! HTTP surface: the public app (webhooks, health) and the admin app (metrics).

pub mod error;
mod webhooks;

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::{
    metrics::Metrics,
    record::now_ms,
    sources::{eventbrite::Eventbrite, generic::Generic, zoom::Zoom},
    store::Store,
};
use error::ApiError;
pub use webhooks::Counts;

/// Shared by every request handler of one application instance.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Room for request bodies held in memory, in KiB (`RELAY_MAX_INFLIGHT_BYTES`).
    pub in_flight: tokio::sync::Semaphore,
    /// Tells the forwarder that new records are waiting.
    pub forwarder_wake: Arc<tokio::sync::Notify>,
    /// Tells the fetcher that a deferred delivery is waiting.
    pub fetcher_wake: Arc<tokio::sync::Notify>,
}

/// Sources that are configured; each is `None` when its secret is unset.
#[derive(Clone, Default)]
pub struct Sources {
    pub zoom: Option<web::Data<Zoom>>,
    pub eventbrite: Option<web::Data<Eventbrite>>,
    pub generic: Option<web::Data<Generic>>,
}

/// Routes of the public listener.
pub fn public(cfg: &mut web::ServiceConfig, state: web::Data<AppState>, sources: Sources) {
    cfg.app_data(state)
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .configure(|cfg| webhooks::configure(cfg, sources));
}

/// Routes of the admin listener.
pub fn admin(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    cfg.app_data(state)
        .route("/metrics", web::get().to(metrics));
}

/// JSON 404 for anything unrouted, on both listeners.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Alive while the store can work: a dead writer means a restart.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.store.alive() {
        HttpResponse::Ok().json(json!({ "status": "ok" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "dead", "reason": "the store's writer stopped" }))
    }
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.check_writable().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(err) => {
            tracing::warn!(error = %err, "not ready: store refuses writes");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "unavailable", "reason": "store refuses writes" }))
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    match state.store.queue_stats().await {
        Ok(stats) => state.metrics.observe_queue(&stats, now_ms()),
        Err(err) => tracing::warn!(error = %err, "queue statistics unavailable"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.encode())
}
