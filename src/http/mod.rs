//! HTTP surface: the public app (webhooks, health) and the admin app
//! (metrics, the OpenAPI document, the admin API). Every route is one of
//! [`ROUTES`], which the OpenAPI test holds against `openapi.json`.

pub mod admin;
pub(crate) mod connection;
pub mod error;
mod webhooks;

use std::sync::Arc;

use actix_web::{
    HttpResponse,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::Method,
    middleware::Next,
    web,
};
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

/// Which listener serves a route; the `listener` label of the request metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Admin => "admin",
        }
    }
}

/// One route the gateway may serve (some only when configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub listener: Listener,
    pub method: &'static str,
    pub path: &'static str,
}

const fn route(listener: Listener, method: &'static str, path: &'static str) -> Route {
    Route {
        listener,
        method,
        path,
    }
}

/// Every route, as `openapi.json` must document it.
pub const ROUTES: &[Route] = &[
    route(Listener::Public, "GET", "/healthz"),
    route(Listener::Public, "GET", "/readyz"),
    route(Listener::Public, "POST", "/webhooks/zoom"),
    route(Listener::Public, "POST", "/webhooks/eventbrite/{token}"),
    route(Listener::Public, "POST", "/webhooks/generic"),
    route(Listener::Admin, "GET", "/metrics"),
    route(Listener::Admin, "GET", "/openapi.json"),
    route(Listener::Admin, "GET", "/admin/status"),
    route(Listener::Admin, "GET", "/admin/records"),
    route(Listener::Admin, "POST", "/admin/records/{id}/retry"),
    route(Listener::Admin, "POST", "/admin/dead-letters/retry"),
    route(Listener::Admin, "GET", "/admin/events"),
];

/// `path`, once it is known to be one of [`ROUTES`]: a route left out of
/// the list (and so of the OpenAPI document) stops the start.
fn listed(listener: Listener, method: &Method, path: &'static str) -> &'static str {
    assert!(
        ROUTES
            .iter()
            .any(|r| r.listener == listener && r.method == method.as_str() && r.path == path),
        "{method} {path} is served but not listed in http::ROUTES"
    );
    path
}

/// The gateway's own OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Routes of the public listener.
pub fn public(cfg: &mut web::ServiceConfig, state: web::Data<AppState>, sources: Sources) {
    let public = Listener::Public;
    cfg.app_data(state)
        .app_data(public)
        .route(
            listed(public, &Method::GET, "/healthz"),
            web::get().to(healthz),
        )
        .route(
            listed(public, &Method::GET, "/readyz"),
            web::get().to(readyz),
        )
        .configure(|cfg| webhooks::configure(cfg, sources));
}

/// Routes of the admin listener; the admin API only with its key.
pub fn admin(
    cfg: &mut web::ServiceConfig,
    state: web::Data<AppState>,
    api: Option<(
        web::Data<admin::AdminAuth>,
        web::Data<crate::operations::Operations>,
    )>,
) {
    let admin = Listener::Admin;
    cfg.app_data(state)
        .app_data(admin)
        // Malformed queries answer in the same JSON shape as every other error.
        .app_data(
            web::QueryConfig::default()
                .error_handler(|err, _| ApiError::Invalid(err.to_string()).into()),
        )
        .route(
            listed(admin, &Method::GET, "/metrics"),
            web::get().to(metrics),
        )
        .route(
            listed(admin, &Method::GET, "/openapi.json"),
            web::get().to(openapi),
        );
    if let Some((auth, ops)) = api {
        admin::configure(cfg, auth, ops);
    }
}

/// Counts every request by listener, route pattern (never the path itself,
/// whose segments may be tokens or ids) and answered status.
pub async fn count_requests(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let listener = request.app_data::<Listener>().copied();
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let answer = next.call(request).await;
    let status = match &answer {
        Ok(response) => response.status(),
        Err(err) => err.as_response_error().status_code(),
    };
    if let (Some(listener), Some(state)) = (listener, state) {
        state
            .metrics
            .http_requests
            .with_label_values(&[listener.as_str(), &route, status.as_str()])
            .inc();
    }
    answer
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
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
