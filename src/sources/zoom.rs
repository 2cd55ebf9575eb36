//! Zoom meeting and webinar webhooks: `x-zm-signature` verification, the
//! `endpoint.url_validation` handshake, and registration / participant / end
//! mapping.

use std::collections::BTreeMap;

use actix_web::HttpRequest;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::{Inbound, Rejection, Source};
use crate::{
    record::{EventInfo, NewRecord, State, format_utc, normalize_email, parse_rfc3339_ms},
    settings::Secret,
};

const SIGNATURE_HEADER: &str = "x-zm-signature";
const TIMESTAMP_HEADER: &str = "x-zm-request-timestamp";

pub struct Zoom {
    secret: Secret,
    tolerance_secs: i64,
    /// Overrides the payload's `account_id` as externalAccountId.
    external_account_id: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    event: String,
    event_ts: Option<i64>,
    payload: serde_json::Value,
}

#[derive(Deserialize)]
struct UrlValidation {
    #[serde(rename = "plainToken")]
    plain_token: String,
}

#[derive(Deserialize)]
struct Payload {
    account_id: Option<String>,
    object: Object,
}

#[derive(Deserialize)]
struct Object {
    /// A number in registration events, a string in participant events.
    id: Id,
    topic: Option<String>,
    start_time: Option<String>,
    /// Minutes.
    duration: Option<i64>,
    /// When it ended (`*.ended` only).
    end_time: Option<String>,
    /// A webinar's practice session ended, not the webinar.
    #[serde(default)]
    practice_session: bool,
    registrant: Option<Registrant>,
    participant: Option<Participant>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Number(i64),
    Text(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Number(n) => n.fmt(f),
            Id::Text(s) => s.fmt(f),
        }
    }
}

#[derive(Deserialize)]
struct Registrant {
    email: String,
    first_name: Option<String>,
    last_name: Option<String>,
    /// `approved`, `pending` or `denied`; absent means approved.
    status: Option<String>,
}

#[derive(Deserialize)]
struct Participant {
    /// Empty or absent for guests outside the host's account.
    #[serde(default)]
    email: Option<String>,
    /// Zoom's ids of the participant, to tell guests without email apart.
    participant_uuid: Option<String>,
    user_id: Option<String>,
    id: Option<String>,
    user_name: Option<String>,
    join_time: Option<String>,
    leave_time: Option<String>,
    /// Some `participant_joined` deliveries carry the join time here.
    date_time: Option<String>,
}

enum Action {
    Register,
    Cancel,
    Joined,
    Left,
    Ended,
}

