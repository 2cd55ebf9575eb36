//! Any other platform or script, in the gateway's own simple schema: one record
//! or `{"records": [...]}`, authenticated by a JWT bearer token or a Standard
//! Webhooks signature.

use std::collections::BTreeMap;

use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, crypto::CryptoProvider};
use serde_json::{Map, Value};
use standardwebhooks::{
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP, Webhook, WebhookError,
};

use super::{Inbound, Rejection, Source};
use crate::{
    auth::{self, JwtCheck},
    record::{NewRecord, State, format_utc, normalize_email, parse_rfc3339_ms},
    settings::Settings,
};

/// Most records one delivery may carry.
pub const MAX_RECORDS: usize = 1000;

const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// `webhook-timestamp`s that can be a moment near now (epoch seconds up to
/// the year 9999). standardwebhooks subtracts the timestamp from the clock
/// unchecked, before it looks at the signature: one far from any clock
/// overflows (a panic with overflow checks, a check passed by wrapping
/// without), so such a timestamp is refused before it gets there.
const PLAUSIBLE_TIMESTAMPS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799;

/// The properties HubSpot's attendance `create` takes, for `attend` only (its
/// document says so); anything else it refuses, so it is refused at ingest
/// rather than becoming a dead letter later.
const ATTEND_PROPERTIES: [&str; 2] = ["joinedAt", "leftAt"];

/// The `type` of an item that reports an event's end instead of attendance.
const COMPLETED: &str = "event.completed";

/// Times must fall in 2000..2100 (epoch milliseconds): outside it is a unit
/// mistake, such as epoch seconds, which read as milliseconds land in 1970.
const TIMES: std::ops::Range<i64> = 946_684_800_000..4_102_444_800_000;

/// Why the generic source cannot start with the configured keys.
#[derive(Debug, thiserror::Error)]
pub enum GenericConfigError {
    #[error(
        "set GENERIC_JWT_SECRET or GENERIC_JWT_PUBLIC_KEY_PEM, not both: the key fixes the algorithm"
    )]
    TwoJwtKeys,
    #[error("GENERIC_JWT_PUBLIC_KEY_PEM is not a usable RSA or P-256 public key in PEM form: {0}")]
    PublicKey(String),
    #[error("GENERIC_WEBHOOK_SECRET is not a Standard Webhooks secret (whsec_ and base64): {0}")]
    WebhookSecret(String),
    #[error("jsonwebtoken was built without a crypto backend")]
    NoCryptoBackend,
}

pub struct Generic {
    jwt: Option<JwtCheck>,
    webhook: Option<Webhook>,
    /// externalAccountId of records that do not name one.
    external_account_id: Option<String>,
}

impl Generic {
    /// The source as configured, or `None` when none of its keys is set (the
    /// route is then absent). Every key is parsed here, so a malformed one
    /// stops the start instead of refusing the first delivery.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, GenericConfigError> {
        let public_key = &settings.generic_jwt_public_key_pem;
        let key = match (&settings.generic_jwt_secret, public_key) {
            (Some(_), Some(_)) => return Err(GenericConfigError::TwoJwtKeys),
            (Some(secret), None) => Some((
                DecodingKey::from_secret(secret.expose().as_bytes())
                    .expect("settings drop empty variables"),
                Algorithm::HS256,
            )),
            (None, Some(pem)) => Some(public_key_from_pem(pem)?),
            (None, None) => None,
        };
        let jwt = key.map(|(key, algorithm)| JwtCheck::new(key, validation(algorithm, settings)));
        let webhook = settings
            .generic_webhook_secret
            .as_ref()
            .map(|secret| webhook_from_secret(secret.expose()))
            .transpose()?;
        if jwt.is_none() && webhook.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            jwt,
            webhook,
            external_account_id: settings.generic_external_account_id.clone(),
        }))
    }

    fn verify_bearer(&self, authorization: &[u8]) -> Result<(), String> {
        let Some(jwt) = &self.jwt else {
            return Err("bearer tokens are not configured for this route".into());
        };
        let token =
            auth::bearer(authorization).ok_or("the Authorization header is not a Bearer token")?;
        jwt.verify(token)
    }

    fn verify_signature(&self, request: &HttpRequest, body: &[u8]) -> Result<(), String> {
        let Some(webhook) = &self.webhook else {
            return Err("Standard Webhooks signatures are not configured for this route".into());
        };
        // standardwebhooks reads an `http` 1.x HeaderMap; actix-web's is 0.2.
        let mut headers = http::HeaderMap::new();
        for name in [
            HEADER_WEBHOOK_ID,
            HEADER_WEBHOOK_TIMESTAMP,
            HEADER_WEBHOOK_SIGNATURE,
        ] {
            if let Some(value) = request.headers().get(name) {
                let value = http::HeaderValue::from_bytes(value.as_bytes())
                    .map_err(|_| format!("malformed {name} header"))?;
                headers.insert(name, value);
            }
        }
        // Parsed as standardwebhooks parses it.
        let timestamp = headers
            .get(HEADER_WEBHOOK_TIMESTAMP)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i64>().ok());
        if timestamp.is_some_and(|ts| !PLAUSIBLE_TIMESTAMPS.contains(&ts)) {
            return Err(signature_problem(&WebhookError::InvalidTimestamp));
        }
        webhook
            .verify(body, &headers)
            .map_err(|err| signature_problem(&err))
    }
}

