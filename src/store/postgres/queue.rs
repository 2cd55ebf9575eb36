//! The forwarding queue on PostgreSQL: claims take whole groups with
//! `FOR UPDATE SKIP LOCKED`, so two replicas never take the same record.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{PostgresStore, db_now, to_records};
use crate::store::{
    ClaimRequest, Claimed, ClaimedBatch, CompletionClaim, Queue, QueueStats, RECORD_COLUMNS,
    Settlement, StoreError, duration_ms, lease_token,
    plan::{ClaimPlan, PendingGroup},
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Queue for PostgresStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claimed> {
        let request = request.clone();
        self.with(move |mut client| async move { claim(&mut client, &request).await })
            .await
    }

    async fn claim_completions(&self, request: &CompletionClaim) -> Result<Vec<ClaimedBatch>> {
        let request = request.clone();
        self.with(move |mut client| async move { claim_completions(&mut client, &request).await })
            .await
    }

    async fn renew(&self, lease: &str, extend: Duration) -> Result<bool> {
        let (lease, extend) = (lease.to_owned(), duration_ms(extend));
        self.with(move |client| async move {
            let renewed = client
                .execute(
                    "UPDATE records
                     SET leased_until_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2
                     WHERE status = 'leased' AND lease_owner = $1",
                    &[&lease, &extend],
                )
                .await?;
            Ok(renewed > 0)
        })
        .await
    }

    async fn settle(&self, lease: &str, outcomes: Vec<(i64, Settlement)>) -> Result<usize> {
        let lease = lease.to_owned();
        self.with(move |client| async move {
            let now = db_now(&client).await?;
            let (mut ids, mut statuses, mut next, mut errors, mut released) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, outcome) in &outcomes {
                let settled = outcome.columns(now);
                ids.push(*id);
                statuses.push(settled.status);
                next.push(settled.next_attempt_ms);
                errors.push(settled.error.map(str::to_owned));
                released.push(settled.released);
            }
            // One statement for the whole batch.
            let settled = client
                .execute(
                    "UPDATE records r SET status = u.status,
                         next_attempt_ms = COALESCE(u.next_attempt_ms, r.next_attempt_ms),
                         last_error = COALESCE(u.error, r.last_error),
                         leased_until_ms = NULL, lease_owner = NULL,
                         attempts = CASE WHEN u.released THEN GREATEST(r.attempts - 1, 0) ELSE r.attempts END,
                         updated_ms = CASE WHEN u.released THEN r.updated_ms ELSE $6 END
                     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bool[])
                         AS u(id, status, next_attempt_ms, error, released)
                     WHERE r.id = u.id AND r.status = 'leased' AND r.lease_owner = $7",
                    &[&ids, &statuses, &next, &errors, &released, &now, &lease],
                )
                .await?;
            Ok(settled as usize)
        })
        .await
    }

    async fn expedite_retries(&self) -> Result<u64> {
        self.with(|client| async move {
            let now = db_now(&client).await?;
            Ok(client
                .execute(
                    "UPDATE records SET next_attempt_ms = $1
                     WHERE status = 'pending' AND next_attempt_ms > $1 AND attempts > 0",
                    &[&now],
                )
                .await?)
        })
        .await
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        self.with(|client| async move {
            let mut counts: Vec<(String, i64)> = Vec::new();
            for sql in [
                "SELECT status, COUNT(*) FROM records GROUP BY status",
                "SELECT status, COUNT(*) FROM deliveries WHERE status <> 'done' GROUP BY status",
            ] {
                let rows = client.query(sql, &[]).await?;
                counts.extend(rows.iter().map(|row| (row.get(0), row.get(1))));
            }
            let oldest: Option<i64> = client
                .query_one(
                    "SELECT LEAST(
                         (SELECT created_ms FROM records WHERE status = 'pending' ORDER BY id LIMIT 1),
                         (SELECT created_ms FROM records WHERE status = 'leased' ORDER BY id LIMIT 1),
                         (SELECT MIN(received_ms) FROM deliveries WHERE status IN ('fetch', 'fetching')))",
                    &[],
                )
                .await?
                .get(0);
            Ok(QueueStats::from_counts(counts, oldest))
        })
        .await
    }
}

/// A lease that ran out belongs to a forwarder that died mid-call: its
/// records are pending again.
async fn release_expired(tx: &impl GenericClient, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE records SET status = 'pending', lease_owner = NULL
         WHERE status = 'leased' AND leased_until_ms <= $1",
        &[&now],
    )
    .await?;
    Ok(())
}

