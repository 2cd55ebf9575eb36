//! The answers given instead of the normal behaviour: a fault queued for
//! one call, or HubSpot having a bad day at random.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use actix_web::{HttpResponse, http::StatusCode, web::Bytes};
use serde_json::{Value, json};

use super::state::Reply;

/// An answer to give instead of the normal behaviour, once.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
    pub delay: Option<Duration>,
    /// The connection is cut after the status line: the body never comes.
    pub cut: bool,
}

impl Fault {
    /// `status` with a spec-valid `Error` body of the category HubSpot uses.
    pub fn status(status: u16) -> Self {
        let category = match status {
            400 => "VALIDATION_ERROR",
            401 => "INVALID_AUTHENTICATION",
            403 => "MISSING_SCOPES",
            404 => "OBJECT_NOT_FOUND",
            409 => "CONFLICT",
            429 => "RATE_LIMITS",
            _ => "INTERNAL_ERROR",
        };
        Fault {
            status,
            body: error_body(category, format!("Simulated fault: HTTP {status}")),
            headers: Vec::new(),
            delay: None,
            cut: false,
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: Value) -> Self {
        self.body = body;
        self
    }

    /// Answer only after `delay`: lets tests provoke client timeouts.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// This answer's connection cut after its status line.
    pub fn cut(mut self) -> Self {
        self.cut = true;
        self
    }

    /// The normal behaviour's answer, in the same shape as a fault.
    pub(super) fn reply((status, body): Reply) -> Self {
        Fault {
            status: status.as_u16(),
            body,
            headers: Vec::new(),
            delay: None,
            cut: false,
        }
    }

    /// An invalid status is answered as 500.
    pub(super) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Answers after its delay plus `latency`; `defaults` go first, so the
    /// answer's own headers can override them.
    pub(super) async fn respond(
        self,
        defaults: Vec<(String, String)>,
        latency: Duration,
    ) -> HttpResponse {
        let delay = self.delay.unwrap_or_default() + latency;
        if !delay.is_zero() {
            actix_web::rt::time::sleep(delay).await;
        }
        let mut response = HttpResponse::build(self.status_code());
        for header in defaults.into_iter().chain(self.headers) {
            response.insert_header(header);
        }
        if self.cut {
            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            return response
                .streaming(futures_util::stream::once(async { Err::<Bytes, _>(reset) }));
        }
        response.json(self.body)
    }
}

/// A HubSpot having a bad day: each API call, independently, fails in one
/// of these ways with the given probability (nothing of a failed call is
/// recorded as attendance).
#[derive(Clone, Debug, Default)]
pub struct Chaos {
    /// 500, 502 or 503.
    pub server_errors: f64,
    /// 429, half of them with `Retry-After: 1`.
    pub rate_limited: f64,
    /// Answers 503 only after `hang` (longer than the gateway's timeout).
    pub hangs: f64,
    pub hang: Duration,
    /// The connection is cut after a 200 status line, before the body.
    pub resets: f64,
    /// Seed of the draws, so a run can be repeated.
    pub seed: u64,
}

impl Chaos {
    pub(super) fn draw(&self, rng: &mut fastrand::Rng) -> Option<Fault> {
        let roll = rng.f64();
        let statuses = [500, 502, 503];
        if roll < self.server_errors {
            return Some(Fault::status(statuses[rng.usize(..statuses.len())]));
        }
        if roll < self.server_errors + self.rate_limited {
            let fault = Fault::status(429);
            return Some(if rng.bool() {
                fault.with_header("Retry-After", "1")
            } else {
                fault
            });
        }
        if roll < self.server_errors + self.rate_limited + self.hangs {
            return Some(Fault::status(503).delayed(self.hang));
        }
        (roll < self.server_errors + self.rate_limited + self.hangs + self.resets)
            .then(|| Fault::status(200).cut())
    }
}

/// A whole-request `Error`: requires category, correlationId (a UUID), message.
pub(super) fn error_body(category: &str, message: impl Into<String>) -> Value {
    // Unique per answer, so logs that quote one can be matched to the call.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    json!({
        "status": "error",
        "category": category,
        "message": message.into(),
        "correlationId": format!("00000000-0000-4000-8000-{n:012x}"),
    })
}
