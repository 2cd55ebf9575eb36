//! The statements behind the admin API and the operator subcommands on
//! SQLite: listing, retrying dead letters, tallies (`?N IS NULL OR …` for an
//! optional filter).

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{RECORD_COLUMNS, SqliteStore, row_to_record, sql_error};
use crate::store::{
    EventTally, Operator, OwedDelivery, RecordFilter, RecordStatus, RetryCounts, RetryOutcome,
    SourceTally, StoreError, StoredRecord,
    operator::{
        contains_pattern, delivery_statuses, event_tally, record_statuses,
        source_tallies as fold_tallies,
    },
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Operator for SqliteStore {
    async fn list_records(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>> {
        let filter = filter.clone();
        self.read(move |conn| list_records(conn, &filter, after, limit))
            .await
    }

    async fn list_owed_deliveries(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OwedDelivery>> {
        let filter = filter.clone();
        self.read(move |conn| list_owed_deliveries(conn, &filter, after, limit))
            .await
    }

    async fn retry_record(&self, id: i64) -> Result<RetryOutcome> {
        self.write(move |conn, now| retry_record(conn, id, now))
            .await
    }

    async fn retry_delivery(&self, id: i64) -> Result<RetryOutcome> {
        self.write(move |conn, now| retry_delivery(conn, id, now))
            .await
    }

    async fn retry_dead(&self, filter: &RecordFilter) -> Result<RetryCounts> {
        let filter = filter.clone();
        self.write(move |conn, now| retry_dead(conn, &filter, now))
            .await
    }

    async fn event_tallies(&self, filter: &RecordFilter) -> Result<Vec<EventTally>> {
        let filter = filter.clone();
        self.read(move |conn| event_tallies(conn, &filter)).await
    }

    async fn source_tallies(&self) -> Result<Vec<SourceTally>> {
        self.read(source_tallies).await
    }
}

fn list_records(
    conn: &Connection,
    filter: &RecordFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records
         WHERE status IN ({}) AND id > ?1
           AND (?2 IS NULL OR external_event_id = ?2) AND (?3 IS NULL OR source = ?3)
         ORDER BY id LIMIT ?4",
        record_statuses(filter.status)
    ))
    .and_then(|mut select| {
        select
            .query_map(
                params![after, filter.event, filter.source, limit],
                row_to_record,
            )?
            .collect()
    })
    .map_err(sql_error)
}

fn list_owed_deliveries(
    conn: &Connection,
    filter: &RecordFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<OwedDelivery>> {
    let Some(statuses) = delivery_statuses(filter.status) else {
        return Ok(Vec::new());
    };
    conn.prepare_cached(&format!(
        "SELECT id, source, status, attempts, received_ms, next_attempt_ms, last_error,
             request_id
         FROM deliveries
         WHERE status IN ({statuses}) AND id > ?1 AND (?2 IS NULL OR source = ?2)
         ORDER BY id LIMIT ?3"
    ))
    .and_then(|mut select| {
        select
            .query_map(params![after, filter.source, limit], |row| {
                let status: String = row.get(2)?;
                Ok(OwedDelivery {
                    id: row.get(0)?,
                    source: row.get(1)?,
                    status: RecordStatus::from_stored(&status).unwrap_or(RecordStatus::Pending),
                    attempts: row.get(3)?,
                    received_ms: row.get(4)?,
                    next_attempt_ms: row.get(5)?,
                    last_error: row.get(6)?,
                    request_id: row.get(7)?,
                })
            })?
            .collect()
    })
    .map_err(sql_error)
}

/// Only a dead record changes: the `status = 'dead'` condition is what makes
/// a second retry, concurrent or from another replica, a no-op.
fn retry_record(conn: &Connection, id: i64, now: i64) -> Result<RetryOutcome> {
    retry_one(conn, "records", "'dead'", "'pending'", id, now)
}

/// A failed delivery is to be fetched again, under the same condition.
fn retry_delivery(conn: &Connection, id: i64, now: i64) -> Result<RetryOutcome> {
    retry_one(conn, "deliveries", "'failed'", "'fetch'", id, now)
}

/// `table` and the statuses are ours, never the caller's text.
fn retry_one(
    conn: &Connection,
    table: &str,
    dead: &str,
    again: &str,
    id: i64,
    now: i64,
) -> Result<RetryOutcome> {
    let changed = conn
        .prepare_cached(&format!(
            "UPDATE {table} SET status = {again}, next_attempt_ms = ?2, attempts = 0,
                 updated_ms = ?2
             WHERE id = ?1 AND status = {dead}"
        ))
        .and_then(|mut update| update.execute(params![id, now]))
        .map_err(sql_error)?;
    if changed > 0 {
        return Ok(RetryOutcome::Retried);
    }
    let exists: bool = conn
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = ?1)"
        ))
        .and_then(|mut select| select.query_row(params![id], |row| row.get(0)))
        .map_err(sql_error)?;
    Ok(RetryOutcome::unchanged(exists))
}

