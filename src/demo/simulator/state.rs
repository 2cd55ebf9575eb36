//! What the simulated HubSpot holds (contacts, marketing events, attendance,
//! the calls it received) and how each endpoint answers from it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Duration,
};

use actix_web::http::StatusCode;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    Attendance, Call, Chaos, MarketingEvent, Options, TokenRequest,
    faults::{Fault, error_body},
    oauth::OAuthState,
};
use crate::hubspot::Operation;

const DEFAULT_RATE_LIMIT: u32 = 100;
const FIRST_CONTACT_ID: i64 = 1001;
const FIRST_EVENT_ID: i64 = 9001;

/// A status and its JSON body; `Err` carries an error answer so `?` works.
pub(super) type Reply = (StatusCode, Value);

pub(super) struct Contact {
    pub(super) id: i64,
    pub(super) properties: BTreeMap<String, String>,
    pub(super) created_at: String,
    pub(super) updated_at: String,
}

impl Contact {
    /// A `SimplePublicObject`.
    pub(super) fn to_json(&self) -> Value {
        let mut properties = self.properties.clone();
        properties.insert("hs_object_id".to_owned(), self.id.to_string());
        json!({
            "id": self.id.to_string(),
            "properties": properties,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": false,
        })
    }
}

pub(super) struct Event {
    pub(super) id: i64,
    pub(super) created_at: String,
    pub(super) public: MarketingEvent,
}

pub(super) struct State {
    pub(super) rate_limit: u32,
    pub(super) latency: Option<Duration>,
    pub(super) contacts: BTreeMap<i64, Contact>,
    /// Lower-cased, as HubSpot stores emails.
    pub(super) ids_by_email: HashMap<String, i64>,
    pub(super) next_contact_id: i64,
    /// Keyed by (externalAccountId, externalEventId).
    pub(super) events: HashMap<(String, String), Event>,
    pub(super) every_event_exists: bool,
    pub(super) next_event_id: i64,
    pub(super) faults: HashMap<Operation, VecDeque<Fault>>,
    pub(super) calls: Vec<Call>,
    pub(super) attendance: Vec<Attendance>,
    pub(super) rate_limited: usize,
    /// API calls being answered now, and the most there ever were.
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
    pub(super) oauth: Option<OAuthState>,
    pub(super) token_faults: VecDeque<Fault>,
    pub(super) token_requests: Vec<TokenRequest>,
    pub(super) chaos: Option<(Chaos, fastrand::Rng)>,
}
impl State {
    pub(super) fn new(options: Options) -> Self {
        let mut state = State {
            rate_limit: options.rate_limit_per_10s.unwrap_or(DEFAULT_RATE_LIMIT),
            latency: options.latency,
            contacts: BTreeMap::new(),
            ids_by_email: HashMap::new(),
            next_contact_id: FIRST_CONTACT_ID,
            events: HashMap::new(),
            every_event_exists: options.known_events.is_none(),
            next_event_id: FIRST_EVENT_ID,
            faults: HashMap::new(),
            calls: Vec::new(),
            attendance: Vec::new(),
            rate_limited: 0,
            in_flight: 0,
            max_in_flight: 0,
            oauth: options.oauth.map(OAuthState::new),
            token_faults: VecDeque::new(),
            token_requests: Vec::new(),
            chaos: options
                .chaos
                .map(|chaos| (chaos.clone(), fastrand::Rng::with_seed(chaos.seed))),
        };
        for key in options.known_events.into_iter().flatten() {
            state.upsert_event(key);
        }
        state
    }

    /// Returns the contact's id and whether it was created.
    pub(super) fn upsert_contact(
        &mut self,
        email: &str,
        properties: BTreeMap<String, String>,
    ) -> (i64, bool) {
        let email = email.to_lowercase();
        let now = now_rfc3339();
        let (id, new) = match self.ids_by_email.get(&email) {
            Some(&id) => (id, false),
            None => {
                let id = self.next_contact_id;
                self.next_contact_id += 1;
                self.ids_by_email.insert(email.clone(), id);
                self.contacts.insert(
                    id,
                    Contact {
                        id,
                        properties: BTreeMap::new(),
                        created_at: now.clone(),
                        updated_at: now.clone(),
                    },
                );
                (id, true)
            }
        };
        let contact = self.contacts.get_mut(&id).expect("indexed contact exists");
        contact.properties.extend(properties);
        contact.properties.insert("email".to_owned(), email);
        contact.updated_at = now;
        (id, new)
    }

