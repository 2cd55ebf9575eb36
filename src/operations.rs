//! What operators ask of the gateway — status, records, retries of dead
//! letters, the per-event view — answered once here for both the admin API
//! (`http/admin.rs`) and the operator subcommands (`cli.rs`), on whatever
//! store `RELAY_DATABASE_URL` names.
//!
//! Records and deferred deliveries (Eventbrite's pointers, whose records are
//! still to be fetched) are listed together; a delivery's id is `d` and its
//! number (`d17`), a record's the number alone, so one id names one thing.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    record::{State, format_utc, now_ms},
    settings::Settings,
    status::LiveStatus,
    store::{
        OwedDelivery, RecordFilter, RecordStatus, RetryCounts, RetryOutcome, Store, StoreError,
        StoredRecord,
    },
    token::CredentialError,
};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Invalid(String),
    #[error("no record or delivery has the id {0}")]
    UnknownRecord(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A record's or a deferred delivery's id as operators write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemId {
    Record(i64),
    Delivery(i64),
}

impl ItemId {
    pub fn parse(text: &str) -> Result<Self, OpsError> {
        let number = |digits: &str| digits.parse::<i64>().ok().filter(|n| *n > 0);
        match text.strip_prefix('d') {
            Some(digits) => number(digits).map(ItemId::Delivery),
            None => number(text).map(ItemId::Record),
        }
        .ok_or_else(|| {
            OpsError::Invalid(format!(
                "{text:?} is not an id: expected a record's number or d and a delivery's"
            ))
        })
    }
}

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemId::Record(id) => write!(f, "{id}"),
            ItemId::Delivery(id) => write!(f, "d{id}"),
        }
    }
}

/// Which records to list (the query of `GET /admin/records`, the arguments
/// of `records list`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub event: Option<String>,
    pub source: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Which events `GET /admin/events` (and `events`) shows.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub event: Option<String>,
    pub source: Option<String>,
}

/// Which dead letters to retry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    pub event: Option<String>,
    pub source: Option<String>,
    /// Part of the reason, case-insensitively.
    pub reason: Option<String>,
}

/// One record or deferred delivery, with what an operator needs to act and
/// no more: the attendee's email, not their name or the platform's body.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub id: String,
    /// `record`, or `delivery` for one whose records are still to be fetched.
    pub kind: &'static str,
    pub source: String,
    pub status: &'static str,
    pub state: Option<&'static str>,
    pub email: Option<String>,
    pub external_account_id: Option<String>,
    pub external_event_id: Option<String>,
    pub interaction_at: Option<String>,
    /// Times a forwarder (or fetcher) has taken it since it arrived or was retried.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub received_at: Option<String>,
    pub next_attempt_at: Option<String>,
}

impl From<StoredRecord> for Item {
    fn from(stored: StoredRecord) -> Self {
        let waiting = stored.status == RecordStatus::Pending;
        Item {
            id: ItemId::Record(stored.id).to_string(),
            kind: "record",
            source: stored.source,
            status: stored.status.as_str(),
            state: Some(stored.record.state.as_str()),
            email: Some(stored.record.email).filter(|email| !email.is_empty()),
            external_account_id: Some(stored.record.external_account_id),
            external_event_id: Some(stored.record.external_event_id),
            interaction_at: format_utc(stored.record.interaction_ms),
            attempts: stored.attempts,
            last_error: stored.last_error,
            received_at: format_utc(stored.created_ms),
            next_attempt_at: waiting
                .then(|| format_utc(stored.next_attempt_ms))
                .flatten(),
        }
    }
}

impl From<OwedDelivery> for Item {
    fn from(owed: OwedDelivery) -> Self {
        let waiting = owed.status == RecordStatus::Pending;
        Item {
            id: ItemId::Delivery(owed.id).to_string(),
            kind: "delivery",
            source: owed.source,
            status: owed.status.as_str(),
            state: None,
            email: None,
            external_account_id: None,
            external_event_id: None,
            interaction_at: None,
            attempts: owed.attempts,
            last_error: owed.last_error,
            received_at: format_utc(owed.received_ms),
            next_attempt_at: owed
                .next_attempt_ms
                .filter(|_| waiting)
                .and_then(format_utc),
        }
    }
}

