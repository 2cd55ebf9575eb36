//! A HubSpot API simulator on loopback: the five endpoints the gateway calls,
//! HubSpot's rate-limit headers, injectable faults, and a record of every
//! call for the tests to inspect.
//!
//! Every body it answers is valid against HubSpot's OpenAPI documents, so the
//! gateway's traffic can also be proxied through a validating Prism.
//!
//! `state` holds what HubSpot holds and answers each call from it;
//! `handlers` put every call through authentication, faults and the rate
//! limit; `faults` are the answers given instead; `oauth` is the token
//! endpoint.

mod faults;
mod handlers;
mod oauth;
mod state;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use actix_web::{App, HttpServer, dev::ServerHandle, web};
use serde_json::Value;

use crate::hubspot::Operation;
pub use faults::{Chaos, Fault};
pub use oauth::{OAuthOptions, TokenRequest};
use state::State;

/// HubSpot's burst limit is counted over a rolling ten seconds.
const RATE_WINDOW: Duration = Duration::from_secs(10);

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
                .configure(handlers::routes)
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
