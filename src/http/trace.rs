//! Every request runs in a span of its own under an id: the ingress's
//! `x-request-id` when it sends a sane one (bounded length, a plain
//! charset), else a fresh one. The id is returned in the answer's
//! `x-request-id` and, for a webhook, stored with its delivery.

use actix_web::{
    HttpMessage, HttpRequest,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest incoming id taken up (a UUID is 36 characters).
const MAX_ID_LEN: usize = 64;

/// The id of the request being handled, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn of(request: &HttpRequest) -> String {
        request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default()
    }
}

/// An incoming id worth keeping: one that cannot forge log lines or grow
/// the store.
fn sane(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
    ((1..=MAX_ID_LEN).contains(&text.len()) && text.bytes().all(plain)).then(|| text.to_owned())
}

/// Middleware of both apps, outermost: the span, the id, the header.
pub async fn trace_requests(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(sane)
        .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route = request.match_pattern().as_deref().unwrap_or("unmatched"),
    );
    request.extensions_mut().insert(RequestId(id.clone()));
    // Handlers' and the admin check's errors arrive as answers, which carry
    // the id; an `Err` has no answer yet to carry it.
    let mut response = next.call(request).instrument(span).await?;
    let value = HeaderValue::from_str(&id).expect("ids are visible ASCII");
    response.headers_mut().insert(REQUEST_ID, value);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_incoming_ids_are_taken_up() {
        let id = |text: &str| sane(&HeaderValue::from_str(text).unwrap());
        assert_eq!(
            id("ingress-7f3a:1.2_x").as_deref(),
            Some("ingress-7f3a:1.2_x")
        );
        assert_eq!(id(&"a".repeat(64)).map(|id| id.len()), Some(64));
        assert_eq!(id(&"a".repeat(65)), None);
        assert_eq!(id(""), None);
        assert_eq!(id("a b"), None);
        assert_eq!(id("a\"}"), None);
    }
}
