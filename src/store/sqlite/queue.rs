//! The forwarding queue on SQLite: claims and settlements run in the
//! writer's transaction, so no two claims ever see the same record pending.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{RECORD_COLUMNS, SqliteStore, row_to_record, sql_error};
use crate::store::{
    ClaimRequest, Claimed, ClaimedBatch, CompletionClaim, Queue, QueueStats, Settlement,
    StoreError, StoredRecord, duration_ms, lease_token,
    plan::{ClaimPlan, PendingGroup},
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Queue for SqliteStore {
    async fn queue_stats(&self) -> Result<QueueStats> {
        self.read(queue_stats).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claimed> {
        let request = request.clone();
        self.write(move |conn, now| claim(conn, &request, now))
            .await
    }

    async fn claim_completions(&self, request: &CompletionClaim) -> Result<Vec<ClaimedBatch>> {
        let request = request.clone();
        self.write(move |conn, now| claim_completions(conn, &request, now))
            .await
    }

    async fn renew(&self, lease: &str, extend: Duration) -> Result<bool> {
        let lease = lease.to_owned();
        let extend = i64::try_from(extend.as_millis()).unwrap_or(i64::MAX);
        self.write(move |conn, now| renew(conn, &lease, now.saturating_add(extend)))
            .await
    }

    async fn settle(&self, lease: &str, outcomes: Vec<(i64, Settlement)>) -> Result<usize> {
        let lease = lease.to_owned();
        self.write(move |conn, now| settle(conn, &lease, &outcomes, now))
            .await
    }

    async fn expedite_retries(&self) -> Result<u64> {
        self.write(expedite_retries).await
    }
}

fn queue_stats(conn: &Connection) -> Result<QueueStats> {
    let grouped = |sql: &str| -> Result<Vec<(String, i64)>> {
        conn.prepare_cached(sql)
            .and_then(|mut select| {
                select
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .map_err(sql_error)
    };
    let mut counts = grouped("SELECT status, COUNT(*) FROM records GROUP BY status")?;
    counts.extend(grouped(
        "SELECT status, COUNT(*) FROM deliveries WHERE status != 'done' GROUP BY status",
    )?);
    let oldest = |sql: &str| -> Result<Option<i64>> {
        conn.prepare_cached(sql)
            .and_then(|mut select| {
                select
                    .query_row([], |row| row.get::<_, Option<i64>>(0))
                    .optional()
            })
            .map(Option::flatten)
            .map_err(sql_error)
    };
    // Ids grow with arrival, so the lowest id of a status is its oldest.
    let oldest_pending_ms = [
        oldest("SELECT created_ms FROM records WHERE status = 'pending' ORDER BY id LIMIT 1")?,
        oldest("SELECT created_ms FROM records WHERE status = 'leased' ORDER BY id LIMIT 1")?,
        oldest("SELECT MIN(received_ms) FROM deliveries WHERE status IN ('fetch', 'fetching')")?,
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(QueueStats::from_counts(counts, oldest_pending_ms))
}

/// A group's due records, oldest due first.
fn due_of_group(
    conn: &Connection,
    group: i64,
    now: i64,
    limit: usize,
) -> Result<Vec<StoredRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records
         WHERE status = 'pending' AND group_id = ?1 AND next_attempt_ms <= ?2
         ORDER BY next_attempt_ms, id LIMIT ?3"
    ))
    .and_then(|mut select| {
        select
            .query_map(params![group, now, limit as i64], row_to_record)?
            .collect()
    })
    .map_err(sql_error)
}

/// Groups with pending records, when their first record is due and when
/// the first of those waiting out a retry is; a skip-scan of the queue
/// index, a few seeks per group.
fn pending_groups(conn: &Connection, now: i64) -> Result<Vec<PendingGroup>> {
    // Named, as the planner would rather read every pending row through
    // the status index (200 ms for 12,000 rows in 50 groups, against 7 ms).
    conn.prepare_cached(
        "WITH RECURSIVE g(id) AS (
             SELECT MIN(group_id) FROM records INDEXED BY records_queue WHERE status = 'pending'
             UNION ALL
             SELECT (SELECT MIN(group_id) FROM records INDEXED BY records_queue
                     WHERE status = 'pending' AND group_id > g.id)
             FROM g WHERE g.id IS NOT NULL)
         SELECT g.id, (SELECT MIN(next_attempt_ms) FROM records INDEXED BY records_queue
                       WHERE status = 'pending' AND group_id = g.id),
             (SELECT MIN(next_attempt_ms) FROM records INDEXED BY records_queue
              WHERE status = 'pending' AND group_id = g.id AND next_attempt_ms > ?1)
         FROM g WHERE g.id IS NOT NULL
           AND g.id NOT IN (SELECT id FROM groups WHERE state = 'complete')",
    )
    .and_then(|mut select| {
        select
            .query_map(params![now], |row| {
                Ok(PendingGroup {
                    id: row.get(0)?,
                    first_due: row.get(1)?,
                    retry_due: row.get(2)?,
                })
            })?
            .collect()
    })
    .map_err(sql_error)
}

/// A lease that ran out belongs to a forwarder that died mid-call: its
/// records are pending again.
fn release_expired(conn: &Connection, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE records SET status = 'pending', lease_owner = NULL
         WHERE status = 'leased' AND leased_until_ms <= ?1",
    )
    .and_then(|mut update| update.execute(params![now]))
    .map(drop)
    .map_err(sql_error)
}

