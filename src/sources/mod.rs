//! Event platforms. Each module authenticates its platform's deliveries and
//! turns them into [`NewRecord`]s; nothing platform-specific goes further.

pub mod generic;
pub mod zoom;

use actix_web::HttpRequest;
use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::{record::NewRecord, store::Store, store::StoreError};

/// What an authenticated delivery asks of the gateway.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Answer with this body and store nothing (a platform's handshake).
    Reply(serde_json::Value),
    /// An event type that carries no attendance: acknowledged, not stored.
    Ignored,
    /// Records to store durably before acknowledging.
    Records(Vec<NewRecord>),
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Bad or missing signature, token or timestamp.
    #[error("{0}")]
    Unauthorized(String),
    /// Not JSON, wrong shape, or a required field missing.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One event platform. Adding a platform is a module implementing this and a
/// route in `http::webhooks`.
#[async_trait(?Send)]
pub trait Source: 'static {
    /// The `source` label in metrics and the store.
    const NAME: &'static str;

    /// Checks that the delivery is genuine; runs before the body is parsed.
    fn authenticate(&self, request: &HttpRequest, body: &[u8]) -> Result<(), Rejection>;

    /// Interprets an authenticated body. The store is there for context a
    /// platform leaves out (such as the join that a leave closes).
    async fn interpret(&self, body: &[u8], store: &dyn Store) -> Result<Inbound, Rejection>;

    /// Identity of the delivery: the same key again is a duplicate delivery.
    /// Platforms retry with the same body, so by default it is the body.
    fn delivery_key(&self, body: &[u8]) -> [u8; 32] {
        Sha256::digest(body).into()
    }
}

/// Lower-cased, trimmed email; HubSpot matches contacts case-insensitively.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}