/// `exp` always, and the configured `iss` / `aud`: a configured claim is a
/// required one (jsonwebtoken checks one only when the token carries it).
fn validation(algorithm: Algorithm, settings: &Settings) -> Validation {
    let mut validation = Validation::new(algorithm);
    let mut required = vec!["exp"];
    validation.validate_nbf = true;
    match &settings.generic_jwt_audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Otherwise jsonwebtoken refuses every token that carries an `aud`.
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &settings.generic_jwt_issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// RS256 for an RSA key, ES256 for a P-256 key.
fn public_key_from_pem(pem: &str) -> Result<(DecodingKey, Algorithm), GenericConfigError> {
    let provider = CryptoProvider::try_get_default().ok_or(GenericConfigError::NoCryptoBackend)?;
    let unusable =
        |err: jsonwebtoken::errors::Error| GenericConfigError::PublicKey(err.to_string());
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        // The PEM only named the key type; parse the key itself now.
        let der = key.try_get_as_bytes().map_err(unusable)?;
        (provider.key_utils.rsa_pub_components_from_public_key)(der).map_err(unusable)?;
        return Ok((key, Algorithm::RS256));
    }
    let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(unusable)?;
    // Building the verifier parses the point, which must lie on P-256.
    (provider.verifier_factory)(&Algorithm::ES256, &key).map_err(unusable)?;
    Ok((key, Algorithm::ES256))
}

fn webhook_from_secret(secret: &str) -> Result<Webhook, GenericConfigError> {
    let invalid = |why: &str| Err(GenericConfigError::WebhookSecret(why.to_owned()));
    let Some(encoded) = secret.trim().strip_prefix(WEBHOOK_SECRET_PREFIX) else {
        return invalid("it does not start with whsec_");
    };
    if encoded.is_empty() {
        return invalid("no key follows whsec_");
    }
    Webhook::new(encoded).or_else(|_| invalid("what follows whsec_ is not base64"))
}

fn signature_problem(err: &WebhookError) -> String {
    match err {
        WebhookError::MissingHeader(name) => format!("missing webhook-{name} header"),
        WebhookError::InvalidHeader(name) => format!("malformed webhook-{name} header"),
        WebhookError::InvalidTimestamp => "malformed webhook-timestamp header".into(),
        WebhookError::TimestampTooOldError => "webhook-timestamp is more than 5 minutes old".into(),
        WebhookError::FutureTimestampError => {
            "webhook-timestamp is more than 5 minutes ahead".into()
        }
        WebhookError::InvalidSignature => "webhook-signature does not match".into(),
        WebhookError::InvalidPayload => {
            "webhook-signature cannot cover a body that is not UTF-8".into()
        }
        WebhookError::InvalidSecret(_) => "webhook-signature cannot be checked".into(),
    }
}

impl Source for Generic {
    const NAME: &'static str = "generic";

