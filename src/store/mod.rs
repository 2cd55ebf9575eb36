//! Durable storage of deliveries and records, behind one interface so the
//! embedded SQLite store and a shared PostgreSQL store pass the same tests.
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

pub(crate) mod admin;
mod plan;
mod postgres;
mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    record::{Delivery, GroupKey, NewRecord, State},
    settings::{Secret, Settings},
};
pub use postgres::PostgresStore;
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

/// Queue depth for metrics. A delivery still to be fetched counts as one
/// pending entry, one that could not be fetched as one dead letter: each
/// stands for records the gateway owes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub by_status: Vec<(RecordStatus, i64)>,
    /// Arrival time (epoch ms) of the oldest pending record or delivery.
    pub oldest_pending_ms: Option<i64>,
}

impl QueueStats {
    /// From counts of stored statuses, records' and deliveries' alike.
    fn from_counts(
        counts: impl IntoIterator<Item = (String, i64)>,
        oldest_pending_ms: Option<i64>,
    ) -> Self {
        let mut by_status: Vec<(RecordStatus, i64)> = RecordStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for (stored, n) in counts {
            let status = RecordStatus::from_stored(&stored);
            if let Some(entry) = by_status.iter_mut().find(|(s, _)| Some(*s) == status) {
                entry.1 += n;
            }
        }
        Self {
            by_status,
            oldest_pending_ms,
        }
    }

    pub fn count(&self, status: RecordStatus) -> i64 {
        self.by_status
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| n)
            .sum()
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
    pub record: NewRecord,
}

/// What the forwarder asks of [`Store::claim`].
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// Most batches to take.
    pub max_batches: usize,
    pub batch_size: usize,
    /// A group's partial batch is taken once its oldest record waited this long.
    pub linger: Duration,
    /// How long the batches stay with the claimer unless renewed.
    pub lease: Duration,
}

/// What the forwarder asks of [`Store::claim_completions`].
#[derive(Clone, Debug)]
pub struct CompletionClaim {
    /// Most completions to take.
    pub max: usize,
    /// How long after its end (or after a late attendance record reopened
    /// it) a completion waits for late leaves.
    pub grace: Duration,
    pub lease: Duration,
}

/// Records of one group, taken together under one lease.
#[derive(Clone, Debug)]
pub struct ClaimedBatch {
    pub group: GroupKey,
    /// Proves the claim when renewing or settling.
    pub lease: String,
    pub records: Vec<StoredRecord>,
}

impl ClaimedBatch {
    /// A batch just taken under `lease`: each record has one more attempt.
    fn taken(lease: String, records: Vec<StoredRecord>) -> Self {
        Self {
            group: records[0].record.group(),
            lease,
            records: records
                .into_iter()
                .map(|r| StoredRecord {
                    attempts: r.attempts + 1,
                    ..r
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Claimed {
    pub batches: Vec<ClaimedBatch>,
    /// When the next batch will be ready, if any record is pending.
    pub next_ready_in: Option<Duration>,
}

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

/// The OAuth credential as last refreshed, shared by restarts and replicas.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// The installation it descends from: a hash of the configured refresh
    /// token, so configuring a new one supersedes what is stored.
    pub origin: String,
    pub refresh_token: Secret,
    pub access_token: Secret,
    pub expires_at_ms: i64,
    /// When it was refreshed (epoch ms, the refreshing replica's clock, like
    /// the expiry): with the expiry, the token's lifetime, so every replica
    /// refreshes it at the same point.
    pub refreshed_ms: i64,
}

/// A settlement as stored: the new status, due time and error of the record
/// (`None`: unchanged), and whether it was released untried.
struct SettledColumns<'a> {
    status: &'static str,
    next_attempt_ms: Option<i64>,
    error: Option<&'a str>,
    released: bool,
}

/// What became of a record the forwarder took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    /// Try again after `delay`.
    Retry {
        delay: Duration,
        error: String,
    },
    Dead {
        reason: String,
    },
    /// Not sent (forwarding paused): back to the queue as it was, the
    /// attempt not counted.
    Release,
}

impl Settlement {
    fn columns(&self, now_ms: i64) -> SettledColumns<'_> {
        let (status, next_attempt_ms, error) = match self {
            Settlement::Delivered => ("delivered", None, None),
            Settlement::Retry { delay, error } => (
                "pending",
                Some(now_ms.saturating_add(duration_ms(*delay))),
                Some(error.as_str()),
            ),
            Settlement::Dead { reason } => ("dead", None, Some(reason.as_str())),
            Settlement::Release => ("pending", None, None),
        };
        SettledColumns {
            status,
            next_attempt_ms,
            error,
            released: matches!(self, Settlement::Release),
        }
    }
}

/// Milliseconds, saturating.
fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a delivery and its records in one durable commit. A record
    /// already known (by [`NewRecord::dedupe_key`]) is not stored again. A
    /// record that [`NewRecord::closes_session`] takes the time of the open
    /// join it closes. A deferred delivery waits for [`Store::claim_deliveries`].
    async fn ingest(
        &self,
        delivery: Delivery,
        records: Vec<NewRecord>,
    ) -> Result<IngestOutcome, StoreError>;

    /// False once the store can no longer work (its writer died): the
    /// process must be restarted.
    fn alive(&self) -> bool;

    /// Proves the store takes a durable write now.
    async fn check_writable(&self) -> Result<(), StoreError>;

    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;