fn retry_dead(conn: &Connection, filter: &RecordFilter, now: i64) -> Result<RetryCounts> {
    let reason = contains_pattern(filter.reason.as_deref());
    let records = conn
        .prepare_cached(
            "UPDATE records SET status = 'pending', next_attempt_ms = ?1, attempts = 0,
                 updated_ms = ?1
             WHERE status = 'dead' AND (?2 IS NULL OR external_event_id = ?2)
               AND (?3 IS NULL OR source = ?3)
               AND (?4 IS NULL OR LOWER(last_error) LIKE ?4 ESCAPE '\\')",
        )
        .and_then(|mut update| update.execute(params![now, filter.event, filter.source, reason]))
        .map_err(sql_error)? as u64;
    if filter.event.is_some() {
        // A delivery's event is known only once it is fetched.
        return Ok(RetryCounts {
            records,
            deliveries: 0,
        });
    }
    let deliveries = conn
        .prepare_cached(
            "UPDATE deliveries SET status = 'fetch', next_attempt_ms = ?1, attempts = 0,
                 updated_ms = ?1
             WHERE status = 'failed' AND (?2 IS NULL OR source = ?2)
               AND (?3 IS NULL OR LOWER(last_error) LIKE ?3 ESCAPE '\\')",
        )
        .and_then(|mut update| update.execute(params![now, filter.source, reason]))
        .map_err(sql_error)? as u64;
    Ok(RetryCounts {
        records,
        deliveries,
    })
}

fn event_tallies(conn: &Connection, filter: &RecordFilter) -> Result<Vec<EventTally>> {
    let rows: Vec<(String, String, String, String, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT external_account_id, external_event_id, state, status, COUNT(*),
                 MIN(created_ms), MAX(created_ms)
             FROM records
             WHERE (?1 IS NULL OR external_event_id = ?1) AND (?2 IS NULL OR source = ?2)
             GROUP BY external_account_id, external_event_id, state, status
             ORDER BY external_account_id, external_event_id, state, status",
        )
        .and_then(|mut select| {
            select
                .query_map(params![filter.event, filter.source], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                })?
                .collect()
        })
        .map_err(sql_error)?;
    Ok(rows.into_iter().filter_map(event_tally).collect())
}

fn source_tallies(conn: &Connection) -> Result<Vec<SourceTally>> {
    let grouped = |sql: &str| -> Result<Vec<(String, String, i64)>> {
        conn.prepare_cached(sql)
            .and_then(|mut select| {
                select
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect()
            })
            .map_err(sql_error)
    };
    let rows = grouped("SELECT source, status, COUNT(*) FROM records GROUP BY source, status")?
        .into_iter()
        .chain(grouped(
            "SELECT source, status, COUNT(*) FROM deliveries WHERE status != 'done'
             GROUP BY source, status",
        )?);
    Ok(fold_tallies(rows))
}