impl Zoom {
    pub fn new(secret: Secret, tolerance_secs: u64, external_account_id: Option<String>) -> Self {
        Self {
            secret,
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
            external_account_id,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes any key length")
    }

    /// The MAC of Zoom's signature scheme, fed with `v0:{timestamp}:{body}`.
    fn signed(&self, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(format!("v0:{timestamp}:").as_bytes());
        mac.update(body);
        mac
    }

    /// The `x-zm-signature` Zoom sends with `body` at `timestamp` (the demo
    /// plays Zoom with it).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v0={}",
            hex::encode(self.signed(timestamp, body).finalize().into_bytes())
        )
    }

    /// Checks `v0=hex(HMAC-SHA256(secret, "v0:{timestamp}:{body}"))` in constant
    /// time and that the timestamp (epoch seconds) is within the tolerance.
    pub fn verify(
        &self,
        signature: Option<&str>,
        timestamp: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), Rejection> {
        let unauthorized = |why: &str| Err(Rejection::Unauthorized(why.to_owned()));
        let Some(signature) = signature else {
            return unauthorized("missing x-zm-signature header");
        };
        let Some(timestamp) = timestamp.and_then(|t| t.trim().parse::<i64>().ok()) else {
            return unauthorized("missing or malformed x-zm-request-timestamp header");
        };
        let Some(digest) = signature
            .strip_prefix("v0=")
            .and_then(|hex_digest| hex::decode(hex_digest).ok())
        else {
            return unauthorized("malformed x-zm-signature header");
        };
        if self.signed(timestamp, body).verify_slice(&digest).is_err() {
            return unauthorized("x-zm-signature does not match");
        }
        // Checked after the signature so an unsigned request learns nothing about the clock.
        if (now_secs - timestamp).abs() > self.tolerance_secs {
            return unauthorized("x-zm-request-timestamp is outside the allowed window");
        }
        Ok(())
    }

    /// Maps a verified body. The join a leave closes is attached where
    /// records are stored ([`NewRecord::closes_session`]).
    pub fn map(&self, body: &[u8]) -> Result<Inbound, Rejection> {
        let envelope: Envelope =
            serde_json::from_str(super::json_text(body).map_err(Rejection::Invalid)?)
                .map_err(|err| Rejection::Invalid(format!("body is not a Zoom event: {err}")))?;
        let invalid = |err: serde_json::Error| {
            Rejection::Invalid(format!("invalid {} payload: {err}", envelope.event))
        };

        if envelope.event == "endpoint.url_validation" {
            let handshake = UrlValidation::deserialize(&envelope.payload).map_err(invalid)?;
            let mut mac = self.mac();
            mac.update(handshake.plain_token.as_bytes());
            let encrypted = hex::encode(mac.finalize().into_bytes());
            return Ok(Inbound::Reply(json!({
                "plainToken": handshake.plain_token,
                "encryptedToken": encrypted,
            })));
        }

        let Some(action) = action_of(&envelope.event) else {
            return Ok(Inbound::Ignored);
        };
        let payload = Payload::deserialize(&envelope.payload).map_err(invalid)?;
        let external_account_id = self
            .external_account_id
            .clone()
            .or(payload.account_id.clone())
            .ok_or_else(|| Rejection::Invalid("payload.account_id is missing".into()))?;
        let object = payload.object;
        let event_ts = envelope.event_ts;
        let event_time =
            || event_ts.ok_or_else(|| Rejection::Invalid("event_ts is missing".into()));
        let mut record = NewRecord {
            state: State::Register,
            email: String::new(),
            first_name: None,
            last_name: None,
            vid: None,
            external_event_id: object.id.to_string(),
            external_account_id,
            interaction_ms: 0,
            properties: BTreeMap::new(),
            event: Some(event_info(&object)),
            sender_id: None,
            participant: None,
            closes_session: false,
        };

        match action {
            Action::Ended => return ended(record.external_account_id, object, event_time),
            Action::Register | Action::Cancel => {
                let registrant = object.registrant.ok_or_else(|| {
                    Rejection::Invalid("payload.object.registrant is missing".into())
                })?;
                record.state = match (action, registrant.status.as_deref()) {
                    // Zoom sends registration_approved once the host approves.
                    (Action::Register, Some("pending")) => return Ok(Inbound::Ignored),
                    (Action::Register, Some("denied")) | (Action::Cancel, _) => State::Cancel,
                    _ => State::Register,
                };
                record.email = normalize_email(&registrant.email);
                record.first_name = registrant.first_name.filter(|n| !n.is_empty());
                record.last_name = registrant.last_name.filter(|n| !n.is_empty());
                record.interaction_ms = event_time()?;
            }
            Action::Joined | Action::Left => {
                let participant = object.participant.ok_or_else(|| {
                    Rejection::Invalid("payload.object.participant is missing".into())
                })?;
                record.state = State::Attend;
                record.email = normalize_email(participant.email.as_deref().unwrap_or_default());
                if record.email.is_empty() {
                    record.participant = [
                        participant.participant_uuid,
                        participant.user_id,
                        participant.id,
                        participant.user_name,
                    ]
                    .into_iter()
                    .flatten()
                    .find(|id| !id.is_empty());
                }
                let (field, at) = if matches!(action, Action::Joined) {
                    ("joinedAt", participant.join_time.or(participant.date_time))
                } else {
                    record.closes_session = true;
                    ("leftAt", participant.leave_time)
                };
                record.interaction_ms = match at {
                    Some(ref at) => parse_rfc3339_ms(at).ok_or_else(|| {
                        Rejection::Invalid(format!("participant time {at:?} is not RFC 3339"))
                    })?,
                    None => event_time()?,
                };
                let at = format_utc(record.interaction_ms).ok_or_else(|| {
                    Rejection::Invalid(format!("participant time {at:?} is out of range"))
                })?;
                record.properties.insert(field.to_owned(), at);
            }
        }
        Ok(Inbound::Records(vec![record]))
    }
}