    /// Either credential the request carries may prove it genuine; with neither
    /// verifying, the answer names what was wrong with each.
    fn authenticate(&self, request: &HttpRequest, body: &[u8]) -> Result<(), Rejection> {
        let mut problems = Vec::new();
        if let Some(authorization) = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
        {
            match self.verify_bearer(authorization.as_bytes()) {
                Ok(()) => return Ok(()),
                Err(problem) => problems.push(problem),
            }
        }
        if request.headers().contains_key(HEADER_WEBHOOK_SIGNATURE) {
            match self.verify_signature(request, body) {
                Ok(()) => return Ok(()),
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            let mut expected = Vec::new();
            if self.jwt.is_some() {
                expected.push("an Authorization: Bearer token");
            }
            if self.webhook.is_some() {
                expected.push("a webhook-signature");
            }
            problems.push(format!(
                "missing credentials: expected {}",
                expected.join(" or ")
            ));
        }
        Err(Rejection::Unauthorized(problems.join("; ")))
    }

    fn interpret(&self, body: &[u8]) -> Result<Inbound, Rejection> {
        self.map(body).map(Inbound::Records)
    }
}

impl Generic {
    /// Parses one record or a batch. Every refusal names the field, and in a
    /// batch the record (`records[3].state: …`).
    pub fn map(&self, body: &[u8]) -> Result<Vec<NewRecord>, Rejection> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| Rejection::Invalid(format!("body is not JSON: {err}")))?;
        let Value::Object(object) = value else {
            return Err(invalid(
                "",
                "body",
                "expected a record or {\"records\": [...]}",
            ));
        };
        let Some(batch) = object.get("records") else {
            return Ok(vec![self.record(&object, "")?]);
        };
        let Value::Array(batch) = batch else {
            return Err(invalid("", "records", "expected an array of records"));
        };
        if batch.is_empty() {
            return Err(invalid("", "records", "expected at least one record"));
        }
        if batch.len() > MAX_RECORDS {
            return Err(invalid(
                "",
                "records",
                &format!(
                    "{} records, at most {MAX_RECORDS} per delivery",
                    batch.len()
                ),
            ));
        }
        batch
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let at = format!("records[{i}].");
                match record {
                    Value::Object(record) => self.record(record, &at),
                    _ => Err(Rejection::Invalid(format!(
                        "records[{i}]: expected an object"
                    ))),
                }
            })
            .collect()
    }

    fn record(&self, fields: &Map<String, Value>, at: &str) -> Result<NewRecord, Rejection> {
        let field = Fields { fields, at };
        let sender_id = field.id("id")?;
        let external_event_id = field
            .id("externalEventId")?
            .ok_or_else(|| field.missing("externalEventId"))?;
        let external_account_id = match field.id("externalAccountId")? {
            Some(id) => id,
            None => self.external_account_id.clone().ok_or_else(|| {
                invalid(
                    at,
                    "externalAccountId",
                    "missing, and GENERIC_EXTERNAL_ACCOUNT_ID is not set",
                )
            })?,
        };
        if let Some(kind) = field.text("type")? {
            if kind != COMPLETED {
                return Err(invalid(at, "type", &format!("expected {COMPLETED}")));
            }
            return field.completion(external_account_id, external_event_id, sender_id);
        }
        let sender_id = sender_id.ok_or_else(|| field.missing("id"))?;
        let state = field.text("state")?.ok_or_else(|| field.missing("state"))?;
        let state = State::parse(&state)
            .filter(|state| *state != State::Complete)
            .ok_or_else(|| invalid(at, "state", "expected register, attend or cancel"))?;
        let email = field.text("email")?.map(|email| normalize_email(&email));
        if email.as_ref().is_some_and(|email| !email.contains('@')) {
            return Err(invalid(at, "email", "expected an email address"));
        }
        let vid = field.vid()?;
        if email.is_none() && vid.is_none() {
            return Err(invalid(at, "email", "missing: give email or vid (or both)"));
        }
        Ok(NewRecord {
            state,
            email: email.unwrap_or_default(),
            first_name: field.text("firstName")?,
            last_name: field.text("lastName")?,
            vid,
            external_event_id,
            external_account_id,
            interaction_ms: field.occurred_at()?,
            properties: field.properties(state)?,
            event: None,
            sender_id: Some(sender_id),
            participant: None,
            closes_session: false,
        })
    }
}

fn invalid(at: &str, name: &str, why: &str) -> Rejection {
    Rejection::Invalid(format!("{at}{name}: {why}"))
}

/// The fields of one record; `at` prefixes every problem with its place in a batch.
struct Fields<'a> {
    fields: &'a Map<String, Value>,
    at: &'a str,
}

