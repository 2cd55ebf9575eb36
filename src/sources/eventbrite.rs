//! Eventbrite webhooks. Eventbrite signs nothing and sends only
//! `config.action` and an `api_url`: the delivery is authenticated by the
//! secret path token, stored, acknowledged, and then [`EventbriteApi`] fetches
//! the order (with its attendees) or attendee it points at and maps it, one
//! record per attendee. Only URLs under `EVENTBRITE_API_BASE_URL` are ever
//! fetched.

use std::time::Duration;

use actix_web::HttpRequest;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use super::{Fetch, FetchError, Fetched, Inbound, Rejection, Source};
use crate::{
    outbound,
    record::{NewRecord, State, normalize_email, parse_rfc3339_ms},
    settings::Secret,
};

const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The route's half: authenticates and accepts deliveries.
pub struct Eventbrite {
    path_token: Secret,
    api_base: Url,
    external_account_id: Option<String>,
}

/// The fetching half; lives on the runtime of the fetcher (its HTTP client is
/// not `Send`).
pub struct EventbriteApi {
    http: awc::Client,
    api_token: Option<Secret>,
    api_base: Url,
    external_account_id: Option<String>,
}

#[derive(Deserialize)]
struct Webhook {
    config: Config,
    api_url: String,
}

#[derive(Deserialize)]
struct Config {
    action: String,
    /// A string in Eventbrite's deliveries; tolerated as a number.
    user_id: Option<Value>,
}

/// What a delivery's action means for the attendees it points at.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Register,
    Cancel,
    Attend,
    /// Whatever state Eventbrite has for each attendee now.
    AsFetched,
}

fn action_of(action: &str) -> Option<Action> {
    match action {
        "order.placed" => Some(Action::Register),
        "order.refunded" => Some(Action::Cancel),
        "order.updated" | "attendee.updated" => Some(Action::AsFetched),
        // Real deliveries say `barcode.checked_in`; the documentation `attendee.checked_in`.
        "attendee.checked_in" | "barcode.checked_in" => Some(Action::Attend),
        _ => None,
    }
}