fn action_of(event: &str) -> Option<Action> {
    let (kind, action) = event.split_once('.')?;
    if kind != "meeting" && kind != "webinar" {
        return None;
    }
    match action {
        "registration_created" | "registration_approved" => Some(Action::Register),
        "registration_cancelled" | "registration_denied" => Some(Action::Cancel),
        "participant_joined" => Some(Action::Joined),
        "participant_left" => Some(Action::Left),
        "ended" => Some(Action::Ended),
        _ => None,
    }
}

/// `*.ended`: the event is to be completed with the start and end Zoom gives
/// (the end defaults to when Zoom sent it).
fn ended(
    external_account_id: String,
    object: Object,
    event_time: impl Fn() -> Result<i64, Rejection>,
) -> Result<Inbound, Rejection> {
    if object.practice_session {
        return Ok(Inbound::Ignored);
    }
    let time = |name: &str, at: Option<&str>| match at {
        Some(at) => parse_rfc3339_ms(at).ok_or_else(|| {
            Rejection::Invalid(format!("payload.object.{name} {at:?} is not RFC 3339"))
        }),
        None => Err(Rejection::Invalid(format!(
            "payload.object.{name} is missing"
        ))),
    };
    let start_ms = time("start_time", object.start_time.as_deref())?;
    let end_ms = match object.end_time.as_deref() {
        Some(at) => time("end_time", Some(at))?,
        None => event_time()?,
    };
    if end_ms < start_ms {
        return Err(Rejection::Invalid(
            "payload.object.end_time is before start_time".into(),
        ));
    }
    let completion = NewRecord::completion(
        external_account_id,
        object.id.to_string(),
        object.topic,
        start_ms,
        end_ms,
    )
    .ok_or_else(|| Rejection::Invalid("payload.object times are out of range".into()))?;
    Ok(Inbound::Records(vec![completion]))
}

fn event_info(object: &Object) -> EventInfo {
    let start = object.start_time.clone().filter(|s| !s.trim().is_empty());
    let end = start
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .zip(object.duration)
        .and_then(|(start_ms, minutes)| {
            format_utc(start_ms.checked_add(minutes.checked_mul(60_000)?)?)
        });
    EventInfo {
        name: object.topic.clone(),
        start,
        end,
    }
}

impl Source for Zoom {
    const NAME: &'static str = "zoom";

    fn authenticate(&self, request: &HttpRequest, body: &[u8]) -> Result<(), Rejection> {
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        let now_secs = crate::record::now_ms() / 1000;
        self.verify(
            header(SIGNATURE_HEADER),
            header(TIMESTAMP_HEADER),
            body,
            now_secs,
        )
    }

