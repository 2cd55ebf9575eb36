//! HubSpot's OAuth token endpoint: the `refresh_token` grant, and which
//! access tokens the API accepts.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use actix_web::{
    HttpResponse,
    http::StatusCode,
    web::{self, Bytes},
};
use serde_json::json;

use super::{
    faults::{Fault, error_body},
    state::{Reply, State},
};

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

pub(super) struct OAuthState {
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) refresh_tokens: HashSet<String>,
    /// Issued access tokens and when each expires.
    pub(super) access_tokens: HashMap<String, Instant>,
    pub(super) expires_in: Duration,
    pub(super) issued: u64,
}

impl OAuthState {
    pub(super) fn new(options: OAuthOptions) -> Self {
        OAuthState {
            client_id: options.client_id,
            client_secret: options.client_secret,
            refresh_tokens: HashSet::from([options.refresh_token]),
            access_tokens: HashMap::new(),
            expires_in: Duration::from_secs(options.expires_in_secs),
            issued: 0,
        }
    }

    pub(super) fn accepts(&self, access_token: &str) -> bool {
        self.access_tokens
            .get(access_token)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// The `refresh_token` grant: a new access token, or why not.
    pub(super) fn refresh(&mut self, form: &BTreeMap<String, String>) -> Reply {
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

/// `POST /oauth/2026-03/token`, form-encoded.
pub(super) async fn token(body: Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
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
