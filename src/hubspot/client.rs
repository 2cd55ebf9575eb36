//! The calls the forwarder makes to HubSpot, on awc. Every call waits for the
//! rate limiter, carries the central credential, is timed and counted, and
//! comes back as a body or a [`CallError`] that says what to do next.

use std::{
    collections::{BTreeMap, HashMap},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use awc::http::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Operation, rate_limit::RateLimiter};
use crate::{
    metrics::Metrics,
    outbound,
    record::{EventInfo, State, normalize_email},
    store::CallWindow,
    token::{CredentialError, TokenSource},
};

/// RFC 3986 unreserved characters stay; everything else in a path segment or
/// query value is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// How long every call waits after a 429 that did not say `Retry-After`.
const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);
/// Largest answer read from HubSpot (a batch of 100 objects is far smaller).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// Worth retrying later: 429, 5xx, timeout, connection failure.
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// No usable credential (401 even after a refresh, a 403 for missing
    /// scopes, none configured): forwarding pauses until it works again.
    #[error("{0}")]
    Credential(String),
    /// Any other 4xx: HubSpot refuses this request as it is.
    #[error("HubSpot answered {status}: {message}")]
    Rejected {
        status: u16,
        message: String,
        body: Value,
    },
}

impl From<CredentialError> for CallError {
    fn from(err: CredentialError) -> Self {
        match err {
            CredentialError::Unavailable(reason) => CallError::Transient {
                reason,
                retry_after: None,
            },
            CredentialError::Missing | CredentialError::Refused(_) => {
                CallError::Credential(err.to_string())
            }
        }
    }
}

/// One input of an attendance `create` call.
#[derive(Debug, Serialize)]
pub struct Subscriber<'a> {
    pub vid: i64,
    #[serde(rename = "interactionDateTime")]
    pub interaction_ms: i64,
    pub properties: &'a BTreeMap<String, String>,
}

/// A contact to create (or update) by email.
#[derive(Debug)]
pub struct ContactInput<'a> {
    pub email: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
}

/// How HubSpot settled the inputs of a `create` call that it answered 2xx.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CreateOutcome {
    /// Per-input errors: the input's vid and HubSpot's message.
    pub failed: HashMap<i64, String>,
    /// Vids HubSpot listed as done.
    pub done: Vec<i64>,
    /// HubSpot reported errors it did not tie to an input.
    pub unattributed_errors: bool,
}

pub struct HubSpotClient {
    http: awc::Client,
    base: String,
    token: Rc<dyn TokenSource>,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
}

impl HubSpotClient {
    pub fn new(
        base_url: &str,
        token: Rc<dyn TokenSource>,
        limit_per_10s: u32,
        timeout: Duration,
        metrics: Arc<Metrics>,
        window: Arc<dyn CallWindow>,
    ) -> Self {
        Self {
            http: outbound::client(timeout, true),
            base: base_url.trim_end_matches('/').to_owned(),
            token,
            limiter: RateLimiter::new(limit_per_10s, window),
            metrics,
        }
    }

    /// Contact ids of those `emails` HubSpot knows (keys lower-cased).
    pub async fn read_contacts(
        &self,
        emails: &[String],
    ) -> Result<HashMap<String, i64>, CallError> {
        let body = json!({
            "idProperty": "email",
            "inputs": emails.iter().map(|email| json!({ "id": email })).collect::<Vec<_>>(),
            "properties": ["email"],
            // Required by HubSpot's schema even when no history is wanted.
            "propertiesWithHistory": [],
        });
        let answer = self
            .call(
                Operation::ContactsRead,
                "/crm/v3/objects/contacts/batch/read",
                &body,
            )
            .await?;
        Ok(contact_ids(&answer))
    }

