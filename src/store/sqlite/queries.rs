//! The statements behind the store's operations; each runs inside the
//! writer's group transaction or on a reader connection.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::sql_error;
use crate::{
    record::{Delivery, EventInfo, GroupKey, NewRecord, State},
    store::{
        ClaimRequest, Claimed, ClaimedBatch, CompletionClaim, DeferredDelivery, FetchOutcome,
        IngestOutcome, QueueStats, RecordStatus, Settlement, StoreError, StoredRecord, duration_ms,
        lease_token, plan::ClaimPlan,
    },
};

type Result<T> = std::result::Result<T, StoreError>;

pub fn insert_delivery(
    conn: &Connection,
    delivery: &Delivery,
    records: &[NewRecord],
    now: i64,
) -> Result<IngestOutcome> {
    conn.prepare_cached(
        "INSERT INTO deliveries (source, received_ms, body, status, next_attempt_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?2, ?2)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            delivery.source,
            delivery.received_ms,
            delivery.body,
            if delivery.deferred { "fetch" } else { "done" },
        ])
    })
    .map_err(sql_error)?;
    let delivery_id = conn.last_insert_rowid();
    let fresh = insert_records(conn, delivery_id, delivery.source, now, records)?;
    if !delivery.deferred && !fresh.contains(&true) {
        // Nothing new: a repeated delivery leaves no trace to purge later.
        conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1")
            .and_then(|mut delete| delete.execute(params![delivery_id]))
            .map_err(sql_error)?;
    }
    Ok(IngestOutcome { fresh })
}

fn group_id(conn: &Connection, group: &GroupKey) -> Result<i64> {
    let key = params![
        group.external_account_id,
        group.external_event_id,
        group.state.as_str()
    ];
    let found = conn
        .prepare_cached(
            "SELECT id FROM groups
             WHERE external_account_id = ?1 AND external_event_id = ?2 AND state = ?3",
        )
        .and_then(|mut select| select.query_row(key, |row| row.get(0)).optional())
        .map_err(sql_error)?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO groups (external_account_id, external_event_id, state) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut insert| insert.execute(key))
    .map_err(sql_error)?;
    Ok(conn.last_insert_rowid())
}

/// The interaction time of the latest open join (an `attend` with `joinedAt`
/// and no `leftAt`) of this contact at this event, at or before `at_ms`.
fn open_join(conn: &Connection, source: &str, record: &NewRecord) -> Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MAX(interaction_ms) FROM records
         WHERE external_event_id = ?1 AND email = ?2 AND source = ?3 AND state = 'attend'
           AND external_account_id = ?4 AND interaction_ms <= ?5
           AND json_extract(properties, '$.joinedAt') IS NOT NULL
           AND json_extract(properties, '$.leftAt') IS NULL",
    )
    .and_then(|mut select| {
        select.query_row(
            params![
                record.external_event_id,
                record.email,
                source,
                record.external_account_id,
                record.interaction_ms
            ],
            |row| row.get(0),
        )
    })
    .map_err(sql_error)
}

/// Stores records; per record, whether it was new.
pub fn insert_records(
    conn: &Connection,
    delivery_id: i64,
    source: &str,
    now: i64,
    records: &[NewRecord],
) -> Result<Vec<bool>> {
    records
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if record.wants_join()
                && let Some(joined_ms) = open_join(conn, source, &record)?
            {
                record.close_session(joined_ms);
            }
            let group = group_id(conn, &record.group())?;
            let properties =
                serde_json::to_string(&record.properties).expect("string map serializes");
            let event_info = record
                .event
                .as_ref()
                .map(|e| serde_json::to_string(e).expect("serializes"));
            conn.prepare_cached(
                "INSERT INTO records (delivery_id, group_id, dedupe_key, source, state, email,
                     first_name, last_name, vid, participant, external_event_id, external_account_id,
                     interaction_ms, properties, event_info, status, next_attempt_ms, created_ms,
                     updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?17, ?17)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    delivery_id,
                    group,
                    &record.dedupe_key(source)[..],
                    source,
                    record.state.as_str(),
                    record.email,
                    record.first_name,
                    record.last_name,
                    record.vid,
                    record.participant,
                    record.external_event_id,
                    record.external_account_id,
                    record.interaction_ms,
                    properties,
                    event_info,
                    RecordStatus::initial(&record).as_str(),
                    now,
                ])
            })
            .map(|n| n == 1)
            .map_err(sql_error)
        })
        .collect()
}