/// The API root as a prefix: with a trailing slash, so `/v3` cannot match `/v3evil`.
pub fn api_base(base: &str) -> Result<Url, url::ParseError> {
    let with_slash = if base.ends_with('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    };
    Url::parse(&with_slash)
}

/// The URL the gateway would request for `api_url`, if it is under the API
/// root. Parsing normalizes it first (`..`, `%2e%2e`, case of the host,
/// default ports), so what is checked is what would be requested.
fn fetchable(api_url: &str, base: &Url) -> Result<Url, String> {
    let refuse = |why: &str| {
        Err(format!(
            "api_url is not under EVENTBRITE_API_BASE_URL ({why})"
        ))
    };
    let Ok(url) = Url::parse(api_url) else {
        return refuse("not an absolute URL");
    };
    if url.scheme() != base.scheme() {
        return refuse("scheme");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("credentials in the URL");
    }
    if url.host() != base.host() || url.port_or_known_default() != base.port_or_known_default() {
        return refuse("host");
    }
    if !url.path().starts_with(base.path()) {
        return refuse("path");
    }
    Ok(url)
}

fn parse(body: &[u8]) -> Result<Webhook, String> {
    serde_json::from_str(super::json_text(body)?)
        .map_err(|err| format!("not an Eventbrite webhook (config.action and api_url): {err}"))
}

/// `EVENTBRITE_EXTERNAL_ACCOUNT_ID`, else the organization in `config.user_id`.
fn account_of(webhook: &Webhook, configured: Option<&String>) -> Option<String> {
    configured
        .cloned()
        .or_else(|| match webhook.config.user_id.as_ref()? {
            Value::String(id) if !id.is_empty() => Some(id.clone()),
            Value::Number(id) => Some(id.to_string()),
            _ => None,
        })
}

impl Eventbrite {
    pub fn new(path_token: Secret, api_base: Url, external_account_id: Option<String>) -> Self {
        Self {
            path_token,
            api_base,
            external_account_id,
        }
    }
}

impl Source for Eventbrite {
    const NAME: &'static str = "eventbrite";

    fn authenticate(&self, request: &HttpRequest, _body: &[u8]) -> Result<(), Rejection> {
        let given = request.match_info().get("token").unwrap_or_default();
        // Digests first, so the comparison takes as long whatever the lengths.
        let given = Sha256::digest(given.as_bytes());
        let expected = Sha256::digest(self.path_token.expose().as_bytes());
        if bool::from(given.ct_eq(&expected)) {
            Ok(())
        } else {
            // 404, never 401 or 410: the route simply does not exist for a stranger.
            Err(Rejection::UnknownRoute)
        }
    }

    /// Every delivery is stored as its own: the same body later (another
    /// `attendee.updated` of the same attendee) can mean a new state, so it
    /// is fetched again, and records deduplicate what the fetches repeat.
    fn interpret(&self, body: &[u8]) -> Result<Inbound, Rejection> {
        let webhook = parse(body).map_err(Rejection::Invalid)?;
        if action_of(&webhook.config.action).is_none() {
            // `test` from the dashboard, and actions without attendance.
            return Ok(Inbound::Ignored);
        }
        if account_of(&webhook, self.external_account_id.as_ref()).is_none() {
            return Err(Rejection::Invalid(
                "config.user_id is missing and EVENTBRITE_EXTERNAL_ACCOUNT_ID is not set".into(),
            ));
        }
        fetchable(&webhook.api_url, &self.api_base).map_err(Rejection::Unfetchable)?;
        Ok(Inbound::Deferred)
    }
}

impl EventbriteApi {
    pub fn new(
        api_token: Option<Secret>,
        api_base: Url,
        external_account_id: Option<String>,
    ) -> Self {
        Self {
            // Only the URL checked is requested: no redirects.
            http: outbound::client(FETCH_TIMEOUT, false),
            api_token,
            api_base,
            external_account_id,
        }
    }
}

#[async_trait(?Send)]
impl Fetch for EventbriteApi {
    fn source(&self) -> &'static str {
        Eventbrite::NAME
    }

    async fn fetch(&self, body: &[u8]) -> Result<Fetched, FetchError> {
        let webhook = parse(body).map_err(FetchError::Failed)?;
        let action = action_of(&webhook.config.action).ok_or_else(|| {
            FetchError::Failed(format!(
                "action {} carries no attendance",
                webhook.config.action
            ))
        })?;
        let account = account_of(&webhook, self.external_account_id.as_ref())
            .ok_or_else(|| FetchError::Failed("no externalAccountId".into()))?;
        let mut url = fetchable(&webhook.api_url, &self.api_base).map_err(FetchError::Failed)?;
        if url.path().contains("/orders/") && !url.query_pairs().any(|(k, _)| k == "expand") {
            url.query_pairs_mut().append_pair("expand", "attendees");
        }
        let Some(token) = &self.api_token else {
            return Err(FetchError::Retry("EVENTBRITE_API_TOKEN is not set".into()));
        };
        let mut response = self
            .http
            .get(url.as_str())
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|err| FetchError::Retry(format!("Eventbrite cannot be reached: {err}")))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            404 | 410 => {
                return Err(FetchError::Failed(format!(
                    "Eventbrite no longer has {} ({status})",
                    url.path()
                )));
            }
            _ => {
                return Err(FetchError::Retry(format!(
                    "Eventbrite answered {status} for {}",
                    url.path()
                )));
            }
        }
        let bytes = response
            .body()
            .limit(MAX_ANSWER_BYTES)
            .await
            .map_err(|err| FetchError::Retry(format!("Eventbrite's answer was cut: {err}")))?;
        let object: Value = serde_json::from_slice(&bytes)
            .map_err(|err| FetchError::Failed(format!("Eventbrite's answer is not JSON: {err}")))?;
        let mut fetched = Fetched::default();
        let mut problems = Vec::new();
        for record in records_of(action, &object, &account).map_err(FetchError::Failed)? {
            match record {
                Ok(record) => fetched.records.push(record),
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            fetched.problem = Some(problems.join("; "));
        }
        Ok(fetched)
    }
}

