//! The platform-neutral attendance record every source produces and the
//! store and forwarder work on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a record tells HubSpot: a contact's `subscriberState` (the path
/// segment of its attendance `create`), or that the event is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Register,
    Attend,
    Cancel,
    /// Event-level: complete the marketing event, so HubSpot computes each
    /// attendee's duration. Forwarded on its own, once the attendance it
    /// covers is settled (see [`NewRecord::completion`]).
    Complete,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Register,
        State::Attend,
        State::Cancel,
        State::Complete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Register => "register",
            State::Attend => "attend",
            State::Cancel => "cancel",
            State::Complete => "complete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// What the platform told us about the event itself; kept so a missing HubSpot
/// marketing event can be created from it later.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// Records of one `create` path: same account, event and state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub external_account_id: String,
    pub external_event_id: String,
    pub state: State,
}

/// One attendance fact, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub state: State,
    /// Lower-cased; empty when the platform withheld it (then the record is
    /// kept for inspection but cannot be forwarded).
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// HubSpot contact id when the sender already knows it.
    pub vid: Option<i64>,
    pub external_event_id: String,
    pub external_account_id: String,
    /// Epoch milliseconds.
    pub interaction_ms: i64,
    pub properties: BTreeMap<String, String>,
    pub event: Option<EventInfo>,
    /// The sender's own id for the record, when the platform gives one; it is
    /// then the record's identity (not kept in the store).
    pub sender_id: Option<String>,
    /// The platform's id for a participant it sent no email for, so two
    /// guests are two records (kept for inspection).
    pub participant: Option<String>,
    /// A leave: the store gives it the time of the open join it closes
    /// (`joinedAt` and the interaction time), where it has that join.
    pub closes_session: bool,
}

impl NewRecord {
    pub fn group(&self) -> GroupKey {
        GroupKey {
            external_account_id: self.external_account_id.clone(),
            external_event_id: self.external_event_id.clone(),
            state: self.state,
        }
    }

    /// Whether the store must look up the open join this leave closes.
    pub fn wants_join(&self) -> bool {
        self.closes_session && !self.email.is_empty()
    }

    /// This leave closes the session that opened at `joined_ms`: it carries
    /// that join's time, as HubSpot counts a session from its `joinedAt`.
    pub fn close_session(&mut self, joined_ms: i64) {
        if let Some(joined_at) = format_utc(joined_ms) {
            self.interaction_ms = joined_ms;
            self.properties.insert("joinedAt".to_owned(), joined_at);
        }
    }

    /// The end of an event, `start_ms` to `end_ms`: the event is to be
    /// completed with those times. `None` for an instant outside the years 0
    /// to 9999.
    pub fn completion(
        external_account_id: String,
        external_event_id: String,
        name: Option<String>,
        start_ms: i64,
        end_ms: i64,
    ) -> Option<Self> {
        let (start, end) = (format_utc(start_ms)?, format_utc(end_ms)?);
        Some(Self {
            state: State::Complete,
            email: String::new(),
            first_name: None,
            last_name: None,
            vid: None,
            external_event_id,
            external_account_id,
            interaction_ms: end_ms,
            properties: BTreeMap::from([
                ("startDateTime".to_owned(), start.clone()),
                ("endDateTime".to_owned(), end.clone()),
            ]),
            event: Some(EventInfo {
                name,
                start: Some(start),
                end: Some(end),
            }),
            sender_id: None,
            participant: None,
            closes_session: false,
        })
    }

    /// A record needs an email or a contact id to reach a HubSpot contact;
    /// a completion needs neither.
    pub fn is_mappable(&self) -> bool {
        self.state == State::Complete || self.vid.is_some() || !self.email.is_empty()
    }

