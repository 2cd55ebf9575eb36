//! A HubSpot API simulator on loopback: the five endpoints the gateway calls,
//! HubSpot's rate-limit headers, injectable faults, and a record of every
//! call for the tests to inspect.
//!
//! Every body it answers is valid against HubSpot's OpenAPI documents, so the
//! gateway's traffic can also be proxied through a validating Prism.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::TcpListener,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer,
    dev::ServerHandle,
    http::{StatusCode, header::AUTHORIZATION},
    web::{self, Bytes},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::hubspot::Operation;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

const DEFAULT_RATE_LIMIT: u32 = 100;
/// HubSpot's burst limit is counted over a rolling ten seconds.
const RATE_WINDOW: Duration = Duration::from_secs(10);
const FIRST_CONTACT_ID: i64 = 1001;
const FIRST_EVENT_ID: i64 = 9001;

/// One request as the simulator received it, and the status it answered.
#[derive(Clone, Debug)]
pub struct Call {
    pub operation: Operation,
    /// Path and query as received, still percent-encoded.
    pub path: String,
    /// The body as JSON; a body that is not JSON is kept as a string.
    pub body: Value,
    pub authorization: Option<String>,
    pub status: u16,
    pub at: Instant,
}

/// One contact's accepted attendance at a marketing event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attendance {
    pub external_account_id: String,
    pub external_event_id: String,
    pub state: String,
    pub vid: i64,
    pub interaction_ms: i64,
    pub properties: BTreeMap<String, String>,
}

/// A marketing event as the simulator holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketingEvent {
    pub name: Option<String>,
    pub organizer: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    /// Times it was completed.
    pub completions: u32,
}

/// An answer to give instead of the normal behaviour, once.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
    pub delay: Option<Duration>,
    /// The connection is cut after the status line: the body never comes.
    pub cut: bool,
}