/// Columns [`row_to_record`] reads, in its order.
pub const RECORD_COLUMNS: &str = "id, source, state, status, email, first_name, last_name, vid,
    external_event_id, external_account_id, interaction_ms, properties, event_info,
    attempts, created_ms, next_attempt_ms, last_error, participant";

pub fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let text_err = |i, msg: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.into())
    };
    let state: String = row.get(2)?;
    let status: String = row.get(3)?;
    let properties: String = row.get(11)?;
    let event_info: Option<String> = row.get(12)?;
    let status = RecordStatus::from_stored(&status)
        .ok_or_else(|| text_err(3, format!("status {status}")))?;
    Ok(StoredRecord {
        id: row.get(0)?,
        source: row.get(1)?,
        status,
        attempts: row.get(13)?,
        created_ms: row.get(14)?,
        next_attempt_ms: row.get(15)?,
        last_error: row.get(16)?,
        record: NewRecord {
            state: State::parse(&state).ok_or_else(|| text_err(2, format!("state {state}")))?,
            email: row.get(4)?,
            first_name: row.get(5)?,
            last_name: row.get(6)?,
            vid: row.get(7)?,
            external_event_id: row.get(8)?,
            external_account_id: row.get(9)?,
            interaction_ms: row.get(10)?,
            properties: serde_json::from_str::<BTreeMap<String, String>>(&properties)
                .map_err(|e| text_err(11, e.to_string()))?,
            event: event_info
                .map(|json| serde_json::from_str::<EventInfo>(&json))
                .transpose()
                .map_err(|e| text_err(12, e.to_string()))?,
            sender_id: None,
            participant: row.get(17)?,
            closes_session: false,
        },
    })
}

