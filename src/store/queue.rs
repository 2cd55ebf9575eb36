//! The queue role: the forwarder claims ready batches of records under a
//! lease and settles what became of them.

use std::time::Duration;

use async_trait::async_trait;

use super::{RecordStatus, StoreError, StoredRecord, duration_ms};
use crate::record::GroupKey;

/// What the forwarder asks of [`Queue::claim`].
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

/// What the forwarder asks of [`Queue::claim_completions`].
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
    pub(super) fn taken(lease: String, records: Vec<StoredRecord>) -> Self {
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

/// A settlement as stored: the new status, due time and error of the record
/// (`None`: unchanged), and whether it was released untried.
pub(super) struct SettledColumns<'a> {
    pub status: &'static str,
    pub next_attempt_ms: Option<i64>,
    pub error: Option<&'a str>,
    pub released: bool,
}

impl Settlement {
    pub(super) fn columns(&self, now_ms: i64) -> SettledColumns<'_> {
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
    pub(super) fn from_counts(
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

#[async_trait]
pub trait Queue: Send + Sync {
    /// Takes ready batches of attendance (never completions): whole groups'
    /// records, oldest first, at most one batch per group per round of the
    /// groups so every webinar progresses, full batches at once and a
    /// partial one only after it lingered. A partial batch of a group whose
    /// other records wait out a retry waits with them, so a record that
    /// arrived meanwhile joins their retry instead of travelling alone. A
    /// batch whose lease runs out unsettled (its claimer died) is ready again.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claimed, StoreError>;

    /// Takes completions (records of [`State::Complete`](crate::record::State::Complete)) that are due: past
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

    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;
}
