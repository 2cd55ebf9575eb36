//! Which due records a claim takes, the same for every store: whole groups,
//! the longest-waiting group first, one batch per ready group per round,
//! full batches at once and a partial one only after it lingered, or, when
//! other records of its group wait out a retry, with that retry.

use std::time::Duration;

use super::{ClaimRequest, StoredRecord};

/// A group with pending records, as the store found it.
#[derive(Clone, Copy, Debug)]
pub struct PendingGroup {
    pub id: i64,
    /// When its first pending record is due.
    pub first_due: i64,
    /// When the first of its records that wait out a retry is due, if any do.
    pub retry_due: Option<i64>,
}

/// A claim in progress. The store reads chunks where [`ClaimPlan::next_read`]
/// says and reports them to [`ClaimPlan::found`], which says whether the
/// chunk is taken; the store leases a taken chunk at once, so the next read
/// of its group finds the records after it.
pub struct ClaimPlan {
    batch: usize,
    max_batches: usize,
    linger_ms: i64,
    now: i64,
    /// Longest waiting first.
    groups: Vec<PendingGroup>,
    open: Vec<bool>,
    current: usize,
    batches: usize,
    next_ready: Option<i64>,
}

impl ClaimPlan {
    pub fn new(request: &ClaimRequest, now: i64, mut groups: Vec<PendingGroup>) -> Self {
        groups.sort_by_key(|group| group.first_due);
        let n = groups.len();
        Self {
            batch: request.batch_size.max(1),
            max_batches: request.max_batches,
            linger_ms: i64::try_from(request.linger.as_millis()).unwrap_or(i64::MAX),
            now,
            groups,
            open: vec![true; n],
            current: 0,
            batches: 0,
            next_ready: None,
        }
    }

    fn soon(&mut self, at: i64) {
        self.next_ready = Some(self.next_ready.map_or(at, |t| t.min(at)));
    }

    /// The next chunk to read: a group, and how many of its due records.
    pub fn next_read(&mut self) -> Option<(i64, usize)> {
        while self.batches < self.max_batches && self.open.contains(&true) {
            let i = self.current;
            self.current = (self.current + 1) % self.groups.len();
            if !self.open[i] {
                continue;
            }
            let group = self.groups[i];
            if group.first_due > self.now {
                self.soon(group.first_due);
                self.open[i] = false;
                continue;
            }
            // Remember which group the next `found` belongs to.
            self.current = i;
            return Some((group.id, self.batch));
        }
        None
    }

    /// What the read found; true when the chunk is taken as a batch.
    pub fn found(&mut self, chunk: &[StoredRecord]) -> bool {
        let i = self.current;
        self.current = (i + 1) % self.groups.len();
        if chunk.len() < self.batch {
            // The group has nothing after this chunk.
            self.open[i] = false;
            match (chunk.first(), self.groups[i].retry_due) {
                (None, _) => return false,
                // What arrived while the rest of its group waits out a retry
                // travels with that retry, not alone before it.
                (Some(_), Some(retry_due)) => {
                    self.soon(retry_due);
                    return false;
                }
                (Some(first), None) if first.next_attempt_ms + self.linger_ms > self.now => {
                    self.soon(first.next_attempt_ms + self.linger_ms);
                    return false;
                }
                (Some(_), None) => {}
            }
        }
        self.batches += 1;
        true
    }

    /// When the next batch is ready: now if this claim took any (more may
    /// be waiting), else when a partial batch has lingered or a retry is due.
    pub fn next_ready_in(&self) -> Option<Duration> {
        if self.batches > 0 {
            return Some(Duration::ZERO);
        }
        self.next_ready
            .map(|at| Duration::from_millis(u64::try_from(at - self.now).unwrap_or(0)))
    }
}