pub fn queue_stats(conn: &Connection) -> Result<QueueStats> {
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

/// Groups with pending records and when their first record is due; a
/// skip-scan of the queue index, one seek per group.
fn pending_groups(conn: &Connection) -> Result<Vec<(i64, i64)>> {
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
                       WHERE status = 'pending' AND group_id = g.id)
         FROM g WHERE g.id IS NOT NULL
           AND g.id NOT IN (SELECT id FROM groups WHERE state = 'complete')",
    )
    .and_then(|mut select| {
        select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
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

pub fn claim(conn: &Connection, request: &ClaimRequest, now: i64) -> Result<Claimed> {
    release_expired(conn, now)?;
    let mut plan = ClaimPlan::new(request, now, pending_groups(conn)?);
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

pub fn claim_completions(
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

pub fn renew(conn: &Connection, lease: &str, until: i64) -> Result<bool> {
    conn.prepare_cached(
        "UPDATE records SET leased_until_ms = ?2 WHERE status = 'leased' AND lease_owner = ?1",
    )
    .and_then(|mut update| update.execute(params![lease, until]))
    .map(|n| n > 0)
    .map_err(sql_error)
}

pub fn settle(
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

pub fn expedite_retries(conn: &Connection, now: i64) -> Result<u64> {
    conn.prepare_cached(
        "UPDATE records SET next_attempt_ms = ?1
         WHERE status = 'pending' AND next_attempt_ms > ?1 AND attempts > 0",
    )
    .and_then(|mut update| update.execute(params![now]))
    .map(|n| n as u64)
    .map_err(sql_error)
}

pub fn claim_deliveries(
    conn: &Connection,
    limit: usize,
    lease_until: i64,
    now: i64,
) -> Result<Vec<DeferredDelivery>> {
    conn.prepare_cached(
        "UPDATE deliveries SET status = 'fetch', lease_owner = NULL
         WHERE status = 'fetching' AND leased_until_ms <= ?1",
    )
    .and_then(|mut update| update.execute(params![now]))
    .map_err(sql_error)?;
    let due: Vec<DeferredDelivery> = conn
        .prepare_cached(
            "SELECT id, source, body, attempts, received_ms FROM deliveries
             WHERE status = 'fetch' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms, id LIMIT ?2",
        )
        .and_then(|mut select| {
            select
                .query_map(params![now, limit as i64], |row| {
                    Ok(DeferredDelivery {
                        id: row.get(0)?,
                        source: row.get(1)?,
                        body: row.get(2)?,
                        attempts: row.get::<_, i64>(3)? + 1,
                        received_ms: row.get(4)?,
                        lease: lease_token(),
                    })
                })?
                .collect()
        })
        .map_err(sql_error)?;
    for delivery in &due {
        conn.prepare_cached(
            "UPDATE deliveries SET status = 'fetching', lease_owner = ?2, leased_until_ms = ?3,
                 attempts = attempts + 1
             WHERE id = ?1",
        )
        .and_then(|mut update| update.execute(params![delivery.id, delivery.lease, lease_until]))
        .map_err(sql_error)?;
    }
    Ok(due)
}

pub fn settle_delivery(
    conn: &Connection,
    delivery: &DeferredDelivery,
    outcome: &FetchOutcome,
    now: i64,
) -> Result<IngestOutcome> {
    let held: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deliveries
                            WHERE id = ?1 AND status = 'fetching' AND lease_owner = ?2)",
        )
        .and_then(|mut select| {
            select.query_row(params![delivery.id, delivery.lease], |row| row.get(0))
        })
        .map_err(sql_error)?;
    if !held {
        // The lease ran out and another fetcher owns the delivery now.
        return Ok(IngestOutcome::default());
    }
    let (status, next_attempt, error, fresh) = match outcome {
        FetchOutcome::Resolved { records, problem } => {
            let fresh = insert_records(conn, delivery.id, &delivery.source, now, records)?;
            let status = if problem.is_some() { "failed" } else { "done" };
            (status, None, problem.as_deref(), fresh)
        }
        FetchOutcome::Retry { delay, error } => (
            "fetch",
            Some(now + duration_ms(*delay)),
            Some(error.as_str()),
            Vec::new(),
        ),
        FetchOutcome::Failed { reason } => ("failed", None, Some(reason.as_str()), Vec::new()),
    };
    conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, next_attempt_ms = COALESCE(?3, next_attempt_ms),
             last_error = ?4, lease_owner = NULL, leased_until_ms = NULL, updated_ms = ?5
         WHERE id = ?1",
    )
    .and_then(|mut update| update.execute(params![delivery.id, status, next_attempt, error, now]))
    .map_err(sql_error)?;
    Ok(IngestOutcome { fresh })
}

pub fn purge_settled(conn: &Connection, older_than_ms: i64, max_rows: u64) -> Result<u64> {
    let records = conn
        .prepare_cached(
            "DELETE FROM records WHERE id IN (
                 SELECT id FROM records
                 WHERE status IN ('delivered', 'dead', 'unmappable') AND updated_ms < ?1
                 ORDER BY updated_ms LIMIT ?2)",
        )
        .and_then(|mut delete| delete.execute(params![older_than_ms, max_rows as i64]))
        .map_err(sql_error)? as u64;
    let room = max_rows.saturating_sub(records);
    if room == 0 {
        return Ok(records);
    }
    let deliveries = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.received_ms < ?1 AND d.status IN ('done', 'failed')
                   AND NOT EXISTS (SELECT 1 FROM records r WHERE r.delivery_id = d.id)
                 ORDER BY d.id LIMIT ?2)",
        )
        .and_then(|mut delete| delete.execute(params![older_than_ms, room as i64]))
        .map_err(sql_error)? as u64;
    Ok(records + deliveries)
}