/// A page of [`Item`]s: records in id order, then deferred deliveries.
#[derive(Debug, Serialize)]
pub struct Page {
    pub records: Vec<Item>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// What `retry` made of one id.
#[derive(Debug, Serialize)]
pub struct RetriedOne {
    pub id: String,
    /// False when it was not a dead letter (or another retry came first).
    pub retried: bool,
}

#[derive(Debug, Serialize)]
pub struct Retried {
    pub records: u64,
    pub deliveries: u64,
}

impl From<RetryCounts> for Retried {
    fn from(counts: RetryCounts) -> Self {
        Retried {
            records: counts.records,
            deliveries: counts.deliveries,
        }
    }
}

/// Records per status; every status present, zeros included.
pub type Counts = BTreeMap<&'static str, i64>;

fn zero_counts() -> Counts {
    RecordStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect()
}

/// "Did everyone arrive": one event's records by state and by status.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub external_account_id: String,
    pub external_event_id: String,
    /// Per state (register, attend, cancel), records per status.
    pub states: BTreeMap<&'static str, Counts>,
    /// All states together, per status.
    pub total: Counts,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub store: String,
    pub queue: Counts,
    /// Of the oldest record or delivery still to be forwarded or fetched.
    pub oldest_pending_age_seconds: Option<f64>,
    pub forwarding: Forwarding,
    pub credential: Credential,
    /// Per source, records (and owed deliveries) per status.
    pub sources: BTreeMap<String, Counts>,
}

#[derive(Debug, Serialize)]
pub struct Forwarding {
    /// `running`, `paused`, or `unknown` outside the running gateway.
    pub state: &'static str,
    pub reason: Option<String>,
}

/// The HubSpot credential's health; never a secret.
#[derive(Debug, Serialize)]
pub struct Credential {
    /// `oauth`, `static` or `none`.
    pub mode: &'static str,
    /// Of the held OAuth access token.
    pub expires_in_seconds: Option<i64>,
    pub last_refresh: Option<Refresh>,
}

#[derive(Debug, Serialize)]
pub struct Refresh {
    /// `success`, `refused` or `error`.
    pub outcome: &'static str,
    pub at: Option<String>,
}

pub struct Operations {
    store: Arc<dyn Store>,
    store_kind: String,
    credential_mode: &'static str,
    /// The running gateway's own state; `None` from the command line.
    live: Option<Arc<LiveStatus>>,
}

impl Operations {
    pub fn new(store: Arc<dyn Store>, settings: &Settings, live: Option<Arc<LiveStatus>>) -> Self {
        let credential_mode = match (&settings.hubspot_client_id, &settings.hubspot_access_token) {
            (Some(_), _) => "oauth",
            (None, Some(_)) => "static",
            (None, None) => "none",
        };
        Self {
            store,
            store_kind: settings
                .database_url
                .expose()
                .split("://")
                .next()
                .unwrap_or_default()
                .to_owned(),
            credential_mode,
            live,
        }
    }

