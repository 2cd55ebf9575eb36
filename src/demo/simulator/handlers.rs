//! The API's routes, and what every call goes through: authentication,
//! injected faults, the rate limit and its headers, the record of the call,
//! latency.

use std::{collections::VecDeque, sync::Mutex, time::Instant};

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header::AUTHORIZATION},
    web::{self, Bytes},
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Call, RATE_WINDOW,
    faults::{Fault, error_body},
    oauth,
    state::{Reply, State},
};
use crate::hubspot::Operation;

/// The five endpoints the gateway calls, and the token endpoint.
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/crm/v3/objects/contacts/batch/read",
        endpoint(Operation::ContactsRead, State::contacts_read),
    )
    .route(
        "/crm/v3/objects/contacts/batch/upsert",
        endpoint(Operation::ContactsUpsert, State::contacts_upsert),
    )
    .route(
        "/marketing/marketing-events/2026-03/attendance/{externalEventId}/{subscriberState}/create",
        web::post().to(attendance_create),
    )
    .route(
        "/marketing/marketing-events/2026-03/events/upsert",
        endpoint(Operation::EventsUpsert, State::events_upsert),
    )
    .route(
        "/marketing/marketing-events/2026-03/events/{externalEventId}/complete",
        web::post().to(events_complete),
    )
    .route("/oauth/2026-03/token", web::post().to(oauth::token));
}

/// A route whose answer depends on the body alone.
pub(super) fn endpoint(
    operation: Operation,
    answer: fn(&mut State, Value) -> Result<Reply, Reply>,
) -> actix_web::Route {
    web::post().to(
        move |req: HttpRequest, body: Bytes, state: web::Data<Mutex<State>>| async move {
            serve(&state, operation, &req, &body, answer).await
        },
    )
}

#[derive(Deserialize)]
pub(super) struct AttendanceQuery {
    #[serde(rename = "externalAccountId", default)]
    pub(super) external_account_id: String,
}

pub(super) async fn attendance_create(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
    path: web::Path<(String, String)>,
    query: web::Query<AttendanceQuery>,
) -> HttpResponse {
    let (event, subscriber_state) = path.into_inner();
    let account = query.into_inner().external_account_id;
    serve(
        &state,
        Operation::AttendanceCreate,
        &req,
        &body,
        |state, body| state.attendance_create(&account, &event, &subscriber_state, body),
    )
    .await
}

#[derive(Deserialize)]
pub(super) struct CompleteQuery {
    #[serde(rename = "externalAccountId")]
    pub(super) external_account_id: Option<String>,
}

pub(super) async fn events_complete(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
    path: web::Path<String>,
    query: web::Query<CompleteQuery>,
) -> HttpResponse {
    let event = path.into_inner();
    let account = query.into_inner().external_account_id;
    serve(
        &state,
        Operation::EventsComplete,
        &req,
        &body,
        |state, body| state.events_complete(account.as_deref(), &event, body),
    )
    .await
}

/// What every endpoint shares: authentication, injected faults, the rate
/// limit and its headers, recording the call, latency.
pub(super) async fn serve(
    state: &Mutex<State>,
    operation: Operation,
    req: &HttpRequest,
    body: &Bytes,
    answer: impl FnOnce(&mut State, Value) -> Result<Reply, Reply>,
) -> HttpResponse {
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bearer = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.trim().is_empty());

    let (answer, rate_headers, latency) = {
        let mut state = state.lock().expect("simulator state poisoned");
        let authorized = match (&state.oauth, bearer) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(oauth), Some(token)) => oauth.accepts(token),
        };
        let at = Instant::now();
        // Calls are recorded in arrival order, so the window is a suffix.
        let in_window = 1 + state
            .calls
            .iter()
            .rev()
            .take_while(|call| at.duration_since(call.at) < RATE_WINDOW)
            .count();
        let limit = state.rate_limit;
        let answer = if !authorized {
            let reply = error_body(
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found.",
            );
            Fault::reply((StatusCode::UNAUTHORIZED, reply))
        } else if let Some(fault) = state
            .faults
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            fault
        } else if in_window > limit as usize {
            state.rate_limited += 1;
            let reply = error_body(
                "RATE_LIMITS",
                "You have reached your ten_secondly_rolling limit.",
            );
            Fault::reply((StatusCode::TOO_MANY_REQUESTS, reply))
        } else if let Some(fault) = state
            .chaos
            .as_mut()
            .and_then(|(chaos, rng)| chaos.draw(rng))
        {
            fault
        } else {
            match answer(&mut state, body.clone()) {
                Ok(reply) | Err(reply) => Fault::reply(reply),
            }
        };
        let status = answer.status_code().as_u16();
        tracing::debug!(
            operation = operation.as_str(),
            status,
            "hubspot simulator answered"
        );
        state.calls.push(Call {
            operation,
            path: req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |pq| pq.as_str().to_owned()),
            body,
            authorization,
            status,
            at,
        });
        let rate_headers = vec![
            ("X-HubSpot-RateLimit-Max".to_owned(), limit.to_string()),
            (
                "X-HubSpot-RateLimit-Remaining".to_owned(),
                (limit as usize).saturating_sub(in_window).to_string(),
            ),
            (
                "X-HubSpot-RateLimit-Interval-Milliseconds".to_owned(),
                "10000".to_owned(),
            ),
        ];
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        (answer, rate_headers, state.latency.unwrap_or_default())
    };
    let response = answer.respond(rate_headers, latency).await;
    state.lock().expect("simulator state poisoned").in_flight -= 1;
    response
}