    pub(super) fn upsert_event(&mut self, key: (String, String)) -> &mut Event {
        let next_id = &mut self.next_event_id;
        self.events.entry(key).or_insert_with(|| {
            let id = *next_id;
            *next_id += 1;
            Event {
                id,
                created_at: now_rfc3339(),
                public: MarketingEvent::default(),
            }
        })
    }

    /// The event's key, or the 404 HubSpot answers for an event it lacks.
    pub(super) fn known_event(
        &self,
        account: &str,
        event: &str,
    ) -> Result<(String, String), Reply> {
        let key = (account.to_owned(), event.to_owned());
        if !self.every_event_exists && !self.events.contains_key(&key) {
            return Err((
                StatusCode::NOT_FOUND,
                error_body(
                    "OBJECT_NOT_FOUND",
                    format!("Marketing event {event} of account {account} not found"),
                ),
            ));
        }
        Ok(key)
    }

    pub(super) fn contacts_read(&mut self, body: Value) -> Result<Reply, Reply> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Input {
            id_property: Option<String>,
            inputs: Vec<Id>,
        }
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }

        let started_at = now_rfc3339();
        let input: Input = parse(body)?;
        require_email_id(input.id_property.as_deref())?;
        let (mut results, mut missing) = (Vec::new(), Vec::new());
        for Id { id: email } in input.inputs {
            match self.ids_by_email.get(&email.to_lowercase()) {
                Some(id) => results.push(self.contacts[id].to_json()),
                None => missing.push(email),
            }
        }
        if missing.is_empty() {
            return Ok((StatusCode::OK, batch(&started_at, results, Vec::new())));
        }
        // HubSpot groups every id it could not find into a single error.
        let error = standard_error(
            "OBJECT_NOT_FOUND",
            "Could not get some CONTACT objects, they may be deleted or not exist. \
             Check that ids are valid.",
            json!({ "ids": missing }),
        );
        Ok((
            StatusCode::MULTI_STATUS,
            batch(&started_at, results, vec![error]),
        ))
    }

    pub(super) fn contacts_upsert(&mut self, body: Value) -> Result<Reply, Reply> {
        #[derive(Deserialize)]
        struct Input {
            inputs: Vec<Upsert>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Upsert {
            id: String,
            id_property: Option<String>,
            properties: BTreeMap<String, String>,
        }

        let started_at = now_rfc3339();
        let input: Input = parse(body)?;
        // Checked up front, so a rejected batch changes nothing.
        for upsert in &input.inputs {
            require_email_id(upsert.id_property.as_deref())?;
        }
        let mut results = Vec::new();
        for upsert in input.inputs {
            let (id, new) = self.upsert_contact(&upsert.id, upsert.properties);
            let mut result = self.contacts[&id].to_json();
            result["new"] = new.into();
            results.push(result);
        }
        Ok((StatusCode::OK, batch(&started_at, results, Vec::new())))
    }

    pub(super) fn attendance_create(
        &mut self,
        account: &str,
        event: &str,
        subscriber_state: &str,
        body: Value,
    ) -> Result<Reply, Reply> {
        #[derive(Deserialize)]
        struct Input {
            inputs: Vec<Subscriber>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Subscriber {
            vid: i64,
            interaction_date_time: i64,
            properties: BTreeMap<String, String>,
        }

        let started_at = now_rfc3339();
        let input: Input = parse(body)?;
        let key = self.known_event(account, event)?;
        let (mut results, mut errors) = (Vec::new(), Vec::new());
        for subscriber in input.inputs {
            let vid = subscriber.vid;
            if !self.contacts.contains_key(&vid) {
                errors.push(standard_error(
                    "OBJECT_NOT_FOUND",
                    &format!("Contact {vid} not found"),
                    json!({ "vids": [vid.to_string()] }),
                ));
                continue;
            }
            self.attendance.push(Attendance {
                external_account_id: key.0.clone(),
                external_event_id: key.1.clone(),
                state: subscriber_state.to_owned(),
                vid,
                interaction_ms: subscriber.interaction_date_time,
                properties: subscriber.properties,
            });
            results.push(json!({ "vid": vid }));
        }
        Ok((StatusCode::OK, batch(&started_at, results, errors)))
    }

    pub(super) fn events_upsert(&mut self, body: Value) -> Result<Reply, Reply> {
        #[derive(Deserialize)]
        struct Input {
            inputs: Vec<EventInput>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct EventInput {
            external_account_id: String,
            external_event_id: String,
            event_name: String,
            event_organizer: String,
            custom_properties: Vec<Value>,
            start_date_time: Option<String>,
            end_date_time: Option<String>,
        }

        let started_at = now_rfc3339();
        let input: Input = parse(body)?;
        let mut results = Vec::new();
        for event in input.inputs {
            let stored = self.upsert_event((event.external_account_id, event.external_event_id));
            stored.public.name = Some(event.event_name.clone());
            stored.public.organizer = Some(event.event_organizer.clone());
            stored.public.start.clone_from(&event.start_date_time);
            stored.public.end.clone_from(&event.end_date_time);
            // A `MarketingEventPublicDefaultResponse`: it has no external ids,
            // so results match inputs by position.
            let mut result = json!({
                "id": stored.id.to_string(),
                "objectId": stored.id.to_string(),
                "eventName": event.event_name,
                "eventOrganizer": event.event_organizer,
                "customProperties": event.custom_properties,
                "createdAt": stored.created_at,
                "updatedAt": now_rfc3339(),
            });
            if let Some(start) = event.start_date_time {
                result["startDateTime"] = start.into();
            }
            if let Some(end) = event.end_date_time {
                result["endDateTime"] = end.into();
            }
            results.push(result);
        }
        Ok((StatusCode::OK, batch(&started_at, results, Vec::new())))
    }

    pub(super) fn events_complete(
        &mut self,
        account: Option<&str>,
        event: &str,
        body: Value,
    ) -> Result<Reply, Reply> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Input {
            start_date_time: String,
            end_date_time: String,
        }

        let Some(account) = account else {
            let reply = error_body("VALIDATION_ERROR", "externalAccountId is required");
            return Err((StatusCode::BAD_REQUEST, reply));
        };
        let input: Input = parse(body)?;
        for time in [&input.start_date_time, &input.end_date_time] {
            if OffsetDateTime::parse(time, &Rfc3339).is_err() {
                let reply = error_body("VALIDATION_ERROR", format!("{time:?} is not a date-time"));
                return Err((StatusCode::BAD_REQUEST, reply));
            }
        }
        let key = self.known_event(account, event)?;
        let stored = self.upsert_event(key);
        stored.public.start = Some(input.start_date_time);
        stored.public.end = Some(input.end_date_time);
        stored.public.completions += 1;
        // A `MarketingEventDefaultResponse`.
        let public = &stored.public;
        let reply = json!({
            "objectId": stored.id.to_string(),
            "eventName": public.name.as_deref().unwrap_or(event),
            "eventOrganizer": public.organizer.as_deref().unwrap_or_default(),
            "customProperties": [],
            "startDateTime": public.start,
            "endDateTime": public.end,
            "eventCompleted": true,
        });
        Ok((StatusCode::OK, reply))
    }
}

pub(super) fn parse<T: DeserializeOwned>(body: Value) -> Result<T, Reply> {
    serde_json::from_value(body).map_err(|err| {
        let reply = error_body("VALIDATION_ERROR", format!("Invalid input JSON: {err}"));
        (StatusCode::BAD_REQUEST, reply)
    })
}

/// The simulator keeps contacts by email only, which is all the gateway uses.
pub(super) fn require_email_id(id_property: Option<&str>) -> Result<(), Reply> {
    if id_property == Some("email") {
        return Ok(());
    }
    let reply = error_body(
        "VALIDATION_ERROR",
        "The simulator supports idProperty \"email\" only",
    );
    Err((StatusCode::BAD_REQUEST, reply))
}

/// A `BatchResponse…` envelope; `errors` and `numErrors` only when some failed.
pub(super) fn batch(started_at: &str, results: Vec<Value>, errors: Vec<Value>) -> Value {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": started_at,
        "completedAt": now_rfc3339(),
    });
    if !errors.is_empty() {
        body["numErrors"] = errors.len().into();
        body["errors"] = errors.into();
    }
    body
}

/// A per-input `StandardError` inside a batch answer.
pub(super) fn standard_error(category: &str, message: &str, context: Value) -> Value {
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "errors": [],
        "links": {},
    })
}

pub(super) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("the current time formats as RFC 3339")
}
