//! The webhook routes: one pipeline (read, authenticate, interpret, store,
//! answer) shared by every source, timed and counted per source.

use actix_web::{
    HttpRequest, HttpResponse,
    http::{
        Method,
        header::{CONTENT_LENGTH, CONTENT_TYPE},
    },
    web,
};
use serde::Serialize;
use tokio::sync::SemaphorePermit;

use super::{AppState, Listener, Sources, error::ApiError, listed};
use crate::{
    record::{Delivery, now_ms},
    sources::{Inbound, Rejection, Source, eventbrite::Eventbrite, generic::Generic, zoom::Zoom},
};

/// The in-flight budget counts in KiB: a body costs at least one.
const BUDGET_UNIT: usize = 1024;
/// Longest a body may take to arrive once its headers have. actix-web bounds
/// only the head's arrival, so without this a client sending a byte now and
/// then would hold its connection and its share of the in-flight budget for
/// as long as it likes. Platforms send a few KiB at once.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The body of every 200 that is not a handshake.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub accepted: usize,
    pub duplicates: usize,
    pub ignored: usize,
}

enum Answer {
    Reply(serde_json::Value),
    Counts(Counts),
}

impl Answer {
    fn outcome(&self) -> &'static str {
        match self {
            Answer::Reply(_) => "ignored",
            Answer::Counts(c) if c.accepted > 0 => "accepted",
            Answer::Counts(c) if c.duplicates > 0 => "duplicate",
            Answer::Counts(_) => "ignored",
        }
    }
}

/// Routes of the configured sources; an unconfigured source's route is absent (404).
pub fn configure(cfg: &mut web::ServiceConfig, sources: Sources) {
    let path = |path| listed(Listener::Public, &Method::POST, path);
    if let Some(zoom) = sources.zoom {
        cfg.app_data(zoom)
            .route(path("/webhooks/zoom"), web::post().to(receive::<Zoom>));
    }
    if let Some(eventbrite) = sources.eventbrite {
        cfg.app_data(eventbrite).route(
            path("/webhooks/eventbrite/{token}"),
            web::post().to(receive::<Eventbrite>),
        );
    }
    if let Some(generic) = sources.generic {
        cfg.app_data(generic).route(
            path("/webhooks/generic"),
            web::post().to(receive::<Generic>),
        );
    }
}

async fn receive<S: Source>(
    request: HttpRequest,
    body: web::Payload,
    source: web::Data<S>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let timer = state
        .metrics
        .ingest_duration
        .with_label_values(&[S::NAME])
        .start_timer();
    let result = ingest(&request, body, source.get_ref(), &state).await;
    let outcome = match &result {
        Ok(answer) => answer.outcome(),
        Err(err) => err.outcome(),
    };
    state
        .metrics
        .webhooks_received
        .with_label_values(&[S::NAME, outcome])
        .inc();
    timer.observe_duration();
    // One line per delivery, under an id of its own to find it by; never its
    // body or an email.
    let delivery = format!("{:016x}", fastrand::u64(..));
    match &result {
        Ok(Answer::Counts(counts)) => tracing::info!(
            source = S::NAME,
            outcome,
            %delivery,
            accepted = counts.accepted,
            duplicates = counts.duplicates,
            "webhook stored"
        ),
        Ok(Answer::Reply(_)) => {
            tracing::info!(source = S::NAME, outcome, %delivery, "webhook answered")
        }
        Err(err) => {
            tracing::info!(source = S::NAME, outcome, %delivery, reason = %err, "webhook refused")
        }
    }
    Ok(match result? {
        Answer::Reply(body) => HttpResponse::Ok().json(body),
        Answer::Counts(counts) => HttpResponse::Ok().json(counts),
    })
}

/// Every platform sends JSON: a body declared as anything else (a form, text,
/// multipart) is refused unread. No declaration at all is read as JSON, as
/// scripts using the generic route often send none.
fn declared_json(request: &HttpRequest) -> Result<(), ApiError> {
    let Some(declared) = request.headers().get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = declared
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reserves room for the body in the in-flight budget before reading it, so
/// a flood cannot hold more than `RELAY_MAX_INFLIGHT_BYTES` in memory.
fn reserve<'a>(
    request: &HttpRequest,
    state: &'a AppState,
) -> Result<SemaphorePermit<'a>, ApiError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes) {
        return Err(ApiError::TooLarge(state.max_body_bytes));
    }
    // A body of unknown length may grow to the limit.
    let bytes = declared.unwrap_or(state.max_body_bytes);
    let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
    state
        .in_flight
        .try_acquire_many(units)
        .map_err(|_| ApiError::Busy)
}

async fn ingest<S: Source>(
    request: &HttpRequest,
    body: web::Payload,
    source: &S,
    state: &AppState,
) -> Result<Answer, ApiError> {
    declared_json(request)?;
    let _room = reserve(request, state)?;
    let body =
        actix_web::rt::time::timeout(BODY_TIMEOUT, body.to_bytes_limited(state.max_body_bytes))
            .await
            .map_err(|_| ApiError::SlowBody(BODY_TIMEOUT.as_secs()))?
            .map_err(|_| ApiError::TooLarge(state.max_body_bytes))?
            .map_err(|err| ApiError::Invalid(format!("cannot read the body: {err}")))?;
    source.authenticate(request, &body)?;
    let interpreted = match source.interpret(&body) {
        Err(refused @ Rejection::Unfetchable(_)) => {
            // Counted apart from other invalid bodies: a URL never requested.
            state
                .metrics
                .fetches
                .with_label_values(&[S::NAME, "refused"])
                .inc();
            return Err(refused.into());
        }
        other => other?,
    };
    let (records, deferred) = match interpreted {
        Inbound::Reply(reply) => return Ok(Answer::Reply(reply)),
        Inbound::Ignored => {
            return Ok(Answer::Counts(Counts {
                ignored: 1,
                ..Counts::default()
            }));
        }
        Inbound::Records(records) => (records, false),
        Inbound::Deferred => (Vec::new(), true),
    };
    let unmappable: Vec<_> = records
        .iter()
        .map(|r| (!r.is_mappable()).then_some(r.state))
        .collect();
    let delivery = Delivery {
        source: S::NAME,
        body: body.to_vec(),
        received_ms: now_ms(),
        deferred,
        request_id: format!("{:016x}", fastrand::u64(..)),
    };
    let outcome = state
        .store
        .ingest(delivery, records)
        .await
        .map_err(ApiError::Unavailable)?;
    if deferred {
        // Accepted for fetching: its records are counted once they exist.
        state.fetcher_wake.notify_one();
        return Ok(Answer::Counts(Counts {
            accepted: 1,
            ..Counts::default()
        }));
    }
    if outcome.accepted() > 0 {
        state.forwarder_wake.notify_one();
    }
    for (fresh, unmappable) in outcome.fresh.iter().zip(unmappable) {
        if let (true, Some(state_label)) = (fresh, unmappable) {
            state
                .metrics
                .records
                .with_label_values(&[state_label.as_str(), "unmappable"])
                .inc();
        }
    }
    Ok(Answer::Counts(Counts {
        accepted: outcome.accepted(),
        duplicates: outcome.duplicates(),
        ignored: 0,
    }))
}