impl Fields<'_> {
    /// A present, non-null field.
    fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).filter(|value| !value.is_null())
    }

    fn invalid(&self, name: &str, why: &str) -> Rejection {
        invalid(self.at, name, why)
    }

    fn missing(&self, name: &str) -> Rejection {
        self.invalid(name, "missing")
    }

    /// A string; an empty one counts as absent.
    fn text(&self, name: &str) -> Result<Option<String>, Rejection> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
            Some(_) => Err(self.invalid(name, "expected a string")),
        }
    }

    /// An identifier: a string, or an integer as many platforms send ids.
    fn id(&self, name: &str) -> Result<Option<String>, Rejection> {
        match self.get(name) {
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
            None | Some(Value::String(_)) => self.text(name),
            Some(_) => Err(self.invalid(name, "expected a string or an integer")),
        }
    }

    /// HubSpot's contact id: an integer, or its decimal string.
    fn vid(&self) -> Result<Option<i64>, Rejection> {
        let vid = match self.get("vid") {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        vid.filter(|vid| *vid > 0).map(Some).ok_or_else(|| {
            self.invalid("vid", "expected a HubSpot contact id (a positive integer)")
        })
    }

    /// An `event.completed` item: the event ran from `startDateTime` to
    /// `endDateTime`. Its `id`, where given, is its identity like a record's.
    fn completion(
        &self,
        external_account_id: String,
        external_event_id: String,
        sender_id: Option<String>,
    ) -> Result<NewRecord, Rejection> {
        let time = |name: &str| {
            let text = self.text(name)?.ok_or_else(|| self.missing(name))?;
            timestamp(&text).ok_or_else(|| {
                self.invalid(name, "expected an RFC 3339 timestamp, from 2000 to 2099")
            })
        };
        let (start_ms, end_ms) = (time("startDateTime")?, time("endDateTime")?);
        if end_ms < start_ms {
            return Err(self.invalid("endDateTime", "before startDateTime"));
        }
        let mut completion = NewRecord::completion(
            external_account_id,
            external_event_id,
            self.text("eventName")?,
            start_ms,
            end_ms,
        )
        .expect("times within TIMES format");
        completion.sender_id = sender_id;
        Ok(completion)
    }

    fn occurred_at(&self) -> Result<i64, Rejection> {
        let at = match self.get("occurredAt") {
            None => return Err(self.missing("occurredAt")),
            Some(Value::Number(n)) => n.as_i64().filter(|ms| TIMES.contains(ms)),
            Some(Value::String(s)) => timestamp(s),
            Some(_) => None,
        };
        at.ok_or_else(|| {
            self.invalid(
                "occurredAt",
                "expected an RFC 3339 timestamp or epoch milliseconds, from 2000 to 2099",
            )
        })
    }

    /// `joinedAt` / `leftAt` of an `attend` record, as ISO 8601 UTC
    /// timestamps (milliseconds kept where given), as the Zoom source sends them.
    fn properties(&self, state: State) -> Result<BTreeMap<String, String>, Rejection> {
        let Some(properties) = self.get("properties") else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(properties) = properties else {
            return Err(self.invalid("properties", "expected an object of strings"));
        };
        let mut times = BTreeMap::new();
        for (name, value) in properties {
            let field = format!("properties.{name}");
            if state != State::Attend || !ATTEND_PROPERTIES.contains(&name.as_str()) {
                return Err(self.invalid(
                    &field,
                    "HubSpot takes only joinedAt and leftAt, on attend records",
                ));
            }
            let Value::String(text) = value else {
                return Err(self.invalid(&field, "expected a string"));
            };
            let at = timestamp(text).ok_or_else(|| {
                self.invalid(
                    &field,
                    "expected an RFC 3339 (ISO 8601 with offset) timestamp, from 2000 to 2099",
                )
            })?;
            times.insert(name.clone(), at);
        }
        if let (Some(joined), Some(left)) = (times.get("joinedAt"), times.get("leftAt"))
            && left < joined
        {
            return Err(self.invalid("properties.leftAt", "before joinedAt"));
        }
        Ok(times
            .into_iter()
            .filter_map(|(name, at)| Some((name, format_utc(at)?)))
            .collect())
    }
}