impl Fault {
    /// `status` with a spec-valid `Error` body of the category HubSpot uses.
    pub fn status(status: u16) -> Self {
        let category = match status {
            400 => "VALIDATION_ERROR",
            401 => "INVALID_AUTHENTICATION",
            403 => "MISSING_SCOPES",
            404 => "OBJECT_NOT_FOUND",
            409 => "CONFLICT",
            429 => "RATE_LIMITS",
            _ => "INTERNAL_ERROR",
        };
        Fault {
            status,
            body: error_body(category, format!("Simulated fault: HTTP {status}")),
            headers: Vec::new(),
            delay: None,
            cut: false,
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: Value) -> Self {
        self.body = body;
        self
    }

    /// Answer only after `delay`: lets tests provoke client timeouts.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// This answer's connection cut after its status line.
    pub fn cut(mut self) -> Self {
        self.cut = true;
        self
    }

    /// The normal behaviour's answer, in the same shape as a fault.
    fn reply((status, body): Reply) -> Self {
        Fault {
            status: status.as_u16(),
            body,
            headers: Vec::new(),
            delay: None,
            cut: false,
        }
    }

    /// An invalid status is answered as 500.
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Answers after its delay plus `latency`; `defaults` go first, so the
    /// answer's own headers can override them.
    async fn respond(self, defaults: Vec<(String, String)>, latency: Duration) -> HttpResponse {
        let delay = self.delay.unwrap_or_default() + latency;
        if !delay.is_zero() {
            actix_web::rt::time::sleep(delay).await;
        }
        let mut response = HttpResponse::build(self.status_code());
        for header in defaults.into_iter().chain(self.headers) {
            response.insert_header(header);
        }
        if self.cut {
            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            return response
                .streaming(futures_util::stream::once(async { Err::<Bytes, _>(reset) }));
        }
        response.json(self.body)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Calls allowed per rolling 10 seconds; None: 100.
    pub rate_limit_per_10s: Option<u32>,
    /// The (externalAccountId, externalEventId) that exist; None: every event.
    pub known_events: Option<Vec<(String, String)>>,
    /// Added to every answer, for benchmarks.
    pub latency: Option<Duration>,
    /// Serve HubSpot's OAuth token endpoint and accept only the access tokens
    /// it issued; None: any bearer token is accepted.
    pub oauth: Option<OAuthOptions>,
    /// Random faults on API calls, until [`Simulator::calm`].
    pub chaos: Option<Chaos>,
}

/// A HubSpot having a bad day: each API call, independently, fails in one
/// of these ways with the given probability (nothing of a failed call is
/// recorded as attendance).
#[derive(Clone, Debug, Default)]
pub struct Chaos {
    /// 500, 502 or 503.
    pub server_errors: f64,
    /// 429, half of them with `Retry-After: 1`.
    pub rate_limited: f64,
    /// Answers 503 only after `hang` (longer than the gateway's timeout).
    pub hangs: f64,
    pub hang: Duration,
    /// The connection is cut after a 200 status line, before the body.
    pub resets: f64,
    /// Seed of the draws, so a run can be repeated.
    pub seed: u64,
}

impl Chaos {
    fn draw(&self, rng: &mut fastrand::Rng) -> Option<Fault> {
        let roll = rng.f64();
        let statuses = [500, 502, 503];
        if roll < self.server_errors {
            return Some(Fault::status(statuses[rng.usize(..statuses.len())]));
        }
        if roll < self.server_errors + self.rate_limited {
            let fault = Fault::status(429);
            return Some(if rng.bool() {
                fault.with_header("Retry-After", "1")
            } else {
                fault
            });
        }
        if roll < self.server_errors + self.rate_limited + self.hangs {
            return Some(Fault::status(503).delayed(self.hang));
        }
        (roll < self.server_errors + self.rate_limited + self.hangs + self.resets)
            .then(|| Fault::status(200).cut())
    }
}

/// A HubSpot public app's credential as the simulator's token endpoint knows it.
#[derive(Clone, Debug)]
pub struct OAuthOptions {
    pub client_id: String,
    pub client_secret: String,
    /// The refresh token of the app's installation.
    pub refresh_token: String,
    /// Lifetime of the access tokens it issues (HubSpot: 1800).
    pub expires_in_secs: u64,
}

/// One request to the token endpoint (kept apart from the API calls: it is
/// not rate-limited).
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub form: BTreeMap<String, String>,
    pub status: u16,
    pub at: Instant,
}

/// A running simulator; clones share its state and server.
#[derive(Clone)]
pub struct Simulator {
    url: String,
    state: Arc<Mutex<State>>,
    server: ServerHandle,
}

impl Simulator {
    /// Serves on 127.0.0.1 on a free port, on the current actix system.
    pub async fn start(options: Options) -> std::io::Result<Simulator> {
        let state = Arc::new(Mutex::new(State::new(options)));
        let data = web::Data::from(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/crm/v3/objects/contacts/batch/read",
                    endpoint(Operation::ContactsRead, State::contacts_read),
                )
                .route(
                    "/crm/v3/objects/contacts/batch/upsert",
                    endpoint(Operation::ContactsUpsert, State::contacts_upsert),
                )
                .route(
                    "/marketing/marketing-events/2026-03/attendance/{externalEventId}/{subscriberState}/create",
                    web::post().to(attendance_create),
                )
                .route(
                    "/marketing/marketing-events/2026-03/events/upsert",
                    endpoint(Operation::EventsUpsert, State::events_upsert),
                )
                .route(
                    "/marketing/marketing-events/2026-03/events/{externalEventId}/complete",
                    web::post().to(events_complete),
                )
                .route("/oauth/2026-03/token", web::post().to(token))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Simulator {
            url,
            state,
            server: handle,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Creates the contact unless it exists; either way returns its id.
    pub fn add_contact(&self, email: &str) -> i64 {
        self.lock().upsert_contact(email, BTreeMap::new()).0
    }

    pub fn contact_id(&self, email: &str) -> Option<i64> {
        self.lock().ids_by_email.get(&email.to_lowercase()).copied()
    }

    /// Queues `fault` to answer the next call of `operation` (FIFO).
    pub fn fail_next(&self, operation: Operation, fault: Fault) {
        self.lock()
            .faults
            .entry(operation)
            .or_default()
            .push_back(fault);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The marketing event (externalAccountId, externalEventId), if it exists.
    pub fn event(&self, account: &str, event: &str) -> Option<MarketingEvent> {
        let key = (account.to_owned(), event.to_owned());
        self.lock().events.get(&key).map(|e| e.public.clone())
    }

    pub fn attendance(&self) -> Vec<Attendance> {
        self.lock().attendance.clone()
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.lock().token_requests.clone()
    }

    /// Queues `fault` to answer the next token request.
    pub fn fail_next_token(&self, fault: Fault) {
        self.lock().token_faults.push_back(fault);
    }

    /// The app was uninstalled: every refresh token and access token is refused.
    pub fn revoke(&self) {
        if let Some(oauth) = &mut self.lock().oauth {
            oauth.refresh_tokens.clear();
            oauth.access_tokens.clear();
        }
    }

    /// A new installation's refresh token works from now on.
    pub fn grant_refresh_token(&self, token: &str) {
        if let Some(oauth) = &mut self.lock().oauth {
            oauth.refresh_tokens.insert(token.to_owned());
        }
    }

    /// HubSpot stops accepting the access tokens issued so far (API calls
    /// get 401 until the gateway refreshes).
    pub fn expire_access_tokens(&self) {
        if let Some(oauth) = &mut self.lock().oauth {
            oauth.access_tokens.clear();
        }
    }

    /// HubSpot recovers: no more random faults.
    pub fn calm(&self) {
        self.lock().chaos = None;
    }

    /// From now on every answer comes `latency` later (`None`: at once).
    pub fn set_latency(&self, latency: Option<Duration>) {
        self.lock().latency = latency;
    }

    /// The most API calls that were being answered at one time.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Calls answered 429 by the rate limit, not by injected faults.
    pub fn rate_limited(&self) -> usize {
        self.lock().rate_limited
    }

    /// Stops at once: nothing in flight is worth draining.
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("simulator state poisoned")
    }
}

/// A status and its JSON body; `Err` carries an error answer so `?` works.
type Reply = (StatusCode, Value);

struct Contact {
    id: i64,
    properties: BTreeMap<String, String>,
    created_at: String,
    updated_at: String,
}

impl Contact {
    /// A `SimplePublicObject`.
    fn to_json(&self) -> Value {
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

struct Event {
    id: i64,
    created_at: String,
    public: MarketingEvent,
}

struct State {
    rate_limit: u32,
    latency: Option<Duration>,
    contacts: BTreeMap<i64, Contact>,
    /// Lower-cased, as HubSpot stores emails.
    ids_by_email: HashMap<String, i64>,
    next_contact_id: i64,
    /// Keyed by (externalAccountId, externalEventId).
    events: HashMap<(String, String), Event>,
    every_event_exists: bool,
    next_event_id: i64,
    faults: HashMap<Operation, VecDeque<Fault>>,
    calls: Vec<Call>,
    attendance: Vec<Attendance>,
    rate_limited: usize,
    /// API calls being answered now, and the most there ever were.
    in_flight: usize,
    max_in_flight: usize,
    oauth: Option<OAuthState>,
    token_faults: VecDeque<Fault>,
    token_requests: Vec<TokenRequest>,
    chaos: Option<(Chaos, fastrand::Rng)>,
}

struct OAuthState {
    client_id: String,
    client_secret: String,
    refresh_tokens: HashSet<String>,
    /// Issued access tokens and when each expires.
    access_tokens: HashMap<String, Instant>,
    expires_in: Duration,
    issued: u64,
}

impl OAuthState {
    fn accepts(&self, access_token: &str) -> bool {
        self.access_tokens
            .get(access_token)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// The `refresh_token` grant: a new access token, or why not.
    fn refresh(&mut self, form: &BTreeMap<String, String>) -> Reply {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        if field("grant_type") != "refresh_token" {
            let reply = error_body("VALIDATION_ERROR", "unsupported grant_type");
            return (StatusCode::BAD_REQUEST, reply);
        }
        if field("client_id") != self.client_id || field("client_secret") != self.client_secret {
            let mut reply = error_body("BAD_CLIENT_ID", "missing or invalid client credentials");
            reply["status"] = "BAD_CLIENT_ID".into();
            return (StatusCode::BAD_REQUEST, reply);
        }
        if !self.refresh_tokens.contains(field("refresh_token")) {
            let mut reply = error_body("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
            reply["status"] = "BAD_REFRESH_TOKEN".into();
            return (StatusCode::BAD_REQUEST, reply);
        }
        self.issued += 1;
        let access_token = format!("sim-access-{}", self.issued);
        self.access_tokens
            .insert(access_token.clone(), Instant::now() + self.expires_in);
        let reply = json!({
            "access_token": access_token,
            "refresh_token": field("refresh_token"),
            "expires_in": self.expires_in.as_secs(),
            "token_type": "bearer",
            "token_use": "access_token",
        });
        (StatusCode::OK, reply)
    }
}

impl State {
    fn new(options: Options) -> Self {
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
            oauth: options.oauth.map(|oauth| OAuthState {
                client_id: oauth.client_id,
                client_secret: oauth.client_secret,
                refresh_tokens: HashSet::from([oauth.refresh_token]),
                access_tokens: HashMap::new(),
                expires_in: Duration::from_secs(oauth.expires_in_secs),
                issued: 0,
            }),
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
    fn upsert_contact(&mut self, email: &str, properties: BTreeMap<String, String>) -> (i64, bool) {
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

    fn upsert_event(&mut self, key: (String, String)) -> &mut Event {
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
    fn known_event(&self, account: &str, event: &str) -> Result<(String, String), Reply> {
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

    fn contacts_read(&mut self, body: Value) -> Result<Reply, Reply> {
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

    fn contacts_upsert(&mut self, body: Value) -> Result<Reply, Reply> {
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

    fn attendance_create(
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

    fn events_upsert(&mut self, body: Value) -> Result<Reply, Reply> {
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

    fn events_complete(
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

/// A route whose answer depends on the body alone.
fn endpoint(
    operation: Operation,
    answer: fn(&mut State, Value) -> Result<Reply, Reply>,
) -> actix_web::Route {
    web::post().to(
        move |req: HttpRequest, body: Bytes, state: web::Data<Mutex<State>>| async move {
            serve(&state, operation, &req, &body, answer).await
        },
    )
}

#[derive(Deserialize)]
struct AttendanceQuery {
    #[serde(rename = "externalAccountId", default)]
    external_account_id: String,
}

async fn attendance_create(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
    path: web::Path<(String, String)>,
    query: web::Query<AttendanceQuery>,
) -> HttpResponse {
    let (event, subscriber_state) = path.into_inner();
    let account = query.into_inner().external_account_id;
    serve(
        &state,
        Operation::AttendanceCreate,
        &req,
        &body,
        |state, body| state.attendance_create(&account, &event, &subscriber_state, body),
    )
    .await
}

#[derive(Deserialize)]
struct CompleteQuery {
    #[serde(rename = "externalAccountId")]
    external_account_id: Option<String>,
}

async fn events_complete(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
    path: web::Path<String>,
    query: web::Query<CompleteQuery>,
) -> HttpResponse {
    let event = path.into_inner();
    let account = query.into_inner().external_account_id;
    serve(
        &state,
        Operation::EventsComplete,
        &req,
        &body,
        |state, body| state.events_complete(account.as_deref(), &event, body),
    )
    .await
}

/// What every endpoint shares: authentication, injected faults, the rate
/// limit and its headers, recording the call, latency.
async fn serve(
    state: &Mutex<State>,
    operation: Operation,
    req: &HttpRequest,
    body: &Bytes,
    answer: impl FnOnce(&mut State, Value) -> Result<Reply, Reply>,
) -> HttpResponse {
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bearer = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.trim().is_empty());

    let (answer, rate_headers, latency) = {
        let mut state = state.lock().expect("simulator state poisoned");
        let authorized = match (&state.oauth, bearer) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(oauth), Some(token)) => oauth.accepts(token),
        };
        let at = Instant::now();
        // Calls are recorded in arrival order, so the window is a suffix.
        let in_window = 1 + state
            .calls
            .iter()
            .rev()
            .take_while(|call| at.duration_since(call.at) < RATE_WINDOW)
            .count();
        let limit = state.rate_limit;
        let answer = if !authorized {
            let reply = error_body(
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found.",
            );
            Fault::reply((StatusCode::UNAUTHORIZED, reply))
        } else if let Some(fault) = state
            .faults
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            fault
        } else if in_window > limit as usize {
            state.rate_limited += 1;
            let reply = error_body(
                "RATE_LIMITS",
                "You have reached your ten_secondly_rolling limit.",
            );
            Fault::reply((StatusCode::TOO_MANY_REQUESTS, reply))
        } else if let Some(fault) = state
            .chaos
            .as_mut()
            .and_then(|(chaos, rng)| chaos.draw(rng))
        {
            fault
        } else {
            match answer(&mut state, body.clone()) {
                Ok(reply) | Err(reply) => Fault::reply(reply),
            }
        };
        let status = answer.status_code().as_u16();
        tracing::debug!(
            operation = operation.as_str(),
            status,
            "hubspot simulator answered"
        );
        state.calls.push(Call {
            operation,
            path: req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |pq| pq.as_str().to_owned()),
            body,
            authorization,
            status,
            at,
        });
        let rate_headers = vec![
            ("X-HubSpot-RateLimit-Max".to_owned(), limit.to_string()),
            (
                "X-HubSpot-RateLimit-Remaining".to_owned(),
                (limit as usize).saturating_sub(in_window).to_string(),
            ),
            (
                "X-HubSpot-RateLimit-Interval-Milliseconds".to_owned(),
                "10000".to_owned(),
            ),
        ];
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        (answer, rate_headers, state.latency.unwrap_or_default())
    };
    let response = answer.respond(rate_headers, latency).await;
    state.lock().expect("simulator state poisoned").in_flight -= 1;
    response
}

/// `POST /oauth/2026-03/token`, form-encoded.
async fn token(body: Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let (answer, latency) = {
        let mut state = state.lock().expect("simulator state poisoned");
        let answer = match (state.token_faults.pop_front(), &mut state.oauth) {
            (Some(fault), _) => fault,
            (None, Some(oauth)) => Fault::reply(oauth.refresh(&form)),
            (None, None) => Fault::reply((
                StatusCode::NOT_FOUND,
                error_body(
                    "OBJECT_NOT_FOUND",
                    "this simulator was started without OAuth",
                ),
            )),
        };
        state.token_requests.push(TokenRequest {
            form,
            status: answer.status_code().as_u16(),
            at: Instant::now(),
        });
        (answer, state.latency.unwrap_or_default())
    };
    answer.respond(Vec::new(), latency).await
}

fn parse<T: DeserializeOwned>(body: Value) -> Result<T, Reply> {
    serde_json::from_value(body).map_err(|err| {
        let reply = error_body("VALIDATION_ERROR", format!("Invalid input JSON: {err}"));
        (StatusCode::BAD_REQUEST, reply)
    })
}

/// The simulator keeps contacts by email only, which is all the gateway uses.
fn require_email_id(id_property: Option<&str>) -> Result<(), Reply> {
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
fn batch(started_at: &str, results: Vec<Value>, errors: Vec<Value>) -> Value {
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
fn standard_error(category: &str, message: &str, context: Value) -> Value {
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "errors": [],
        "links": {},
    })
}

/// A whole-request `Error`: requires category, correlationId (a UUID), message.
fn error_body(category: &str, message: impl Into<String>) -> Value {
    // Unique per answer, so logs that quote one can be matched to the call.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    json!({
        "status": "error",
        "category": category,
        "message": message.into(),
        "correlationId": format!("00000000-0000-4000-8000-{n:012x}"),
    })
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("the current time formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderMap;

    use super::*;

    const READ: &str = "/crm/v3/objects/contacts/batch/read";
    const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
    const EVENTS: &str = "/marketing/marketing-events/2026-03/events/upsert";
    const ATTEND_WEBINAR_1: &str = "/marketing/marketing-events/2026-03/attendance/webinar%201/attend/create?externalAccountId=zoom%3A1";

    async fn post(sim: &Simulator, path: &str, body: Value) -> (u16, HeaderMap, Value) {
        post_as(sim, Some("Bearer test-token"), path, body).await
    }

    async fn post_as(
        sim: &Simulator,
        authorization: Option<&str>,
        path: &str,
        body: Value,
    ) -> (u16, HeaderMap, Value) {
        let mut request = awc::Client::default().post(format!("{}{path}", sim.url()));
        if let Some(authorization) = authorization {
            request = request.insert_header(("Authorization", authorization));
        }
        let mut response = request.send_json(&body).await.expect("simulator answers");
        let body = response.json().await.expect("JSON body");
        (response.status().as_u16(), response.headers().clone(), body)
    }

    fn read_body(emails: &[&str]) -> Value {
        let inputs: Vec<Value> = emails.iter().map(|email| json!({ "id": email })).collect();
        json!({
            "idProperty": "email",
            "inputs": inputs,
            "properties": ["email"],
            "propertiesWithHistory": [],
        })
    }

    fn upsert_body(email: &str, firstname: &str) -> Value {
        json!({ "inputs": [{
            "id": email,
            "idProperty": "email",
            "properties": { "email": email, "firstname": firstname },
        }]})
    }

    fn attend_body(vids: &[i64]) -> Value {
        let inputs: Vec<Value> = vids
            .iter()
            .map(|vid| json!({ "vid": vid, "interactionDateTime": 1_700_000_000_000_i64, "properties": {} }))
            .collect();
        json!({ "inputs": inputs })
    }

    fn event_body(account: &str, event: &str) -> Value {
        json!({ "inputs": [{
            "externalAccountId": account,
            "externalEventId": event,
            "eventName": "Webinar",
            "eventOrganizer": "Acme",
            "customProperties": [],
        }]})
    }

    #[actix_web::test]
    async fn batch_read_answers_200_when_all_found_and_207_naming_the_missing() {
        let sim = Simulator::start(Options::default()).await.unwrap();
        let id = sim.add_contact("Ann@Example.com");

        let (status, _, body) = post(&sim, READ, read_body(&["ann@EXAMPLE.com"])).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "COMPLETE");
        assert_eq!(body["results"][0]["id"], id.to_string());
        assert_eq!(body["results"][0]["properties"]["email"], "ann@example.com");
        assert_eq!(
            body["results"][0]["properties"]["hs_object_id"],
            id.to_string()
        );
        assert!(body.get("errors").is_none());

        let (status, _, body) = post(
            &sim,
            READ,
            read_body(&["ann@example.com", "Bob@example.com"]),
        )
        .await;
        assert_eq!(status, 207);
        assert_eq!(body["results"].as_array().unwrap().len(), 1);
        assert_eq!(body["numErrors"], 1);
        assert_eq!(body["errors"][0]["category"], "OBJECT_NOT_FOUND");
        assert_eq!(
            body["errors"][0]["context"]["ids"],
            json!(["Bob@example.com"])
        );
    }

    #[actix_web::test]
    async fn upsert_creates_then_updates_and_read_finds_it() {
        let sim = Simulator::start(Options::default()).await.unwrap();

        let (status, _, body) = post(&sim, UPSERT, upsert_body("Cy@example.com", "Cy")).await;
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["new"], true);
        let id = sim.contact_id("cy@example.com").expect("created");
        assert_eq!(body["results"][0]["id"], id.to_string());

        let (_, _, body) = post(&sim, UPSERT, upsert_body("cy@example.com", "Cyrus")).await;
        assert_eq!(body["results"][0]["new"], false);
        assert_eq!(body["results"][0]["id"], id.to_string());

        let (status, _, body) = post(&sim, READ, read_body(&["CY@example.com"])).await;
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["properties"]["firstname"], "Cyrus");
    }

    #[actix_web::test]
    async fn create_records_attendance_and_names_unknown_vids() {
        let sim = Simulator::start(Options::default()).await.unwrap();
        let vid = sim.add_contact("ann@example.com");

        let (status, _, body) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid, 999])).await;
        assert_eq!(status, 200);
        assert_eq!(body["results"], json!([{ "vid": vid }]));
        assert_eq!(body["numErrors"], 1);
        assert_eq!(body["errors"][0]["message"], "Contact 999 not found");
        assert_eq!(body["errors"][0]["context"]["vids"], json!(["999"]));
        assert_eq!(
            sim.attendance(),
            vec![Attendance {
                external_account_id: "zoom:1".to_owned(),
                external_event_id: "webinar 1".to_owned(),
                state: "attend".to_owned(),
                vid,
                interaction_ms: 1_700_000_000_000,
                properties: BTreeMap::new(),
            }]
        );
        assert_eq!(sim.calls()[0].path, ATTEND_WEBINAR_1);
    }

    #[actix_web::test]
    async fn unknown_event_is_404_until_upserted() {
        let known = vec![("zoom:1".to_owned(), "webinar 0".to_owned())];
        let sim = Simulator::start(Options {
            known_events: Some(known),
            ..Options::default()
        })
        .await
        .unwrap();
        let vid = sim.add_contact("ann@example.com");

        let (status, _, body) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
        assert_eq!(status, 404);
        assert_eq!(body["category"], "OBJECT_NOT_FOUND");
        assert!(body["correlationId"].is_string());

        let (status, _, body) = post(&sim, EVENTS, event_body("zoom:1", "webinar 1")).await;
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["id"], body["results"][0]["objectId"]);
        assert_eq!(body["results"][0]["eventName"], "Webinar");

        let (status, _, _) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
        assert_eq!(status, 200);
        assert_eq!(sim.attendance().len(), 1);
    }

    #[actix_web::test]
    async fn complete_needs_a_known_event_an_account_and_two_times() {
        let sim = Simulator::start(Options {
            known_events: Some(vec![("acc".into(), "webinar 1".into())]),
            ..Options::default()
        })
        .await
        .unwrap();
        let complete = "/marketing/marketing-events/2026-03/events/webinar%201/complete";
        let times =
            json!({"startDateTime": "2026-01-01T10:00:00Z", "endDateTime": "2026-01-01T11:00:00Z"});
        let (status, _, _) = post(&sim, complete, times.clone()).await;
        assert_eq!(status, 400, "externalAccountId is required");
        let with_account = format!("{complete}?externalAccountId=acc");
        let (status, _, _) = post(&sim, &with_account, json!({"startDateTime": "soon"})).await;
        assert_eq!(status, 400);
        let unknown =
            "/marketing/marketing-events/2026-03/events/other/complete?externalAccountId=acc";
        assert_eq!(post(&sim, unknown, times.clone()).await.0, 404);
        let (status, _, body) = post(&sim, &with_account, times).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["eventCompleted"], true);
        let event = sim.event("acc", "webinar 1").unwrap();
        assert_eq!(event.completions, 1);
        assert_eq!(event.end.as_deref(), Some("2026-01-01T11:00:00Z"));
    }

    #[actix_web::test]
    async fn a_queued_fault_answers_one_call_then_normal_behaviour_resumes() {
        let sim = Simulator::start(Options::default()).await.unwrap();
        let vid = sim.add_contact("ann@example.com");
        sim.fail_next(
            Operation::AttendanceCreate,
            Fault::status(503).with_header("Retry-After", "1"),
        );
        sim.fail_next(
            Operation::AttendanceCreate,
            Fault::status(500).delayed(Duration::from_millis(60)),
        );

        let (status, headers, body) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
        assert_eq!(status, 503);
        assert_eq!(headers.get("Retry-After").unwrap(), "1");
        assert_eq!(body["category"], "INTERNAL_ERROR");

        let timed_out = awc::Client::default()
            .post(format!("{}{ATTEND_WEBINAR_1}", sim.url()))
            .insert_header(("Authorization", "Bearer test-token"))
            .timeout(Duration::from_millis(20))
            .send_json(&attend_body(&[vid]))
            .await;
        assert!(matches!(
            timed_out,
            Err(awc::error::SendRequestError::Timeout)
        ));
        assert!(sim.attendance().is_empty());

        let (status, _, _) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
        assert_eq!(status, 200);
        assert_eq!(sim.attendance().len(), 1);
        let calls = sim.calls();
        let statuses: Vec<u16> = calls.iter().map(|call| call.status).collect();
        assert_eq!(statuses, [503, 500, 200]);
        assert_eq!(calls[0].body, attend_body(&[vid]));
    }

    #[actix_web::test]
    async fn calls_beyond_the_rate_limit_are_answered_429() {
        let sim = Simulator::start(Options {
            rate_limit_per_10s: Some(3),
            ..Options::default()
        })
        .await
        .unwrap();

        for remaining in ["2", "1", "0"] {
            let (status, headers, _) = post(&sim, READ, read_body(&[])).await;
            assert_eq!(status, 200);
            assert_eq!(headers.get("X-HubSpot-RateLimit-Max").unwrap(), "3");
            assert_eq!(
                headers.get("X-HubSpot-RateLimit-Remaining").unwrap(),
                remaining
            );
            let interval = headers.get("X-HubSpot-RateLimit-Interval-Milliseconds");
            assert_eq!(interval.unwrap(), "10000");
        }
        let (status, headers, body) = post(&sim, READ, read_body(&[])).await;
        assert_eq!(status, 429);
        assert_eq!(headers.get("X-HubSpot-RateLimit-Remaining").unwrap(), "0");
        assert_eq!(body["category"], "RATE_LIMITS");
        assert_eq!(sim.rate_limited(), 1);
    }

    #[actix_web::test]
    async fn calls_without_a_bearer_token_are_answered_401() {
        let sim = Simulator::start(Options::default()).await.unwrap();

        let (status, _, body) = post_as(&sim, None, READ, read_body(&[])).await;
        assert_eq!(status, 401);
        assert_eq!(body["category"], "INVALID_AUTHENTICATION");
        let (status, _, _) = post_as(&sim, Some("Basic dXNlcg=="), READ, read_body(&[])).await;
        assert_eq!(status, 401);
        let (status, _, _) = post_as(&sim, Some("Bearer"), READ, read_body(&[])).await;
        assert_eq!(status, 401);

        let authorizations: Vec<_> = sim
            .calls()
            .into_iter()
            .map(|call| call.authorization)
            .collect();
        let basic = Some("Basic dXNlcg==".to_owned());
        assert_eq!(authorizations, [None, basic, Some("Bearer".to_owned())]);
        sim.stop().await;
    }
}