    /// Records in id order, optionally of one status (inspection and tests).
    async fn records(
        &self,
        status: Option<RecordStatus>,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Takes ready batches of attendance (never completions): whole groups' records, oldest first, at most one
    /// batch per group per round of the groups so every webinar progresses,
    /// full batches at once and a partial one only after it lingered. A batch
    /// whose lease runs out unsettled (its claimer died) is ready again.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claimed, StoreError>;

    /// Takes completions (records of [`State::Complete`]) that are due: past
    /// their grace (or their retry time), and with every attendance record of
    /// their event that arrived before them settled. Each comes as a batch
    /// of its own, settled like any other.
    async fn claim_completions(
        &self,
        request: &CompletionClaim,
    ) -> Result<Vec<ClaimedBatch>, StoreError>;

    /// Extends a batch's lease while its round is still working; false when
    /// the lease was lost (ran out and was taken by another).
    async fn renew(&self, lease: &str, extend: Duration) -> Result<bool, StoreError>;

    /// Records what became of a claimed batch's records, in one commit. Only
    /// records still held under `lease` change; returns how many did.
    async fn settle(
        &self,
        lease: &str,
        outcomes: Vec<(i64, Settlement)>,
    ) -> Result<usize, StoreError>;

    /// HubSpot works again: records waiting out a retry are due now.
    async fn expedite_retries(&self) -> Result<u64, StoreError>;

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

    /// The credential stored under `key`, if any.
    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>, StoreError>;

    /// Replaces the credential stored under `key`.
    async fn save_credential(
        &self,
        key: &str,
        credential: &StoredCredential,
    ) -> Result<(), StoreError>;

    /// Deletes at most `max_rows` settled records and deliveries older than
    /// `older_than_ms`; returns how many it removed. Small chunks keep the
    /// commits of ingest flowing while a large purge runs.
    async fn purge_settled(&self, older_than_ms: i64, max_rows: u64) -> Result<u64, StoreError>;

    /// Finishes writes in flight and stops taking new ones.
    async fn close(&self);

    // What replicas sharing the store must agree on. A store of one process
    // leaves it to the process (its limiter and its refresh lock suffice).

    /// Admits one HubSpot call for the whole deployment: `Ok(Some(call))` to
    /// pass to [`Store::call_answered`], `Ok(None)` when the store leaves the
    /// window to the process, or
    /// `Err(wait)` when the deployment's window (`limit` calls, each counted
    /// until `window` after its answer) is full or HubSpot asked every
    /// replica to pause.
    async fn admit_call(
        &self,
        _limit: u32,
        _window: Duration,
    ) -> Result<Result<Option<i64>, Duration>, StoreError> {
        Ok(Ok(None))
    }

    /// The call HubSpot answered: its place in the window starts to age.
    /// Returns the calls the deployment's window holds now.
    async fn call_answered(&self, _call: i64) -> Result<u32, StoreError> {
        Ok(0)
    }

    /// HubSpot asked to slow down: no replica calls for `pause`.
    async fn hold_calls(&self, _pause: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    /// Holds the deployment-wide lock of the credential `key` until the
    /// returned guard is dropped: one replica refreshes while the others
    /// wait, then re-read what it stored.
    async fn lock_credential(&self, _key: &str) -> Result<CredentialLock, StoreError> {
        Ok(CredentialLock { _held: None })
    }

    // Operations for the admin API and CLI.

    /// Records matching `filter` (its `reason` aside) with ids above `after`,
    /// in id order: a cursor that new records never disturb.
    async fn list_records(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Deferred deliveries still owed (to be fetched: pending; failed: dead)
    /// of `filter`'s status and source, with ids above `after`, in id order.
    async fn list_owed_deliveries(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OwedDelivery>, StoreError>;

    /// Makes the dead record `id` pending again, due now, its attempts
    /// counted from zero. `None`: no such record; `Some(false)`: not dead, so
    /// nothing changed (a second, concurrent retry of the same record).
    async fn retry_record(&self, id: i64) -> Result<Option<bool>, StoreError>;

    /// The same for a failed deferred delivery: to be fetched again.
    async fn retry_delivery(&self, id: i64) -> Result<Option<bool>, StoreError>;

    /// Retries, in one commit, every dead record and failed delivery that
    /// `filter` matches (its status aside; deliveries have no event, so an
    /// event filter leaves them out).
    async fn retry_dead(&self, filter: &RecordFilter) -> Result<RetryCounts, StoreError>;

    /// Records per (account, event, state, status) matching `filter`'s event
    /// and source.
    async fn event_tallies(&self, filter: &RecordFilter) -> Result<Vec<EventTally>, StoreError>;

    /// Records and owed deliveries per (source, status).
    async fn source_tallies(&self) -> Result<Vec<SourceTally>, StoreError>;
}

/// Held while a replica refreshes the credential (see [`Store::lock_credential`]).
pub struct CredentialLock {
    pub(crate) _held: Option<Box<dyn Send>>,
}

// ---- types of the operations for the admin API and CLI ----

/// Which records an operation is about; `None` matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFilter {
    pub status: Option<RecordStatus>,
    /// externalEventId.
    pub event: Option<String>,
    pub source: Option<String>,
    /// Part of the last error (a dead letter's reason).
    pub reason: Option<String>,
}

/// A deferred delivery whose records the gateway still owes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedDelivery {
    pub id: i64,
    pub source: String,
    /// Pending (to be fetched) or dead (failed).
    pub status: RecordStatus,
    pub attempts: i64,
    pub received_ms: i64,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// What a bulk retry made pending again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryCounts {
    pub records: u64,
    pub deliveries: u64,
}

/// How many records of one (account, event, state) have one status, and
/// when the first and last of them arrived (epoch ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTally {
    pub external_account_id: String,
    pub external_event_id: String,
    pub state: State,
    pub status: RecordStatus,
    pub count: i64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Records (and owed deliveries) of one source in one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTally {
    pub source: String,
    pub status: RecordStatus,
    pub count: i64,
}

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
