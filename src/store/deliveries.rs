//! The deliveries role: deferred deliveries, whose records the fetcher
//! still has to fetch from their platform, claimed under a lease.

use std::time::Duration;

use async_trait::async_trait;

use super::{IngestOutcome, StoreError};
use crate::record::NewRecord;

/// A delivery whose records are still to be fetched from its platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferredDelivery {
    pub id: i64,
    pub source: String,
    pub body: Vec<u8>,
    /// Fetches tried so far, this one included.
    pub attempts: i64,
    pub received_ms: i64,
    /// Proves the claim when settling.
    pub lease: String,
}

/// What became of a deferred delivery's fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Fetched and mapped: these records are stored like any other. With a
    /// `problem`, part of what was fetched could not become records: the
    /// delivery stays failed with that reason (visible, retryable) beside
    /// the records that could.
    Resolved {
        records: Vec<NewRecord>,
        problem: Option<String>,
    },
    /// Try again after `delay`.
    Retry { delay: Duration, error: String },
    /// Given up; the reason is kept with the delivery.
    Failed { reason: String },
}

#[async_trait]
pub trait Deliveries: Send + Sync {
    /// Takes deferred deliveries that are due, oldest first, under a lease.
    async fn claim_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<DeferredDelivery>, StoreError>;

    /// Records the fetch of a claimed deferred delivery; resolved records are
    /// stored (deduplicated as at ingest) in the same commit.
    async fn settle_delivery(
        &self,
        delivery: &DeferredDelivery,
        outcome: FetchOutcome,
    ) -> Result<IngestOutcome, StoreError>;
}