/// An RFC 3339 timestamp within [`TIMES`], as epoch milliseconds.
fn timestamp(text: &str) -> Option<i64> {
    parse_rfc3339_ms(text).filter(|ms| TIMES.contains(ms))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn from_env(env: &[(&str, &str)]) -> Result<Option<Generic>, GenericConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Generic::from_settings(&Settings::init_from_hashmap(&env).unwrap())
    }

    fn generic() -> Generic {
        from_env(&[
            ("GENERIC_JWT_SECRET", "s3cret"),
            ("GENERIC_EXTERNAL_ACCOUNT_ID", "default-account"),
        ])
        .unwrap()
        .unwrap()
    }

    fn record() -> Value {
        json!({
            "id": "r-1", "externalEventId": "evt-1", "externalAccountId": "acc-1",
            "state": "attend", "email": " Jane@Example.COM ", "occurredAt": "2026-01-01T10:00:00Z",
            "firstName": "Jane", "lastName": "Doe",
            "properties": {"joinedAt": "2026-01-01T10:00:00Z"}, "somethingElse": true
        })
    }

    fn map(body: &Value) -> Result<Vec<NewRecord>, Rejection> {
        generic().map(body.to_string().as_bytes())
    }

    fn refusal(body: &Value) -> String {
        match map(body) {
            Err(Rejection::Invalid(why)) => why,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn an_event_completed_item_completes_the_event_beside_the_attendance_of_a_batch() {
        let completed = json!({
            "type": "event.completed", "externalEventId": "evt-1",
            "startDateTime": "2026-01-01T10:00:00+01:00", "endDateTime": "2026-01-01T11:30:00Z",
            "eventName": "Quarterly webinar"
        });
        let records = map(&json!({"records": [record(), completed]})).unwrap();
        assert_eq!(records[0].state, State::Attend);
        let end = &records[1];
        assert_eq!(end.state, State::Complete);
        assert_eq!(end.external_account_id, "default-account");
        assert_eq!(end.properties["startDateTime"], "2026-01-01T09:00:00Z");
        assert_eq!(end.properties["endDateTime"], "2026-01-01T11:30:00Z");
        assert_eq!(
            end.event.as_ref().unwrap().name.as_deref(),
            Some("Quarterly webinar")
        );
        assert_eq!(
            end.sender_id, None,
            "no id: the same end again is a duplicate"
        );
        assert_eq!(
            end.dedupe_key("generic"),
            map(&completed).unwrap()[0].dedupe_key("generic")
        );

        let mut backwards = completed.clone();
        backwards["endDateTime"] = json!("2026-01-01T08:00:00Z");
        assert_eq!(refusal(&backwards), "endDateTime: before startDateTime");
        let mut unknown = completed.clone();
        unknown["type"] = json!("event.cancelled");
        assert_eq!(refusal(&unknown), "type: expected event.completed");
        let mut untimed = completed;
        untimed.as_object_mut().unwrap().remove("startDateTime");
        assert_eq!(refusal(&untimed), "startDateTime: missing");
        let mut as_state = record();
        as_state["state"] = json!("complete");
        assert_eq!(
            refusal(&as_state),
            "state: expected register, attend or cancel"
        );
    }

    #[test]
    fn a_single_record_maps_every_field() {
        let records = map(&record()).unwrap();
        assert_eq!(
            records,
            vec![NewRecord {
                state: State::Attend,
                email: "jane@example.com".into(),
                first_name: Some("Jane".into()),
                last_name: Some("Doe".into()),
                vid: None,
                external_event_id: "evt-1".into(),
                external_account_id: "acc-1".into(),
                interaction_ms: 1_767_261_600_000,
                properties: [("joinedAt".to_owned(), "2026-01-01T10:00:00Z".to_owned())].into(),
                event: None,
                sender_id: Some("r-1".into()),
                participant: None,
                closes_session: false,
            }]
        );
    }

    #[test]
    fn a_batch_maps_each_record_in_order() {
        let mut second = record();
        second["id"] = json!(2);
        second["state"] = json!("cancel");
        second["properties"] = json!({});
        let records = map(&json!({"records": [record(), second]})).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].sender_id.as_deref(), Some("2"));
        assert_eq!(records[1].state, State::Cancel);
    }

    #[test]
    fn a_batch_holds_at_most_1000_records() {
        let full = vec![record(); MAX_RECORDS];
        assert_eq!(map(&json!({ "records": full })).unwrap().len(), MAX_RECORDS);
        let over = vec![record(); MAX_RECORDS + 1];
        assert!(refusal(&json!({ "records": over })).contains("at most 1000"));
        assert!(refusal(&json!({"records": []})).starts_with("records:"));
        assert!(refusal(&json!({"records": {}})).starts_with("records:"));
    }

    #[test]
    fn occurred_at_is_rfc_3339_or_epoch_milliseconds() {
        let mut body = record();
        body["occurredAt"] = json!("2026-01-01T11:00:00+01:00");
        assert_eq!(map(&body).unwrap()[0].interaction_ms, 1_767_261_600_000);
        body["occurredAt"] = json!(1_767_261_600_123_i64);
        assert_eq!(map(&body).unwrap()[0].interaction_ms, 1_767_261_600_123);
        for bad in [json!("yesterday"), json!(1.5), json!(true)] {
            body["occurredAt"] = bad;
            assert!(refusal(&body).starts_with("occurredAt: expected"));
        }
    }

    #[test]
    fn occurred_at_outside_this_century_is_refused_as_not_epoch_milliseconds() {
        let mut body = record();
        for bad in [
            json!(1_767_261_600),
            json!(946_684_799_999_i64),
            json!(4_102_444_800_000_i64),
            json!("1999-12-31T23:59:59Z"),
            json!("2100-01-01T00:00:00Z"),
        ] {
            body["occurredAt"] = bad.clone();
            let why = refusal(&body);
            assert!(
                why.starts_with("occurredAt:") && why.contains("epoch milliseconds"),
                "{bad}: {why}"
            );
        }
        body["occurredAt"] = json!(946_684_800_000_i64);
        assert_eq!(map(&body).unwrap()[0].interaction_ms, 946_684_800_000);
    }

    #[test]
    fn attendance_times_are_normalized_to_utc_keeping_milliseconds() {
        let mut body = record();
        body["properties"] = json!({
            "joinedAt": "2026-01-01T11:00:00+01:00", "leftAt": "2026-01-01T11:30:00.250Z"
        });
        let properties = &map(&body).unwrap()[0].properties;
        assert_eq!(properties["joinedAt"], "2026-01-01T10:00:00Z");
        assert_eq!(properties["leftAt"], "2026-01-01T11:30:00.250Z");
    }

    #[test]
    fn properties_hubspot_would_refuse_are_refused_at_ingest() {
        let only = "HubSpot takes only joinedAt and leftAt, on attend records";
        let cases = [
            ("attend", json!({"color": "red"}), "properties.color", only),
            (
                "register",
                json!({"joinedAt": "2026-01-01T10:00:00Z"}),
                "properties.joinedAt",
                only,
            ),
            (
                "cancel",
                json!({"leftAt": "2026-01-01T10:00:00Z"}),
                "properties.leftAt",
                only,
            ),
            (
                "attend",
                json!({"joinedAt": "10:00"}),
                "properties.joinedAt",
                "expected an RFC 3339",
            ),
            (
                "attend",
                json!({"leftAt": "2026-01-01 10:00:00"}),
                "properties.leftAt",
                "expected an RFC 3339",
            ),
            (
                "attend",
                json!({"joinedAt": "1970-01-01T00:00:00Z"}),
                "properties.joinedAt",
                "from 2000 to 2099",
            ),
            (
                "attend",
                json!({"joinedAt": "2026-01-01T11:00:00Z", "leftAt": "2026-01-01T10:59:59Z"}),
                "properties.leftAt",
                "before joinedAt",
            ),
        ];
        for (state, properties, field, why) in cases {
            let mut body = record();
            body["state"] = json!(state);
            body["properties"] = properties;
            let refused = refusal(&json!({"records": [record(), record(), body]}));
            assert!(
                refused.starts_with(&format!("records[2].{field}: ")),
                "{refused}"
            );
            assert!(refused.contains(why), "{refused}");
        }
        let mut register = record();
        register["state"] = json!("register");
        register["properties"] = json!({});
        assert!(map(&register).unwrap()[0].properties.is_empty());
    }

    #[test]
    fn a_vid_without_an_email_skips_contact_resolution() {
        let mut body = record();
        body.as_object_mut().unwrap().remove("email");
        body["vid"] = json!(1001);
        let stored = &map(&body).unwrap()[0];
        assert_eq!((stored.vid, stored.email.as_str()), (Some(1001), ""));
        assert!(stored.is_mappable());
        body["vid"] = json!("1002");
        assert_eq!(map(&body).unwrap()[0].vid, Some(1002));
    }

    #[test]
    fn the_configured_account_fills_in_a_missing_one() {
        let mut body = record();
        body.as_object_mut().unwrap().remove("externalAccountId");
        assert_eq!(
            map(&body).unwrap()[0].external_account_id,
            "default-account"
        );
        let without_default = from_env(&[("GENERIC_JWT_SECRET", "s")]).unwrap().unwrap();
        let Err(Rejection::Invalid(why)) = without_default.map(body.to_string().as_bytes()) else {
            panic!("expected a 400");
        };
        assert!(why.contains("GENERIC_EXTERNAL_ACCOUNT_ID"), "{why}");
    }

    #[test]
    fn every_missing_or_invalid_field_is_named_with_its_place_in_the_batch() {
        let cases: [(&str, Value, &str); 12] = [
            ("id", Value::Null, "id: missing"),
            ("id", json!({}), "id: expected a string or an integer"),
            ("externalEventId", Value::Null, "externalEventId: missing"),
            ("state", Value::Null, "state: missing"),
            (
                "state",
                json!("joined"),
                "state: expected register, attend or cancel",
            ),
            (
                "email",
                json!("not-an-address"),
                "email: expected an email address",
            ),
            ("email", json!(7), "email: expected a string"),
            ("vid", json!(-1), "vid: expected a HubSpot contact id"),
            ("occurredAt", Value::Null, "occurredAt: missing"),
            ("firstName", json!(1), "firstName: expected a string"),
            (
                "properties",
                json!([]),
                "properties: expected an object of strings",
            ),
            (
                "properties",
                json!({"leftAt": 5}),
                "properties.leftAt: expected a string",
            ),
        ];
        for (field, value, expected) in cases {
            let mut bad = record();
            bad[field] = value;
            assert!(
                refusal(&bad).starts_with(expected),
                "{field}: {}",
                refusal(&bad)
            );
            let batch = json!({"records": [record(), record(), record(), bad]});
            let why = refusal(&batch);
            assert!(why.starts_with(&format!("records[3].{expected}")), "{why}");
        }
        let mut anonymous = record();
        anonymous.as_object_mut().unwrap().remove("email");
        assert!(refusal(&anonymous).contains("give email or vid"));
        assert!(refusal(&json!({"records": [1]})).starts_with("records[0]: expected an object"));
        assert!(
            matches!(generic().map(b"not json"), Err(Rejection::Invalid(why)) if why.contains("not JSON"))
        );
        assert!(refusal(&json!([record()])).starts_with("body:"));
    }

    #[test]
    fn keys_are_checked_at_start_up() {
        assert!(from_env(&[]).unwrap().is_none());
        assert!(
            from_env(&[("GENERIC_JWT_SECRET", ""), ("GENERIC_WEBHOOK_SECRET", "")])
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            from_env(&[
                ("GENERIC_JWT_SECRET", "s"),
                ("GENERIC_JWT_PUBLIC_KEY_PEM", "x")
            ]),
            Err(GenericConfigError::TwoJwtKeys)
        ));
        assert!(matches!(
            from_env(&[(
                "GENERIC_JWT_PUBLIC_KEY_PEM",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
            )]),
            Err(GenericConfigError::PublicKey(_))
        ));
        for secret in ["c2VjcmV0", "whsec_", "whsec_not base64!"] {
            assert!(
                matches!(
                    from_env(&[("GENERIC_WEBHOOK_SECRET", secret)]),
                    Err(GenericConfigError::WebhookSecret(_))
                ),
                "{secret}"
            );
        }
        assert!(
            from_env(&[("GENERIC_WEBHOOK_SECRET", "whsec_c2VjcmV0")])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_webhook_timestamp_far_from_any_clock_is_refused_before_the_library_sees_it() {
        let generic = from_env(&[("GENERIC_WEBHOOK_SECRET", "whsec_c2VjcmV0")])
            .unwrap()
            .unwrap();
        // Found by fuzzing: now minus this overflows inside standardwebhooks.
        for timestamp in ["-9223372036854775807", "9223372036854775807"] {
            let request = actix_web::test::TestRequest::default()
                .insert_header(("webhook-id", "msg_1"))
                .insert_header(("webhook-timestamp", timestamp))
                .insert_header(("webhook-signature", "v1,c2lnbmF0dXJl"))
                .to_http_request();
            let refused = generic.authenticate(&request, b"{}").unwrap_err();
            assert!(
                refused.to_string().contains("malformed webhook-timestamp"),
                "{refused}"
            );
        }
    }
}