    /// Identity of the record across deliveries: the sender's id within its
    /// account where it gives one (so a resend with changed content is still
    /// the same record); otherwise equal platform, state, contact, event,
    /// interaction time and properties mean the same record.
    pub fn dedupe_key(&self, source: &str) -> [u8; 32] {
        if let Some(sender_id) = &self.sender_id {
            let identity = serde_json::json!([source, self.external_account_id, sender_id]);
            return Sha256::digest(identity.to_string().as_bytes()).into();
        }
        let mut identity = serde_json::json!([
            source,
            self.state,
            self.email,
            self.vid,
            self.external_account_id,
            self.external_event_id,
            self.interaction_ms,
            self.properties,
        ]);
        // Only where there is one, so records stored before keep their keys.
        if let (Some(participant), Some(fields)) = (&self.participant, identity.as_array_mut()) {
            fields.push(participant.as_str().into());
        }
        Sha256::digest(identity.to_string().as_bytes()).into()
    }
}

/// A webhook delivery as received, stored next to the records it produced.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub source: &'static str,
    pub body: Vec<u8>,
    pub received_ms: i64,
    /// Its records are still to be fetched from the platform's API.
    pub deferred: bool,
    /// The request that brought it, as its answer's header and the logs name
    /// it: stored with it, so a record can be traced to that request.
    pub request_id: String,
}

pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as i64
}

/// Lower-cased, trimmed email; HubSpot matches contacts case-insensitively.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// ISO 8601 UTC with second precision (`2026-01-01T10:00:00Z`), as HubSpot
/// properties carry it; sub-second parts are kept when the platform sent them.
/// `None` for an instant outside the years 0 to 9999.
pub fn format_utc(ms: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    if ms % 1000 == 0 {
        at.format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
    } else {
        at.format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
    }
    .ok()
}

/// Parses an RFC 3339 timestamp to epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let at = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_utc() {
        let ms = parse_rfc3339_ms("2021-07-13T21:44:51Z").unwrap();
        assert_eq!(ms, 1_626_212_691_000);
        assert_eq!(format_utc(ms).unwrap(), "2021-07-13T21:44:51Z");
        assert_eq!(parse_rfc3339_ms("2021-07-13T23:44:51+02:00"), Some(ms));
        assert_eq!(format_utc(ms + 250).unwrap(), "2021-07-13T21:44:51.250Z");
        assert_eq!(format_utc(i64::MAX), None, "never a made-up 1970");
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    fn record(sender_id: Option<&str>) -> NewRecord {
        NewRecord {
            state: State::Register,
            email: "a@example.com".into(),
            first_name: None,
            last_name: None,
            vid: None,
            external_event_id: "evt".into(),
            external_account_id: "acc".into(),
            interaction_ms: 1_000,
            properties: BTreeMap::new(),
            event: None,
            sender_id: sender_id.map(str::to_owned),
            participant: None,
            closes_session: false,
        }
    }

    #[test]
    fn a_record_the_sender_identifies_keeps_its_identity_when_its_content_changes() {
        let first = record(Some("r-1"));
        let mut changed = record(Some("r-1"));
        changed.state = State::Attend;
        changed.interaction_ms = 2_000;
        changed.properties.insert("joinedAt".into(), "x".into());
        assert_eq!(first.dedupe_key("generic"), changed.dedupe_key("generic"));

        let mut other_account = record(Some("r-1"));
        other_account.external_account_id = "acc-2".into();
        assert_ne!(
            first.dedupe_key("generic"),
            other_account.dedupe_key("generic")
        );
        assert_ne!(
            first.dedupe_key("generic"),
            record(Some("r-2")).dedupe_key("generic")
        );
        assert_ne!(first.dedupe_key("generic"), first.dedupe_key("zoom"));
    }

    #[test]
    fn a_record_without_a_sender_id_is_identified_by_its_content() {
        let mut changed = record(None);
        changed.interaction_ms = 2_000;
        assert_eq!(
            record(None).dedupe_key("zoom"),
            record(None).dedupe_key("zoom")
        );
        assert_ne!(record(None).dedupe_key("zoom"), changed.dedupe_key("zoom"));
        let (mut guest, mut other_guest) = (record(None), record(None));
        guest.email.clear();
        other_guest.email.clear();
        guest.participant = Some("guest-1".into());
        other_guest.participant = Some("guest-2".into());
        assert_ne!(guest.dedupe_key("zoom"), other_guest.dedupe_key("zoom"));
    }
}
