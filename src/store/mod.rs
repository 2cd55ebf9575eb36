//! Durable storage of deliveries and records, behind one interface so the
//! embedded SQLite store and a shared PostgreSQL store pass the same tests.
//!
//! The interface is split by role, one module each: [`Ingest`] (the writer),
//! [`Queue`] (the forwarder's claims), [`Deliveries`] (the fetcher's),
//! [`Credentials`] and [`CallWindow`] (what replicas share), [`Operator`]
//! (the admin API and CLI). [`Store`] is all of them; a part of the gateway
//! that needs one role takes only that one. Each backend has one file per
//! role, with the same names, so the two read side by side.
//!
//! The store's own clock decides due times and leases: callers pass delays,
//! never timestamps, so several processes sharing one database agree.

/// The statement both stores' `records_reopen_completion` trigger runs for an
/// inserted `attend` record (`NEW`): the event's latest completion covers it,
/// and one already sent (or being sent) is pending again, its grace counted
/// from now, so HubSpot recalculates the durations.
macro_rules! reopen_completion {
    () => {
        "UPDATE records SET
            covers_until = CASE WHEN COALESCE(covers_until, 0) > NEW.id + 1
                                THEN covers_until ELSE NEW.id + 1 END,
            attempts = CASE WHEN status IN ('delivered', 'leased') THEN 0 ELSE attempts END,
            next_attempt_ms = CASE WHEN status IN ('delivered', 'leased')
                                   THEN NEW.created_ms ELSE next_attempt_ms END,
            lease_owner = CASE WHEN status = 'leased' THEN NULL ELSE lease_owner END,
            status = CASE WHEN status IN ('delivered', 'leased') THEN 'pending' ELSE status END,
            updated_ms = NEW.created_ms
        WHERE id = (SELECT MAX(id) FROM records
                    WHERE external_event_id = NEW.external_event_id AND email = ''
                      AND state = 'complete' AND external_account_id = NEW.external_account_id);"
    };
}

mod call_window;
mod credentials;
mod deliveries;
mod ingest;
mod operator;
mod plan;
mod postgres;
mod queue;
mod sqlite;

use std::{sync::Arc, time::Duration};

use crate::{record::NewRecord, settings::Settings};
pub use call_window::{Admission, CallWindow};
pub use credentials::{CredentialLock, Credentials, StoredCredential};
pub use deliveries::{DeferredDelivery, Deliveries, FetchOutcome};
pub use ingest::{Ingest, IngestOutcome};
pub use operator::{
    EventTally, Operator, OwedDelivery, RecordFilter, RetryCounts, RetryOutcome, SourceTally,
};
pub use postgres::PostgresStore;
pub use queue::{
    ClaimRequest, Claimed, ClaimedBatch, CompletionClaim, Queue, QueueStats, Settlement,
};
pub use sqlite::SqliteStore;

/// What went wrong, in the few kinds the HTTP layer and the background
/// tasks act on; each backend maps its own errors onto these.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Cannot take the work now (locked, disk full, connection lost): retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store is shut down")]
    Closed,
    /// Misconfigured or not this release's database: an operator must act.
    #[error("{0}")]
    Broken(String),
}

/// Lifecycle of a stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordStatus {
    /// Waiting to be forwarded (or being forwarded now).
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

    /// The status a stored status value shows as: a record leased to a
    /// forwarder is still pending to everyone but the queue; a delivery still
    /// to be fetched is pending, one that failed is a dead letter.
    pub(crate) fn from_stored(value: &str) -> Option<Self> {
        match value {
            "leased" | "fetch" | "fetching" => Some(RecordStatus::Pending),
            "failed" => Some(RecordStatus::Dead),
            other => Self::parse(other),
        }
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

/// A stored record, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: i64,
    pub source: String,
    pub status: RecordStatus,
    /// Times a forwarder has taken it.
    pub attempts: i64,
    /// When it was stored (epoch ms).
    pub created_ms: i64,
    /// Not forwarded before this (epoch ms): its arrival, or its retry time.
    pub next_attempt_ms: i64,
    /// Why its last attempt failed, or why it is dead.
    pub last_error: Option<String>,
    /// The request that brought it (`None`: stored by a release before request ids).
    pub request_id: Option<String>,
    pub record: NewRecord,
}

/// The columns both stores read a [`StoredRecord`] from, in this order, for a
/// query on `records` (aliased or not): the request id comes from the record's
/// delivery, which retention keeps as long as the record.
const RECORD_COLUMNS: &str = "id, source, state, status, email, first_name, last_name, vid,
    external_event_id, external_account_id, interaction_ms, properties, event_info,
    attempts, created_ms, next_attempt_ms, last_error, participant,
    (SELECT d.request_id FROM deliveries d WHERE d.id = delivery_id) AS request_id";

/// Milliseconds, saturating.
fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The whole store: every role. Open one with [`open`].
pub trait Store: Ingest + Queue + Deliveries + Credentials + CallWindow + Operator {}

impl<T> Store for T where T: Ingest + Queue + Deliveries + Credentials + CallWindow + Operator {}

/// Why the store cannot open; each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `RELAY_DATABASE_URL`, or a file it names, cannot work as written.
    #[error("RELAY_DATABASE_URL: {0}")]
    Setting(String),
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for OpenError {
    fn from(err: StoreError) -> Self {
        Self::Failed(err.to_string())
    }
}

/// How the PostgreSQL store connects (`RELAY_STORE_*`).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub pool_size: usize,
    /// How long the start waits for a server that is not up yet.
    pub connect_wait: Duration,
    /// The server stops a statement after this (0: never).
    pub statement_timeout: Duration,
}

impl StoreOptions {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            pool_size: settings.store_pool_size.get(),
            connect_wait: Duration::from_secs(settings.store_connect_timeout_secs),
            statement_timeout: Duration::from_millis(settings.store_statement_timeout_ms),
        }
    }
}

impl Default for StoreOptions {
    /// The settings' defaults.
    fn default() -> Self {
        Self::from_settings(&Settings::init_from_hashmap(&Default::default()).expect("defaults"))
    }
}

/// Opens the store named by `RELAY_DATABASE_URL`.
pub fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, OpenError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStore::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open(url, options)?));
    }
    Err(OpenError::Setting(format!(
        "unsupported database url (expected sqlite://path or postgres://…): {}://…",
        url.split("://").next().unwrap_or_default()
    )))
}

/// A lease token: unguessable enough that two claims never share one.
fn lease_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
