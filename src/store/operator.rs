//! The operator role: what the admin API and the CLI ask of the store
//! (listing, retrying dead letters, tallies), and what the stores' queries
//! for it share: which stored statuses a status stands for, and how rows
//! become tallies.

use async_trait::async_trait;

use super::{RecordStatus, StoreError, StoredRecord};
use crate::record::State;

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
    /// The request that brought it (`None`: stored by a release before request ids).
    pub request_id: Option<String>,
}

/// What retrying one dead letter did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// It is pending again, due now, its attempts counted from zero.
    Retried,
    /// It is not dead, so nothing changed (a second, concurrent retry).
    NotDead,
    /// No such record or delivery.
    Unknown,
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

#[async_trait]
pub trait Operator: Send + Sync {
    /// Records in id order, optionally of one status (inspection and tests).
    async fn records(
        &self,
        status: Option<RecordStatus>,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let filter = RecordFilter {
            status,
            ..RecordFilter::default()
        };
        self.list_records(&filter, 0, limit).await
    }

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
    /// counted from zero.
    async fn retry_record(&self, id: i64) -> Result<RetryOutcome, StoreError>;

    /// The same for a failed deferred delivery: to be fetched again.
    async fn retry_delivery(&self, id: i64) -> Result<RetryOutcome, StoreError>;

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

impl RetryOutcome {
    /// The retry changed nothing: the row is not dead, or there is none.
    pub(super) fn unchanged(exists: bool) -> Self {
        if exists {
            RetryOutcome::NotDead
        } else {
            RetryOutcome::Unknown
        }
    }
}

/// The stored statuses of records a status stands for, as an SQL list: a
/// leased record is pending to everyone but the queue.
pub(super) fn record_statuses(status: Option<RecordStatus>) -> &'static str {
    match status {
        None => "'pending', 'leased', 'unmappable', 'delivered', 'dead'",
        Some(RecordStatus::Pending) => "'pending', 'leased'",
        Some(RecordStatus::Unmappable) => "'unmappable'",
        Some(RecordStatus::Delivered) => "'delivered'",
        Some(RecordStatus::Dead) => "'dead'",
    }
}

/// The same for deferred deliveries still owed; `None`: no delivery has it.
pub(super) fn delivery_statuses(status: Option<RecordStatus>) -> Option<&'static str> {
    match status {
        None => Some("'fetch', 'fetching', 'failed'"),
        Some(RecordStatus::Pending) => Some("'fetch', 'fetching'"),
        Some(RecordStatus::Dead) => Some("'failed'"),
        Some(RecordStatus::Unmappable | RecordStatus::Delivered) => None,
    }
}

/// `%part%` for `LOWER(column) LIKE ? ESCAPE '\'`: the operator's text matched
/// literally and case-insensitively.
pub(super) fn contains_pattern(part: Option<&str>) -> Option<String> {
    part.map(|part| {
        let escaped = part
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    })
}

/// A row of (account, event, state, stored status, count, first, last).
pub(super) fn event_tally(
    (account, event, state, status, count, first_ms, last_ms): (
        String,
        String,
        String,
        String,
        i64,
        i64,
        i64,
    ),
) -> Option<EventTally> {
    Some(EventTally {
        external_account_id: account,
        external_event_id: event,
        state: State::parse(&state)?,
        status: RecordStatus::from_stored(&status)?,
        count,
        first_ms,
        last_ms,
    })
}

/// Counts per (source, stored status) of records and deliveries, folded
/// into the statuses operators see.
pub(super) fn source_tallies(
    rows: impl IntoIterator<Item = (String, String, i64)>,
) -> Vec<SourceTally> {
    let mut tallies: Vec<SourceTally> = Vec::new();
    for (source, stored, count) in rows {
        let Some(status) = RecordStatus::from_stored(&stored) else {
            continue;
        };
        match tallies
            .iter_mut()
            .find(|t| t.source == source && t.status == status)
        {
            Some(tally) => tally.count += count,
            None => tallies.push(SourceTally {
                source,
                status,
                count,
            }),
        }
    }
    tallies.sort_by(|a, b| (&a.source, a.status.as_str()).cmp(&(&b.source, b.status.as_str())));
    tallies
}