/// Leases the records `ids` to `lease` until `lease_until`.
fn lease(conn: &Connection, ids: &[i64], lease: &str, lease_until: i64) -> Result<()> {
    let placeholders = vec!["?"; ids.len()].join(",");
    conn.prepare_cached(&format!(
        "UPDATE records SET status = 'leased', lease_owner = ?1, leased_until_ms = ?2,
             attempts = attempts + 1
         WHERE status = 'pending' AND id IN ({placeholders})"
    ))
    .and_then(|mut update| {
        let values: Vec<rusqlite::types::Value> = [lease.to_owned().into(), lease_until.into()]
            .into_iter()
            .chain(ids.iter().map(|id| (*id).into()))
            .collect();
        update.execute(params_from_iter(values))
    })
    .map(drop)
    .map_err(sql_error)
}

fn claim(conn: &Connection, request: &ClaimRequest, now: i64) -> Result<Claimed> {
    release_expired(conn, now)?;
    let mut plan = ClaimPlan::new(request, now, pending_groups(conn, now)?);
    let lease_until = now + duration_ms(request.lease);
    let mut batches = Vec::new();
    while let Some((group, limit)) = plan.next_read() {
        let chunk = due_of_group(conn, group, now, limit)?;
        if !plan.found(&chunk) {
            continue;
        }
        let token = lease_token();
        let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
        lease(conn, &ids, &token, lease_until)?;
        batches.push(ClaimedBatch::taken(token, chunk));
    }
    Ok(Claimed {
        next_ready_in: plan.next_ready_in(),
        batches,
    })
}

fn claim_completions(
    conn: &Connection,
    request: &CompletionClaim,
    now: i64,
) -> Result<Vec<ClaimedBatch>> {
    release_expired(conn, now)?;
    let due: Vec<StoredRecord> = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records c
             WHERE c.state = 'complete' AND c.status = 'pending'
               AND CASE WHEN c.attempts = 0 THEN c.next_attempt_ms + ?2
                        ELSE c.next_attempt_ms END <= ?1
               AND NOT EXISTS (
                   SELECT 1 FROM groups g JOIN records r ON r.group_id = g.id
                   WHERE g.external_account_id = c.external_account_id
                     AND g.external_event_id = c.external_event_id AND g.state != 'complete'
                     AND r.status = 'pending' AND r.id < COALESCE(c.covers_until, c.id))
               AND NOT EXISTS (
                   SELECT 1 FROM records r
                   WHERE r.status = 'leased' AND r.state != 'complete'
                     AND r.external_account_id = c.external_account_id
                     AND r.external_event_id = c.external_event_id
                     AND r.id < COALESCE(c.covers_until, c.id))
             ORDER BY c.id LIMIT ?3"
        ))
        .and_then(|mut select| {
            select
                .query_map(
                    params![now, duration_ms(request.grace), request.max as i64],
                    row_to_record,
                )?
                .collect()
        })
        .map_err(sql_error)?;
    let lease_until = now.saturating_add(duration_ms(request.lease));
    due.into_iter()
        .map(|completion| {
            let token = lease_token();
            lease(conn, &[completion.id], &token, lease_until)?;
            Ok(ClaimedBatch::taken(token, vec![completion]))
        })
        .collect()
}

fn renew(conn: &Connection, lease: &str, until: i64) -> Result<bool> {
    conn.prepare_cached(
        "UPDATE records SET leased_until_ms = ?2 WHERE status = 'leased' AND lease_owner = ?1",
    )
    .and_then(|mut update| update.execute(params![lease, until]))
    .map(|n| n > 0)
    .map_err(sql_error)
}

fn settle(
    conn: &Connection,
    lease: &str,
    outcomes: &[(i64, Settlement)],
    now: i64,
) -> Result<usize> {
    let mut changed = 0;
    for (id, outcome) in outcomes {
        let settled = outcome.columns(now);
        changed += conn
            .prepare_cached(
                "UPDATE records SET status = ?3, next_attempt_ms = COALESCE(?4, next_attempt_ms),
                     last_error = COALESCE(?5, last_error), leased_until_ms = NULL,
                     lease_owner = NULL,
                     attempts = CASE WHEN ?7 THEN MAX(attempts - 1, 0) ELSE attempts END,
                     updated_ms = CASE WHEN ?7 THEN updated_ms ELSE ?6 END
                 WHERE id = ?1 AND status = 'leased' AND lease_owner = ?2",
            )
            .and_then(|mut update| {
                update.execute(params![
                    id,
                    lease,
                    settled.status,
                    settled.next_attempt_ms,
                    settled.error,
                    now,
                    settled.released
                ])
            })
            .map_err(sql_error)?;
    }
    Ok(changed)
}

fn expedite_retries(conn: &Connection, now: i64) -> Result<u64> {
    conn.prepare_cached(
        "UPDATE records SET next_attempt_ms = ?1
         WHERE status = 'pending' AND next_attempt_ms > ?1 AND attempts > 0",
    )
    .and_then(|mut update| update.execute(params![now]))
    .map(|n| n as u64)
    .map_err(sql_error)
}