/// Leases the records `ids` to a new lease until `lease_until`; the lease.
async fn lease(tx: &impl GenericClient, ids: &[i64], lease_until: i64) -> Result<String> {
    let lease = lease_token();
    tx.execute(
        "UPDATE records SET status = 'leased', lease_owner = $1, leased_until_ms = $2,
             attempts = attempts + 1
         WHERE id = ANY($3)",
        &[&lease, &lease_until, &ids],
    )
    .await?;
    Ok(lease)
}

async fn claim(client: &mut deadpool_postgres::Object, request: &ClaimRequest) -> Result<Claimed> {
    let tx = client.transaction().await?;
    let now = db_now(&tx).await?;
    release_expired(&tx, now).await?;
    // Groups with pending records: a skip-scan of the queue index.
    let groups: Vec<PendingGroup> = tx
        .query(
            "WITH RECURSIVE g(id) AS (
                 (SELECT group_id FROM records WHERE status = 'pending' ORDER BY group_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT r.group_id FROM records r
                         WHERE r.status = 'pending' AND r.group_id > g.id
                         ORDER BY r.group_id LIMIT 1)
                 FROM g WHERE g.id IS NOT NULL)
             SELECT g.id, (SELECT MIN(next_attempt_ms) FROM records
                           WHERE status = 'pending' AND group_id = g.id),
                 (SELECT MIN(next_attempt_ms) FROM records
                  WHERE status = 'pending' AND group_id = g.id AND next_attempt_ms > $1)
             FROM g WHERE g.id IS NOT NULL
               AND g.id NOT IN (SELECT id FROM groups WHERE state = 'complete')",
            &[&now],
        )
        .await?
        .iter()
        .filter_map(|row| {
            Some(PendingGroup {
                id: row.get(0),
                first_due: row.get::<_, Option<i64>>(1)?,
                retry_due: row.get(2),
            })
        })
        .collect();
    let mut plan = ClaimPlan::new(request, now, groups);
    let lease_until = now.saturating_add(duration_ms(request.lease));
    let mut batches = Vec::new();
    while let Some((group, limit)) = plan.next_read() {
        // A group another replica is claiming right now is skipped, not
        // waited for, and not shared: two claims reading one group at once
        // would split its next batch between them. (Ingest's key-share locks
        // on the group row do not conflict.)
        let rows = tx
            .query(
                &format!(
                    "WITH claiming AS (
                         SELECT id FROM groups WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED)
                     SELECT {RECORD_COLUMNS} FROM records
                     WHERE status = 'pending' AND group_id = (SELECT id FROM claiming)
                       AND next_attempt_ms <= $2
                     ORDER BY next_attempt_ms, id LIMIT $3 FOR UPDATE SKIP LOCKED"
                ),
                &[&group, &now, &(limit as i64)],
            )
            .await?;
        let chunk = to_records(&rows)?;
        if !plan.found(&chunk) {
            continue;
        }
        let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
        let lease = lease(&tx, &ids, lease_until).await?;
        batches.push(ClaimedBatch::taken(lease, chunk));
    }
    tx.commit().await?;
    Ok(Claimed {
        next_ready_in: plan.next_ready_in(),
        batches,
    })
}

async fn claim_completions(
    client: &mut deadpool_postgres::Object,
    request: &CompletionClaim,
) -> Result<Vec<ClaimedBatch>> {
    let tx = client.transaction().await?;
    let now = db_now(&tx).await?;
    release_expired(&tx, now).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM records c
                 WHERE c.state = 'complete' AND c.status = 'pending'
                   AND CASE WHEN c.attempts = 0 THEN c.next_attempt_ms + $2
                            ELSE c.next_attempt_ms END <= $1
                   AND NOT EXISTS (
                       SELECT 1 FROM groups g JOIN records r ON r.group_id = g.id
                       WHERE g.external_account_id = c.external_account_id
                         AND g.external_event_id = c.external_event_id
                         AND g.state <> 'complete'
                         AND r.status = 'pending' AND r.id < COALESCE(c.covers_until, c.id))
                   AND NOT EXISTS (
                       SELECT 1 FROM records r
                       WHERE r.status = 'leased' AND r.state <> 'complete'
                         AND r.external_account_id = c.external_account_id
                         AND r.external_event_id = c.external_event_id
                         AND r.id < COALESCE(c.covers_until, c.id))
                 ORDER BY c.id LIMIT $3 FOR UPDATE OF c SKIP LOCKED"
            ),
            &[&now, &duration_ms(request.grace), &(request.max as i64)],
        )
        .await?;
    let lease_until = now.saturating_add(duration_ms(request.lease));
    let mut completions = Vec::with_capacity(rows.len());
    for completion in to_records(&rows)? {
        let lease = lease(&tx, &[completion.id], lease_until).await?;
        completions.push(ClaimedBatch::taken(lease, vec![completion]));
    }
    tx.commit().await?;
    Ok(completions)
}