    fn interpret(&self, body: &[u8]) -> Result<Inbound, Rejection> {
        self.map(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zoom() -> Zoom {
        Zoom::new("s3cret".parse().unwrap(), 300, None)
    }

    fn sign(body: &[u8], timestamp: i64) -> String {
        zoom().sign(timestamp, body)
    }

    #[test]
    fn accepts_a_fresh_signature_and_refuses_tampering_and_staleness() {
        let body = br#"{"event":"x"}"#;
        let sig = sign(body, 1_000);
        assert!(zoom().verify(Some(&sig), Some("1000"), body, 1_100).is_ok());
        assert!(
            zoom()
                .verify(Some(&sig), Some("1000"), b"{\"event\":\"y\"}", 1_100)
                .is_err()
        );
        assert!(
            zoom()
                .verify(Some(&sig), Some("1001"), body, 1_100)
                .is_err()
        );
        assert!(
            zoom()
                .verify(Some(&sig), Some("1000"), body, 1_301)
                .is_err()
        );
        assert!(zoom().verify(None, Some("1000"), body, 1_000).is_err());
        assert!(
            zoom()
                .verify(Some("v0=zz"), Some("1000"), body, 1_000)
                .is_err()
        );
    }

    #[test]
    fn url_validation_answers_with_the_hmac_of_the_plain_token() {
        let body = br#"{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680}"#;
        let Inbound::Reply(reply) = zoom().map(body).unwrap() else {
            panic!("expected a reply")
        };
        let mut mac = zoom().mac();
        mac.update(b"qgg8vlvZRS6UYooatFL8Aw");
        assert_eq!(reply["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
        assert_eq!(
            reply["encryptedToken"],
            hex::encode(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn a_pending_registration_waits_for_approval() {
        let body = br#"{"event":"webinar.registration_created","event_ts":1,"payload":{"account_id":"A","object":{"id":1,"registrant":{"email":"a@b.c","status":"pending"}}}}"#;
        assert_eq!(zoom().map(body).unwrap(), Inbound::Ignored);
    }

    #[test]
    fn a_denied_registrant_is_cancelled_never_registered() {
        let body = br#"{"event":"webinar.registration_created","event_ts":1,"payload":{"account_id":"A","object":{"id":1,"registrant":{"email":"a@b.c","status":"denied"}}}}"#;
        let Inbound::Records(records) = zoom().map(body).unwrap() else {
            panic!("expected a record")
        };
        assert_eq!(records[0].state, State::Cancel);
    }

    #[test]
    fn guests_without_email_joining_in_the_same_second_are_two_records() {
        let guest = |id: &str| {
            format!(
                r#"{{"event":"webinar.participant_joined","event_ts":1,"payload":{{"account_id":"A","object":{{"id":"1","participant":{{"email":"","user_name":"Guest","participant_uuid":"{id}","join_time":"2026-01-01T10:00:00Z"}}}}}}}}"#
            )
        };
        let key = |id: &str| match zoom().map(guest(id).as_bytes()).unwrap() {
            Inbound::Records(records) => records[0].dedupe_key(Zoom::NAME),
            other => panic!("{other:?}"),
        };
        assert_ne!(key("uuid-1"), key("uuid-2"));
        assert_eq!(
            key("uuid-1"),
            key("uuid-1"),
            "the same guest again is a duplicate"
        );
    }

    #[test]
    fn a_leave_asks_the_store_for_the_join_it_closes() {
        let body = br#"{"event":"webinar.participant_left","event_ts":1,"payload":{"account_id":"A","object":{"id":"1","participant":{"email":"a@b.c","leave_time":"2026-01-01T11:00:00Z"}}}}"#;
        let Inbound::Records(records) = zoom().map(body).unwrap() else {
            panic!("expected a record")
        };
        assert!(records[0].closes_session);
        assert_eq!(records[0].properties["leftAt"], "2026-01-01T11:00:00Z");
    }

    #[test]
    fn an_end_completes_the_event_with_zoom_s_start_and_end() {
        let body = br#"{"event":"webinar.ended","event_ts":1626230691572,"payload":{"account_id":"AAAAAABBBB","object":{"id":"1234567890","uuid":"4444AAAiAAAAAiAiAiiAii==","host_id":"x","host_email":"jchill@example.com","topic":"My Webinar","type":5,"start_time":"2021-07-13T21:44:51Z","timezone":"America/Los_Angeles","end_time":"2021-07-13T23:00:51Z","duration":60}}}"#;
        let Inbound::Records(records) = zoom().map(body).unwrap() else {
            panic!("expected a record")
        };
        let end = &records[0];
        assert_eq!(end.state, State::Complete);
        assert_eq!(end.external_event_id, "1234567890");
        assert_eq!(end.properties["startDateTime"], "2021-07-13T21:44:51Z");
        assert_eq!(end.properties["endDateTime"], "2021-07-13T23:00:51Z");
        let info = end.event.as_ref().unwrap();
        assert_eq!(info.name.as_deref(), Some("My Webinar"));
        assert_eq!(info.end.as_deref(), Some("2021-07-13T23:00:51Z"));
        assert!(end.is_mappable(), "a completion needs no contact");
    }

    #[test]
    fn a_practice_session_s_end_completes_nothing_and_a_backwards_end_is_refused() {
        let practice = br#"{"event":"webinar.ended","event_ts":1,"payload":{"account_id":"A","object":{"id":"1","start_time":"2021-07-13T21:44:51Z","end_time":"2021-07-13T22:00:00Z","practice_session":true}}}"#;
        assert_eq!(zoom().map(practice).unwrap(), Inbound::Ignored);
        let backwards = br#"{"event":"meeting.ended","event_ts":1,"payload":{"account_id":"A","object":{"id":1,"start_time":"2021-07-13T21:44:51Z","end_time":"2021-07-13T20:00:00Z"}}}"#;
        assert!(matches!(zoom().map(backwards), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn a_missing_registrant_is_named() {
        let body = br#"{"event":"meeting.registration_approved","event_ts":1,"payload":{"account_id":"A","object":{"id":1}}}"#;
        let Err(Rejection::Invalid(why)) = zoom().map(body) else {
            panic!("expected invalid")
        };
        assert!(why.contains("registrant"), "{why}");
    }
}
