//! Event platforms. Each module authenticates its platform's deliveries and
//! turns them into [`NewRecord`]s; nothing platform-specific goes further.

pub mod eventbrite;
pub mod generic;
pub mod inventory;
pub mod zoom;

use actix_web::HttpRequest;
use async_trait::async_trait;

use crate::record::NewRecord;

/// What an authenticated delivery asks of the gateway.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Answer with this body and store nothing (a platform's handshake).
    Reply(serde_json::Value),
    /// An event type that carries no attendance: acknowledged, not stored.
    Ignored,
    /// Records to store durably before acknowledging.
    Records(Vec<NewRecord>),
    /// The delivery only points at the data: store it, acknowledge, and let
    /// the platform's [`Fetch`] turn it into records in the background.
    Deferred,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Bad or missing signature, token or timestamp.
    #[error("{0}")]
    Unauthorized(String),
    /// A secret path segment that does not match: answered as if the route
    /// did not exist.
    #[error("no such route")]
    UnknownRoute,
    /// Not JSON, wrong shape, or a required field missing.
    #[error("{0}")]
    Invalid(String),
    /// The delivery names a URL the gateway will not fetch (another host,
    /// scheme or path than the platform's API).
    #[error("{0}")]
    Unfetchable(String),
}

/// A body as JSON text. JSON is UTF-8 throughout, but serde skips the fields
/// a struct ignores without looking at their bytes: checked here, whole, so
/// what is stored and forwarded is text.
fn json_text(body: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(body).map_err(|err| format!("body is not UTF-8: {err}"))
}

/// One event platform. Adding a platform is a module implementing this and a
/// route in `http::webhooks`.
pub trait Source: 'static {
    /// The `source` label in metrics and the store.
    const NAME: &'static str;

    /// Checks that the delivery is genuine; runs before the body is parsed.
    fn authenticate(&self, request: &HttpRequest, body: &[u8]) -> Result<(), Rejection>;

    /// Interprets an authenticated body.
    fn interpret(&self, body: &[u8]) -> Result<Inbound, Rejection>;
}

/// Why a deferred delivery's fetch did not produce records.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The platform failed or could not be reached; worth trying later.
    #[error("{0}")]
    Retry(String),
    /// Trying again cannot help (the object is gone, the answer makes no sense).
    #[error("{0}")]
    Failed(String),
}

/// What a fetch produced: the records it could map, and what it could not
/// (one bad attendee does not sink the others of an order).
#[derive(Debug, Default, PartialEq)]
pub struct Fetched {
    pub records: Vec<NewRecord>,
    pub problem: Option<String>,
}

/// A platform whose deliveries only point at the data: the gateway fetches
/// and maps it after acknowledging (see [`Inbound::Deferred`]).
#[async_trait(?Send)]
pub trait Fetch {
    /// The source whose deferred deliveries this resolves.
    fn source(&self) -> &'static str;

    async fn fetch(&self, body: &[u8]) -> Result<Fetched, FetchError>;
}