#[derive(Deserialize)]
struct Attendee {
    #[serde(default)]
    profile: Profile,
    event_id: Option<String>,
    created: Option<String>,
    changed: Option<String>,
    #[serde(default)]
    checked_in: bool,
    #[serde(default)]
    cancelled: bool,
    #[serde(default)]
    refunded: bool,
    status: Option<String>,
}

#[derive(Default, Deserialize)]
struct Profile {
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

impl Attendee {
    /// The state Eventbrite shows for the attendee now.
    fn state(&self) -> State {
        let status = self
            .status
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if self.checked_in || status == "checked in" {
            State::Attend
        } else if self.cancelled
            || self.refunded
            || matches!(
                status.as_str(),
                "not attending" | "deleted" | "refunded" | "cancelled"
            )
        {
            State::Cancel
        } else {
            State::Register
        }
    }
}

/// One record per attendee of a fetched order, or for a fetched attendee;
/// an attendee that cannot be mapped says why, without sinking the others.
fn records_of(
    action: Action,
    object: &Value,
    account: &str,
) -> Result<Vec<Result<NewRecord, String>>, String> {
    let attendees: Vec<&Value> = match (object.get("attendees"), object.get("profile")) {
        (Some(Value::Array(attendees)), _) => attendees.iter().collect(),
        (_, Some(_)) => vec![object],
        _ => return Err("the answer is neither an order with attendees nor an attendee".into()),
    };
    let order_event = object.get("event_id").and_then(Value::as_str);
    Ok(attendees
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let attendee =
                Attendee::deserialize(value).map_err(|err| format!("attendee {i}: {err}"))?;
            let state = match action {
                Action::Register => State::Register,
                Action::Cancel => State::Cancel,
                Action::Attend => State::Attend,
                Action::AsFetched => attendee.state(),
            };
            // Registration happened when the ticket was bought; anything later when it changed.
            let at = match state {
                State::Register => attendee.created.as_deref(),
                State::Attend | State::Cancel | State::Complete => {
                    attendee.changed.as_deref().or(attendee.created.as_deref())
                }
            };
            let interaction_ms = at
                .and_then(parse_rfc3339_ms)
                .ok_or_else(|| format!("attendee {i} has no valid created/changed time"))?;
            let event = attendee
                .event_id
                .as_deref()
                .or(order_event)
                .ok_or_else(|| format!("attendee {i} has no event_id"))?;
            Ok(NewRecord {
                state,
                email: attendee
                    .profile
                    .email
                    .as_deref()
                    .map(normalize_email)
                    .unwrap_or_default(),
                first_name: attendee.profile.first_name.filter(|n| !n.is_empty()),
                last_name: attendee.profile.last_name.filter(|n| !n.is_empty()),
                vid: None,
                sender_id: None,
                participant: None,
                closes_session: false,
                external_event_id: event.to_owned(),
                external_account_id: account.to_owned(),
                interaction_ms,
                properties: Default::default(),
                event: None,
            })
        })
        .collect())
}