    /// Creates (or updates) contacts by email; returns their ids.
    pub async fn upsert_contacts(
        &self,
        contacts: &[ContactInput<'_>],
    ) -> Result<HashMap<String, i64>, CallError> {
        let inputs: Vec<Value> = contacts
            .iter()
            .map(|contact| {
                let mut properties = serde_json::Map::new();
                properties.insert("email".into(), contact.email.into());
                if let Some(first) = contact.first_name {
                    properties.insert("firstname".into(), first.into());
                }
                if let Some(last) = contact.last_name {
                    properties.insert("lastname".into(), last.into());
                }
                json!({ "id": contact.email, "idProperty": "email", "properties": properties })
            })
            .collect();
        let answer = self
            .call(
                Operation::ContactsUpsert,
                "/crm/v3/objects/contacts/batch/upsert",
                &json!({ "inputs": inputs }),
            )
            .await?;
        Ok(contact_ids(&answer))
    }

    pub async fn create_attendance(
        &self,
        external_account_id: &str,
        external_event_id: &str,
        state: State,
        inputs: &[Subscriber<'_>],
    ) -> Result<CreateOutcome, CallError> {
        let path = format!(
            "/marketing/marketing-events/2026-03/attendance/{}/{}/create?externalAccountId={}",
            encode(external_event_id),
            state.as_str(),
            encode(external_account_id),
        );
        let answer = self
            .call(
                Operation::AttendanceCreate,
                &path,
                &json!({ "inputs": inputs }),
            )
            .await?;
        Ok(create_outcome(&answer, inputs))
    }

    /// Creates the marketing event from what the platform told us about it.
    pub async fn upsert_event(
        &self,
        external_account_id: &str,
        external_event_id: &str,
        organizer: &str,
        info: &EventInfo,
    ) -> Result<(), CallError> {
        let mut event = json!({
            "externalAccountId": external_account_id,
            "externalEventId": external_event_id,
            "eventName": info.name.as_deref().unwrap_or(external_event_id),
            "eventOrganizer": organizer,
            // Required by HubSpot's schema; the gateway sets no custom properties.
            "customProperties": [],
        });
        if let Some(start) = &info.start {
            event["startDateTime"] = start.as_str().into();
        }
        if let Some(end) = &info.end {
            event["endDateTime"] = end.as_str().into();
        }
        self.call(
            Operation::EventsUpsert,
            "/marketing/marketing-events/2026-03/events/upsert",
            &json!({ "inputs": [event] }),
        )
        .await
        .map(drop)
    }

    /// Completes the marketing event: HubSpot then computes each attendee's
    /// duration from the sessions it was sent.
    pub async fn complete_event(
        &self,
        external_account_id: &str,
        external_event_id: &str,
        start: &str,
        end: &str,
    ) -> Result<(), CallError> {
        let path = format!(
            "/marketing/marketing-events/2026-03/events/{}/complete?externalAccountId={}",
            encode(external_event_id),
            encode(external_account_id),
        );
        let body = json!({ "startDateTime": start, "endDateTime": end });
        self.call(Operation::EventsComplete, &path, &body)
            .await
            .map(drop)
    }

    /// One call: rate limit, credential (one retry after a refresh on 401),
    /// metrics, and the answer sorted into body or [`CallError`].
    async fn call(
        &self,
        operation: Operation,
        path: &str,
        body: &Value,
    ) -> Result<Value, CallError> {
        let mut refreshed = false;
        loop {
            // The token is taken once the limiter lets the call go: a wait
            // for the window may outlast a short-lived token.
            let permit = self.limiter.acquire().await;
            let token = self.token.access_token().await?;
            let started = Instant::now();
            let sent = self
                .http
                .post(format!("{}{path}", self.base))
                .insert_header((AUTHORIZATION, format!("Bearer {}", token.expose())))
                .send_json(body)
                .await;
            // HubSpot counted the call by the time its answer (or failure) came.
            let in_window = permit.answered().await;
            let label = operation.as_str();
            let inputs = body["inputs"].as_array().map_or(0, Vec::len);
            let mut response = match sent {
                Ok(response) => response,
                Err(err) => {
                    self.observe(label, "error", started, inputs);
                    return Err(CallError::Transient {
                        reason: format!("{label}: {err}"),
                        retry_after: None,
                    });
                }
            };
            let status = response.status().as_u16();
            self.observe(label, &status.to_string(), started, inputs);
            if let Some((remaining, interval)) = rate_headers(response.headers()) {
                self.limiter
                    .observe_remaining(in_window, remaining, interval)
                    .await;
            }
            let answer = match response.body().limit(MAX_ANSWER_BYTES).await {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                Err(err) if (200..300).contains(&status) => {
                    return Err(CallError::Transient {
                        reason: format!("{label}: answer unreadable: {err}"),
                        retry_after: None,
                    });
                }
                Err(_) => Value::Null,
            };
            match status {
                200..=299 => return Ok(answer),
                401 if !refreshed => {
                    self.token.rejected(&token).await?;
                    refreshed = true;
                }
                401 => {
                    return Err(CallError::Credential(format!(
                        "{label}: HubSpot answered 401: {}",
                        message(&answer)
                    )));
                }
                403 if credential_problem(&answer) => {
                    return Err(CallError::Credential(format!(
                        "{label}: HubSpot answered 403: {}",
                        message(&answer)
                    )));
                }
                429 | 500..=599 => {
                    let mut retry_after = retry_after(response.headers());
                    if status == 429 {
                        // Flow control, not an outage: it says when to go on.
                        let pause = retry_after.unwrap_or(RATE_LIMITED_PAUSE);
                        self.limiter.hold_for(pause).await;
                        retry_after = Some(pause);
                    }
                    return Err(CallError::Transient {
                        reason: format!("{label}: HubSpot answered {status}: {}", message(&answer)),
                        retry_after,
                    });
                }
                _ => {
                    return Err(CallError::Rejected {
                        status,
                        message: message(&answer),
                        body: answer,
                    });
                }
            }
        }
    }

    /// Counts, times and logs one call (`inputs`: the batch it carried).
    fn observe(&self, operation: &str, status: &str, started: Instant, inputs: usize) {
        let elapsed = started.elapsed();
        tracing::info!(
            operation,
            status,
            duration_ms = elapsed.as_millis() as u64,
            batch_size = inputs,
            "hubspot call"
        );
        self.metrics
            .hubspot_requests
            .with_label_values(&[operation, status])
            .inc();
        self.metrics
            .hubspot_request_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }
}

/// HubSpot's `X-HubSpot-RateLimit-Remaining` and the interval it counts over.
fn rate_headers(headers: &HeaderMap) -> Option<(u32, Duration)> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let remaining = number("x-hubspot-ratelimit-remaining")?;
    let interval = number("x-hubspot-ratelimit-interval-milliseconds")
        .map_or(super::rate_limit::WINDOW, Duration::from_millis);
    Some((u32::try_from(remaining).unwrap_or(u32::MAX), interval))
}

/// A 403 is about the credential when HubSpot says scopes are missing or the
/// authentication is bad; any other 403 refuses this request only.
fn credential_problem(answer: &Value) -> bool {
    let category = answer.get("category").and_then(Value::as_str);
    let scopes = message(answer).to_ascii_lowercase().contains("scope");
    scopes
        || matches!(
            category,
            Some("MISSING_SCOPES" | "INVALID_AUTHENTICATION" | "EXPIRED_AUTHENTICATION")
        )
}

fn encode(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

/// `Retry-After` in seconds (HubSpot does not send the date form).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// HubSpot's `message` and those of its error details, or the raw answer
/// when it has none.
fn message(answer: &Value) -> String {
    let Some(message) = answer.get("message").and_then(Value::as_str) else {
        return match answer {
            Value::Null => "no body".to_owned(),
            other => other.to_string().chars().take(300).collect(),
        };
    };
    let details: Vec<&str> = answer
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|detail| detail.get("message").and_then(Value::as_str))
        .collect();
    if details.is_empty() {
        message.to_owned()
    } else {
        format!("{message}: {}", details.join("; "))
    }
}

/// `email → id` from a batch answer's `results` (objects with `id` and `properties.email`).
fn contact_ids(answer: &Value) -> HashMap<String, i64> {
    results(answer)
        .filter_map(|object| {
            let email = object.pointer("/properties/email")?.as_str()?;
            let id = object.get("id")?.as_str()?.parse().ok()?;
            Some((normalize_email(email), id))
        })
        .collect()
}

fn results(answer: &Value) -> impl Iterator<Item = &Value> {
    answer
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Ties a `create` answer's per-input errors to the inputs they name.
fn create_outcome(answer: &Value, inputs: &[Subscriber<'_>]) -> CreateOutcome {
    let mut outcome = CreateOutcome {
        done: results(answer)
            .filter_map(|r| r.get("vid").and_then(Value::as_i64))
            .collect(),
        ..CreateOutcome::default()
    };
    let vids: Vec<String> = inputs.iter().map(|input| input.vid.to_string()).collect();
    let errors = answer.get("errors").and_then(Value::as_array);
    for error in errors.into_iter().flatten() {
        let named = named_inputs(error, &vids);
        if named.is_empty() {
            outcome.unattributed_errors = true;
        }
        for i in named {
            outcome.failed.insert(inputs[i].vid, message(error));
        }
    }
    outcome
}

/// Which inputs of a batch (in input order, identified by `keys`: vids or
/// emails) an error — HubSpot's `Error` or `StandardError` — names, by key in
/// a `context` or by `inputs[i]` in an `in`; as indices into `keys`.
pub fn named_inputs(error: &Value, keys: &[String]) -> Vec<usize> {
    let mut mentioned: Vec<&str> = Vec::new();
    let details = error.get("errors").and_then(Value::as_array);
    for value in std::iter::once(error).chain(details.into_iter().flatten()) {
        for values in value
            .get("context")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|c| c.values())
        {
            mentioned.extend(
                values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        }
    }
    let mut named: Vec<usize> = keys
        .iter()
        .enumerate()
        .filter(|(_, key)| mentioned.iter().any(|m| m.eq_ignore_ascii_case(key)))
        .map(|(i, _)| i)
        .collect();
    for detail in details.into_iter().flatten() {
        let index = detail
            .get("in")
            .and_then(Value::as_str)
            .and_then(|at| at.strip_prefix("inputs["))
            .and_then(|rest| rest.split(']').next())
            .and_then(|i| i.parse::<usize>().ok());
        named.extend(index.filter(|i| *i < keys.len()));
    }
    named.sort_unstable();
    named.dedup();
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_and_query_are_percent_encoded() {
        assert_eq!(encode("81 234/x?y&z"), "81%20234%2Fx%3Fy%26z");
        assert_eq!(encode("ab-c.d_e~9"), "ab-c.d_e~9");
        assert_eq!(encode("zoom:é"), "zoom%3A%C3%A9");
    }

    #[test]
    fn per_input_errors_are_tied_to_their_inputs() {
        let props = BTreeMap::new();
        let inputs: Vec<Subscriber> = [11, 12, 13]
            .into_iter()
            .map(|vid| Subscriber {
                vid,
                interaction_ms: 1,
                properties: &props,
            })
            .collect();
        let answer = json!({
            "status": "COMPLETE",
            "results": [{"vid": 11}],
            "errors": [
                {"message": "Contact 12 not found", "context": {"vids": ["12"]}, "errors": [], "links": {}, "category": "x", "status": "error"},
                {"message": "bad time", "errors": [{"message": "bad", "in": "inputs[2].interactionDateTime"}]},
                {"message": "something else"}
            ]
        });
        let outcome = create_outcome(&answer, &inputs);
        assert_eq!(outcome.done, vec![11]);
        assert_eq!(
            outcome.failed.get(&12).map(String::as_str),
            Some("Contact 12 not found")
        );
        assert_eq!(
            outcome.failed.get(&13).map(String::as_str),
            Some("bad time: bad")
        );
        assert!(outcome.unattributed_errors);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
