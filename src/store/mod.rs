//! Durable storage of deliveries and records, behind one interface so the
//! embedded SQLite store and a shared PostgreSQL store pass the same tests.

mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    record::{Delivery, NewRecord},
    settings::Secret,
};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store is shut down")]
    Closed,
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("unsupported database url {0:?} (expected sqlite://path)")]
    UnsupportedUrl(String),
    #[error(
        "the database has schema version {0}, newer than this gateway's {1}: run a newer gateway"
    )]
    NewerSchema(i64, i64),
    #[error("cannot prepare the database directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Lifecycle of a stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordStatus {
    /// Waiting to be forwarded.
    Pending,
    /// No contact to attach it to (the platform withheld the email); kept for inspection.
    Unmappable,
    Delivered,
    /// Gave up; the reason is kept with the record.
    Dead,
}

impl RecordStatus {
    pub const ALL: [RecordStatus; 4] = [
        RecordStatus::Pending,
        RecordStatus::Unmappable,
        RecordStatus::Delivered,
        RecordStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Pending => "pending",
            RecordStatus::Unmappable => "unmappable",
            RecordStatus::Delivered => "delivered",
            RecordStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Status a freshly ingested record starts in.
    pub fn initial(record: &NewRecord) -> Self {
        if record.is_mappable() {
            RecordStatus::Pending
        } else {
            RecordStatus::Unmappable
        }
    }
}

/// What storing one delivery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The whole delivery had been stored before.
    pub duplicate_delivery: bool,
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

/// Queue depth for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub by_status: Vec<(RecordStatus, i64)>,
    /// Creation time (epoch ms) of the oldest pending record.
    pub oldest_pending_ms: Option<i64>,
}

/// A stored record, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: i64,
    pub source: String,
    pub status: RecordStatus,
    /// Times the forwarder has taken it.
    pub attempts: i64,
    /// When it was stored (epoch ms).
    pub created_ms: i64,
    /// Not forwarded before this (epoch ms): its arrival, or its retry time.
    pub next_attempt_ms: i64,
    /// Why its last attempt failed, or why it is dead.
    pub last_error: Option<String>,
    pub record: NewRecord,
}

/// A delivery whose records are still to be fetched from its platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferredDelivery {
    pub id: i64,
    pub source: String,
    pub body: Vec<u8>,
    /// Fetches tried so far.
    pub attempts: i64,
    pub received_ms: i64,
}

/// What became of a deferred delivery's fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Fetched and mapped: these records are stored like any other.
    Resolved(Vec<NewRecord>),
    /// Try again at `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Given up; the reason is kept with the delivery.
    Failed { reason: String },
}

/// The OAuth credential as last refreshed, shared by restarts and replicas.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// The installation it descends from: a hash of the configured refresh
    /// token, so configuring a new one supersedes what is stored.
    pub origin: String,
    pub refresh_token: Secret,
    pub access_token: Secret,
    pub expires_at_ms: i64,
}

/// What became of a record the forwarder took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    /// Try again at `at_ms`.
    Retry {
        at_ms: i64,
        error: String,
    },
    Dead {
        reason: String,
    },
    /// Not sent (forwarding paused): back to the queue as it was, the
    /// attempt not counted.
    Release,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a delivery and its records in one durable commit. Records already
    /// known (by [`NewRecord::dedupe_key`]) are not stored again; a delivery
    /// whose key is known stores nothing. A deferred delivery waits for
    /// [`Store::due_deliveries`].
    async fn ingest(
        &self,
        delivery: Delivery,
        records: Vec<NewRecord>,
    ) -> Result<IngestOutcome, StoreError>;

    /// Interaction time of the latest `attend` record of this contact and event
    /// that opened a session (has `joinedAt`, no `leftAt`) at or before `at_ms`.
    async fn open_join_time(
        &self,
        source: &str,
        external_event_id: &str,
        email: &str,
        at_ms: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Proves the store takes a durable write now.
    async fn check_writable(&self) -> Result<(), StoreError>;

    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;

    /// Records in id order, optionally of one status (inspection and tests).
    async fn records(
        &self,
        status: Option<RecordStatus>,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Pending records due by `now_ms` and not taken by a forwarder, oldest
    /// due first.
    async fn due(&self, now_ms: i64, limit: i64) -> Result<Vec<StoredRecord>, StoreError>;

    /// Takes these records for forwarding until `lease_until_ms`; returns the
    /// ids it got (another forwarder may have taken the rest). A record whose
    /// lease runs out unsettled — its forwarder died mid-call — is due again.
    async fn claim(
        &self,
        ids: &[i64],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<i64>, StoreError>;

    /// Records what became of taken records, in one commit.
    async fn settle(&self, outcomes: Vec<(i64, Settlement)>) -> Result<(), StoreError>;

    /// Deferred deliveries due by `now_ms`, oldest first.
    async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<DeferredDelivery>, StoreError>;

    /// Records the fetch of a deferred delivery; a resolved one stores its
    /// records (deduplicated as at ingest) in the same commit.
    async fn settle_delivery(
        &self,
        delivery: &DeferredDelivery,
        outcome: FetchOutcome,
    ) -> Result<IngestOutcome, StoreError>;

    /// The credential stored under `key`, if any.
    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>, StoreError>;

    /// Replaces the credential stored under `key`.
    async fn save_credential(
        &self,
        key: &str,
        credential: &StoredCredential,
    ) -> Result<(), StoreError>;

    /// Deletes settled records and delivery keys older than the retention; returns rows removed.
    async fn purge_settled(&self, older_than_ms: i64) -> Result<u64, StoreError>;

    /// Finishes writes in flight and stops taking new ones.
    async fn close(&self);
}

/// Opens the store named by `RELAY_DATABASE_URL`.
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) => Ok(Arc::new(SqliteStore::open(path)?)),
        None => Err(StoreError::UnsupportedUrl(url.to_owned())),
    }
}