/// The two checks behind the fetch, for the fuzz targets in `fuzz/` (built
/// with `--cfg fuzzing`): through the routes only an HTTP round trip to
/// Eventbrite reaches them, and the URL check's answer is hidden in a status.
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::*;

    /// The URL that would be requested for `api_url`, if any.
    pub fn fetchable(api_url: &str, base: &Url) -> Result<Url, String> {
        super::fetchable(api_url, base)
    }

    /// The records of a fetched order or attendee for a delivery's `action`
    /// (`None` for an action without attendance).
    pub fn records_of(
        action: &str,
        object: &Value,
        account: &str,
    ) -> Option<Result<Vec<Result<NewRecord, String>>, String>> {
        Some(super::records_of(action_of(action)?, object, account))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Url {
        api_base("https://www.eventbriteapi.com/v3").unwrap()
    }

    #[test]
    fn only_urls_under_the_api_root_are_fetchable() {
        let ok = fetchable("https://www.eventbriteapi.com/v3/orders/1/", &base()).unwrap();
        assert_eq!(ok.as_str(), "https://www.eventbriteapi.com/v3/orders/1/");
        assert!(fetchable("https://WWW.EventbriteAPI.com:443/v3/orders/1/", &base()).is_ok());
        for refused in [
            "https://evil.example.com/v3/orders/1/",
            "https://www.eventbriteapi.com.evil.example.com/v3/orders/1/",
            "https://www.eventbriteapi.com@evil.example.com/v3/orders/1/",
            "https://user:pw@www.eventbriteapi.com/v3/orders/1/",
            "http://www.eventbriteapi.com/v3/orders/1/",
            "https://www.eventbriteapi.com:8443/v3/orders/1/",
            "https://127.0.0.1/v3/orders/1/",
            "https://[::1]/v3/orders/1/",
            "https://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "ftp://www.eventbriteapi.com/v3/orders/1/",
            "https://www.eventbriteapi.com/v3/../admin/",
            "https://www.eventbriteapi.com/v3/%2e%2e/admin/",
            "https://www.eventbriteapi.com/v3evil/orders/1/",
            "https://www.eventbriteapi.com/v2/orders/1/",
            "/v3/orders/1/",
            "",
        ] {
            assert!(
                fetchable(refused, &base()).is_err(),
                "{refused} was fetchable"
            );
        }
    }

    #[test]
    fn the_fetched_state_of_each_attendee_decides() {
        let attendee = |status: &str, checked_in: bool, cancelled: bool| {
            json!({"profile": {"email": "A@Example.com"}, "event_id": "9", "status": status,
                   "checked_in": checked_in, "cancelled": cancelled, "refunded": false,
                   "created": "2026-01-01T10:00:00Z", "changed": "2026-01-02T10:00:00Z"})
        };
        let order = json!({"event_id": "9", "email": "buyer@example.com", "attendees": [
            attendee("Attending", false, false),
            attendee("Checked In", true, false),
            attendee("Not Attending", false, true),
            attendee("Deleted", false, false),
        ]});
        let records: Vec<NewRecord> = records_of(Action::AsFetched, &order, "acc")
            .unwrap()
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let states: Vec<State> = records.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [State::Register, State::Attend, State::Cancel, State::Cancel]
        );
        assert_eq!(
            records[0].interaction_ms,
            parse_rfc3339_ms("2026-01-01T10:00:00Z").unwrap()
        );
        assert_eq!(
            records[1].interaction_ms,
            parse_rfc3339_ms("2026-01-02T10:00:00Z").unwrap()
        );
        assert!(
            records
                .iter()
                .all(|r| r.email == "a@example.com" && r.external_event_id == "9")
        );
        assert!(records_of(Action::Register, &json!({"id": "1"}), "acc").is_err());
    }

    #[test]
    fn one_unmappable_attendee_does_not_sink_the_others_of_its_order() {
        let order = json!({"event_id": "9", "attendees": [
            {"profile": {"email": "a@example.com"}, "created": "2026-01-01T10:00:00Z"},
            {"profile": {"email": "b@example.com"}},
            {"profile": {"email": "c@example.com"}, "created": "2026-01-01T11:00:00Z"},
        ]});
        let mapped = records_of(Action::Register, &order, "acc").unwrap();
        let emails: Vec<&str> = mapped
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.email.as_str())
            .collect();
        assert_eq!(emails, ["a@example.com", "c@example.com"]);
        assert_eq!(
            mapped[1].as_ref().unwrap_err(),
            "attendee 1 has no valid created/changed time"
        );
    }
}
