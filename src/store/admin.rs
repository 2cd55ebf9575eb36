//! What the admin API's and CLI's queries share across stores: which stored
//! statuses a status stands for, and how rows become tallies.

use super::{EventTally, RecordStatus, SourceTally};
use crate::record::State;

/// The stored statuses of records a status stands for, as an SQL list: a
/// leased record is pending to everyone but the queue.
pub fn record_statuses(status: Option<RecordStatus>) -> &'static str {
    match status {
        None => "'pending', 'leased', 'unmappable', 'delivered', 'dead'",
        Some(RecordStatus::Pending) => "'pending', 'leased'",
        Some(RecordStatus::Unmappable) => "'unmappable'",
        Some(RecordStatus::Delivered) => "'delivered'",
        Some(RecordStatus::Dead) => "'dead'",
    }
}

/// The same for deferred deliveries still owed; `None`: no delivery has it.
pub fn delivery_statuses(status: Option<RecordStatus>) -> Option<&'static str> {
    match status {
        None => Some("'fetch', 'fetching', 'failed'"),
        Some(RecordStatus::Pending) => Some("'fetch', 'fetching'"),
        Some(RecordStatus::Dead) => Some("'failed'"),
        Some(RecordStatus::Unmappable | RecordStatus::Delivered) => None,
    }
}

/// `%part%` for `LOWER(column) LIKE ? ESCAPE '\'`: the operator's text matched
/// literally and case-insensitively.
pub fn contains_pattern(part: Option<&str>) -> Option<String> {
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
pub fn event_tally(
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
pub fn source_tallies(rows: impl IntoIterator<Item = (String, String, i64)>) -> Vec<SourceTally> {
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
