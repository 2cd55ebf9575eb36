//! The ingest role: stores what arrives, durably, and lets go of it once
//! settled; the store's writer and lifecycle.

use async_trait::async_trait;

use super::StoreError;
use crate::record::{Delivery, NewRecord};

/// What storing one delivery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Per record of the delivery, in order: newly stored (`true`) or already known.
    pub fresh: Vec<bool>,
}

impl IngestOutcome {
    pub fn accepted(&self) -> usize {
        self.fresh.iter().filter(|fresh| **fresh).count()
    }

    pub fn duplicates(&self) -> usize {
        self.fresh.len() - self.accepted()
    }
}

#[async_trait]
pub trait Ingest: Send + Sync {
    /// Stores a delivery and its records in one durable commit. A record
    /// already known (by [`NewRecord::dedupe_key`]) is not stored again. A
    /// record that [`NewRecord::closes_session`] takes the time of the open
    /// join it closes. A deferred delivery waits for
    /// [`super::Deliveries::claim_deliveries`].
    async fn ingest(
        &self,
        delivery: Delivery,
        records: Vec<NewRecord>,
    ) -> Result<IngestOutcome, StoreError>;

    /// Durable commits the writer has made so far: concurrent ingests share
    /// one (group commit), so this grows slower than the ingests.
    fn commits(&self) -> u64;

    /// False once the store can no longer work (its writer died): the
    /// process must be restarted.
    fn alive(&self) -> bool;

    /// Proves the store takes a durable write now.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Deletes at most `max_rows` settled records and deliveries older than
    /// `older_than_ms`; returns how many it removed. Small chunks keep the
    /// commits of ingest flowing while a large purge runs.
    async fn purge_settled(&self, older_than_ms: i64, max_rows: u64) -> Result<u64, StoreError>;

    /// Finishes writes in flight and stops taking new ones.
    async fn close(&self);
}