    pub async fn status(&self) -> Result<Status, OpsError> {
        let stats = self.store.queue_stats().await?;
        let mut sources: BTreeMap<String, Counts> = BTreeMap::new();
        for tally in self.store.source_tallies().await? {
            *sources
                .entry(tally.source)
                .or_insert_with(zero_counts)
                .entry(tally.status.as_str())
                .or_default() += tally.count;
        }
        let now = now_ms();
        let live = self.live.as_deref().map(LiveStatus::snapshot);
        let forwarding = match (self.credential_mode, &live) {
            ("none", _) => Forwarding {
                state: "paused",
                reason: Some(CredentialError::Missing.to_string()),
            },
            (_, Some(live)) if live.pause_reason.is_some() => Forwarding {
                state: "paused",
                reason: live.pause_reason.clone(),
            },
            (_, Some(_)) => Forwarding {
                state: "running",
                reason: None,
            },
            (_, None) => Forwarding {
                state: "unknown",
                reason: Some("known only to the running gateway: GET /admin/status".into()),
            },
        };
        Ok(Status {
            version: env!("CARGO_PKG_VERSION"),
            store: self.store_kind.clone(),
            queue: RecordStatus::ALL
                .iter()
                .map(|s| (s.as_str(), stats.count(*s)))
                .collect(),
            oldest_pending_age_seconds: stats
                .oldest_pending_ms
                .map(|oldest| (now - oldest).max(0) as f64 / 1000.0),
            forwarding,
            credential: Credential {
                mode: self.credential_mode,
                expires_in_seconds: live
                    .as_ref()
                    .and_then(|live| live.token_expires_at_ms)
                    .map(|at| ((at - now) / 1000).max(0)),
                last_refresh: live
                    .and_then(|live| live.last_refresh)
                    .map(|(outcome, at)| Refresh {
                        outcome,
                        at: format_utc(at),
                    }),
            },
            sources,
        })
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Page, OpsError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(OpsError::Invalid(format!(
                "limit {limit}: expected 1 to {MAX_LIMIT}"
            )));
        }
        let filter = RecordFilter {
            status: query.status.as_deref().map(parse_status).transpose()?,
            event: query.event.clone(),
            source: query.source.clone(),
            reason: None,
        };
        let cursor = query.cursor.as_deref().map(ItemId::parse).transpose()?;
        let (records_after, deliveries_after) = match cursor {
            None => (Some(0), 0),
            Some(ItemId::Record(after)) => (Some(after), 0),
            Some(ItemId::Delivery(after)) => (None, after),
        };
        let mut items: Vec<Item> = Vec::new();
        if let Some(after) = records_after {
            let records = self.store.list_records(&filter, after, limit).await?;
            items.extend(records.into_iter().map(Item::from));
        }
        // A delivery has no event until it is fetched: an event filter lists records only.
        let room = limit - items.len() as i64;
        if room > 0 && filter.event.is_none() {
            let owed = self
                .store
                .list_owed_deliveries(&filter, deliveries_after, room)
                .await?;
            items.extend(owed.into_iter().map(Item::from));
        }
        let next_cursor = (items.len() as i64 == limit)
            .then(|| items.last().map(|item| item.id.clone()))
            .flatten();
        Ok(Page {
            records: items,
            next_cursor,
        })
    }

    pub async fn retry(&self, id: &str) -> Result<RetriedOne, OpsError> {
        let item = ItemId::parse(id)?;
        let retried = match item {
            ItemId::Record(id) => self.store.retry_record(id).await?,
            ItemId::Delivery(id) => self.store.retry_delivery(id).await?,
        };
        let retried = match retried {
            RetryOutcome::Unknown => return Err(OpsError::UnknownRecord(item.to_string())),
            RetryOutcome::NotDead => false,
            RetryOutcome::Retried => {
                tracing::info!(id = %item, "dead letter retried by an operator");
                true
            }
        };
        Ok(RetriedOne {
            id: item.to_string(),
            retried,
        })
    }

    pub async fn retry_dead(&self, query: &DeadQuery) -> Result<Retried, OpsError> {
        let counts = self.store.retry_dead(&dead_filter(query)).await?;
        tracing::info!(
            records = counts.records,
            deliveries = counts.deliveries,
            "dead letters retried by an operator"
        );
        Ok(counts.into())
    }

    pub async fn events(&self, query: &EventQuery) -> Result<Vec<EventView>, OpsError> {
        let filter = RecordFilter {
            event: query.event.clone(),
            source: query.source.clone(),
            ..RecordFilter::default()
        };
        let mut views: Vec<EventView> = Vec::new();
        // Tallies come sorted by account and event: each event's rows are adjacent.
        for tally in self.store.event_tallies(&filter).await? {
            let same = |v: &EventView| {
                v.external_account_id == tally.external_account_id
                    && v.external_event_id == tally.external_event_id
            };
            if !views.last().is_some_and(same) {
                views.push(EventView {
                    external_account_id: tally.external_account_id.clone(),
                    external_event_id: tally.external_event_id.clone(),
                    states: State::ALL
                        .iter()
                        .map(|s| (s.as_str(), zero_counts()))
                        .collect(),
                    total: zero_counts(),
                    first_seen: None,
                    last_seen: None,
                });
            }
            let view = views.last_mut().expect("pushed above");
            let status = tally.status.as_str();
            *view
                .states
                .entry(tally.state.as_str())
                .or_insert_with(zero_counts)
                .entry(status)
                .or_default() += tally.count;
            *view.total.entry(status).or_default() += tally.count;
            let first = format_utc(tally.first_ms);
            let last = format_utc(tally.last_ms);
            // RFC 3339 in UTC sorts as time does.
            if view.first_seen.is_none() || first < view.first_seen {
                view.first_seen = first;
            }
            if last > view.last_seen {
                view.last_seen = last;
            }
        }
        Ok(views)
    }
}

fn parse_status(text: &str) -> Result<RecordStatus, OpsError> {
    RecordStatus::parse(text).ok_or_else(|| {
        OpsError::Invalid(format!(
            "status {text:?}: expected pending, dead, unmappable or delivered"
        ))
    })
}

fn dead_filter(query: &DeadQuery) -> RecordFilter {
    RecordFilter {
        status: Some(RecordStatus::Dead),
        event: query.event.clone(),
        source: query.source.clone(),
        reason: query.reason.clone(),
    }
}
