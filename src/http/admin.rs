//! The admin API (`/admin/*`, admin listener only): every route behind an
//! HS256 bearer token of `RELAY_ADMIN_JWT_SECRET` that carries `exp` and the
//! admin audience, so no token made for another purpose (the generic route's,
//! even under the same secret) opens it. Absent (404) while the secret is unset.

use actix_web::{
    HttpResponse,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{Method, header::AUTHORIZATION},
    middleware::{Next, from_fn},
    web,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

use super::{AppState, Listener, error::ApiError, resource};
use crate::{
    auth::{self, JwtCheck},
    operations::{DeadQuery, EventQuery, ListQuery, Operations},
    settings::Secret,
};

/// The `aud` every admin token must carry.
pub const AUDIENCE: &str = "attendance-relay-admin";

pub struct AdminAuth(JwtCheck);

impl AdminAuth {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        Self(JwtCheck::new(
            DecodingKey::from_secret(secret.expose().as_bytes())
                .expect("settings drop empty variables"),
            validation,
        ))
    }

    fn verify(&self, request: &ServiceRequest) -> Result<(), ApiError> {
        let token = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| auth::bearer(value.as_bytes()))
            .ok_or_else(|| ApiError::Unauthorized("an admin bearer token is required".into()))?;
        self.0.verify(token).map_err(ApiError::Unauthorized)
    }
}

/// A refusal is answered here (not passed up as an error), so the request
/// middleware around it sees an answer and gives it the request's id.
async fn require_admin_token(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let auth = request
        .app_data::<web::Data<AdminAuth>>()
        .expect("admin routes are configured with their key");
    match auth.verify(&request) {
        Ok(()) => Ok(next.call(request).await?.map_into_left_body()),
        Err(refused) => Ok(request.error_response(refused).map_into_right_body()),
    }
}

/// The admin routes, when the admin API is on.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    auth: web::Data<AdminAuth>,
    ops: web::Data<Operations>,
) {
    cfg.app_data(auth).app_data(ops);
    let mut guarded = |method: Method, path: &'static str, route: actix_web::Route| {
        cfg.service(
            resource(Listener::Admin, method, path, route).wrap(from_fn(require_admin_token)),
        );
    };
    guarded(Method::GET, "/admin/status", web::route().to(status));
    guarded(Method::GET, "/admin/records", web::route().to(records));
    guarded(
        Method::POST,
        "/admin/records/{id}/retry",
        web::route().to(retry_one),
    );
    guarded(
        Method::POST,
        "/admin/dead-letters/retry",
        web::route().to(retry_dead),
    );
    guarded(Method::GET, "/admin/events", web::route().to(events));
}

async fn status(ops: web::Data<Operations>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ops.status().await?))
}

async fn records(
    ops: web::Data<Operations>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ops.list(&query).await?))
}

/// Retried work is due now: the forwarder and fetcher need not wait for their poll.
fn wake(state: &AppState) {
    state.forwarder_wake.notify_one();
    state.fetcher_wake.notify_one();
}

async fn retry_one(
    ops: web::Data<Operations>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let retried = ops.retry(&id).await?;
    if retried.retried {
        wake(&state);
    }
    Ok(HttpResponse::Ok().json(retried))
}

async fn retry_dead(
    ops: web::Data<Operations>,
    state: web::Data<AppState>,
    query: web::Query<DeadQuery>,
) -> Result<HttpResponse, ApiError> {
    let retried = ops.retry_dead(&query).await?;
    if retried.records + retried.deliveries > 0 {
        wake(&state);
    }
    Ok(HttpResponse::Ok().json(retried))
}

async fn events(
    ops: web::Data<Operations>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "events": ops.events(&query).await? })))
}
