//! What a platform itself recorded, read back from its API: the other half of
//! reconciliation. A listing maps what it finds exactly as the platform's
//! webhooks are mapped, so a record found this way that already arrived by
//! webhook is the same record.

use async_trait::async_trait;

use crate::record::NewRecord;

/// What the platform holds for one event.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Records mapped as the webhooks' would be.
    pub records: Vec<NewRecord>,
    /// What this listing cannot recover (said in the report).
    pub notes: Vec<String>,
}

/// A delivery the platform logged as failed: ingested like a live one.
#[derive(Debug, Clone)]
pub struct LoggedDelivery {
    /// The platform's own id of the delivery.
    pub request_id: String,
    /// The body exactly as the platform would have sent it.
    pub body: Vec<u8>,
    /// When the platform tried to deliver it (epoch ms).
    pub sent_ms: i64,
}

/// Why a listing did not produce an inventory.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// Credential or scope problem (the message names the missing scope).
    #[error("{0}")]
    Unauthorized(String),
    /// The event is not one the platform can list (not a past webinar, …).
    #[error("{0}")]
    NotFound(String),
    /// The platform failed, limited or could not be reached, beyond retrying.
    #[error("{0}")]
    Unavailable(String),
    /// An answer the gateway cannot read; nothing of it is used.
    #[error("{0}")]
    Invalid(String),
}

/// Lists what a platform recorded for an event.
#[async_trait(?Send)]
pub trait Listing {
    /// The source whose records this lists.
    fn source(&self) -> &'static str;

    /// Everything the platform holds for `event` (its own event id).
    async fn event(&self, event: &str) -> Result<Inventory, ListingError>;
}

/// A platform's log of deliveries it failed to make.
#[async_trait(?Send)]
pub trait WebhookLog {
    /// The failed deliveries logged between `from_ms` and `to_ms`.
    async fn failed(&self, from_ms: i64, to_ms: i64) -> Result<Vec<LoggedDelivery>, ListingError>;
}
