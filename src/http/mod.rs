//! HTTP surface: the public app (webhooks, health) and the admin app
//! (metrics, the OpenAPI document, the admin API). Every route is one of
//! [`ROUTES`], which the OpenAPI test holds against `openapi.json`.

pub mod admin;
pub(crate) mod connection;
pub mod error;
pub mod trace;
mod webhooks;

use std::sync::Arc;

use actix_web::{
    App, HttpResponse, Resource,
    body::MessageBody,
    dev::{ServiceFactory, ServiceRequest, ServiceResponse},
    http::Method,
    middleware::{Next, from_fn},
    web,
};
use serde_json::json;

use crate::{
    metrics::Metrics,
    record::now_ms,
    sources::{eventbrite::Eventbrite, generic::Generic, zoom::Zoom},
    status::LiveStatus,
    store::{RecordStatus, Store},
};
use error::ApiError;
pub use webhooks::Counts;

/// Shared by every request handler of one application instance.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<LiveStatus>,
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

/// The resource of one of [`ROUTES`], serving `route` for `method`; any
/// other method answers 405 naming it. A route left out of the list (and
/// so of the OpenAPI document) stops the start.
fn resource(
    listener: Listener,
    method: Method,
    path: &'static str,
    route: actix_web::Route,
) -> Resource {
    assert!(
        ROUTES
            .iter()
            .any(|r| r.listener == listener && r.method == method.as_str() && r.path == path),
        "{method} {path} is served but not listed in http::ROUTES"
    );
    let allowed = method.clone();
    web::resource(path)
        .route(route.method(method))
        .default_service(web::to(move || {
            let allowed = allowed.clone();
            async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allowed)) }
        }))
}

/// The gateway's own OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The admin API's key and operations, when it is on.
pub type AdminApi = (
    web::Data<admin::AdminAuth>,
    web::Data<crate::operations::Operations>,
);

/// What a listener serves.
#[derive(Clone)]
pub enum Routes {
    /// Health and the configured sources' webhooks.
    Public(Sources),
    /// Metrics, this document, and the admin API only with its key.
    Admin(Option<AdminApi>),
}

impl Routes {
    pub fn listener(&self) -> Listener {
        match self {
            Routes::Public(_) => Listener::Public,
            Routes::Admin(_) => Listener::Admin,
        }
    }
}

/// The app of one listener. Both share the state, the request span and id,
/// the request count, the busy mark of a watched connection, and a JSON 404
/// for anything unrouted.
pub fn app(
    state: web::Data<AppState>,
    routes: Routes,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let listener = routes.listener();
    App::new()
        .app_data(state)
        .app_data(listener)
        .wrap(from_fn(count_requests))
        .wrap(from_fn(trace::trace_requests))
        .wrap(from_fn(connection::mark_requests))
        .configure(|cfg| match routes {
            Routes::Public(sources) => {
                let get = |path, route| resource(listener, Method::GET, path, route);
                cfg.service(get("/healthz", web::route().to(healthz)))
                    .service(get("/readyz", web::route().to(readyz)))
                    .configure(|cfg| webhooks::configure(cfg, sources));
            }
            Routes::Admin(api) => {
                let get = |path, route| resource(listener, Method::GET, path, route);
                // Malformed queries answer in the same JSON shape as every other error.
                cfg.app_data(
                    web::QueryConfig::default()
                        .error_handler(|err, _| ApiError::Invalid(err.to_string()).into()),
                )
                .service(get("/metrics", web::route().to(metrics)))
                .service(get("/openapi.json", web::route().to(openapi)));
                if let Some((auth, ops)) = api {
                    admin::configure(cfg, auth, ops);
                }
            }
        })
        .default_service(web::to(not_found))
}

/// Counts every request by listener, route pattern (never the path itself,
/// whose segments may be tokens or ids) and answered status.
async fn count_requests(
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
async fn not_found() -> Result<HttpResponse, ApiError> {
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
    observe(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.encode())
}

/// Sets the gauges of state kept elsewhere (the store's queue, the live
/// status) as of this scrape.
async fn observe(state: &AppState) {
    let (metrics, now) = (&state.metrics, now_ms());
    match state.store.queue_stats().await {
        Ok(stats) => {
            for status in RecordStatus::ALL {
                metrics
                    .queue_records
                    .with_label_values(&[status.as_str()])
                    .set(stats.count(status));
            }
            let age_ms = stats
                .oldest_pending_ms
                .map_or(0, |oldest| (now - oldest).max(0));
            metrics.oldest_pending_age.set(age_ms as f64 / 1000.0);
        }
        Err(err) => tracing::warn!(error = %err, "queue statistics unavailable"),
    }
    let live = state.status.snapshot();
    metrics
        .forwarding_paused
        .set(i64::from(live.pause_reason.is_some()));
    if let Some(expires_at_ms) = live.token_expires_at_ms {
        let left_ms = (expires_at_ms - now).max(0);
        metrics.token_expires_in.set(left_ms as f64 / 1000.0);
    }
}
